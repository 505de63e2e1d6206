//! Draw a model's results, or a WIDER prediction folder's boxes, onto images.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use image::RgbImage;

use candletron::config::Config;
use candletron::data::{imagenet_classes, transforms};
use candletron::evaluation::predictions::parse_prediction_file;
use candletron::modeling::{build_model, Prediction};
use candletron::structures::ModelInput;
use candletron::utils::visualizer::{draw_detections, draw_label, BLACK, PALETTE, WHITE};

#[derive(Parser)]
#[command(about = "Draw detections (with scores) or classifications onto images and save them")]
struct Args {
    /// Config file (defaults in code otherwise).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model weights; overrides MODEL.WEIGHTS.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// An image or a folder of images (.jpg, .jpeg, .png).
    #[arg(long)]
    input: PathBuf,
    /// Folder to write the drawn images to (PNG).
    #[arg(long)]
    output: PathBuf,
    /// Draw only detections with at least this score.
    #[arg(long, default_value_t = 0.5)]
    confidence_threshold: f64,
    /// Draw boxes from a WIDER prediction folder (EVENT/IMAGE.txt) instead of running a model.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
}

fn images_in(input: &Path) -> Result<Vec<PathBuf>> {
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
    };
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    if !input.is_dir() {
        bail!("input {} does not exist", input.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `PRED/EVENT/STEM.txt` where EVENT is the image's folder name, else the first
/// `PRED/*/STEM.txt`.
fn prediction_file(pred: &Path, image: &Path) -> Option<PathBuf> {
    let stem = image.file_stem()?.to_str()?;
    if let Some(event) = image.parent().and_then(|p| p.file_name()) {
        let p = pred.join(event).join(format!("{stem}.txt"));
        if p.is_file() {
            return Some(p);
        }
    }
    let direct = pred.join(format!("{stem}.txt"));
    if direct.is_file() {
        return Some(direct);
    }
    std::fs::read_dir(pred)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("{stem}.txt")))
        .find(|p| p.is_file())
}

fn main() -> Result<()> {
    candletron::utils::logging::init();
    let args = Args::parse();
    let mut cfg = Config::from_args(args.config.as_deref(), &args.opts)?;
    if let Some(w) = &args.weights {
        cfg.model.weights = w.display().to_string();
    }
    let images = images_in(&args.input)?;
    if images.is_empty() {
        bail!("no .jpg/.jpeg/.png images under {}", args.input.display());
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let model = if args.predictions.is_none() {
        if cfg.model.weights.is_empty() {
            bail!("no weights: pass --weights, set MODEL.WEIGHTS, or draw a prediction folder with --predictions");
        }
        Some(build_model(&cfg, 0)?.0)
    } else {
        None
    };
    let mut failures = 0;
    for path in &images {
        let mut img: RgbImage = match image::open(path) {
            Ok(i) => i.to_rgb8(),
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                failures += 1;
                continue;
            }
        };
        let mut summary = String::new();
        if let Some(pred) = &args.predictions {
            match prediction_file(pred, path) {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let dets = parse_prediction_file(&text, &file).map_err(|e| anyhow!(e))?;
                    draw_detections(&mut img, &dets, args.confidence_threshold, PALETTE[2]);
                    let shown = dets
                        .iter()
                        .filter(|d| d[4] >= args.confidence_threshold)
                        .count();
                    summary = format!("{shown} of {} detections", dets.len());
                }
                None => summary = "no prediction file".into(),
            }
        } else if let Some(model) = &model {
            // Only the classifier exists today; detectors will draw boxes here.
            let crop = transforms::resize_short_center_crop(
                &img,
                cfg.input.resize_short,
                cfg.input.crop_size,
            )
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let x = transforms::image_to_tensor(&crop, &candle_core::Device::Cpu)?;
            let Some(Prediction::Logits(scores)) = model.inference(&[ModelInput::new(x)])?.pop()
            else {
                bail!("{} produced no class scores", cfg.model.meta_architecture);
            };
            let logits = candle_core::Tensor::new(scores.as_slice(), &candle_core::Device::Cpu)?
                .unsqueeze(0)?;
            let probs: Vec<f32> = candle_nn::ops::softmax(&logits, candle_core::D::Minus1)?
                .squeeze(0)?
                .to_vec1()?;
            let classes = imagenet_classes();
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let scale = (img.width().min(img.height()) / 250).clamp(1, 4);
            for (row, &c) in order.iter().take(3).enumerate() {
                let name = classes.get(c).copied().unwrap_or("?");
                let label = format!("{name} {:.2}", probs[c]);
                draw_label(
                    &mut img,
                    4,
                    4 + row as i32 * (8 * scale as i32 + 6),
                    &label,
                    scale,
                    WHITE,
                    BLACK,
                );
            }
            summary = format!("top-1 {}", classes.get(order[0]).copied().unwrap_or("?"));
        }
        let out = args.output.join(format!(
            "{}.png",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("image")
        ));
        img.save(&out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("{} -> {} ({summary})", path.display(), out.display());
    }
    if failures > 0 {
        eprintln!("{failures} image(s) could not be read and were skipped");
    }
    Ok(())
}
