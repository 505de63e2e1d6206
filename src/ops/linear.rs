//! The fully connected layer's arithmetic, `x W^T + b`, shared by the box head and the
//! classifier, so that narrow (autocast) inputs take the same CPU route as convolutions.

use candle_core::{DType, Result, Tensor};

use super::conv::narrow_on_cpu;

/// (R, in) with `weight` (out, in) and `bias` (out) -> (R, out), in the operands' dtype.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if let Some(dt) = narrow_on_cpu(x) {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let bias = bias.map(f32).transpose()?;
        return linear(&f32(x)?, &f32(weight)?, bias.as_ref())?.to_dtype(dt);
    }
    let y = x.matmul(&weight.t()?)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// By hand, and in bf16 as the f32 product of the rounded operands, rounded.
    #[test]
    fn matches_a_hand_computed_product_in_f32_and_bf16() {
        let x = Tensor::new(&[[1.0f32, 2.0, 3.0], [-1.0, 0.5, 0.0]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[1.0f32, 0.0, -1.0], [0.25, 0.25, 0.25]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[10.0f32, -1.0], &Device::Cpu).unwrap();
        let y = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            vec![vec![8.0, 0.5], vec![9.0, -1.125]]
        );
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let y = linear(&bf(&x), &bf(&w), Some(&bf(&b))).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        assert_eq!(
            y.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![8.0, 0.5], vec![9.0, -1.125]]
        );
    }
}
