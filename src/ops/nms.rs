//! Greedy non-maximum suppression over boxes already in rank order, on the host and as
//! an op on the device that holds the boxes.
//!
//! The ranking (a sort or a top-k by score) is the caller's; what remains is the greedy
//! pass: a box is kept when no kept box before it overlaps it by more than the
//! threshold. As an op it runs per image over fixed segments (an RPN's pyramid levels),
//! so proposals are suppressed where the RPN's outputs are and a GPU need not wait for
//! the host. Both forms compute each IoU with the same f32 operations in the same order
//! (the CUDA kernel with explicitly rounded ones, so nothing is fused), and keep the
//! same boxes.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::parallel::cpu_slice;

/// Boxes (x0, y0, x1, y1) by column, in rank order: the inner loop runs branch-free over
/// contiguous lanes and vectorises.
struct Columns {
    x0: Vec<f32>,
    y0: Vec<f32>,
    x1: Vec<f32>,
    y1: Vec<f32>,
    areas: Vec<f32>,
}

impl Columns {
    fn new(boxes: &[[f32; 4]]) -> Self {
        let column = |c: usize| -> Vec<f32> { boxes.iter().map(|b| b[c]).collect() };
        Self {
            x0: column(0),
            y0: column(1),
            x1: column(2),
            y1: column(3),
            areas: boxes
                .iter()
                .map(|b| (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0))
                .collect(),
        }
    }
}

/// Greedy NMS of `boxes` in the given order: `keep[i]` when `candidate[i]` and no kept
/// box before `i` has an IoU above `threshold` with it. Non-candidates neither are kept
/// nor suppress. The IoU is `structures::boxes::iou`'s, operation for operation.
pub fn greedy_nms(boxes: &[[f32; 4]], candidate: &[bool], threshold: f32) -> Vec<bool> {
    let cols = Columns::new(boxes);
    let mut suppressed: Vec<u8> = candidate.iter().map(|&c| u8::from(!c)).collect();
    let mut keep = vec![false; boxes.len()];
    for k in 0..boxes.len() {
        if suppressed[k] != 0 {
            continue;
        }
        keep[k] = true;
        suppress_overlapping(&cols, k, threshold, &mut suppressed);
    }
    keep
}

/// Marks the boxes after `k` that overlap box `k` by more than `threshold`; with AVX2
/// where the CPU has it (8 lanes instead of the baseline's 4; same operations, so the
/// same marks).
fn suppress_overlapping(cols: &Columns, k: usize, threshold: f32, suppressed: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { suppress_avx2(cols, k, threshold, suppressed) };
        return;
    }
    suppress_lanes(cols, k, threshold, suppressed);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn suppress_avx2(cols: &Columns, k: usize, threshold: f32, suppressed: &mut [u8]) {
    suppress_lanes(cols, k, threshold, suppressed);
}

#[inline(always)]
fn suppress_lanes(cols: &Columns, k: usize, threshold: f32, suppressed: &mut [u8]) {
    let (ax0, ay0, ax1, ay1, aa) = (
        cols.x0[k],
        cols.y0[k],
        cols.x1[k],
        cols.y1[k],
        cols.areas[k],
    );
    let rest = k + 1..;
    let later = suppressed[rest.clone()]
        .iter_mut()
        .zip(&cols.x0[rest.clone()])
        .zip(&cols.y0[rest.clone()])
        .zip(&cols.x1[rest.clone()])
        .zip(&cols.y1[rest.clone()])
        .zip(&cols.areas[rest]);
    for (((((s, &bx0), &by0), &bx1), &by1), &ba) in later {
        let w = (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
        let h = (ay1.min(by1) - ay0.max(by0)).max(0.0);
        let inter = w * h;
        let union = aa + ba - inter;
        let overlap = if union > 0.0 { inter / union } else { 0.0 };
        *s |= (overlap > threshold) as u8;
    }
}

/// Per image and segment, [`greedy_nms`] over boxes in rank order: `boxes` (N, S, 4)
/// f32, `candidates` (N, S) u8 (non-zero: may be kept), `offsets` the segments' bounds
/// from 0 to S -> (N, S) u8, 1 where kept. No gradient.
pub fn nms_segments(
    boxes: &Tensor,
    candidates: &Tensor,
    offsets: &[usize],
    threshold: f32,
) -> Result<Tensor> {
    let (n, s, four) = boxes.dims3()?;
    if four != 4 || candidates.dims() != [n, s] {
        candle_core::bail!(
            "nms_segments: boxes {:?} and candidates {:?} do not fit",
            boxes.dims(),
            candidates.dims()
        );
    }
    if offsets.first() != Some(&0)
        || offsets.last() != Some(&s)
        || offsets.windows(2).any(|w| w[1] < w[0])
    {
        candle_core::bail!("nms_segments: offsets {offsets:?} do not split {s} boxes");
    }
    if (boxes.dtype(), candidates.dtype()) != (DType::F32, DType::U8) {
        candle_core::bail!("nms_segments: boxes f32 and candidates u8 expected");
    }
    boxes.contiguous()?.apply_op2_no_bwd(
        &candidates.contiguous()?,
        &NmsSegments {
            offsets: offsets.to_vec(),
            threshold,
        },
    )
}

struct NmsSegments {
    offsets: Vec<usize>,
    threshold: f32,
}

impl candle_core::CustomOp2 for NmsSegments {
    fn name(&self) -> &'static str {
        "nms-segments"
    }

    fn cpu_fwd(
        &self,
        bs: &CpuStorage,
        bl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, s, _) = bl.shape().dims3()?;
        let boxes = cpu_slice::<f32>(bs, bl, "nms_segments")?;
        let candidates = cpu_slice::<u8>(cs, cl, "nms_segments")?;
        let mut out = vec![0u8; n * s];
        if s > 0 {
            out.par_chunks_mut(s).enumerate().for_each(|(i, row)| {
                for w in self.offsets.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    let segment: Vec<[f32; 4]> = (a..b)
                        .map(|j| {
                            let at = (i * s + j) * 4;
                            [boxes[at], boxes[at + 1], boxes[at + 2], boxes[at + 3]]
                        })
                        .collect();
                    let cand: Vec<bool> = (a..b).map(|j| candidates[i * s + j] != 0).collect();
                    let keep = greedy_nms(&segment, &cand, self.threshold);
                    for (o, k) in row[a..b].iter_mut().zip(keep) {
                        *o = u8::from(k);
                    }
                }
            });
        }
        Ok((CpuStorage::U8(out), Shape::from((n, s))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::nms_cuda::forward((bs, bl), (cs, cl), &self.offsets, self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Boxes on a coarse grid (duplicates and near-duplicates), some empty or inverted.
    fn boxes(n: usize, seed: u32) -> Vec<[f32; 4]> {
        let mut s = seed;
        let mut rnd = |m: u32| {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((s >> 8) % m) as f32
        };
        (0..n)
            .map(|_| {
                let (x, y) = (rnd(30) * 2.0, rnd(30) * 2.0);
                [x, y, x + rnd(24) - 2.0, y + rnd(24) - 2.0]
            })
            .collect()
    }

    /// Greedy NMS as written down, pair by pair.
    fn reference(boxes: &[[f32; 4]], candidate: &[bool], t: f32) -> Vec<bool> {
        let iou = |a: &[f32; 4], b: &[f32; 4]| {
            let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = w * h;
            let area = |b: &[f32; 4]| (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
            let union = area(a) + area(b) - inter;
            if union > 0.0 {
                inter / union
            } else {
                0.0
            }
        };
        let mut keep = vec![false; boxes.len()];
        for i in 0..boxes.len() {
            keep[i] = candidate[i] && !(0..i).any(|j| keep[j] && iou(&boxes[j], &boxes[i]) > t);
        }
        keep
    }

    /// The op keeps, per image and segment, what the pairwise reference keeps; segments
    /// do not suppress each other, and non-candidates suppress nothing.
    #[test]
    fn segments_are_suppressed_apart_as_the_reference_does() {
        let (n, s) = (3, 90);
        let offsets = [0, 40, 40, 75, 90];
        let all: Vec<[f32; 4]> = (0..n).flat_map(|i| boxes(s, 5 + i as u32)).collect();
        let cand: Vec<u8> = (0..n * s).map(|j| u8::from(j % 7 != 3)).collect();
        let dev = Device::Cpu;
        let keep = nms_segments(
            &Tensor::from_vec(all.concat(), (n, s, 4), &dev).unwrap(),
            &Tensor::from_vec(cand.clone(), (n, s), &dev).unwrap(),
            &offsets,
            0.5,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
        let mut kept = 0;
        for i in 0..n {
            for w in offsets.windows(2) {
                let (a, b) = (i * s + w[0], i * s + w[1]);
                let c: Vec<bool> = cand[a..b].iter().map(|&c| c != 0).collect();
                let want = reference(&all[a..b], &c, 0.5);
                let got: Vec<bool> = keep[a..b].iter().map(|&k| k != 0).collect();
                assert_eq!(got, want, "image {i}, segment {w:?}");
                kept += want.iter().filter(|&&k| k).count();
            }
        }
        // Something suppressed, something kept.
        assert!(kept > n * 10 && kept < n * s * 6 / 7, "{kept} kept");
        // Offsets that do not split the boxes are refused.
        let bad = nms_segments(
            &Tensor::zeros((1, 4, 4), DType::F32, &dev).unwrap(),
            &Tensor::ones((1, 4), DType::U8, &dev).unwrap(),
            &[0, 3],
            0.5,
        );
        assert!(bad.unwrap_err().to_string().contains("do not split"));
    }
}
