//! Detectron2's `ROIPooler`: each box is pooled from one pyramid level chosen by its
//! size (FPN paper, eq. 1): `floor(canonical_level + log2(sqrt(area) / canonical_size))`,
//! clamped to the levels present, so a 224-pixel box reads p4, a 112-pixel one p3.

use candle_core::{Result, Tensor};

use crate::ops::{roi_align, RoiAlignParams};
use crate::structures::boxes::{area, Box4};

#[derive(Debug, Clone, PartialEq)]
pub struct RoiPooler {
    output_size: (usize, usize),
    /// Strides of the pooled levels, finest first; consecutive powers of two (or equal
    /// ones past a dilated backbone's output stride).
    strides: Vec<usize>,
    sampling_ratio: usize,
    aligned: bool,
    canonical_box_size: f32,
    canonical_level: i32,
}

impl RoiPooler {
    pub fn new(
        output_size: usize,
        strides: &[usize],
        sampling_ratio: usize,
        aligned: bool,
        canonical_box_size: f32,
        canonical_level: i32,
    ) -> std::result::Result<Self, String> {
        if strides.is_empty() {
            return Err("ROI pooler needs at least one feature level".into());
        }
        // Levels are numbered by position; each pools at its own stride, which a
        // dilated backbone keeps equal to the level below.
        for w in strides.windows(2) {
            if w[1] != 2 * w[0] && w[1] != w[0] {
                return Err(format!(
                    "ROI pooler levels must be consecutive (strides doubling, or equal under a \
                     dilated backbone), got {strides:?}"
                ));
            }
        }
        if !strides[0].is_power_of_two() {
            return Err(format!(
                "ROI pooler strides must be powers of two, got {strides:?}"
            ));
        }
        Ok(Self {
            output_size: (output_size, output_size),
            strides: strides.to_vec(),
            sampling_ratio,
            aligned,
            canonical_box_size,
            canonical_level,
        })
    }

    fn min_level(&self) -> i32 {
        self.strides[0].trailing_zeros() as i32
    }

    /// Index into the pooled levels (0 = finest) for each box.
    pub fn assign_levels(&self, boxes: &[Box4]) -> Vec<usize> {
        let (lo, hi) = (
            self.min_level(),
            self.min_level() + self.strides.len() as i32 - 1,
        );
        boxes
            .iter()
            .map(|b| {
                let size = area(b).sqrt();
                let level = (self.canonical_level as f32
                    + (size / self.canonical_box_size + 1e-8).log2())
                .floor() as i32;
                (level.clamp(lo, hi) - lo) as usize
            })
            .collect()
    }

    /// Pools `rois` (image index, box in input pixels) from `features` (one map per
    /// level, finest first) into (R, C, out, out), in the order of `rois`.
    pub fn forward(&self, features: &[Tensor], rois: &[(usize, Box4)]) -> Result<Tensor> {
        if features.len() != self.strides.len() {
            candle_core::bail!(
                "ROI pooler: {} feature maps for {} levels",
                features.len(),
                self.strides.len()
            );
        }
        let boxes: Vec<Box4> = rois.iter().map(|r| r.1).collect();
        let levels = self.assign_levels(&boxes);
        let mut pooled = Vec::new();
        let mut order: Vec<u32> = Vec::with_capacity(rois.len());
        for (l, (feat, &stride)) in features.iter().zip(&self.strides).enumerate() {
            let idx: Vec<usize> = (0..rois.len()).filter(|&i| levels[i] == l).collect();
            if idx.is_empty() {
                continue;
            }
            let level_rois: Vec<(usize, Box4)> = idx.iter().map(|&i| rois[i]).collect();
            let p = RoiAlignParams {
                output_size: self.output_size,
                spatial_scale: 1.0 / stride as f32,
                sampling_ratio: self.sampling_ratio,
                aligned: self.aligned,
            };
            pooled.push(roi_align(feat, &level_rois, &p)?);
            order.extend(idx.iter().map(|&i| i as u32));
        }
        if pooled.is_empty() {
            let c = features[0].dim(1)?;
            return Tensor::zeros(
                (0, c, self.output_size.0, self.output_size.1),
                features[0].dtype(),
                features[0].device(),
            );
        }
        let cat = Tensor::cat(&pooled, 0)?;
        // Back to the callers' order: position of each ROI inside `cat`.
        let mut inverse = vec![0u32; rois.len()];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i as usize] = pos as u32;
        }
        let inv = Tensor::new(inverse.as_slice(), cat.device())?;
        cat.index_select(&inv, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn levels_by_size_and_order_kept() {
        let p = RoiPooler::new(2, &[4, 8, 16, 32], 2, true, 224.0, 4).unwrap();
        // 224 -> p4 (index 2), 112 -> p3, 448 -> p5, 20 -> clamped to p2, 1000 -> p5.
        let b = |s: f32| [0.0, 0.0, s, s];
        assert_eq!(
            p.assign_levels(&[b(224.0), b(112.0), b(448.0), b(20.0), b(1000.0), b(223.0)]),
            vec![2, 1, 3, 0, 3, 1]
        );
        assert!(RoiPooler::new(2, &[4, 16], 0, true, 224.0, 4).is_err());
        // Each level holds a constant equal to its index: the pooled values tell which
        // level each ROI read, in the callers' order.
        let feats: Vec<Tensor> = (0..4)
            .map(|l| {
                let s = 64 >> l;
                (Tensor::ones((1, 1, s, s), DType::F32, &Device::Cpu).unwrap() * l as f64).unwrap()
            })
            .collect();
        let rois = [(0, b(200.0)), (0, b(30.0)), (0, b(120.0)), (0, b(250.0))];
        let out = p.forward(&feats, &rois).unwrap();
        assert_eq!(out.dims(), &[4, 1, 2, 2]);
        let v: Vec<f32> = out
            .mean_keepdim(3)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![1.0, 0.0, 1.0, 2.0]);
    }
}
