//! Export a trained model to ONNX.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Parser, ValueEnum};

use candletron::engine::{inference_config, Predictor};
use candletron::modeling::{ExportBatch, OnnxExportSpec, Prediction};
use candletron::structures::ModelInput;
use candletron::utils::fs::check_replaces_no_input;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Onnx,
}

#[derive(Parser)]
#[command(
    about = "Export a classifier or SSDLite detector to ONNX (opset 17): input `image`, RGB pixels \
             0..255 as float NCHW, normalised inside; outputs `logits`, or `boxes`, `scores`, \
             `classes` after NMS (`--raw`: the head outputs and anchors)"
)]
struct Args {
    /// Config file; without it, the config stored in --weights when training wrote them.
    #[arg(long, visible_alias = "config")]
    config_file: Option<PathBuf>,
    /// Weights (overrides MODEL.WEIGHTS); they must fit the model.
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// The .onnx file to write (never the weights, config or reference image).
    #[arg(long)]
    output: PathBuf,
    /// Input height and width (default: INPUT.CROP_SIZE for a classifier, INPUT.MIN_SIZE_TEST
    /// rounded up to the size divisibility for a detector).
    #[arg(long, num_args = 2, value_names = ["H", "W"])]
    size: Option<Vec<usize>>,
    /// Batch size: a number, or `dynamic`.
    #[arg(long, default_value = "1")]
    batch: String,
    /// A detector's raw head outputs (scores, deltas) and anchors instead of detections.
    #[arg(long)]
    raw: bool,
    /// Also write a batch-1 input (`image`) and candletron's outputs for it to this
    /// safetensors file, to check a runtime against.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The picture for --reference, resized to the export size (default: a fixed pattern).
    #[arg(long)]
    reference_image: Option<PathBuf>,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
}

fn main() -> Result<()> {
    candletron::utils::threads::configure();
    candletron::utils::logging::init();
    let args = Args::parse();
    let Format::Onnx = args.format;
    let cfg = inference_config(
        args.config_file.as_deref(),
        args.weights.as_deref(),
        &args.opts,
    )?;
    // Checked before the model is built: exporting over the weights would lose them.
    let weights = PathBuf::from(&cfg.model.weights);
    let mut inputs: Vec<&Path> = vec![&weights];
    inputs.extend(args.config_file.as_deref());
    inputs.extend(args.reference_image.as_deref());
    for out in std::iter::once(&args.output).chain(&args.reference) {
        check_replaces_no_input(out, &inputs).map_err(|e| anyhow!(e))?;
    }
    if args.reference.as_ref().is_some_and(|r| r == &args.output) {
        bail!("--reference and --output name the same file");
    }
    let predictor = Predictor::from_config(&cfg)?;
    let model = predictor.model();
    let (height, width) = match &args.size {
        Some(s) => (s[0], s[1]),
        None if cfg.model.meta_architecture == "Classifier" => {
            (cfg.input.crop_size, cfg.input.crop_size)
        }
        None if cfg.input.min_size_test == 0 => {
            bail!(
                "pass --size H W: INPUT.MIN_SIZE_TEST is 0 (the detector runs at each image's \
                 own size), so there is no default export size"
            )
        }
        None => {
            let div = model.arch.size_divisibility().max(1);
            let s = cfg.input.min_size_test.div_ceil(div) * div;
            (s, s)
        }
    };
    let batch = match args.batch.as_str() {
        "dynamic" => ExportBatch::Dynamic,
        n => ExportBatch::Fixed(
            n.parse()
                .with_context(|| format!("--batch {n}: expected a number or `dynamic`"))?,
        ),
    };
    let spec = OnnxExportSpec {
        height,
        width,
        batch,
        raw: args.raw,
    };
    let bytes = model.export_onnx(&spec, predictor.class_names())?;
    candletron::utils::fs::write_atomic(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} ({}, {height}x{width}, {:.1} MB)",
        args.output.display(),
        cfg.model.meta_architecture,
        bytes.len() as f64 / 1e6
    );
    if let Some(path) = &args.reference {
        let image = match &args.reference_image {
            Some(p) => {
                let img = candletron::data::image_io::read_image(p)?.to_rgb8();
                image::imageops::resize(
                    &img,
                    width as u32,
                    height as u32,
                    image::imageops::FilterType::Triangle,
                )
            }
            None => image::RgbImage::from_fn(width as u32, height as u32, |x, y| {
                let v = |a: u32, b: u32| ((a * 7 + b * 13 + (a * b) % 31) % 256) as u8;
                image::Rgb([v(x, y), v(y, x + 3), ((x + y) % 256) as u8])
            }),
        };
        let x = candletron::data::transforms::image_to_tensor(&image, &Device::Cpu)?;
        let input = ModelInput::new(x.clone());
        let mut tensors = vec![("image".to_string(), x.unsqueeze(0)?)];
        if args.raw || cfg.model.meta_architecture == "Classifier" {
            tensors.extend(model.raw_outputs(std::slice::from_ref(&input))?);
        } else {
            let Some(Prediction::Detections(d)) = model.inference(&[input])?.pop() else {
                bail!("the detector returned no detections");
            };
            let n = d.boxes.len();
            let flat: Vec<f32> = d.boxes.iter().flatten().copied().collect();
            let classes: Vec<i64> = d.classes.iter().map(|&c| c as i64).collect();
            tensors.push((
                "boxes".into(),
                Tensor::from_vec(flat, (n, 4), &Device::Cpu)?,
            ));
            tensors.push((
                "scores".into(),
                Tensor::from_vec(d.scores, n, &Device::Cpu)?,
            ));
            tensors.push((
                "classes".into(),
                Tensor::from_vec(classes, n, &Device::Cpu)?,
            ));
        }
        candletron::checkpoint::write_safetensors(&tensors, path)?;
        println!("wrote {} (input and candletron's outputs)", path.display());
    }
    Ok(())
}
