//! 2x nearest-neighbour upsampling for FPN top-down paths.
//!
//! Candle's `upsample_nearest2d` differentiates through a grouped convolution (one
//! per channel, see `ops::depthwise`). Here the forward is a broadcast of each pixel
//! to a 2x2 block followed by a reshape, so the backward is a plain sum over each block,
//! on every device.

use candle_core::{Result, Tensor};

/// (N, C, H, W) -> (N, C, 2H, 2W), each input pixel repeated in a 2x2 block.
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((n, c, 2 * h, 2 * w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_matches_candle_and_backward_sums_blocks() {
        let x = Var::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let ours = upsample_nearest_2x(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().upsample_nearest2d(8, 10).unwrap();
        let d = crate::ops::max_abs_diff(&ours, &theirs);
        assert_eq!(d, 0.0);
        // d/dx sum(up(x) * r) = the sum of r over each 2x2 block.
        let r = Tensor::randn(0f32, 1.0, (2, 3, 8, 10), &Device::Cpu).unwrap();
        let g = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let got = g.get(x.as_tensor()).unwrap();
        let want = r
            .reshape((2, 3, 4, 2, 5, 2))
            .unwrap()
            .sum(5)
            .unwrap()
            .sum(3)
            .unwrap();
        let d = crate::ops::max_abs_diff(got, &want);
        assert!(d < 1e-5, "{d}");
    }
}
