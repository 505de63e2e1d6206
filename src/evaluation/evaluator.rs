//! The interface training uses to evaluate on a schedule, as Detectron2's
//! `DatasetEvaluator`: `reset`, then `process` batches of outputs, then `evaluate` to
//! named metrics.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::coco::{evaluate_coco, CocoDet, CocoGt};
use super::predictions::write_prediction_file;
use super::widerface::{evaluate, GroundTruth, WiderResult, SETTINGS};
use crate::utils::visualizer::{plot_pr_curves, Series};

/// One detection in original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    /// x, y, w, h.
    pub bbox: [f64; 4],
    pub score: f64,
    pub class: u64,
}

/// A model's output for one image, with the keys evaluators need to find its ground truth.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageDetections {
    /// Relative path as the dataset names it (`EVENT/NAME.jpg` for WIDER FACE).
    pub file_name: String,
    pub image_id: u64,
    pub detections: Vec<Detection>,
}

pub trait DatasetEvaluator {
    fn reset(&mut self);
    fn process(&mut self, outputs: &[ImageDetections]);
    /// Named metrics, e.g. `easy/medium/hard` or `AP/AP50/...`.
    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>>;
}

fn split_file_name(file_name: &str) -> (String, String) {
    let mut parts = file_name.rsplitn(2, '/');
    let base = parts.next().unwrap_or(file_name);
    let event = parts
        .next()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .unwrap_or("");
    let stem = base.rsplit_once('.').map(|(s, _)| s).unwrap_or(base);
    (event.to_string(), stem.to_string())
}

/// The WIDER FACE protocol; optionally writes the submission folder and the PR curves.
pub struct WiderFaceEvaluator {
    gt: GroundTruth,
    output_dir: Option<PathBuf>,
    predictions: HashMap<(String, String), Vec<[f64; 5]>>,
    last: Option<WiderResult>,
}

impl WiderFaceEvaluator {
    /// `output_dir`: where `predictions/EVENT/NAME.txt` and `pr_curves.png` go.
    pub fn new(gt: GroundTruth, output_dir: Option<PathBuf>) -> Self {
        Self {
            gt,
            output_dir,
            predictions: HashMap::new(),
            last: None,
        }
    }

    /// The full result (curves, warnings) of the last `evaluate`.
    pub fn last_result(&self) -> Option<&WiderResult> {
        self.last.as_ref()
    }
}

impl DatasetEvaluator for WiderFaceEvaluator {
    fn reset(&mut self) {
        self.predictions.clear();
        self.last = None;
    }

    fn process(&mut self, outputs: &[ImageDetections]) {
        for out in outputs {
            let dets = out
                .detections
                .iter()
                .map(|d| [d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3], d.score])
                .collect();
            self.predictions
                .insert(split_file_name(&out.file_name), dets);
        }
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let result = evaluate(&self.gt, &self.predictions);
        if let Some(dir) = &self.output_dir {
            let pred_dir = dir.join("predictions");
            for ((event, name), dets) in &self.predictions {
                write_prediction_file(&pred_dir, event, name, dets)
                    .map_err(|e| Error::io("cannot write predictions", &pred_dir, e))?;
            }
            let series: Vec<Series> = SETTINGS
                .iter()
                .enumerate()
                .map(|(s, n)| Series {
                    label: format!("{n:<6} AP {:.3}", result.curves[s].ap),
                    recall: &result.curves[s].recall,
                    precision: &result.curves[s].precision,
                })
                .collect();
            let png = dir.join("pr_curves.png");
            plot_pr_curves(&series, "WIDER FACE precision-recall")
                .save(&png)
                .map_err(|e| Error::run(format!("cannot write {}: {e}", png.display())))?;
        }
        let metrics = SETTINGS
            .iter()
            .enumerate()
            .map(|(s, n)| (n.to_string(), result.curves[s].ap))
            .collect();
        self.last = Some(result);
        Ok(metrics)
    }
}

/// COCO-style box AP against in-memory ground truth.
pub struct CocoEvaluator {
    gt: Vec<CocoGt>,
    dets: Vec<CocoDet>,
}

impl CocoEvaluator {
    pub fn new(gt: Vec<CocoGt>) -> Self {
        Self {
            gt,
            dets: Vec::new(),
        }
    }
}

impl DatasetEvaluator for CocoEvaluator {
    fn reset(&mut self) {
        self.dets.clear();
    }

    fn process(&mut self, outputs: &[ImageDetections]) {
        for out in outputs {
            self.dets.extend(out.detections.iter().map(|d| CocoDet {
                image_id: out.image_id,
                category_id: d.class,
                bbox: d.bbox,
                score: d.score,
            }));
        }
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        Ok(evaluate_coco(&self.gt, &self.dets).to_map())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluation::widerface::GtImage;

    #[test]
    fn wider_evaluator_round_trip_through_submission_files() {
        let gt = GroundTruth {
            images: vec![GtImage {
                event: "0--Parade".into(),
                name: "a".into(),
                boxes: vec![[0., 0., 10., 10.]],
                keep: [vec![0], vec![0], vec![0]],
            }],
        };
        let dir =
            std::env::temp_dir().join(format!("candletron-wider-eval-{}", std::process::id()));
        let mut ev = WiderFaceEvaluator::new(gt.clone(), Some(dir.clone()));
        let d = |x: f64, s: f64| Detection {
            bbox: [x, 0., 10., 10.],
            score: s,
            class: 0,
        };
        ev.process(&[ImageDetections {
            file_name: "0--Parade/a.jpg".into(),
            image_id: 0,
            detections: vec![d(0., 0.9), d(50., 0.4)],
        }]);
        let m = ev.evaluate().unwrap();
        assert!((m["easy"] - 1.0).abs() < 1e-12);
        let (read, missing) =
            crate::evaluation::predictions::read_predictions(&dir.join("predictions"), &gt)
                .unwrap();
        assert!(missing.is_empty());
        assert_eq!(evaluate(&gt, &read).ap(), ev.last_result().unwrap().ap());
        assert!(dir.join("pr_curves.png").is_file());
        ev.reset();
        assert_eq!(ev.evaluate().unwrap()["easy"], 0.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
