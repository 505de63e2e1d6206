//! Classify images with an ImageNet classifier (torchvision preprocessing), printing the
//! top-k labels; `--dump` saves the input and every feature map for comparison.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};
use clap::Parser;

use candletron::config::Config;
use candletron::data::{imagenet_classes, transforms};
use candletron::modeling::backbone::{Backbone, MobileNetV2};
use candletron::modeling::{build_model, Prediction};
use candletron::structures::ModelInput;

#[derive(Parser)]
#[command(
    about = "Classify images with an ImageNet-pretrained classifier (META_ARCHITECTURE: Classifier)"
)]
struct Args {
    /// Config file (defaults in code otherwise).
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Weights: .pth (zip or legacy), .safetensors or an https:// URL; overrides MODEL.WEIGHTS.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Number of classes to print per image.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// Write `input, res2..res5, logits` of the first image to this safetensors file.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Print the resolved config and exit.
    #[arg(long)]
    print_config: bool,
    /// Images to classify.
    #[arg(required_unless_present = "print_config")]
    images: Vec<PathBuf>,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
}

fn main() -> Result<()> {
    candletron::utils::logging::init();
    let args = Args::parse();
    let mut cfg = Config::from_args(args.config_file.as_deref(), &args.opts)?;
    if let Some(w) = &args.weights {
        cfg.model.weights = w.display().to_string();
    }
    if args.print_config {
        print!("{}", cfg.to_yaml());
        return Ok(());
    }
    let seed = candletron::engine::default_setup(&cfg)?;
    if cfg.model.meta_architecture != "Classifier" {
        bail!(
            "classify needs MODEL.META_ARCHITECTURE: Classifier, got {}",
            cfg.model.meta_architecture
        );
    }
    if cfg.model.weights.is_empty() {
        bail!("no weights: pass --weights or set MODEL.WEIGHTS");
    }
    let (model, report) = build_model(&cfg, seed)?;
    if let Some(report) = report {
        if !report.is_exact() {
            eprintln!("warning: {}: {report}", cfg.model.weights);
        }
    }
    let classes = imagenet_classes();
    let num_classes = cfg.model.classifier.num_classes;
    for (i, path) in args.images.iter().enumerate() {
        let img = image::open(path)
            .with_context(|| format!("cannot read image {}", path.display()))?
            .to_rgb8();
        let crop =
            transforms::resize_short_center_crop(&img, cfg.input.resize_short, cfg.input.crop_size)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let x = transforms::image_to_tensor(&crop, &candle_core::Device::Cpu)?;
        let input = ModelInput::new(x.clone());
        let Some(Prediction::Logits(scores)) = model.inference(&[input])?.pop() else {
            bail!("{} returned no class scores", cfg.model.meta_architecture);
        };
        let logits = Tensor::new(scores.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?;
        let probs: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?
            .squeeze(0)?
            .to_vec1()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        println!("{}:", path.display());
        for &c in order.iter().take(args.topk) {
            let name = if num_classes == classes.len() {
                classes[c]
            } else {
                ""
            };
            println!("  {c:>4}  {:>7.4}  {name}", probs[c]);
        }
        if i == 0 {
            if let Some(dump) = &args.dump {
                let (x, _) = model.preprocess_image(&[x])?;
                dump_features(&cfg, &model, &x, &logits, dump)?;
                println!("wrote {}", dump.display());
            }
        }
    }
    Ok(())
}

/// Runs a multi-output backbone over the classifier's own parameters to save the maps.
fn dump_features(
    cfg: &Config,
    model: &candletron::modeling::Model,
    x: &Tensor,
    logits: &Tensor,
    path: &std::path::Path,
) -> Result<()> {
    let mut cfg = cfg.clone();
    cfg.model.mobilenet.out_features = ["res2", "res3", "res4", "res5"].map(String::from).to_vec();
    let vb = model
        .params
        .var_builder(candle_core::DType::F32, &model.device);
    let backbone = MobileNetV2::from_config(
        &cfg,
        vb,
        candletron::layers::ShapeSpec {
            channels: 3,
            stride: 1,
        },
    )?;
    let mut tensors = vec![
        ("input".to_string(), x.clone()),
        ("logits".to_string(), logits.clone()),
    ];
    for (name, t) in backbone.forward_t(x, false)? {
        tensors.push((name, t));
    }
    candletron::checkpoint::write_safetensors(&tensors, path)?;
    Ok(())
}
