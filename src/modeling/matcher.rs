//! Detectron2's `Matcher`: assigns each anchor (or proposal) the ground truth of highest
//! IoU and a label from IoU thresholds; low-quality matches give every ground truth its
//! best anchors even below the foreground threshold, in Detectron2's way (RPN) or SSD's.

use crate::config::ConfigError;
use crate::structures::boxes::{pairwise_iou, pairwise_iou_tensor, Box4};
use crate::structures::{Instances, PaddedInstances};
use candle_core::{DType, Device, Tensor};

/// The most (image, box, anchor) IoU elements matched at once on a device: a batch of 32
/// WIDER FACE images at 640 px with a crowd of 1,000 faces would otherwise make every
/// image's block that wide (about 3 GB per f32 temporary). 2^25 f32 are 128 MB.
pub const MATCH_BLOCK_ELEMENTS: usize = 1 << 25;

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

    /// A batch's ground truth matched to `anchors` on `device`: the boxes and anchors go
    /// up once and are matched with [`Matcher::match_batch`] in groups of consecutive
    /// images whose (images, boxes, anchors) IoU block stays within
    /// [`MATCH_BLOCK_ELEMENTS`] (one crowded image does not make every image pad to its
    /// count).
    pub fn match_on_device(
        &self,
        targets: &[Instances],
        anchors: &[Box4],
        device: &Device,
    ) -> candle_core::Result<DeviceMatches> {
        let gt = PaddedInstances::new(targets, device)?;
        let rows: Vec<f32> = anchors.iter().flatten().copied().collect();
        let anchors = Tensor::from_vec(rows, (anchors.len(), 4), device)?;
        let (matched, labels) = self.match_padded_in_blocks(&gt, &anchors, MATCH_BLOCK_ELEMENTS)?;
        Ok(DeviceMatches {
            gt,
            anchors,
            matched,
            labels,
        })
    }

    /// Matched indices point into `gt`'s padded rows.
    fn match_padded_in_blocks(
        &self,
        gt: &PaddedInstances,
        anchors: &Tensor,
        block: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let a = anchors.dim(0)?;
        let n = gt.counts.len();
        let (mut matched, mut labels) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            let mut g = gt.counts[start].max(1);
            while end < n {
                let wider = g.max(gt.counts[end]);
                if (end + 1 - start) * wider * a > block {
                    break;
                }
                g = wider;
                end += 1;
            }
            let rows = |t: &Tensor| t.narrow(0, start, end - start)?.narrow(1, 0, g);
            let iou = pairwise_iou_tensor(&rows(&gt.boxes)?, anchors)?;
            let (m, l) = self.match_batch(&iou, &rows(&gt.kept)?, &rows(&gt.ignored)?)?;
            matched.push(m);
            labels.push(l);
            start = end;
        }
        Ok((Tensor::cat(&matched, 0)?, Tensor::cat(&labels, 0)?))
    }

    /// [`Matcher::match_boxes`] for a batch, as tensor ops where the IoU is, so a
    /// training step on a GPU neither reads its boxes back nor waits for the host.
    /// `iou` (N, G, A) is each image's boxes (padded to G) against the anchors; `kept` and
    /// `ignored` (N, G) are 1 for a box matched as usual and for an ignored box (crowd,
    /// invalid face), 0 for padding. Returns per anchor the matched box index (N, A) u32
    /// and the label (N, A) f32: [`FOREGROUND`], [`BACKGROUND`] or [`IGNORE`], equal to
    /// the host's, ties included (the first box of highest IoU; in SSD's form the last
    /// box an anchor is best for).
    pub fn match_batch(
        &self,
        iou: &Tensor,
        kept: &Tensor,
        ignored: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, g, a) = iou.dims3()?;
        let dev = iou.device();
        if g == 0 {
            return Ok((
                Tensor::zeros((n, a), DType::U32, dev)?,
                Tensor::zeros((n, a), DType::F32, dev)?,
            ));
        }
        let full = |v: f32, shape: (usize, usize, usize)| Tensor::full(v, shape, dev);
        let by_box = |m: &Tensor| m.unsqueeze(2)?.broadcast_as((n, g, a));
        // Boxes that are not matched as usual score below every real IoU (>= 0).
        let iou_kept = by_box(&kept.ne(0f32)?)?.where_cond(iou, &full(-1.0, (n, g, a))?)?;
        let best = iou_kept.max_keepdim(1)?;
        let box_index = Tensor::arange(0f32, g as f32, dev)?
            .reshape((1, g, 1))?
            .broadcast_as((n, g, a))?;
        let mut matched = iou_kept
            .broadcast_eq(&best)?
            .where_cond(&box_index, &full(g as f32, (n, g, a))?)?
            .min(1)?;
        let best = best.squeeze(1)?;
        let label = |v: i8| Tensor::full(v as f32, (n, a), dev);
        let lo = self.thresholds[0];
        let hi = *self.thresholds.last().unwrap();
        let mut labels = best.ge(hi)?.where_cond(
            &label(FOREGROUND)?,
            &best
                .lt(lo)?
                .where_cond(&label(BACKGROUND)?, &label(IGNORE)?)?,
        )?;
        if self.low_quality != LowQualityMatches::Off {
            let box_best = iou_kept.max_keepdim(2)?;
            let is_best = iou_kept
                .broadcast_eq(&box_best)?
                .to_dtype(DType::F32)?
                .broadcast_mul(&box_best.gt(0f32)?.to_dtype(DType::F32)?)?;
            let low_quality = is_best.max(1)?.ne(0f32)?;
            labels = low_quality.where_cond(&label(FOREGROUND)?, &labels)?;
            if self.low_quality == LowQualityMatches::Assign {
                let last = is_best.broadcast_mul(&box_index)?.max(1)?;
                matched = low_quality.where_cond(&last, &matched)?;
            }
        }
        let near_ignored = iou
            .ge(lo)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&ignored.unsqueeze(2)?)?
            .max(1)?
            .ne(0f32)?;
        let background = labels.eq(BACKGROUND as f32)?;
        let to_ignore = near_ignored
            .to_dtype(DType::F32)?
            .mul(&background.to_dtype(DType::F32)?)?
            .ne(0f32)?;
        labels = to_ignore.where_cond(&label(IGNORE)?, &labels)?;
        Ok((matched.to_dtype(DType::U32)?, labels))
    }
}

/// [`Matcher::match_on_device`]'s result, from which the dense detector losses build
/// their class and box targets.
pub struct DeviceMatches {
    /// The batch's ground truth, padded to G boxes.
    pub gt: PaddedInstances,
    /// (A, 4) anchors.
    pub anchors: Tensor,
    /// (N, A) u32: each anchor's matched row in `gt`.
    pub matched: Tensor,
    /// (N, A) f32: [`FOREGROUND`], [`BACKGROUND`] or [`IGNORE`].
    pub labels: Tensor,
}

impl DeviceMatches {
    /// Per anchor, as (N * A, 4) rows: the matched box where `mask` (N, A) is set and
    /// the anchor itself elsewhere (a finite regression target whose loss is masked out,
    /// so no 0/0 reaches the gradient), and the anchors repeated per image.
    pub fn regression_targets(&self, mask: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, a) = self.matched.dims2()?;
        let anchors = self
            .anchors
            .unsqueeze(0)?
            .broadcast_as((n, a, 4))?
            .contiguous()?;
        let index = self
            .matched
            .unsqueeze(2)?
            .broadcast_as((n, a, 4))?
            .contiguous()?;
        let matched_boxes = self.gt.boxes.gather(&index, 1)?;
        let targets = mask
            .ne(0u8)?
            .unsqueeze(2)?
            .broadcast_as((n, a, 4))?
            .where_cond(&matched_boxes, &anchors)?;
        Ok((targets.reshape((n * a, 4))?, anchors.reshape((n * a, 4))?))
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

    /// The batched tensor matcher labels and matches every anchor as the host does, in
    /// all three modes: images with ignored boxes, without boxes, with only ignored boxes,
    /// with duplicated boxes (ties between boxes) and boxes equal to anchors (ties
    /// between anchors), boxes padded to the batch's largest count.
    #[test]
    fn batched_tensor_matching_is_the_host_matching() {
        use crate::structures::boxes::pairwise_iou_tensor;
        use candle_core::Device;
        let mut rng = crate::modeling::test_support::Lcg(11);
        let anchors: Vec<Box4> = (0..8)
            .flat_map(|y| (0..8).map(move |x| (x, y)))
            .flat_map(|(x, y)| {
                let (cx, cy) = (x as f32 * 8.0 + 4.0, y as f32 * 8.0 + 4.0);
                [6.0f32, 12.0].map(|h| [cx - h, cy - h, cx + h, cy + h])
            })
            .collect();
        let mut images: Vec<(Vec<Box4>, Vec<bool>)> = Vec::new();
        for count in [5usize, 0, 3, 9] {
            let mut boxes = rng.boxes(count, 56, 2.0, 20);
            if count > 3 {
                boxes[1] = boxes[0];
                boxes[2] = anchors[rng.below(anchors.len() as u32) as usize];
            }
            let ignore = (0..count).map(|i| count == 3 || (i == 3)).collect();
            images.push((boxes, ignore));
        }
        let g = images.iter().map(|(b, _)| b.len()).max().unwrap();
        let dev = Device::Cpu;
        let padded = PaddedInstances::new(
            &images
                .iter()
                .map(|(b, ig)| crate::structures::Instances {
                    boxes: b.clone(),
                    classes: vec![0; b.len()],
                    ignore: ig.clone(),
                })
                .collect::<Vec<_>>(),
            &dev,
        )
        .unwrap();
        let anchors_t = Tensor::from_vec(anchors.concat(), (anchors.len(), 4), &dev).unwrap();
        let iou = pairwise_iou_tensor(&padded.boxes, &anchors_t).unwrap();
        for mode in [
            LowQualityMatches::Off,
            LowQualityMatches::Relabel,
            LowQualityMatches::Assign,
        ] {
            let m = Matcher::new(&[0.3, 0.5], mode).unwrap();
            let (matched, labels) = m.match_batch(&iou, &padded.kept, &padded.ignored).unwrap();
            let matched: Vec<Vec<u32>> = matched.to_vec2().unwrap();
            let labels: Vec<Vec<f32>> = labels.to_vec2().unwrap();
            for (i, (b, ig)) in images.iter().enumerate() {
                let (want_m, want_l) = m.match_boxes(&anchors, b, ig);
                let got_l: Vec<i8> = labels[i].iter().map(|&v| v as i8).collect();
                assert_eq!(got_l, want_l, "{mode:?}, image {i}: labels");
                let got_m: Vec<usize> = matched[i].iter().map(|&v| v as usize).collect();
                assert_eq!(got_m, want_m, "{mode:?}, image {i}: matched boxes");
            }
            // In blocks of one or two images (a small budget): the same result.
            let (bm, bl) = m
                .match_padded_in_blocks(&padded, &anchors_t, 2 * g * anchors.len())
                .unwrap();
            assert_eq!(bm.to_vec2::<u32>().unwrap(), matched, "{mode:?}: blocks");
            assert_eq!(bl.to_vec2::<f32>().unwrap(), labels, "{mode:?}: blocks");
            let all: Vec<f32> = labels.concat();
            for l in [FOREGROUND, BACKGROUND, IGNORE] {
                assert!(
                    all.contains(&(l as f32)),
                    "{mode:?}: no anchor labelled {l}"
                );
            }
        }
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
