//! Dynamic loss scaling for float16 training, with the rule and defaults of PyTorch's
//! `torch.amp.GradScaler`: the loss is multiplied by the scale before the backward pass,
//! so that small gradients survive float16's narrow range, and the gradients are divided
//! by it before the update. A step whose gradients hold an inf or a NaN is skipped and
//! the scale multiplied by `backoff_factor`; after `growth_interval` good steps in a row
//! it is multiplied by `growth_factor`.
//!
//! The decision is taken on the device (the optimizer masks its own update), so the step
//! keeps its single host read; [`GradScaler::update`] then runs on the host with what
//! that read returned.

/// PyTorch's defaults: `init_scale=2.**16, growth_factor=2.0, backoff_factor=0.5,
/// growth_interval=2000`.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
    /// Good steps since the scale last changed.
    growth_tracker: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self::new(65536.0, 2.0, 0.5, 2000)
    }
}

impl GradScaler {
    pub fn new(
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: u64,
    ) -> Self {
        Self {
            scale: init_scale,
            growth_factor,
            backoff_factor,
            growth_interval: growth_interval.max(1),
            growth_tracker: 0,
        }
    }

    /// The factor the loss is multiplied by in this step.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// After a step whose gradients were (`found_inf`) or were not finite: PyTorch's
    /// `_amp_update_scale_`. A grown scale that would overflow is not taken.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            return;
        }
        self.growth_tracker += 1;
        if self.growth_tracker == self.growth_interval {
            let grown = self.scale * self.growth_factor;
            if grown.is_finite() && grown <= f32::MAX as f64 {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        }
    }

    /// The scale and the good-step count, for checkpoints (exact resume).
    pub fn state(&self) -> [(&'static str, f64); 2] {
        [
            ("scale", self.scale),
            ("growth_tracker", self.growth_tracker as f64),
        ]
    }

    /// Restores what [`state`](Self::state) saved; a value that cannot be a scale (not
    /// finite, not positive) is an error naming it.
    pub fn load_state(&mut self, scale: f64, growth_tracker: f64) -> Result<(), String> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!(
                "the saved loss scale {scale} is not a positive number"
            ));
        }
        if !(growth_tracker.is_finite() && growth_tracker >= 0.0) {
            return Err(format!(
                "the saved loss-scale growth count {growth_tracker} is not a count"
            ));
        }
        self.scale = scale;
        self.growth_tracker = growth_tracker as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence PyTorch's `GradScaler` produces for the same found-inf pattern.
    #[test]
    fn backs_off_on_overflow_and_grows_after_the_interval() {
        let mut s = GradScaler::new(8.0, 2.0, 0.5, 3);
        s.update(false);
        s.update(false);
        assert_eq!(s.scale(), 8.0);
        s.update(false);
        assert_eq!(s.scale(), 16.0, "grown after 3 good steps");
        s.update(false);
        s.update(true);
        assert_eq!(s.scale(), 8.0, "halved, count reset");
        s.update(false);
        s.update(false);
        assert_eq!(s.scale(), 8.0, "2 good steps since the overflow");
        s.update(false);
        assert_eq!(s.scale(), 16.0);
        assert_eq!(GradScaler::default().scale(), 65536.0);

        let mut big = GradScaler::new(f32::MAX as f64, 2.0, 0.5, 1);
        big.update(false);
        assert_eq!(
            big.scale(),
            f32::MAX as f64,
            "an overflowing growth is not taken"
        );
    }

    #[test]
    fn state_round_trips_and_bad_values_are_refused() {
        let mut s = GradScaler::new(1024.0, 2.0, 0.5, 10);
        s.update(false);
        s.update(false);
        let [(_, scale), (_, tracker)] = s.state();
        let mut t = GradScaler::default();
        t.load_state(scale, tracker).unwrap();
        assert_eq!(t.scale(), 1024.0);
        assert_eq!(t.growth_tracker, 2);
        assert!(t
            .load_state(f64::NAN, 0.0)
            .unwrap_err()
            .contains("loss scale"));
        assert!(t.load_state(0.0, 0.0).is_err());
        assert!(t
            .load_state(2.0, -1.0)
            .unwrap_err()
            .contains("growth count"));
    }
}
