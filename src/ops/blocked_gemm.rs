//! Convolutions as matrix products over blocks of output pixels, each block one
//! single-threaded gemm call with its operand built (or read) while it is in cache.
//!
//! The blocks, not gemm's own threads, are the unit of parallelism, so nothing nests
//! inside rayon's pool; an epilogue (bias, activation) runs on each finished block
//! before it leaves cache.

use candle_core::WithDType;
use rayon::prelude::*;

/// Values per block (rows x pixels of the output, or of its right-hand operand) that
/// stay comfortably in L2.
pub(crate) const BLOCK_VALUES: usize = 1 << 15;

/// Pixels per block for a product whose tallest operand has `rows` rows, over planes of
/// `pixels` pixels.
pub(crate) fn block_width(rows: usize, pixels: usize) -> usize {
    (BLOCK_VALUES / rows.max(1)).clamp(16, pixels.max(16))
}

/// The right-hand operand of an image's product, block by block.
pub(crate) trait Rhs<T>: Sync {
    /// Its rows (the product's inner dimension).
    fn rows(&self) -> usize;
    /// Columns `col0..col0 + width` of image `img`'s operand: a pointer to its first
    /// value and its row stride. `scratch` is this task's buffer, for operands that are
    /// built rather than read; the pointer stays valid while `scratch` is untouched.
    fn block(
        &self,
        scratch: &mut Vec<T>,
        img: usize,
        col0: usize,
        width: usize,
    ) -> (*const T, usize);
}

/// The output buffer shared by the blocks, which write disjoint column ranges.
struct OutPtr<T>(*mut T);
// SAFETY: every block writes only its own (image, column range) cells; see
// `blocked_matmul`.
impl<T> Clone for OutPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for OutPtr<T> {}
unsafe impl<T> Send for OutPtr<T> {}
unsafe impl<T> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// A method rather than the field, so closures capture the `Sync` wrapper.
    fn get(self) -> *mut T {
        self.0
    }
}

/// `out[img] = W rhs[img]` for `n` images of `pixels` columns, `W` (o, rhs.rows())
/// row-major, as column blocks of `width` pixels; then `epilogue(channel, row)` on each
/// row of the block while it is in cache. Returns (n, o, pixels).
pub(crate) fn blocked_matmul<T: WithDType>(
    w: &[T],
    (n, pixels, o): (usize, usize, usize),
    width: usize,
    rhs: &impl Rhs<T>,
    epilogue: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let k = rhs.rows();
    assert_eq!(
        w.len(),
        o * k,
        "gemm: weight of {} values for {o} x {k}",
        w.len()
    );
    let width = width.max(1);
    let blocks_per_image = pixels.div_ceil(width);
    let len = n * o * pixels;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    (0..n * blocks_per_image)
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, task| {
            let (img, blk) = (task / blocks_per_image, task % blocks_per_image);
            let col0 = blk * width;
            let cols = width.min(pixels - col0);
            let (rhs_ptr, rhs_rs) = rhs.block(scratch, img, col0, cols);
            // SAFETY: `dst` has capacity `n * o * pixels`; this task writes rows `0..o`
            // of columns `col0..col0 + cols` of image `img`, which no other task touches,
            // and gemm with `read_dst = false` never reads them before writing. The
            // strides describe the row-major (o, pixels) output plane, the row-major
            // weight and the operand block `rhs` described.
            unsafe {
                let out_img = dst.get().add(img * o * pixels);
                gemm::gemm(
                    o,
                    cols,
                    k,
                    out_img.add(col0),
                    1,
                    pixels as isize,
                    false,
                    w.as_ptr(),
                    1,
                    k as isize,
                    rhs_ptr,
                    1,
                    rhs_rs as isize,
                    T::zero(),
                    T::one(),
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for ch in 0..o {
                    epilogue(
                        ch,
                        std::slice::from_raw_parts_mut(out_img.add(ch * pixels + col0), cols),
                    );
                }
            }
        });
    // SAFETY: the tasks above cover every (image, channel, column) cell once.
    unsafe { out.set_len(len) };
    out
}

/// An (n, rows, pixels) tensor read in place: the 1x1 conv's operand.
pub(crate) struct Planes<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub pixels: usize,
}

impl<T: WithDType> Rhs<T> for Planes<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn block(&self, _: &mut Vec<T>, img: usize, col0: usize, _: usize) -> (*const T, usize) {
        let plane = &self.data[img * self.rows * self.pixels..][..self.rows * self.pixels];
        (plane[col0..].as_ptr(), self.pixels)
    }
}
