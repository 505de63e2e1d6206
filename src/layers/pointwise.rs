//! 1x1 convolution + bias + activation for inference, in one pass over memory.
//!
//! Through stock ops this is a matmul that writes the whole output, then a second pass
//! that reads and rewrites it for the bias and activation; at 640 px MobileNetV2's
//! expanded tensors are tens of MB, so that second pass streams from DRAM. Here the
//! output is cut into column blocks (pixels), each block is one single-threaded gemm
//! call, and the bias and activation run on the block while it is still in cache. The
//! blocks are the unit of parallelism, so nothing is nested inside gemm's own threads.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::Activation;

/// Output values per block (channels x pixels) that stay comfortably in L2.
const BLOCK_VALUES: usize = 1 << 15;

/// `act(W x + b)` for `x` (N, C, H, W), `W` (O, C, 1, 1), `b` (O). CPU, f32, no gradient.
pub(crate) struct PointwiseBiasAct(pub Activation);

/// The output buffer shared by the blocks, which write disjoint column ranges.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every block writes only its own (image, column range) cells; see `cpu_fwd`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method rather than the field, so closures capture the `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl CustomOp3 for PointwiseBiasAct {
    fn name(&self) -> &'static str {
        "pointwise-conv-bias-act"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "pointwise conv";
        let (x, w, b) = (
            super::cpu_slice::<f32>(xs, xl, op)?,
            super::cpu_slice::<f32>(ws, wl, op)?,
            super::cpu_slice::<f32>(bs, bl, op)?,
        );
        let (n, c, h, wd) = xl.shape().dims4()?;
        let (o, wc, kh, kw) = wl.shape().dims4()?;
        if wc != c || kh != 1 || kw != 1 || b.len() != o {
            candle_core::bail!(
                "{op}: weight {:?} and bias {:?} do not fit input {:?}",
                wl.shape(),
                bl.shape(),
                xl.shape()
            );
        }
        let hw = h * wd;
        let cols = (BLOCK_VALUES / o.max(1)).clamp(16, hw.max(16));
        let blocks_per_image = hw.div_ceil(cols);
        let len = n * o * hw;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let dst = OutPtr(out.as_mut_ptr());
        let act = self.0;
        (0..n * blocks_per_image).into_par_iter().for_each(|task| {
            let (img, blk) = (task / blocks_per_image, task % blocks_per_image);
            let col0 = blk * cols;
            let width = cols.min(hw - col0);
            let rhs = &x[img * c * hw..(img + 1) * c * hw];
            // SAFETY: `dst` has capacity `n * o * hw`; this task writes rows `0..o` of
            // columns `col0..col0 + width` of image `img`, which no other task touches,
            // and gemm with `read_dst = false` never reads them before writing. The
            // strides describe the row-major (o, hw) output and (c, hw) input planes.
            unsafe {
                let out_img = dst.get().add(img * o * hw);
                gemm::gemm(
                    o,
                    width,
                    c,
                    out_img.add(col0),
                    1,
                    hw as isize,
                    false,
                    w.as_ptr(),
                    1,
                    c as isize,
                    rhs.as_ptr().add(col0),
                    1,
                    hw as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (ch, &bias) in b.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(out_img.add(ch * hw + col0), width);
                    super::fused::bias_act_in_place(act, row, bias);
                }
            }
        });
        // SAFETY: the tasks above cover every (image, channel, column) cell once.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((n, o, h, wd))))
    }
}
