//! Runs a detector over the test datasets and evaluates it (Detectron2's
//! `inference_on_dataset`): WIDER FACE protocol for face datasets, COCO-style AP
//! otherwise; writes predictions, PR curves and a few drawn images.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::run_bail as bail;

use super::classification::{evaluate_classification, mean_cross_entropy};
use super::coco::CocoGt;
use super::evaluator::{
    CocoEvaluator, DatasetEvaluator, Detection, ImageDetections, WiderFaceEvaluator,
};
use super::multilabel::{evaluate_multilabel, mean_binary_cross_entropy};
use super::widerface::GroundTruth;
use crate::config::Config;
use crate::data::build::build_detection_test_loader;
use crate::data::catalog::{Dataset, EvaluatorType};
use crate::data::loader::DataLoader;
use crate::distributed;
use crate::modeling::{Model, Prediction};
use crate::utils::interrupt::interrupted;
use crate::utils::visualizer::{draw_detections, image_grid, plot_confusion_matrix, PALETTE};

fn evaluator_for(dataset: &Dataset, out_dir: &Path) -> Result<Box<dyn DatasetEvaluator>> {
    Ok(match &dataset.metadata.evaluator_type {
        EvaluatorType::WiderFace { gt } => {
            let gt = if gt.is_dir() {
                GroundTruth::from_mat_dir(gt)
            } else {
                GroundTruth::from_bbx_txt(gt)
            }?;
            Box::new(WiderFaceEvaluator::new(gt, Some(out_dir.to_path_buf())))
        }
        EvaluatorType::Coco => {
            let mut gts = Vec::new();
            for r in &dataset.records {
                let image_id: u64 = r.image_id.parse().map_err(|_| {
                    Error::run(format!(
                        "COCO evaluation needs numeric image ids, got `{}`",
                        r.image_id
                    ))
                })?;
                for a in &r.annotations {
                    let [x1, y1, x2, y2] = a.bbox.map(|v| v as f64);
                    gts.push(CocoGt {
                        image_id,
                        category_id: a.category_id as u64,
                        bbox: [x1, y1, x2 - x1, y2 - y1],
                        area: (x2 - x1) * (y2 - y1),
                        iscrowd: a.ignore,
                    });
                }
            }
            Box::new(CocoEvaluator::new(gts))
        }
        EvaluatorType::Classification | EvaluatorType::MultiLabel => {
            bail!("classification datasets are evaluated by evaluate_classifier")
        }
    })
}

/// Top-1/top-5 accuracy and per-class F1 of a classifier over one test dataset; writes
/// `confusion_matrix.png` and grids of the first `vis_num` correctly (`correct.png`) and
/// wrongly (`wrong.png`) classified images into `dir`.
fn evaluate_classifier(
    model: &Model,
    name: &str,
    mut loader: DataLoader,
    dataset: &Dataset,
    dir: &Path,
    vis_num: usize,
    threshold: f64,
) -> Result<BTreeMap<String, f64>> {
    let classes = &dataset.metadata.thing_classes;
    let start = Instant::now();
    let (mut labels, mut scores, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for batch in loader.by_ref() {
        if interrupted() {
            bail!(
                "evaluation of {name} interrupted after {} images",
                labels.len()
            );
        }
        let batch = batch?;
        if batch.inputs.is_empty() {
            continue;
        }
        let predictions = model.inference(&batch.inputs)?;
        for ((input, p), s) in batch.inputs.iter().zip(predictions).zip(&batch.samples) {
            let Prediction::Logits(l) = p else {
                bail!("{name} is a classification dataset but the model gives no class scores");
            };
            if l.len() != classes.len() {
                bail!(
                    "the model has {} classes but {name} has {} ({}): set \
                     MODEL.CLASSIFIER.NUM_CLASSES {}",
                    l.len(),
                    classes.len(),
                    classes.join(", "),
                    classes.len()
                );
            }
            let Some(label) = input.label.clone() else {
                bail!("{name}: an image without a class label");
            };
            labels.push(label);
            scores.push(l);
            files.push(s.image_id.clone());
        }
    }
    let failures = loader.failures();
    for (p, e) in &failures {
        tracing::warn!("evaluation skipped {}: {e}", p.display());
    }
    // Data-parallel: every rank classified its shard; rank 0 evaluates them all.
    let failed = distributed::global_count(failures.len(), "evaluation failures")?;
    let local: Vec<_> = labels.into_iter().zip(scores).zip(files).collect();
    let gathered = distributed::gather_interleaved(local, "gather of the predictions")?;
    if !distributed::is_main_process() {
        return Ok(BTreeMap::new());
    }
    let (mut labels, mut scores, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for ((l, s), f) in gathered {
        labels.push(l);
        scores.push(s);
        files.push(f);
    }
    if labels.is_empty() {
        bail!(
            "{name}: no image could be evaluated ({failed} of {} unreadable); no metrics written",
            dataset.records.len()
        );
    }
    if dataset.metadata.evaluator_type == EvaluatorType::MultiLabel {
        let sets: Vec<Vec<usize>> = labels.iter().map(|l| l.classes()).collect();
        return evaluate_multilabel_scores(name, &sets, &scores, classes, threshold, start);
    }
    let Some(labels) = labels
        .iter()
        .map(|l| l.single())
        .collect::<Option<Vec<usize>>>()
    else {
        bail!("{name}: a single-label dataset with an image of several labels");
    };
    let m = evaluate_classification(&labels, &scores, classes.len());
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        "{name}: {} images in {secs:.1} s: top-1 {:.4}, top-5 {:.4}, macro-F1 {:.4}",
        labels.len(),
        m.top1,
        m.top5,
        m.macro_f1
    );
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let save = |img: image::RgbImage, file: &str| -> Result<()> {
        let p = dir.join(file);
        img.save(&p)
            .map_err(|e| Error::run(format!("cannot write {}: {e}", p.display())))
    };
    save(
        plot_confusion_matrix(&m.confusion, classes, &format!("{name}: confusion matrix")),
        "confusion_matrix.png",
    )?;
    if vis_num > 0 {
        // Through the records: a CIFAR image is pixels inside a batch file, not a file.
        let records: std::collections::HashMap<&str, &crate::data::catalog::DatasetRecord> =
            dataset
                .records
                .iter()
                .map(|r| (r.image_id.as_str(), r))
                .collect();
        let (mut right, mut wrong) = (Vec::new(), Vec::new());
        for ((&label, s), file) in labels.iter().zip(&scores).zip(&files) {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = s.iter().map(|v| (v - max).exp()).sum();
            let pred = s.iter().position(|&v| v == max).unwrap_or(0);
            let prob = 1.0 / sum;
            let (list, caption, color) = if pred == label {
                (
                    &mut right,
                    format!("{} {prob:.2}", classes[pred]),
                    PALETTE[2],
                )
            } else {
                let text = format!("{} -> {} {prob:.2}", classes[label], classes[pred]);
                (&mut wrong, text, PALETTE[3])
            };
            if list.len() < vis_num {
                let image = records
                    .get(file.as_str())
                    .and_then(|r| crate::data::mapper::DatasetMapper::read_image(r).ok());
                if let Some(img) = image {
                    list.push((img, caption, color));
                }
            }
        }
        for (items, file) in [(right, "correct.png"), (wrong, "wrong.png")] {
            if !items.is_empty() {
                save(image_grid(&items, 4, 128), file)?;
            }
        }
    }
    let mut map = m.to_map(classes);
    map.insert("loss".into(), mean_cross_entropy(&labels, &scores));
    Ok(map)
}

/// mAP and F1 of a multi-label classifier from its logits (sigmoid probabilities).
fn evaluate_multilabel_scores(
    name: &str,
    labels: &[Vec<usize>],
    logits: &[Vec<f32>],
    classes: &[String],
    threshold: f64,
    start: Instant,
) -> Result<BTreeMap<String, f64>> {
    let probs: Vec<Vec<f32>> = logits
        .iter()
        .map(|l| l.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect())
        .collect();
    let m = evaluate_multilabel(labels, &probs, classes.len(), threshold);
    tracing::info!(
        "{name}: {} images in {:.1} s: mAP {:.4}, micro-F1 {:.4}, macro-F1 {:.4} at {threshold}; \
         best micro-F1 {:.4} at {:.2}",
        labels.len(),
        start.elapsed().as_secs_f64(),
        m.map,
        m.micro_f1,
        m.macro_f1,
        m.best_micro_f1,
        m.best_threshold
    );
    let mut map = m.to_map(classes);
    map.insert("loss".into(), mean_binary_cross_entropy(labels, logits));
    Ok(map)
}

/// The folder of a dataset's results: its name, with the separators of a `folder:PATH`
/// name replaced so that it stays one folder.
fn folder_name(name: &str) -> String {
    name.replace(['/', '\\', ':'], "_")
}

/// Evaluates `model` on every dataset of `DATASETS.TEST`; results go under
/// `out_dir/{dataset}/` (predictions, `pr_curves.png`, `vis/`). Metrics of several
/// datasets are prefixed with the dataset name.
pub fn inference_on_datasets(
    cfg: &Config,
    model: &Model,
    out_dir: &Path,
) -> Result<BTreeMap<String, f64>> {
    let model = model.fused()?;
    let mut all = BTreeMap::new();
    for name in &cfg.datasets.test {
        let (loader, dataset) = build_detection_test_loader(cfg, name)?;
        let prefix = if cfg.datasets.test.len() > 1 {
            format!("{name}/")
        } else {
            String::new()
        };
        if matches!(
            dataset.metadata.evaluator_type,
            EvaluatorType::Classification | EvaluatorType::MultiLabel
        ) {
            let dir = out_dir.join(folder_name(name));
            let (vis, t) = (cfg.test.vis_num, cfg.test.multi_label_threshold);
            for (k, v) in evaluate_classifier(&model, name, loader, &dataset, &dir, vis, t)? {
                all.insert(format!("{prefix}{k}"), v);
            }
            continue;
        }
        let dataset_len = dataset.records.len();
        let dir = out_dir.join(folder_name(name));
        let vis_dir = dir.join("vis");
        let main = distributed::is_main_process();
        // Rank 0 evaluates: it loads the ground truth first, so a bad one fails before the
        // inference pass, not after it.
        let mut evaluator = if main {
            std::fs::create_dir_all(&vis_dir)
                .map_err(|e| Error::io("cannot create", &vis_dir, e))?;
            let mut e = evaluator_for(&dataset, &dir)?;
            e.reset();
            Some(e)
        } else {
            None
        };
        let start = Instant::now();
        let mut local_outputs = Vec::new();
        let mut images = 0usize;
        let mut drawn = 0usize;
        let wider = matches!(
            dataset.metadata.evaluator_type,
            EvaluatorType::WiderFace { .. }
        );
        let failures = {
            let mut loader = loader;
            for batch in loader.by_ref() {
                if interrupted() {
                    bail!("evaluation of {name} interrupted after {images} images");
                }
                let batch = batch?;
                if batch.samples.is_empty() {
                    continue;
                }
                let predictions = model.inference(&batch.inputs)?;
                let mut outputs = Vec::new();
                for (s, p) in batch.samples.iter().zip(predictions) {
                    let Prediction::Detections(d) = p else {
                        bail!("{} returned no detections", cfg.model.meta_architecture);
                    };
                    let detections: Vec<Detection> = d
                        .boxes
                        .iter()
                        .zip(&d.scores)
                        .zip(&d.classes)
                        .map(|((b, &score), &class)| {
                            let [x1, y1, x2, y2] = b.map(|v| v as f64);
                            Detection {
                                bbox: [x1, y1, x2 - x1, y2 - y1],
                                score: score as f64,
                                class: class as u64,
                            }
                        })
                        .collect();
                    if main && drawn < cfg.test.vis_num {
                        if let Ok(img) = crate::data::image_io::read_image(&s.file_name) {
                            let mut img = img.to_rgb8();
                            let boxes: Vec<[f64; 5]> = detections
                                .iter()
                                .map(|d| [d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3], d.score])
                                .collect();
                            draw_detections(&mut img, &boxes, cfg.test.vis_threshold, PALETTE[2]);
                            let p = vis_dir.join(format!("{}.png", s.image_id.replace('/', "_")));
                            img.save(&p).map_err(|e| {
                                Error::run(format!("cannot write {}: {e}", p.display()))
                            })?;
                            drawn += 1;
                        }
                    }
                    outputs.push(ImageDetections {
                        file_name: if wider {
                            format!("{}.jpg", s.image_id)
                        } else {
                            s.file_name.display().to_string()
                        },
                        image_id: s.image_id.parse().unwrap_or(0),
                        detections,
                    });
                }
                images += outputs.len();
                local_outputs.extend(outputs);
            }
            loader.failures()
        };
        for (p, e) in &failures {
            tracing::warn!("evaluation skipped {}: {e}", p.display());
        }
        // Data-parallel: every rank ran its shard; rank 0 evaluates them all.
        let failed = distributed::global_count(failures.len(), "evaluation failures")?;
        let outputs = distributed::gather_interleaved(local_outputs, "gather of the detections")?;
        let Some(evaluator) = evaluator.as_mut() else {
            continue;
        };
        let images = outputs.len();
        if images == 0 {
            bail!(
                "{name}: no image could be evaluated ({failed} of {dataset_len} unreadable); no \
                 metrics written"
            );
        }
        evaluator.process(&outputs);
        let secs = start.elapsed().as_secs_f64();
        tracing::info!(
            "{name}: inference on {images} images in {secs:.1} s ({:.1} ms/image)",
            1000.0 * secs / images.max(1) as f64
        );
        let metrics = evaluator.evaluate()?;
        for (k, v) in metrics {
            all.insert(format!("{prefix}{k}"), v);
        }
    }
    // Every rank gets rank 0's metrics: what watches them (the LR plateau, early
    // stopping) must decide alike everywhere.
    if distributed::in_group() {
        let bytes = serde_json::to_vec(&all).map_err(|e| Error::run(e.to_string()))?;
        let bytes = distributed::broadcast_bytes(&bytes, 0, "broadcast of the metrics")?;
        all = serde_json::from_slice(&bytes).map_err(|e| Error::run(e.to_string()))?;
    }
    Ok(all)
}
