//! ROIAlign (He et al., Mask R-CNN) with torchvision's semantics: each output bin is the
//! mean of bilinear samples on a regular grid inside it; `aligned` shifts boxes by half
//! a pixel so a box's corners sit on pixel corners (Detectron2's ROIAlignV2).
//!
//! Boxes are host values without gradient (proposals are detached in Faster R-CNN), so
//! every sample's four corner indices and weights depend on the boxes and the map size
//! only. They are planned once per call; the CPU op then runs the plan over channels in
//! forward and transposes it in backward, and the portable path for other devices runs
//! the same plan as `index_select` + `index_add`, which Candle differentiates. CUDA
//! kernels (`roi_align_cuda.rs`) take each ROI's [`RoiGrid`] instead and place the samples
//! on the device.

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, WithDType};

use super::custom_op::Input;
use rayon::prelude::*;

/// A box as (x1, y1, x2, y2).
type Box4 = [f32; 4];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlignParams {
    /// (height, width) of each pooled output.
    pub output_size: (usize, usize),
    /// Feature-map pixels per input pixel (1 / stride).
    pub spatial_scale: f32,
    /// Samples per bin side; 0 picks `ceil(bin size)` per box, as torchvision does.
    pub sampling_ratio: usize,
    /// Half-pixel box shift (ROIAlignV2); without it boxes are at least 1 pixel.
    pub aligned: bool,
}

/// One ROI's sampling grid on the feature map: `output_size` bins from (`x0`, `y0`), each
/// of `bw` x `bh` pixels (negative for an inverted box under `aligned`, which does not clamp
/// the size) and sampled `gw` x `gh` times. The planned op and the CUDA kernels both sample
/// from it, so they take the same points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiGrid {
    pub x0: f64,
    pub y0: f64,
    pub bw: f64,
    pub bh: f64,
    pub gw: usize,
    pub gh: usize,
}

impl RoiGrid {
    /// The grid of box `b` (XYXY in input pixels) under `p`.
    pub fn new(b: &Box4, p: &RoiAlignParams) -> Self {
        let (ph, pw) = p.output_size;
        let scale = p.spatial_scale as f64;
        let shift = if p.aligned { 0.5 } else { 0.0 };
        let x0 = b[0] as f64 * scale - shift;
        let y0 = b[1] as f64 * scale - shift;
        let mut rw = b[2] as f64 * scale - shift - x0;
        let mut rh = b[3] as f64 * scale - shift - y0;
        if !p.aligned {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (bh, bw) = (rh / ph as f64, rw / pw as f64);
        // torchvision's adaptive ratio: ceil(bin size) samples, none for an empty bin.
        let samples = |bin: f64| {
            if p.sampling_ratio > 0 {
                p.sampling_ratio
            } else {
                bin.ceil().max(0.0) as usize
            }
        };
        Self {
            x0,
            y0,
            bw,
            bh,
            gw: samples(bw),
            gh: samples(bh),
        }
    }

    /// Samples per bin, at least 1: each sample's weight is 1 / this.
    pub fn count(&self) -> f64 {
        (self.gh * self.gw).max(1) as f64
    }

    /// Row coordinate of sample `iy` of bin row `by`.
    pub fn sample_y(&self, by: usize, iy: usize) -> f64 {
        self.y0 + by as f64 * self.bh + (iy as f64 + 0.5) * self.bh / self.gh as f64
    }

    /// Column coordinate of sample `ix` of bin column `bx`.
    pub fn sample_x(&self, bx: usize, ix: usize) -> f64 {
        self.x0 + bx as f64 * self.bw + (ix as f64 + 0.5) * self.bw / self.gw as f64
    }
}

/// Which plane an ROI reads and, per output bin, its weighted taps.
#[derive(Debug)]
pub struct RoiPlan {
    /// Image index per ROI.
    batch_index: Vec<usize>,
    /// Per (ROI, bin): `entries[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    /// (index inside the H x W plane, weight already divided by the sample count).
    entries: Vec<(u32, f64)>,
    bins: usize,
    plane: (usize, usize),
}

impl RoiPlan {
    /// Plans `rois` (image index, XYXY box in input pixels) on maps of `height x width`.
    pub fn new(rois: &[(usize, Box4)], height: usize, width: usize, p: &RoiAlignParams) -> Self {
        let (ph, pw) = p.output_size;
        let mut offsets = Vec::with_capacity(rois.len() * ph * pw + 1);
        let mut entries = Vec::new();
        offsets.push(0);
        let (hf, wf) = (height as f64, width as f64);
        for (_, b) in rois {
            let grid = RoiGrid::new(b, p);
            let count = grid.count();
            for by in 0..ph {
                for bx in 0..pw {
                    for iy in 0..grid.gh {
                        let y = grid.sample_y(by, iy);
                        for ix in 0..grid.gw {
                            let x = grid.sample_x(bx, ix);
                            push_bilinear(&mut entries, y, x, hf, wf, width, count);
                        }
                    }
                    merge_taps(&mut entries, *offsets.last().expect("starts with 0"));
                    offsets.push(entries.len());
                }
            }
        }
        Self {
            batch_index: rois.iter().map(|r| r.0).collect(),
            offsets,
            entries,
            bins: ph * pw,
            plane: (height, width),
        }
    }

    fn num_rois(&self) -> usize {
        self.batch_index.len()
    }
}

/// Sums the taps of one bin (`entries[start..]`) that read the same pixel and drops
/// zero weights. Neighbouring samples share corners, so a large box's bin of 16 samples
/// (64 taps) reads about 25 pixels: the kernels, which run every tap once per channel,
/// do less than half the work.
fn merge_taps(entries: &mut Vec<(u32, f64)>, start: usize) {
    entries[start..].sort_unstable_by_key(|e| e.0);
    let mut w = start;
    for r in start..entries.len() {
        let (idx, wt) = entries[r];
        if w > start && entries[w - 1].0 == idx {
            entries[w - 1].1 += wt;
        } else {
            entries[w] = (idx, wt);
            w += 1;
        }
    }
    entries.truncate(w);
    let mut k = start;
    for r in start..entries.len() {
        if entries[r].1 != 0.0 {
            entries[k] = entries[r];
            k += 1;
        }
    }
    entries.truncate(k);
}

/// The four corner taps of a bilinear sample at (y, x); samples more than one pixel
/// outside the map contribute nothing, those within are clamped to the border.
fn push_bilinear(
    out: &mut Vec<(u32, f64)>,
    y: f64,
    x: f64,
    h: f64,
    w: f64,
    width: usize,
    count: f64,
) {
    if y < -1.0 || y > h || x < -1.0 || x > w {
        return;
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let (mut y0, mut x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1);
    if y0 as f64 >= h - 1.0 {
        y0 = h as usize - 1;
        y1 = y0;
        y = y0 as f64;
    } else {
        y1 = y0 + 1;
    }
    if x0 as f64 >= w - 1.0 {
        x0 = w as usize - 1;
        x1 = x0;
        x = x0 as f64;
    } else {
        x1 = x0 + 1;
    }
    let (ly, lx) = (y - y0 as f64, x - x0 as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    for (yy, xx, wt) in [
        (y0, x0, hy * hx),
        (y0, x1, hy * lx),
        (y1, x0, ly * hx),
        (y1, x1, ly * lx),
    ] {
        out.push(((yy * width + xx) as u32, wt / count));
    }
}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    super::parallel::cpu_slice(s, l, "roi_align")
}

struct Forward(Arc<RoiPlan>);

fn forward_impl<T: WithDType>(
    Forward(plan): &Forward,
    (s, l): Input,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = l.shape().dims4()?;
    if (h, w) != plan.plane {
        candle_core::bail!("roi_align: planned for {:?}, got {h}x{w}", plan.plane);
    }
    if let Some(&b) = plan.batch_index.iter().find(|&&b| b >= n) {
        candle_core::bail!("roi_align: box of image {b} but the batch has {n} images");
    }
    let x = contiguous::<T>(s, l)?;
    let bins = plan.bins;
    let mut out = vec![T::zero(); plan.num_rois() * c * bins];
    // One task per (ROI, channel): the taps of its bins over one plane.
    out.par_chunks_mut(bins).enumerate().for_each(|(rc, o)| {
        let (r, ch) = (rc / c, rc % c);
        let src = &x[(plan.batch_index[r] * c + ch) * h * w..][..h * w];
        for (bin, o) in o.iter_mut().enumerate() {
            let i = r * bins + bin;
            let mut acc = 0f64;
            for &(idx, wt) in &plan.entries[plan.offsets[i]..plan.offsets[i + 1]] {
                acc += wt * src[idx as usize].to_f64();
            }
            *o = T::from_f64(acc);
        }
    });
    Ok((
        T::to_cpu_storage_owned(out),
        Shape::from((plan.num_rois(), c, bins)),
    ))
}

custom_op1!(Forward, "roi-align", forward_impl, {
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, _, _) = arg.dims4()?;
        let g = grad.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&Backward(self.0.clone(), n, c))?))
    }
});

/// Gradient w.r.t. the features: the plan transposed. One task per (image, channel)
/// plane visits that image's ROIs, so no two tasks write the same element.
struct Backward(Arc<RoiPlan>, usize, usize);

fn backward_impl<T: WithDType>(op: &Backward, (s, l): Input) -> Result<(CpuStorage, Shape)> {
    let plan = &op.0;
    let (n, c) = (op.1, op.2);
    let (h, w) = plan.plane;
    let bins = plan.bins;
    let g = contiguous::<T>(s, l)?;
    let mut by_image: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (r, &b) in plan.batch_index.iter().enumerate() {
        by_image[b].push(r);
    }
    let mut gin = vec![0f64; n * c * h * w];
    gin.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, gi)| {
            let (b, ch) = (plane / c, plane % c);
            for &r in &by_image[b] {
                let gr = &g[(r * c + ch) * bins..][..bins];
                for (bin, gv) in gr.iter().enumerate() {
                    let gv = gv.to_f64();
                    if gv == 0.0 {
                        continue;
                    }
                    let i = r * bins + bin;
                    for &(idx, wt) in &plan.entries[plan.offsets[i]..plan.offsets[i + 1]] {
                        gi[idx as usize] += wt * gv;
                    }
                }
            }
        });
    let gin: Vec<T> = gin.into_iter().map(T::from_f64).collect();
    Ok((T::to_cpu_storage_owned(gin), Shape::from((n, c, h, w))))
}

custom_op1!(Backward, "roi-align-backward", backward_impl);

/// Pools `rois` (image index, XYXY box in input pixels) from `features` (N, C, H, W)
/// into (R, C, out_h, out_w): the custom op on CPU, CUDA kernels on CUDA (f32, f64), the
/// portable path elsewhere.
/// f16/bf16 features (autocast) are pooled in f32 and the result handed back in their
/// dtype, as torchvision's autocast rule for `roi_align` does.
pub fn roi_align(features: &Tensor, rois: &[(usize, Box4)], p: &RoiAlignParams) -> Result<Tensor> {
    if matches!(features.dtype(), DType::F16 | DType::BF16) {
        return roi_align(&features.to_dtype(DType::F32)?, rois, p)?.to_dtype(features.dtype());
    }
    let (_, c, h, w) = features.dims4()?;
    let (ph, pw) = p.output_size;
    if rois.is_empty() {
        return Tensor::zeros((0, c, ph, pw), features.dtype(), features.device());
    }
    #[cfg(feature = "cuda")]
    if super::roi_align_cuda::supported(features) {
        return super::roi_align_cuda::roi_align(features, rois, p);
    }
    let plan = Arc::new(RoiPlan::new(rois, h, w, p));
    if features.device().is_cpu() {
        features
            .contiguous()?
            .apply_op1(Forward(plan))?
            .reshape((rois.len(), c, ph, pw))
    } else {
        roi_align_planned_portable(features, &plan, ph, pw)
    }
}

/// The same pooling from stock ops: gather every tap's channel vector, weight it, and
/// sum the taps of each bin with `index_add`. Runs (and differentiates) on any device.
pub fn roi_align_portable(
    features: &Tensor,
    rois: &[(usize, Box4)],
    p: &RoiAlignParams,
) -> Result<Tensor> {
    let (_, c, h, w) = features.dims4()?;
    let (ph, pw) = p.output_size;
    if rois.is_empty() {
        return Tensor::zeros((0, c, ph, pw), features.dtype(), features.device());
    }
    roi_align_planned_portable(features, &RoiPlan::new(rois, h, w, p), ph, pw)
}

fn roi_align_planned_portable(
    features: &Tensor,
    plan: &RoiPlan,
    ph: usize,
    pw: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    let dev = features.device();
    let r = plan.num_rois();
    let mut src = Vec::with_capacity(plan.entries.len());
    let mut dst = Vec::with_capacity(plan.entries.len());
    let mut wts = Vec::with_capacity(plan.entries.len());
    for i in 0..r * plan.bins {
        let base = (plan.batch_index[i / plan.bins] * h * w) as u32;
        for &(idx, wt) in &plan.entries[plan.offsets[i]..plan.offsets[i + 1]] {
            src.push(base + idx);
            dst.push(i as u32);
            wts.push(wt);
        }
    }
    // (N*H*W, C) rows, one per pixel.
    let rows = features.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
    let zeros = Tensor::zeros((r * plan.bins, c), features.dtype(), dev)?;
    if src.is_empty() {
        return zeros.reshape((r, ph, pw, c))?.permute((0, 3, 1, 2));
    }
    let e = src.len();
    let taps = rows.index_select(&Tensor::from_vec(src, e, dev)?, 0)?;
    let wts = Tensor::from_vec(wts, (e, 1), dev)?.to_dtype(features.dtype())?;
    let pooled = zeros.index_add(
        &Tensor::from_vec(dst, e, dev)?,
        &taps.broadcast_mul(&wts)?,
        0,
    )?;
    pooled
        .reshape((r, ph, pw, c))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}
