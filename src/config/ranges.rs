//! The allowed range of every numeric config value, checked whenever a file or override
//! is merged: a negative learning rate, a momentum of -5 or a 0-pixel training size stops
//! the load with the key's file:line (or override pair) and the range, instead of training
//! to a meaningless result. Non-finite numbers are never allowed. A test keeps the table
//! complete: every numeric key of the tree has an entry.

use std::fmt;

use super::error::ConfigError;
use super::Config;

/// A closed or open interval, optionally with 0 as an extra allowed value (a key whose 0
/// means "off").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    lo: f64,
    lo_open: bool,
    hi: f64,
    hi_open: bool,
    zero_means_off: bool,
}

const INF: f64 = f64::INFINITY;

const fn range(lo: f64, lo_open: bool, hi: f64, hi_open: bool) -> Range {
    Range {
        lo,
        lo_open,
        hi,
        hi_open,
        zero_means_off: false,
    }
}

/// `>= lo`.
const fn ge(lo: f64) -> Range {
    range(lo, false, INF, true)
}
/// `> lo`.
const fn gt(lo: f64) -> Range {
    range(lo, true, INF, true)
}
/// `[lo, hi]`.
const fn closed(lo: f64, hi: f64) -> Range {
    range(lo, false, hi, false)
}
/// `[lo, hi)`.
const fn closed_open(lo: f64, hi: f64) -> Range {
    range(lo, false, hi, true)
}
/// `(lo, hi]`.
const fn open_closed(lo: f64, hi: f64) -> Range {
    range(lo, true, hi, false)
}
/// Any finite number.
const ANY: Range = range(-INF, true, INF, true);

impl Range {
    const fn or_zero(mut self) -> Self {
        self.zero_means_off = true;
        self
    }

    pub fn contains(&self, v: f64) -> bool {
        if !v.is_finite() {
            return false;
        }
        if self.zero_means_off && v == 0.0 {
            return true;
        }
        let above = if self.lo_open {
            v > self.lo
        } else {
            v >= self.lo
        };
        let below = if self.hi_open {
            v < self.hi
        } else {
            v <= self.hi
        };
        above && below
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match (self.lo.is_finite(), self.hi.is_finite()) {
            (false, false) => "any finite number".to_string(),
            (true, false) => format!("{} {}", if self.lo_open { ">" } else { ">=" }, self.lo),
            (false, true) => format!("{} {}", if self.hi_open { "<" } else { "<=" }, self.hi),
            (true, true) => format!(
                "{}{}, {}{}",
                if self.lo_open { "(" } else { "[" },
                self.lo,
                self.hi,
                if self.hi_open { ")" } else { "]" }
            ),
        };
        if self.zero_means_off {
            write!(f, "0 (off) or {text}")
        } else {
            f.write_str(&text)
        }
    }
}

/// Every numeric key and its range. Sizes of images and features start at 16 pixels: less
/// trains and tests on nothing.
pub const RANGES: &[(&str, Range)] = &[
    ("MODEL.PIXEL_MEAN", ANY),
    ("MODEL.PIXEL_STD", gt(0.0)),
    ("MODEL.BACKBONE.FREEZE_AT", closed(0.0, 19.0)),
    ("MODEL.MOBILENET.WIDTH_MULT", open_closed(0.0, 4.0)),
    ("MODEL.MOBILENET.OUTPUT_STRIDE", closed(8.0, 32.0)),
    ("MODEL.CLASSIFIER.NUM_CLASSES", ge(1.0)),
    ("MODEL.CLASSIFIER.DROPOUT", closed_open(0.0, 1.0)),
    ("MODEL.CLASSIFIER.LABEL_SMOOTHING", closed_open(0.0, 1.0)),
    ("MODEL.CLASSIFIER.FOCAL_ALPHA", closed(0.0, 1.0)),
    ("MODEL.CLASSIFIER.FOCAL_GAMMA", ge(0.0)),
    ("MODEL.FPN.OUT_CHANNELS", ge(1.0)),
    ("MODEL.ANCHOR_GENERATOR.SIZES", gt(0.0)),
    ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", gt(0.0)),
    ("MODEL.ANCHOR_GENERATOR.OFFSET", closed(0.0, 1.0)),
    ("MODEL.SSDLITE.NUM_CLASSES", ge(1.0)),
    ("MODEL.SSDLITE.NUM_CONVS", ge(0.0)),
    ("MODEL.SSDLITE.IOU_THRESHOLDS", closed(0.0, 1.0)),
    ("MODEL.SSDLITE.NEG_POS_RATIO", ge(0.0)),
    ("MODEL.SSDLITE.FOCAL_ALPHA", closed(0.0, 1.0)),
    ("MODEL.SSDLITE.FOCAL_GAMMA", ge(0.0)),
    ("MODEL.SSDLITE.SMOOTH_L1_BETA", ge(0.0)),
    ("MODEL.SSDLITE.BOX_LOSS_WEIGHT", ge(0.0)),
    ("MODEL.SSDLITE.BBOX_REG_WEIGHTS", gt(0.0)),
    ("MODEL.SSDLITE.SCORE_THRESH_TEST", closed_open(0.0, 1.0)),
    ("MODEL.SSDLITE.TOPK_CANDIDATES_TEST", ge(1.0)),
    ("MODEL.SSDLITE.NMS_THRESH_TEST", closed(0.0, 1.0)),
    ("MODEL.RPN.IOU_THRESHOLDS", closed(0.0, 1.0)),
    ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", ge(1.0)),
    ("MODEL.RPN.POSITIVE_FRACTION", closed(0.0, 1.0)),
    ("MODEL.RPN.BBOX_REG_WEIGHTS", gt(0.0)),
    ("MODEL.RPN.SMOOTH_L1_BETA", ge(0.0)),
    ("MODEL.RPN.LOSS_WEIGHT", ge(0.0)),
    ("MODEL.RPN.PRE_NMS_TOPK_TRAIN", ge(1.0)),
    ("MODEL.RPN.PRE_NMS_TOPK_TEST", ge(1.0)),
    ("MODEL.RPN.POST_NMS_TOPK_TRAIN", ge(1.0)),
    ("MODEL.RPN.POST_NMS_TOPK_TEST", ge(1.0)),
    ("MODEL.RPN.NMS_THRESH", closed(0.0, 1.0)),
    ("MODEL.RPN.MIN_BOX_SIZE", ge(0.0)),
    ("MODEL.ROI_HEADS.NUM_CLASSES", ge(1.0)),
    ("MODEL.ROI_HEADS.IOU_THRESHOLDS", closed(0.0, 1.0)),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", ge(1.0)),
    ("MODEL.ROI_HEADS.POSITIVE_FRACTION", closed(0.0, 1.0)),
    ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", closed_open(0.0, 1.0)),
    ("MODEL.ROI_HEADS.NMS_THRESH_TEST", closed(0.0, 1.0)),
    ("MODEL.ROI_BOX_HEAD.NUM_CONV", ge(0.0)),
    ("MODEL.ROI_BOX_HEAD.CONV_DIM", ge(1.0)),
    ("MODEL.ROI_BOX_HEAD.NUM_FC", ge(0.0)),
    ("MODEL.ROI_BOX_HEAD.FC_DIM", ge(1.0)),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", ge(1.0)),
    ("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", ge(0.0)),
    ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", gt(0.0)),
    ("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", ge(0.0)),
    ("INPUT.MIN_SIZE_TRAIN", ge(16.0)),
    ("INPUT.MAX_SIZE_TRAIN", ge(16.0)),
    ("INPUT.MIN_SIZE_TEST", ge(16.0).or_zero()),
    ("INPUT.MAX_SIZE_TEST", ge(16.0)),
    ("INPUT.RESIZE_SHORT", ge(16.0)),
    ("INPUT.CROP_SIZE", ge(16.0)),
    ("INPUT.TRAIN_SIZE", ge(16.0)),
    ("INPUT.CROP_SCALES", open_closed(0.0, 1.0)),
    ("INPUT.RRC_SCALE", open_closed(0.0, 1.0)),
    ("INPUT.RRC_RATIO", gt(0.0)),
    ("DATASETS.FACE_FILTER.MIN_SIZE", ge(0.0)),
    ("DATASETS.SYNTHETIC.SEED", ge(0.0)),
    ("DATASETS.SYNTHETIC.NUM_TRAIN", ge(1.0)),
    ("DATASETS.SYNTHETIC.NUM_VAL", ge(1.0)),
    ("DATASETS.SYNTHETIC.IMAGE_SIZE", ge(16.0)),
    ("DATASETS.SYNTHETIC.MAX_FACES", ge(1.0)),
    ("DATASETS.SYNTHETIC.MIN_FACE_SIZE", gt(0.0)),
    ("DATASETS.SYNTHETIC.MAX_FACE_SIZE", gt(0.0)),
    ("DATASETS.SYNTHETIC_SHAPES.SEED", ge(0.0)),
    ("DATASETS.SYNTHETIC_SHAPES.NUM_TRAIN", ge(4.0)),
    ("DATASETS.SYNTHETIC_SHAPES.NUM_VAL", ge(4.0)),
    ("DATASETS.SYNTHETIC_SHAPES.IMAGE_SIZE", ge(32.0)),
    ("DATASETS.FOLDER_VAL_FRACTION", range(0.0, true, 1.0, true)),
    ("DATASETS.FOLDER_SPLIT_SEED", ge(0.0)),
    ("DATALOADER.REPEAT_THRESHOLD", closed(0.0, 1.0)),
    ("DATALOADER.NUM_WORKERS", closed(0.0, 256.0)),
    ("DATALOADER.PREFETCH", closed(1.0, 1024.0)),
    ("SOLVER.BASE_LR", gt(0.0)),
    ("SOLVER.MOMENTUM", closed_open(0.0, 1.0)),
    ("SOLVER.WEIGHT_DECAY", ge(0.0)),
    ("SOLVER.WEIGHT_DECAY_NORM", ge(0.0)),
    ("SOLVER.IMS_PER_BATCH", ge(1.0)),
    ("SOLVER.MAX_ITER", ge(0.0)),
    ("SOLVER.STEPS", ge(0.0)),
    ("SOLVER.GAMMA", gt(0.0)),
    ("SOLVER.WARMUP_ITERS", ge(0.0)),
    ("SOLVER.WARMUP_FACTOR", open_closed(0.0, 1.0)),
    ("SOLVER.CHECKPOINT_PERIOD", ge(0.0)),
    ("SOLVER.CHECKPOINT_MAX_KEEP", ge(0.0)),
    ("SOLVER.LOG_PERIOD", ge(1.0)),
    ("SOLVER.BIAS_LR_FACTOR", ge(0.0)),
    ("SOLVER.BETAS", closed_open(0.0, 1.0)),
    ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", gt(0.0)),
    ("SOLVER.PLATEAU.FACTOR", range(0.0, true, 1.0, true)),
    ("SOLVER.PLATEAU.PATIENCE", ge(0.0)),
    ("SOLVER.PLATEAU.THRESHOLD", ge(0.0)),
    ("SOLVER.PLATEAU.COOLDOWN", ge(0.0)),
    ("SOLVER.PLATEAU.MIN_LR", ge(0.0)),
    ("TEST.EVAL_PERIOD", ge(0.0)),
    ("TEST.EARLY_STOP_PATIENCE", ge(0.0)),
    ("TEST.DETECTIONS_PER_IMAGE", ge(1.0)),
    ("TEST.VIS_NUM", ge(0.0)),
    ("TEST.VIS_THRESHOLD", closed(0.0, 1.0)),
    ("TEST.MULTI_LABEL_THRESHOLD", range(0.0, true, 1.0, true)),
    ("SEED", ANY),
];

fn range_of(key: &str) -> Range {
    RANGES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, r)| *r)
        .unwrap_or(ANY)
}

fn show(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The first numeric value outside its range, as an error naming where it was set.
pub fn check_ranges(cfg: &Config) -> Result<(), ConfigError> {
    use super::entry::ConfigEntry;
    let mut leaves = Vec::new();
    cfg.numeric_leaves("", &mut leaves);
    for (key, values) in leaves {
        let r = range_of(&key);
        if let Some(bad) = values.iter().find(|v| !r.contains(**v)) {
            return Err(ConfigError::Range {
                key: cfg.located(&key),
                found: show(*bad),
                allowed: r.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::entry::ConfigEntry;

    #[test]
    fn every_numeric_key_has_a_range_and_the_defaults_are_inside() {
        let cfg = Config::default();
        let mut leaves = Vec::new();
        cfg.numeric_leaves("", &mut leaves);
        assert!(leaves.len() > 80, "{} numeric keys", leaves.len());
        for (key, _) in &leaves {
            assert!(
                RANGES.iter().any(|(k, _)| k == key),
                "{key} has no entry in RANGES"
            );
        }
        for (k, _) in RANGES {
            assert!(
                leaves.iter().any(|(key, _)| key == k),
                "RANGES names unknown {k}"
            );
        }
        check_ranges(&cfg).unwrap();
    }

    #[test]
    fn ranges_read_as_they_check() {
        assert!(gt(0.0).contains(1e-9) && !gt(0.0).contains(0.0));
        assert!(!ge(0.0).contains(f64::NAN) && !ANY.contains(f64::INFINITY));
        assert!(closed_open(0.0, 1.0).contains(0.0) && !closed_open(0.0, 1.0).contains(1.0));
        assert!(ge(16.0).or_zero().contains(0.0) && !ge(16.0).or_zero().contains(8.0));
        assert_eq!(closed_open(0.0, 1.0).to_string(), "[0, 1)");
        assert_eq!(ge(16.0).or_zero().to_string(), "0 (off) or >= 16");
    }
}
