//! COCO-style box AP, following pycocotools' `COCOeval` for `iouType="bbox"`:
//! IoU thresholds 0.50:0.05:0.95, 101 recall points, at most 100 detections per image
//! and category, area ranges small (< 32^2) / medium / large (> 96^2), crowd regions
//! matched by intersection over the detection's area and never counted as misses.
//! Values are in [0, 1]; a metric with no ground truth to measure is -1, as pycocotools.

use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone, PartialEq)]
pub struct CocoGt {
    pub image_id: u64,
    pub category_id: u64,
    /// x, y, w, h.
    pub bbox: [f64; 4],
    /// The annotation's area (COCO's is the segment's); `w * h` when unknown.
    pub area: f64,
    pub iscrowd: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CocoDet {
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CocoMetrics {
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
    pub ap_small: f64,
    pub ap_medium: f64,
    pub ap_large: f64,
    /// AP (0.50:0.95) per category with ground truth.
    pub per_category: BTreeMap<u64, f64>,
}

impl CocoMetrics {
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("AP".to_string(), self.ap),
            ("AP50".to_string(), self.ap50),
            ("AP75".to_string(), self.ap75),
            ("APs".to_string(), self.ap_small),
            ("APm".to_string(), self.ap_medium),
            ("APl".to_string(), self.ap_large),
        ])
    }
}

const AREA_RANGES: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
const MAX_DETS: usize = 100;

/// numpy's `linspace(.5, .95, 10)`, bit for bit (thresholds sit exactly on IoU ties).
fn iou_thresholds() -> Vec<f64> {
    let step = (0.95 - 0.5) / 9.0;
    let mut t: Vec<f64> = (0..10).map(|i| i as f64 * step + 0.5).collect();
    t[9] = 0.95;
    t
}

fn rec_thresholds() -> Vec<f64> {
    let step = 1.0 / 100.0;
    let mut r: Vec<f64> = (0..101).map(|i| i as f64 * step).collect();
    r[100] = 1.0;
    r
}

/// pycocotools' box IoU; for a crowd ground truth the union is the detection's area.
fn iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let iw = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    let ih = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let inter = iw * ih;
    let union = if crowd {
        d[2] * d[3]
    } else {
        d[2] * d[3] + g[2] * g[3] - inter
    };
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Per (image, category, area range): detections' scores, match flags and ignore flags
/// per IoU threshold, and the number of non-ignored ground truths.
struct ImageEval {
    scores: Vec<f64>,
    /// [threshold][detection]
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    num_gt: usize,
}

fn evaluate_image(
    gts: &[&CocoGt],
    dets: &[&CocoDet],
    range: (f64, f64),
    thresholds: &[f64],
) -> Option<ImageEval> {
    if gts.is_empty() && dets.is_empty() {
        return None;
    }
    let g_ignore: Vec<bool> = gts
        .iter()
        .map(|g| g.iscrowd || g.area < range.0 || g.area > range.1)
        .collect();
    // Non-ignored ground truth first (stable), as pycocotools sorts them.
    let mut g_order: Vec<usize> = (0..gts.len()).collect();
    g_order.sort_by_key(|&i| g_ignore[i]);
    let mut d_order: Vec<usize> = (0..dets.len()).collect();
    d_order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    d_order.truncate(MAX_DETS);
    let ious: Vec<Vec<f64>> = d_order
        .iter()
        .map(|&di| {
            g_order
                .iter()
                .map(|&gi| iou(&dets[di].bbox, &gts[gi].bbox, gts[gi].iscrowd))
                .collect()
        })
        .collect();
    let t_n = thresholds.len();
    let mut matched = vec![vec![false; d_order.len()]; t_n];
    let mut ignored = vec![vec![false; d_order.len()]; t_n];
    for (ti, &t) in thresholds.iter().enumerate() {
        let mut g_taken = vec![false; g_order.len()];
        for (dk, _) in d_order.iter().enumerate() {
            let mut best_iou = t.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (gk, &gi) in g_order.iter().enumerate() {
                if g_taken[gk] && !gts[gi].iscrowd {
                    continue;
                }
                // Once matched to a real face, stop at the first ignored one.
                if let Some(mk) = m {
                    if !g_ignore[g_order[mk]] && g_ignore[gi] {
                        break;
                    }
                }
                if ious[dk][gk] < best_iou {
                    continue;
                }
                best_iou = ious[dk][gk];
                m = Some(gk);
            }
            if let Some(mk) = m {
                ignored[ti][dk] = g_ignore[g_order[mk]];
                matched[ti][dk] = true;
                g_taken[mk] = true;
            }
        }
        // Unmatched detections outside the area range are ignored.
        for (dk, &di) in d_order.iter().enumerate() {
            let a = dets[di].bbox[2] * dets[di].bbox[3];
            if !matched[ti][dk] && (a < range.0 || a > range.1) {
                ignored[ti][dk] = true;
            }
        }
    }
    Some(ImageEval {
        scores: d_order.iter().map(|&di| dets[di].score).collect(),
        matched,
        ignored,
        num_gt: g_ignore.iter().filter(|i| !**i).count(),
    })
}

/// Precision at the 101 recall points for one threshold, or `None` without ground truth.
fn precision_curve(
    evals: &[&ImageEval],
    ti: usize,
    max_det: usize,
    rec_thrs: &[f64],
) -> Option<Vec<f64>> {
    let num_gt: usize = evals.iter().map(|e| e.num_gt).sum();
    if num_gt == 0 {
        return None;
    }
    let mut items: Vec<(f64, bool, bool)> = Vec::new();
    for e in evals {
        for k in 0..e.scores.len().min(max_det) {
            items.push((e.scores[k], e.matched[ti][k], e.ignored[ti][k]));
        }
    }
    // Stable sort, as numpy's mergesort.
    items.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut rc = Vec::new();
    let mut pr = Vec::new();
    for (_, m, ig) in items {
        if ig {
            // Ignored detections still take a place in the cumulative arrays.
        } else if m {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        rc.push(tp / num_gt as f64);
        pr.push(tp / (fp + tp + f64::EPSILON));
    }
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    Some(
        rec_thrs
            .iter()
            .map(|&r| {
                let idx = rc.partition_point(|&x| x < r);
                pr.get(idx).copied().unwrap_or(0.0)
            })
            .collect(),
    )
}

/// Box AP of `dets` against `gts`.
pub fn evaluate_coco(gts: &[CocoGt], dets: &[CocoDet]) -> CocoMetrics {
    let thresholds = iou_thresholds();
    let rec_thrs = rec_thresholds();
    let mut by_key_gt: HashMap<(u64, u64), Vec<&CocoGt>> = HashMap::new();
    let mut by_key_dt: HashMap<(u64, u64), Vec<&CocoDet>> = HashMap::new();
    for g in gts {
        by_key_gt
            .entry((g.image_id, g.category_id))
            .or_default()
            .push(g);
    }
    for d in dets {
        by_key_dt
            .entry((d.image_id, d.category_id))
            .or_default()
            .push(d);
    }
    let categories: BTreeSet<u64> = gts
        .iter()
        .map(|g| g.category_id)
        .chain(dets.iter().map(|d| d.category_id))
        .collect();
    let images: BTreeSet<u64> = gts
        .iter()
        .map(|g| g.image_id)
        .chain(dets.iter().map(|d| d.image_id))
        .collect();
    // precision[area][category] -> per threshold curve (None = no ground truth).
    let mut curves: Vec<BTreeMap<u64, Vec<Option<Vec<f64>>>>> =
        vec![BTreeMap::new(); AREA_RANGES.len()];
    for (ai, &range) in AREA_RANGES.iter().enumerate() {
        for &c in &categories {
            let evals: Vec<ImageEval> = images
                .iter()
                .filter_map(|&i| {
                    let g = by_key_gt.get(&(i, c)).map(Vec::as_slice).unwrap_or(&[]);
                    let d = by_key_dt.get(&(i, c)).map(Vec::as_slice).unwrap_or(&[]);
                    evaluate_image(g, d, range, &thresholds)
                })
                .collect();
            let refs: Vec<&ImageEval> = evals.iter().collect();
            let per_t = (0..thresholds.len())
                .map(|ti| precision_curve(&refs, ti, MAX_DETS, &rec_thrs))
                .collect();
            curves[ai].insert(c, per_t);
        }
    }
    // Mean over the defined precision values, -1 if none (pycocotools' summarize).
    let summarize = |ai: usize, t_sel: &dyn Fn(usize) -> bool, cats: &dyn Fn(u64) -> bool| -> f64 {
        let mut sum = 0.0;
        let mut n = 0usize;
        for (&c, per_t) in &curves[ai] {
            if !cats(c) {
                continue;
            }
            for (ti, curve) in per_t.iter().enumerate() {
                if let (true, Some(p)) = (t_sel(ti), curve) {
                    sum += p.iter().sum::<f64>();
                    n += p.len();
                }
            }
        }
        if n == 0 {
            -1.0
        } else {
            sum / n as f64
        }
    };
    let all = |_: usize| true;
    let any_cat = |_: u64| true;
    let at = |target: f64| move |ti: usize| (iou_thresholds()[ti] - target).abs() < 1e-9;
    let per_category = categories
        .iter()
        .filter(|c| gts.iter().any(|g| g.category_id == **c && !g.iscrowd))
        .map(|&c| (c, summarize(0, &all, &|x| x == c)))
        .collect();
    CocoMetrics {
        ap: summarize(0, &all, &any_cat),
        ap50: summarize(0, &at(0.5), &any_cat),
        ap75: summarize(0, &at(0.75), &any_cat),
        ap_small: summarize(1, &all, &any_cat),
        ap_medium: summarize(2, &all, &any_cat),
        ap_large: summarize(3, &all, &any_cat),
        per_category,
    }
}
