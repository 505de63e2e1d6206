//! The official WIDER FACE evaluation protocol (easy / medium / hard AP).
//!
//! What the official code does, and so what this does:
//! - detections of each image are taken in descending score order;
//! - scores are min-max normalised once over the whole prediction set;
//! - IoU uses the +1 pixel convention (`x2 = x + w`, areas `(x2 - x1 + 1) * (y2 - y1 + 1)`);
//! - each detection is matched to the face of highest IoU among *all* faces of the image;
//!   at IoU >= 0.5 a face outside the setting's keep list makes the detection ignored,
//!   otherwise that face counts as recalled (once);
//! - 1000 thresholds `1 - (t + 1) / 1000`; per image, the number of non-ignored
//!   detections and recalled faces at or above each threshold are summed over images;
//! - precision = recalled / proposals, recall = recalled / faces in the keep lists
//!   (faces of images without detections count too); AP is VOC's area under the
//!   precision envelope.

use std::collections::HashMap;
use std::path::Path;

use crate::data::datasets::record::DataError;

use super::matfile::{read_mat_file, MatValue};
use crate::data::datasets::widerface::{FaceAnnotation, WiderRecord};

pub const SETTINGS: [&str; 3] = ["easy", "medium", "hard"];
const THRESH_NUM: usize = 1000;
const IOU_THRESH: f64 = 0.5;

/// Which settings (easy, medium, hard) count a face, for annotation files that have no
/// official keep lists. The official lists come from how hard faces were for a reference
/// detector; this rule approximates them from size (box height) and attributes:
/// - hard: every valid face (`invalid == 0`, w, h > 0) at least 10 px high;
/// - medium: hard faces at least 20 px high without heavy blur or heavy occlusion;
/// - easy: medium faces at least 50 px high, unoccluded, in a typical pose.
///
/// A detection on a face outside a setting's list is ignored in that setting, as with
/// the official lists.
pub fn keep_settings(f: &FaceAnnotation) -> [bool; 3] {
    let h = f.bbox[3];
    let hard = f.is_valid() && h >= 10.0;
    let medium = hard && h >= 20.0 && f.blur < 2 && f.occlusion < 2;
    let easy = medium && h >= 50.0 && f.occlusion == 0 && f.pose == 0;
    [easy, medium, hard]
}

/// One image's faces (x, y, w, h) and, per setting, the 0-based indices that count.
#[derive(Debug, Clone, PartialEq)]
pub struct GtImage {
    pub event: String,
    pub name: String,
    pub boxes: Vec<[f64; 4]>,
    pub keep: [Vec<usize>; 3],
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroundTruth {
    pub images: Vec<GtImage>,
}

fn cell_at<'a>(v: &'a MatValue, i: usize, what: &str) -> Result<&'a MatValue, DataError> {
    v.as_cell()?
        .get(i)
        .ok_or_else(|| DataError::from(format!("{what}: no entry {i}")))
}

fn var<'a>(
    vars: &'a [(String, MatValue)],
    name: &str,
    file: &Path,
) -> Result<&'a MatValue, DataError> {
    vars.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or_else(|| DataError::from(format!("{}: no variable `{name}`", file.display())))
}

impl GroundTruth {
    /// Reads `wider_face_val.mat` and `wider_{easy,medium,hard}_val.mat` from `dir`.
    pub fn from_mat_dir(dir: &Path) -> Result<Self, DataError> {
        let main = dir.join("wider_face_val.mat");
        let vars = read_mat_file(&main)?;
        let events = var(&vars, "event_list", &main)?.as_cell()?;
        let files = var(&vars, "file_list", &main)?;
        let boxes = var(&vars, "face_bbx_list", &main)?;
        let mut keeps = Vec::new();
        for setting in SETTINGS {
            let path = dir.join(format!("wider_{setting}_val.mat"));
            let v = read_mat_file(&path)?;
            let gt_list = var(&v, "gt_list", &path)?.clone();
            keeps.push((path, gt_list));
        }
        let ctx = |e: DataError| format!("{}: {e}", main.display());
        let mut images = Vec::new();
        for (ei, event) in events.iter().enumerate() {
            let event = event.as_text().map_err(ctx)?.to_string();
            let names = cell_at(files, ei, "file_list")
                .map_err(ctx)?
                .as_cell()
                .map_err(ctx)?;
            let event_boxes = cell_at(boxes, ei, "face_bbx_list").map_err(ctx)?;
            for (ii, name) in names.iter().enumerate() {
                let rows = cell_at(event_boxes, ii, "face_bbx_list")
                    .map_err(ctx)?
                    .rows()
                    .map_err(ctx)?;
                let boxes: Vec<[f64; 4]> = rows
                    .iter()
                    .map(|r| match r.as_slice() {
                        [x, y, w, h, ..] => Ok([*x, *y, *w, *h]),
                        _ => Err(format!(
                            "{event}/{}: face box with {} columns",
                            name.as_text().unwrap_or("?"),
                            r.len()
                        )
                        .into()),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(ctx)?;
                let mut keep: [Vec<usize>; 3] = Default::default();
                for (s, (path, gt_list)) in keeps.iter().enumerate() {
                    let e = |e: DataError| format!("{}: {e}", path.display());
                    let ids = cell_at(cell_at(gt_list, ei, "gt_list").map_err(e)?, ii, "gt_list")
                        .map_err(e)?;
                    keep[s] = ids
                        .values()
                        .map_err(e)?
                        .iter()
                        .map(|&v| {
                            let i = v as usize;
                            if i == 0 || i > boxes.len() {
                                Err(DataError::new(format!(
                                    "{}: keep index {v} outside 1..={} for {event}",
                                    path.display(),
                                    boxes.len()
                                )))
                            } else {
                                Ok(i - 1)
                            }
                        })
                        .collect::<Result<_, _>>()?;
                }
                images.push(GtImage {
                    event: event.clone(),
                    name: name.as_text().map_err(ctx)?.to_string(),
                    boxes,
                    keep,
                });
            }
        }
        Ok(Self { images })
    }

    /// Ground truth from an annotation file in the `*_bbx_gt.txt` format (e.g. the
    /// synthetic set), with keep lists from [`keep_settings`].
    pub fn from_bbx_txt(path: &Path) -> Result<Self, DataError> {
        let records = crate::data::datasets::widerface::read_bbx_gt(path)?;
        Ok(Self::from_records(&records))
    }

    pub fn from_records(records: &[WiderRecord]) -> Self {
        let images = records
            .iter()
            .map(|r| {
                let mut keep: [Vec<usize>; 3] = Default::default();
                for (i, f) in r.faces.iter().enumerate() {
                    for (s, k) in keep_settings(f).iter().enumerate() {
                        if *k {
                            keep[s].push(i);
                        }
                    }
                }
                GtImage {
                    event: r.event().to_string(),
                    name: r.stem().to_string(),
                    boxes: r.faces.iter().map(|f| f.bbox).collect(),
                    keep,
                }
            })
            .collect();
        Self { images }
    }

    pub fn num_faces(&self, setting: usize) -> usize {
        self.images.iter().map(|i| i.keep[setting].len()).sum()
    }
}

/// A precision/recall curve over the 1000 thresholds and its AP.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub ap: f64,
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WiderResult {
    /// easy, medium, hard.
    pub curves: [Curve; 3],
    /// Things the caller should tell the user (e.g. all scores equal).
    pub warnings: Vec<String>,
}

impl WiderResult {
    pub fn ap(&self) -> [f64; 3] {
        [self.curves[0].ap, self.curves[1].ap, self.curves[2].ap]
    }

    pub fn to_json(&self) -> String {
        format!(
            "{{\"easy\": {}, \"medium\": {}, \"hard\": {}}}",
            self.curves[0].ap, self.curves[1].ap, self.curves[2].ap
        )
    }
}

/// IoU with the +1 convention; both boxes are (x1, y1, x2, y2) with x2 = x + w.
fn iou_plus_one(p: &[f64; 4], g: &[f64; 4]) -> f64 {
    let g_area = (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0);
    let iw = p[2].min(g[2]) - p[0].max(g[0]) + 1.0;
    if iw <= 0.0 {
        return 0.0;
    }
    let ih = p[3].min(g[3]) - p[1].max(g[1]) + 1.0;
    if ih <= 0.0 {
        return 0.0;
    }
    let ua = (p[2] - p[0] + 1.0) * (p[3] - p[1] + 1.0) + g_area - iw * ih;
    iw * ih / ua
}

/// VOC AP: area under the monotone precision envelope.
pub fn voc_ap(recall: &[f64], precision: &[f64]) -> f64 {
    let mut mrec = Vec::with_capacity(recall.len() + 2);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(precision.len() + 2);
    mpre.push(0.0);
    mpre.extend_from_slice(precision);
    mpre.push(0.0);
    for i in (1..mpre.len()).rev() {
        mpre[i - 1] = mpre[i - 1].max(mpre[i]);
    }
    let mut ap = 0.0;
    for i in 0..mrec.len() - 1 {
        if mrec[i + 1] != mrec[i] {
            ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1];
        }
    }
    ap
}

/// Evaluates `predictions` (per image, `x y w h score`, any order) against `gt`;
/// images without an entry have no detections.
pub fn evaluate(
    gt: &GroundTruth,
    predictions: &HashMap<(String, String), Vec<[f64; 5]>>,
) -> WiderResult {
    let mut warnings = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for img in &gt.images {
        if let Some(dets) = predictions.get(&(img.event.clone(), img.name.clone())) {
            for d in dets {
                lo = lo.min(d[4]);
                hi = hi.max(d[4]);
            }
        }
    }
    let range = hi - lo;
    let normalize = |s: f64| -> f64 {
        if range > 0.0 {
            (s - lo) / range
        } else {
            1.0
        }
    };
    if lo.is_finite() && range <= 0.0 {
        warnings.push(format!(
            "every detection has the same score ({lo}); min-max normalisation is undefined (the official code \
             divides by zero and gives NaN), so all scores were set to 1 and the curve has a single point"
        ));
    }

    // Summed over images: (non-ignored proposals, recalled faces) per threshold and setting.
    let mut pr = vec![[[0f64; 2]; THRESH_NUM]; 3];
    let mut faces = [0usize; 3];
    let mut recall = Vec::new();
    for img in &gt.images {
        for (count, keep) in faces.iter_mut().zip(&img.keep) {
            *count += keep.len();
        }
        let Some(dets) = predictions.get(&(img.event.clone(), img.name.clone())) else {
            continue;
        };
        if dets.is_empty() || img.boxes.is_empty() {
            continue;
        }
        let mut dets: Vec<[f64; 5]> = dets.clone();
        // Stable: equal scores keep the file's order, as the official code reads them.
        dets.sort_by(|a, b| b[4].total_cmp(&a[4]));
        let gts: Vec<[f64; 4]> = img
            .boxes
            .iter()
            .map(|b| [b[0], b[1], b[0] + b[2], b[1] + b[3]])
            .collect();
        // Best face per detection; the first wins ties, as numpy's argmax.
        let best: Vec<(f64, usize)> = dets
            .iter()
            .map(|d| {
                let p = [d[0], d[1], d[0] + d[2], d[1] + d[3]];
                let mut best = (f64::NEG_INFINITY, 0);
                for (gi, g) in gts.iter().enumerate() {
                    let o = iou_plus_one(&p, g);
                    if o > best.0 {
                        best = (o, gi);
                    }
                }
                best
            })
            .collect();
        let scores: Vec<f64> = dets.iter().map(|d| normalize(d[4])).collect();
        for (keep, pr_s) in img.keep.iter().zip(pr.iter_mut()) {
            let mut kept = vec![false; gts.len()];
            for &k in keep {
                kept[k] = true;
            }
            // recall state per face: 0 untouched, 1 recalled, -1 matched while not kept.
            recall.clear();
            recall.resize(gts.len(), 0i8);
            let mut recalled = 0usize;
            let mut proposals = 0usize;
            // Cumulative counts after each detection.
            let mut cum_recall = Vec::with_capacity(dets.len());
            let mut cum_prop = Vec::with_capacity(dets.len());
            for &(overlap, gi) in &best {
                let mut is_proposal = true;
                if overlap >= IOU_THRESH {
                    if !kept[gi] {
                        recall[gi] = -1;
                        is_proposal = false;
                    } else if recall[gi] == 0 {
                        recall[gi] = 1;
                        recalled += 1;
                    }
                }
                proposals += usize::from(is_proposal);
                cum_recall.push(recalled);
                cum_prop.push(proposals);
            }
            // Thresholds decrease with t, so the last index above threshold only moves forward.
            let mut above = 0usize;
            for (t, acc) in pr_s.iter_mut().enumerate() {
                let thresh = 1.0 - (t + 1) as f64 / THRESH_NUM as f64;
                while above < scores.len() && scores[above] >= thresh {
                    above += 1;
                }
                if above > 0 {
                    acc[0] += cum_prop[above - 1] as f64;
                    acc[1] += cum_recall[above - 1] as f64;
                }
            }
        }
    }
    let curves = [0, 1, 2].map(|s| {
        let precision: Vec<f64> = pr[s]
            .iter()
            .map(|p| if p[0] > 0.0 { p[1] / p[0] } else { 0.0 })
            .collect();
        let recall: Vec<f64> = pr[s]
            .iter()
            .map(|p| {
                if faces[s] > 0 {
                    p[1] / faces[s] as f64
                } else {
                    0.0
                }
            })
            .collect();
        Curve {
            ap: voc_ap(&recall, &precision),
            precision,
            recall,
        }
    });
    for (s, name) in SETTINGS.iter().enumerate() {
        if faces[s] == 0 {
            warnings.push(format!("the {name} setting has no faces; its AP is 0"));
        }
    }
    WiderResult { curves, warnings }
}
