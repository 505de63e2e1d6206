//! Detectron2's `Matcher`: assigns each anchor (or proposal) the ground truth of highest
//! IoU and a label from IoU thresholds; low-quality matches give every ground truth its
//! best anchors even below the foreground threshold, in Detectron2's way (RPN) or SSD's.

use crate::config::ConfigError;
use crate::structures::boxes::{pairwise_iou, Box4};

/// Label of an anchor after matching.
pub const BACKGROUND: i8 = 0;
pub const IGNORE: i8 = -1;
pub const FOREGROUND: i8 = 1;

/// What happens to an anchor that is a ground truth's best (ties included) but below the
/// foreground threshold. The two conventions differ only where that anchor overlaps
/// another box more: Detectron2 regresses it to that other box, SSD to the box it is best
/// for, so that no box is left without an anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowQualityMatches {
    /// Thresholds alone (Detectron2's ROI heads).
    Off,
    /// Foreground, matched to the box it overlaps most: Detectron2's `Matcher`
    /// (`set_low_quality_matches_` sets labels only), as its RPN uses it.
    Relabel,
    /// Foreground, matched to the box it is best for: SSD, RetinaFace and torchvision's
    /// `SSDMatcher` (a later box wins an anchor that two boxes share).
    Assign,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    /// IoU < thresholds[0]: background; >= thresholds[last]: foreground; between: ignored.
    pub thresholds: Vec<f32>,
    pub low_quality: LowQualityMatches,
}

impl Matcher {
    pub fn new(thresholds: &[f64], low_quality: LowQualityMatches) -> Result<Self, ConfigError> {
        if thresholds.is_empty() || thresholds.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!(
                "IoU thresholds must be a non-empty increasing list, got {thresholds:?}"
            )
            .into());
        }
        Ok(Self {
            thresholds: thresholds.iter().map(|&t| t as f32).collect(),
            low_quality,
        })
    }

    /// `iou` is (gt, anchors) row-major. Returns per anchor the matched gt index and its
    /// label. With no ground truth every anchor is background.
    pub fn match_iou(
        &self,
        iou: &[f32],
        num_gt: usize,
        num_anchors: usize,
    ) -> (Vec<usize>, Vec<i8>) {
        let mut matched = vec![0usize; num_anchors];
        let mut labels = vec![BACKGROUND; num_anchors];
        if num_gt == 0 {
            return (matched, labels);
        }
        let lo = self.thresholds[0];
        let hi = *self.thresholds.last().unwrap();
        for a in 0..num_anchors {
            let (mut best, mut best_g) = (f32::NEG_INFINITY, 0);
            for g in 0..num_gt {
                let v = iou[g * num_anchors + a];
                if v > best {
                    best = v;
                    best_g = g;
                }
            }
            matched[a] = best_g;
            labels[a] = if best >= hi {
                FOREGROUND
            } else if best < lo {
                BACKGROUND
            } else {
                IGNORE
            };
        }
        if self.low_quality != LowQualityMatches::Off {
            for g in 0..num_gt {
                let row = &iou[g * num_anchors..(g + 1) * num_anchors];
                let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if best <= 0.0 {
                    continue;
                }
                // Every anchor tied at the best IoU, as Detectron2 does.
                for (a, &v) in row.iter().enumerate() {
                    if v == best {
                        labels[a] = FOREGROUND;
                        if self.low_quality == LowQualityMatches::Assign {
                            matched[a] = g;
                        }
                    }
                }
            }
        }
        (matched, labels)
    }

    /// Matches `anchors` to the boxes not flagged in `ignore`. Returned indices point
    /// into `boxes`. Anchors that would be background but overlap an ignored box (crowd,
    /// invalid face) by at least the lowest threshold are ignored instead: they are
    /// neither positives nor negatives.
    pub fn match_boxes(
        &self,
        anchors: &[Box4],
        boxes: &[Box4],
        ignore: &[bool],
    ) -> (Vec<usize>, Vec<i8>) {
        let kept: Vec<usize> = (0..boxes.len()).filter(|&i| !ignore[i]).collect();
        let gt: Vec<Box4> = kept.iter().map(|&i| boxes[i]).collect();
        let iou = pairwise_iou(&gt, anchors);
        let (mut matched, mut labels) = self.match_iou(&iou, gt.len(), anchors.len());
        for m in matched.iter_mut() {
            if let Some(&i) = kept.get(*m) {
                *m = i;
            }
        }
        let ignored: Vec<Box4> = (0..boxes.len())
            .filter(|&i| ignore[i])
            .map(|i| boxes[i])
            .collect();
        if !ignored.is_empty() {
            let iou = pairwise_iou(&ignored, anchors);
            for (a, label) in labels.iter_mut().enumerate() {
                if *label == BACKGROUND
                    && (0..ignored.len()).any(|g| iou[g * anchors.len() + a] >= self.thresholds[0])
                {
                    *label = IGNORE;
                }
            }
        }
        (matched, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_low_quality_and_no_gt() {
        let m = Matcher::new(&[0.4, 0.5], LowQualityMatches::Off).unwrap();
        // 2 gt x 4 anchors.
        let iou = [0.1, 0.45, 0.6, 0.0, 0.2, 0.3, 0.7, 0.05];
        let (matched, labels) = m.match_iou(&iou, 2, 4);
        assert_eq!(labels, vec![BACKGROUND, IGNORE, FOREGROUND, BACKGROUND]);
        assert_eq!(matched[2], 1);
        // Gt 0's best anchor (1, IoU 0.45) is only "ignore" by thresholds; low-quality
        // matching makes it foreground for gt 0.
        for mode in [LowQualityMatches::Relabel, LowQualityMatches::Assign] {
            let lq = Matcher::new(&[0.4, 0.5], mode).unwrap();
            let iou = [0.1, 0.45, 0.2, 0.0, 0.2, 0.3, 0.7, 0.05];
            let (matched, labels) = lq.match_iou(&iou, 2, 4);
            assert_eq!(labels, vec![BACKGROUND, FOREGROUND, FOREGROUND, BACKGROUND]);
            assert_eq!((matched[1], matched[2]), (0, 1));
            let (_, labels) = lq.match_iou(&[], 0, 3);
            assert_eq!(labels, vec![BACKGROUND; 3]);
        }
        assert!(Matcher::new(&[0.5, 0.4], LowQualityMatches::Relabel).is_err());
    }

    /// Anchor 0 overlaps box 0 most (0.45) and is box 1's best (0.30): both modes make it
    /// foreground; Detectron2 keeps it on box 0, SSD gives it to box 1. Anchors 1 and 2
    /// tie as box 2's best: both become foreground.
    #[test]
    fn low_quality_modes_differ_only_in_the_match_of_a_shared_anchor() {
        #[rustfmt::skip]
        let iou = [
            0.45, 0.10, 0.00, 0.00,
            0.30, 0.20, 0.00, 0.00,
            0.00, 0.25, 0.25, 0.00,
        ];
        let run = |mode| {
            Matcher::new(&[0.4, 0.5], mode)
                .unwrap()
                .match_iou(&iou, 3, 4)
        };
        let (m_d2, l_d2) = run(LowQualityMatches::Relabel);
        let (m_ssd, l_ssd) = run(LowQualityMatches::Assign);
        let want = vec![FOREGROUND, FOREGROUND, FOREGROUND, BACKGROUND];
        assert_eq!((l_d2, l_ssd), (want.clone(), want));
        assert_eq!(m_d2[..3], [0, 2, 2]);
        assert_eq!(m_ssd[..3], [1, 2, 2]);
        let (m_off, l_off) = run(LowQualityMatches::Off);
        assert_eq!(l_off, vec![IGNORE, BACKGROUND, BACKGROUND, BACKGROUND]);
        assert_eq!(m_off[..3], [0, 2, 2]);
    }

    #[test]
    fn ignored_boxes_turn_background_into_ignore() {
        let m = Matcher::new(&[0.3, 0.7], LowQualityMatches::Relabel).unwrap();
        let anchors = [
            [0.0, 0.0, 10.0, 10.0],
            [20.0, 0.0, 30.0, 10.0],
            [50.0, 50.0, 60.0, 60.0],
        ];
        // Box 0 ignored (on anchor 0), box 1 kept (on anchor 1).
        let boxes = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]];
        let (matched, labels) = m.match_boxes(&anchors, &boxes, &[true, false]);
        assert_eq!(labels, vec![IGNORE, FOREGROUND, BACKGROUND]);
        assert_eq!(matched[1], 1, "indices point into the full box list");
        // Everything ignored: no positives, the overlapped anchors ignored.
        let (_, labels) = m.match_boxes(&anchors, &boxes, &[true, true]);
        assert_eq!(labels, vec![IGNORE, IGNORE, BACKGROUND]);
        // No boxes at all: all background.
        let (_, labels) = m.match_boxes(&anchors, &[], &[]);
        assert_eq!(labels, vec![BACKGROUND; 3]);
    }
}
