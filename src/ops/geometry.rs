//! The geometry of a 2-D convolution, shared by every conv op and by the `Conv2d` layer.

use candle_core::{Result, Shape};

/// How a convolution slides its kernel over the input. The ops take it as their
/// parameter; the shapes of one call are resolved into [`ConvDims`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Default for ConvGeometry {
    fn default() -> Self {
        Self::new(1, 0, 1)
    }
}

impl ConvGeometry {
    pub const fn new(stride: usize, padding: usize, dilation: usize) -> Self {
        Self {
            stride,
            padding,
            dilation,
        }
    }

    /// "Same" padding for an odd `kernel` (the output is the input divided by `stride`).
    pub const fn same(kernel: usize, stride: usize) -> Self {
        Self::new(stride, (kernel - 1) / 2, 1)
    }

    /// The output length of `size` input cells under a `k`-tap kernel.
    pub fn out_size(&self, size: usize, k: usize) -> Result<usize> {
        if self.stride == 0 || self.dilation == 0 || k == 0 {
            candle_core::bail!(
                "conv: stride, dilation and kernel must be positive, got {self:?} with kernel {k}"
            );
        }
        let span = self.dilation * (k - 1) + 1;
        if size + 2 * self.padding < span {
            candle_core::bail!(
                "conv: input size {size} too small for kernel {k} (padding {}, dilation {})",
                self.padding,
                self.dilation
            );
        }
        Ok((size + 2 * self.padding - span) / self.stride + 1)
    }

    /// The dims of a depthwise conv (one filter per channel, square kernel): input
    /// (N, C, H, W), weight (C, 1, K, K).
    pub(crate) fn depthwise_dims(&self, x: &Shape, w: &Shape) -> Result<ConvDims> {
        let (n, c, h, wd) = x.dims4()?;
        let (wc, one, k, k2) = w.dims4()?;
        if wc != c || one != 1 || k != k2 {
            candle_core::bail!("depthwise conv: weight {w:?} does not fit input {x:?}");
        }
        self.resolve(n, c, h, wd, c, k)
    }

    /// The dims of an ungrouped conv with a square kernel: input (N, C, H, W), weight
    /// (O, C, K, K).
    pub(crate) fn dense_dims(&self, x: &Shape, w: &Shape) -> Result<ConvDims> {
        let (n, c, h, wd) = x.dims4()?;
        let (o, wc, k, k2) = w.dims4()?;
        if wc != c || k != k2 {
            candle_core::bail!("conv: weight {w:?} does not fit input {x:?}");
        }
        self.resolve(n, c, h, wd, o, k)
    }

    fn resolve(
        &self,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        o: usize,
        k: usize,
    ) -> Result<ConvDims> {
        Ok(ConvDims {
            n,
            c,
            h,
            w,
            o,
            k,
            ho: self.out_size(h, k)?,
            wo: self.out_size(w, k)?,
        })
    }
}

/// One call's sizes: `n` images of `c` x `h` x `w` in, `o` x `ho` x `wo` out, a `k` x `k`
/// kernel (a depthwise conv has `o == c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvDims {
    /// Checks that an output gradient has this call's output shape.
    pub fn check_grad(self, g: &Shape, what: &str) -> Result<Self> {
        if g.dims4()? != (self.n, self.o, self.ho, self.wo) {
            candle_core::bail!(
                "{what}: gradient {g:?} does not fit the conv's output {:?}",
                (self.n, self.o, self.ho, self.wo)
            );
        }
        Ok(self)
    }

    pub fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_size_follows_pytorch() {
        // floor((size + 2p - d(k-1) - 1) / s) + 1
        let g = ConvGeometry::new(2, 1, 1);
        assert_eq!(g.out_size(224, 3).unwrap(), 112);
        assert_eq!(g.out_size(7, 3).unwrap(), 4);
        assert_eq!(ConvGeometry::new(1, 2, 2).out_size(14, 3).unwrap(), 14);
        assert!(ConvGeometry::new(1, 0, 1).out_size(2, 3).is_err());
        assert!(ConvGeometry::new(0, 0, 1).out_size(8, 3).is_err());
    }

    #[test]
    fn dims_check_the_weight() {
        let g = ConvGeometry::same(3, 1);
        let d = g
            .depthwise_dims(&(2, 8, 5, 6).into(), &(8, 1, 3, 3).into())
            .unwrap();
        assert_eq!((d.o, d.ho, d.wo), (8, 5, 6));
        assert!(g
            .depthwise_dims(&(2, 8, 5, 6).into(), &(4, 1, 3, 3).into())
            .is_err());
        let d = g
            .dense_dims(&(2, 8, 5, 6).into(), &(16, 8, 3, 3).into())
            .unwrap();
        assert_eq!((d.o, d.k), (16, 3));
        assert!(g
            .dense_dims(&(2, 8, 5, 6).into(), &(16, 8, 3, 1).into())
            .is_err());
        assert!(d.check_grad(&(2, 16, 5, 6).into(), "t").is_ok());
        assert!(d.check_grad(&(2, 16, 5, 5).into(), "t").is_err());
    }
}
