//! Helpers of the unit tests that compare the host and the device forms of the training
//! targets and losses.

use candle_core::Tensor;

use crate::structures::boxes::Box4;

/// A linear congruential generator: the same boxes on every platform and `rand` version.
pub struct Lcg(pub u32);

impl Lcg {
    pub fn below(&mut self, m: u32) -> u32 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (self.0 >> 8) % m
    }

    /// `count` boxes with their top-left corner below `span` and sides of `min_side`
    /// plus less than `extra`.
    pub fn boxes(&mut self, count: usize, span: u32, min_side: f32, extra: u32) -> Vec<Box4> {
        (0..count)
            .map(|_| {
                let (x, y) = (self.below(span) as f32, self.below(span) as f32);
                let w = min_side + self.below(extra) as f32;
                let h = min_side + self.below(extra) as f32;
                [x, y, x + w, y + h]
            })
            .collect()
    }
}

/// The largest absolute value of `t`.
#[allow(clippy::disallowed_methods)]
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .unwrap()
}
