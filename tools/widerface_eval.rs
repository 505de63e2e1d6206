//! Evaluate a WIDER FACE prediction folder with the official protocol.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};
use clap::Parser;

use candletron::evaluation::predictions::read_predictions;
use candletron::evaluation::widerface::{evaluate, GroundTruth, SETTINGS};
use candletron::utils::visualizer::{plot_pr_curves, Series};

#[derive(Parser)]
#[command(about = "WIDER FACE easy/medium/hard AP of a prediction folder (official protocol)")]
struct Args {
    /// Predictions in the submission layout: DIR/EVENT/IMAGE.txt.
    #[arg(long)]
    pred: PathBuf,
    /// Ground truth: a folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat,
    /// or a `*_bbx_gt.txt` file (keep lists from the documented size/attribute rule).
    #[arg(long)]
    gt: PathBuf,
    /// Print `{"easy": AP, "medium": AP, "hard": AP}` as the last line.
    #[arg(long)]
    json: bool,
    /// Write the three precision/recall curves to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn main() -> Result<()> {
    candletron::utils::logging::init();
    let args = Args::parse();
    let start = Instant::now();
    let gt = if args.gt.is_dir() {
        GroundTruth::from_mat_dir(&args.gt).map_err(|e| anyhow!(e))?
    } else {
        GroundTruth::from_bbx_txt(&args.gt).map_err(|e| anyhow!(e))?
    };
    let (preds, missing) = read_predictions(&args.pred, &gt).map_err(|e| anyhow!(e))?;
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        eprintln!(
            "warning: {} of {} images have no prediction file and count as no detections (e.g. {})",
            missing.len(),
            gt.images.len(),
            shown.join(", ")
        );
    }
    let result = evaluate(&gt, &preds);
    for w in &result.warnings {
        eprintln!("warning: {w}");
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("| setting | faces | AP |");
    println!("|---|---|---|");
    for (s, name) in SETTINGS.iter().enumerate() {
        println!(
            "| {name} | {} | {:.4} |",
            gt.num_faces(s),
            result.curves[s].ap
        );
    }
    println!("evaluated {} images in {elapsed:.2} s", gt.images.len());
    if let Some(path) = &args.plot {
        let series: Vec<Series> = SETTINGS
            .iter()
            .enumerate()
            .map(|(s, name)| Series {
                label: format!("{name:<6} AP {:.3}", result.curves[s].ap),
                recall: &result.curves[s].recall,
                precision: &result.curves[s].precision,
            })
            .collect();
        let img = plot_pr_curves(&series, "WIDER FACE precision-recall");
        img.save(path)
            .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if args.json {
        println!("{}", result.to_json());
    }
    Ok(())
}
