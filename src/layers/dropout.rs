//! Dropout whose mask comes from each sample's own seed (the loader gives every sample
//! one, from the run's seed and its place in the stream): a resumed run drops exactly
//! the units the uninterrupted one dropped, and a sample's mask does not depend on which
//! batch or process it lands in. Candle's `dropout` draws from the device's global
//! generator, which no seed or checkpoint reaches.

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};

/// Separates the dropout stream from the sample's other uses of its seed.
const STREAM: u64 = 0xd7_0f0d_5eed;

/// Inverted dropout on the rows of `x` (N, F): each unit zeroed with probability `p`,
/// the rest scaled by 1 / (1 - p). `seeds` has one seed per row; without them (inputs
/// built by hand) the mask is Candle's unseeded one.
pub fn dropout_rows(x: &Tensor, p: f32, seeds: &[u64]) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let (n, f) = x.dims2()?;
    if seeds.len() != n {
        return candle_nn::ops::dropout(x, p);
    }
    let keep = 1.0 / (1.0 - p);
    let mut mask = Vec::with_capacity(n * f);
    for &seed in seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ STREAM);
        mask.extend((0..f).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }));
    }
    let mask = Tensor::from_vec(mask, (n, f), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_mask_is_the_rows_seed_and_keeps_the_expectation() {
        let x = Tensor::ones((2, 4000), candle_core::DType::F32, &Device::Cpu).unwrap();
        let a = dropout_rows(&x, 0.2, &[1, 2]).unwrap();
        let b = dropout_rows(&x, 0.2, &[9, 2]).unwrap();
        let rows = |t: &Tensor| t.to_vec2::<f32>().unwrap();
        // Row 1 has the same seed in both: the same mask; row 0 does not.
        assert_eq!(rows(&a)[1], rows(&b)[1]);
        assert_ne!(rows(&a)[0], rows(&b)[0]);
        let r = &rows(&a)[0];
        assert!(r.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
        let mean = r.iter().sum::<f32>() / r.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        assert_eq!(rows(&dropout_rows(&x, 0.0, &[]).unwrap()), rows(&x));
    }
}
