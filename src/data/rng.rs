//! Per-sample random numbers. Every sample gets its own generator seeded from the run's
//! seed and the sample's position in the sampler stream, so augmentations do not depend on
//! which worker thread handles the sample or in what order.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct SampleRng(StdRng);

impl SampleRng {
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    pub fn coin(&mut self) -> bool {
        self.0.random_bool(0.5)
    }

    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0.random_range(lo..hi)
    }
}

/// Derives an independent seed from two numbers (SplitMix64 finaliser on both).
pub fn mix_seed(a: u64, b: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(splitmix(a) ^ b)
}
