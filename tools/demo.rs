//! Draw a model's results, or a WIDER prediction folder's boxes, onto images.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use image::RgbImage;

use candletron::engine::{inference_config, Detection, Predicted, Predictor};
use candletron::evaluation::predictions::parse_prediction_file;
use candletron::utils::fs::image_files;
use candletron::utils::visualizer::{
    draw_detections, draw_label, draw_labeled_boxes, label_px, LabeledBox, BLACK, PALETTE, WHITE,
};

#[derive(Parser)]
#[command(
    about = "Run a detector or classifier on images and draw its results (or draw a WIDER prediction folder)"
)]
struct Args {
    /// Config file: the one the model was trained with. Without it, the config stored in
    /// --weights when training wrote them, else the defaults.
    #[arg(long, visible_alias = "config-file")]
    config: Option<PathBuf>,
    /// Model weights; overrides MODEL.WEIGHTS.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// An image or a folder of images (.jpg, .jpeg, .png).
    #[arg(long)]
    input: PathBuf,
    /// Folder to write the drawn images to, as PNG under the inputs' paths below --input
    /// (`x.jpg` beside `x.png` becomes `x.jpg.png`); it may not replace an input image.
    #[arg(long)]
    output: PathBuf,
    /// Draw only detections with at least this score (0 to 1).
    #[arg(long, default_value_t = 0.5, value_parser = score_threshold)]
    confidence_threshold: f64,
    /// Draw boxes from a WIDER prediction folder (EVENT/IMAGE.txt) instead of running a model.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Also write every image's detections to this file, in COCO results format
    /// (`image_id` is the image's path under --input; boxes in its own pixels).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Class names, comma-separated (default: those stored in weights written by training,
    /// else ImageNet's for a 1000-class classifier, else `class N`).
    #[arg(long, value_delimiter = ',')]
    class_names: Vec<String>,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
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

/// A score threshold in [0, 1]; NaN or 1.5 would silently draw nothing.
fn score_threshold(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is not in [0, 1]")),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

fn main() -> Result<()> {
    candletron::utils::threads::configure();
    candletron::utils::logging::init();
    let args = Args::parse();
    let cfg = inference_config(args.config.as_deref(), args.weights.as_deref(), &args.opts)?;
    if let Some(pred) = &args.predictions {
        if !pred.is_dir() {
            bail!("--predictions {} is not a folder", pred.display());
        }
    }
    let mut images = image_files(&args.input)
        .with_context(|| format!("cannot list --input {}", args.input.display()))?;
    // An output folder inside the input folder holds earlier drawings, not inputs.
    if let (Ok(out), Ok(inp)) = (args.output.canonicalize(), args.input.canonicalize()) {
        if out != inp && out.starts_with(&inp) {
            let before = images.len();
            images.retain(|p| p.canonicalize().map_or(true, |c| !c.starts_with(&out)));
            if images.len() < before {
                println!(
                    "not drawing the {} image(s) under --output {}",
                    before - images.len(),
                    args.output.display()
                );
            }
        }
    }
    if images.is_empty() {
        bail!("no .jpg/.jpeg/.png images under {}", args.input.display());
    }
    let outputs =
        candletron::utils::fs::mirrored_outputs(&images, &args.input, &args.output, "png")
            .map_err(|e| anyhow!("--output {}: {e}", args.output.display()))?;
    if let Some(json) = &args.json {
        let inputs: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
        candletron::utils::fs::check_replaces_no_input(json, &inputs)
            .map_err(|e| anyhow!("--json: {e}"))?;
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let predictor = if args.predictions.is_none() {
        if cfg.model.weights.is_empty() {
            bail!("no weights: pass --weights, set MODEL.WEIGHTS, or draw a prediction folder with --predictions");
        }
        let p = Predictor::from_config(&cfg)?;
        Some(if args.class_names.is_empty() {
            p
        } else {
            p.with_class_names(args.class_names.clone())?
        })
    } else {
        None
    };
    let mut results = Vec::new();
    let mut failures = 0;
    for (path, out) in images.iter().zip(&outputs) {
        // The image's name in the COCO results: its path under --input.
        let rel = candletron::utils::fs::relative_to(path, &args.input);
        let decoded = match candletron::data::image_io::read_image(path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                failures += 1;
                continue;
            }
        };
        let mut img: RgbImage = decoded.to_rgb8();
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
        } else if let Some(predictor) = &predictor {
            match predictor.predict(&decoded)? {
                Predicted::Detections(dets) => {
                    let boxes: Vec<LabeledBox> = dets.iter().map(Detection::labeled_box).collect();
                    draw_labeled_boxes(&mut img, &boxes, args.confidence_threshold);
                    for (d, b) in dets.iter().zip(&boxes) {
                        results.push(serde_json::json!({
                            "image_id": rel.display().to_string(),
                            "category_id": d.class_id,
                            "bbox": b.xywh,
                            "score": d.score,
                        }));
                    }
                    let shown = boxes
                        .iter()
                        .filter(|b| b.score >= args.confidence_threshold)
                        .count();
                    summary = format!("{shown} of {} detections", dets.len());
                }
                Predicted::Probabilities(probs) => {
                    let names = predictor.class_names();
                    let mut order: Vec<usize> = (0..probs.len()).collect();
                    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
                    let px = label_px(&img);
                    for (row, &c) in order.iter().take(3).enumerate() {
                        let label = format!("{} {:.2}", names[c], probs[c]);
                        draw_label(
                            &mut img,
                            4,
                            4 + row as i32 * (1.5 * px) as i32,
                            &label,
                            px,
                            WHITE,
                            BLACK,
                        );
                    }
                    summary = format!("top-1 {}", names[order[0]]);
                }
            }
        }
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        img.save(out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("{} -> {} ({summary})", path.display(), out.display());
    }
    if let Some(json) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        candletron::utils::fs::write_atomic(json, text.as_bytes())
            .with_context(|| format!("cannot write {}", json.display()))?;
        println!("wrote {} detections to {}", results.len(), json.display());
    }
    if failures > 0 {
        eprintln!("{failures} image(s) could not be read and were skipped");
    }
    Ok(())
}
