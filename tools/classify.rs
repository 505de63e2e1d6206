//! Classify images with an ImageNet classifier (torchvision preprocessing), printing the
//! top-k labels; `--dump` saves the input and every feature map for comparison.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Parser;

use candletron::config::Config;
use candletron::data::transforms;
use candletron::engine::{inference_config, Predicted, Predictor};
use candletron::modeling::backbone::{Backbone, MobileNetV2};
use candletron::modeling::{build_model, Prediction};
use candletron::structures::ModelInput;
use candletron::utils::fs::image_files;

#[derive(Parser)]
#[command(
    about = "Classify images with a classifier (META_ARCHITECTURE: Classifier), torchvision's preprocessing"
)]
struct Args {
    /// Config file; without it, the config stored in --weights when training wrote them,
    /// else the defaults (the ImageNet MobileNetV2).
    #[arg(long, visible_alias = "config")]
    config_file: Option<PathBuf>,
    /// Weights: .pth (zip or legacy), .safetensors or an https:// URL; overrides MODEL.WEIGHTS.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Number of classes to print per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    topk: u32,
    /// Run even when the weights leave model parameters unloaded or mismatched (their
    /// random values then decide the answer; by default that is an error).
    #[arg(long)]
    allow_unmatched_weights: bool,
    /// Write `input, res2..res5, logits` of the first image to this safetensors file.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Print the resolved config and exit.
    #[arg(long)]
    print_config: bool,
    /// Images, or folders whose images (.jpg, .jpeg, .png, at any depth) are classified.
    #[arg(required_unless_present = "print_config")]
    images: Vec<PathBuf>,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
}

fn main() -> Result<()> {
    candletron::utils::threads::configure();
    candletron::utils::logging::init();
    let args = Args::parse();
    let cfg = inference_config(
        args.config_file.as_deref(),
        args.weights.as_deref(),
        &args.opts,
    )?;
    if args.print_config {
        print!("{}", cfg.to_yaml());
        return Ok(());
    }
    if cfg.model.meta_architecture != "Classifier" {
        bail!(
            "classify needs MODEL.META_ARCHITECTURE: Classifier, got {}",
            cfg.model.meta_architecture
        );
    }
    let predictor = if args.allow_unmatched_weights {
        Predictor::from_config_allowing_unmatched(&cfg)?
    } else {
        Predictor::from_config(&cfg)?
    };
    let mut paths = Vec::new();
    for p in &args.images {
        paths.extend(image_files(p).with_context(|| format!("cannot list {}", p.display()))?);
    }
    if paths.is_empty() {
        bail!("no .jpg/.jpeg/.png images in {:?}", args.images);
    }
    let names = predictor.class_names();
    let mut failures = 0usize;
    for (i, path) in paths.iter().enumerate() {
        let img = match candletron::data::image_io::read_image(path) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                failures += 1;
                continue;
            }
        };
        let Predicted::Probabilities(probs) = predictor.predict(&img)? else {
            bail!("{} returned no class scores", cfg.model.meta_architecture);
        };
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        println!("{}:", path.display());
        for &c in order.iter().take(args.topk as usize) {
            println!("  {c:>4}  {:>7.4}  {}", probs[c], names[c]);
        }
        if i == 0 {
            if let Some(dump) = &args.dump {
                dump_features(&cfg, &img, dump)?;
                println!("wrote {}", dump.display());
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} image(s) could not be read", paths.len());
    }
    Ok(())
}

/// Runs a multi-output backbone over the (unfused) classifier's parameters to save the
/// maps, with the input exactly as inference preprocesses it.
fn dump_features(cfg: &Config, img: &image::DynamicImage, path: &std::path::Path) -> Result<()> {
    let (model, _) = build_model(cfg, 0)?;
    let crop = transforms::resize_short_center_crop(
        &img.to_rgb8(),
        cfg.input.resize_short,
        cfg.input.crop_size,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let x = transforms::image_to_tensor(&crop, &candle_core::Device::Cpu)?;
    let Some(Prediction::Logits(scores)) = model.inference(&[ModelInput::new(x.clone())])?.pop()
    else {
        bail!("the classifier returned no class scores");
    };
    let logits = Tensor::new(scores.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?;
    let (x, _) = model.preprocess_image(&[x])?;
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
    for (name, t) in backbone.forward_t(&x, false)? {
        tensors.push((name, t));
    }
    candletron::checkpoint::write_safetensors(&tensors, path)?;
    Ok(())
}
