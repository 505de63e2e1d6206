//! Detectron2's `WarmupMultiStepLR` and `WarmupCosineLR` as pure functions of the
//! iteration, so a resumed run gets exactly the rate an uninterrupted one would.

use crate::config::{Config, ConfigError, LrSchedulerName, WarmupMethod};

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    MultiStep { steps: Vec<usize>, gamma: f64 },
    Cosine { max_iter: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    pub base_lr: f64,
    pub schedule: Schedule,
    pub warmup_iters: usize,
    pub warmup_factor: f64,
    /// Linear ramp from `warmup_factor` to 1, or constant `warmup_factor`.
    pub warmup_linear: bool,
}

impl LrScheduler {
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let s = &cfg.solver;
        let schedule = match s.lr_scheduler_name {
            LrSchedulerName::WarmupMultiStep => {
                if s.steps.windows(2).any(|w| w[0] > w[1]) {
                    return Err(
                        format!("SOLVER.STEPS must be increasing, got {:?}", s.steps).into(),
                    );
                }
                Schedule::MultiStep {
                    steps: s.steps.clone(),
                    gamma: s.gamma,
                }
            }
            LrSchedulerName::WarmupCosine => Schedule::Cosine {
                max_iter: s.max_iter,
            },
        };
        let warmup_linear = s.warmup_method == WarmupMethod::Linear;
        Ok(Self {
            base_lr: s.base_lr,
            schedule,
            warmup_iters: s.warmup_iters,
            warmup_factor: s.warmup_factor,
            warmup_linear,
        })
    }

    /// The learning rate used by the update of iteration `iter` (0-based).
    pub fn lr(&self, iter: usize) -> f64 {
        let warm = if iter < self.warmup_iters {
            if self.warmup_linear {
                let alpha = iter as f64 / self.warmup_iters as f64;
                self.warmup_factor * (1.0 - alpha) + alpha
            } else {
                self.warmup_factor
            }
        } else {
            1.0
        };
        let decay = match &self.schedule {
            Schedule::MultiStep { steps, gamma } => {
                gamma.powi(steps.iter().filter(|&&s| s <= iter).count() as i32)
            }
            Schedule::Cosine { max_iter } => {
                if iter >= *max_iter {
                    0.0
                } else {
                    0.5 * (1.0 + (std::f64::consts::PI * iter as f64 / *max_iter as f64).cos())
                }
            }
        };
        self.base_lr * warm * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_steps_and_cosine() {
        let s = LrScheduler {
            base_lr: 0.1,
            schedule: Schedule::MultiStep {
                steps: vec![10, 20],
                gamma: 0.1,
            },
            warmup_iters: 5,
            warmup_factor: 0.001,
            warmup_linear: true,
        };
        assert!((s.lr(0) - 0.1 * 0.001).abs() < 1e-12);
        assert!((s.lr(1) - 0.1 * (0.001 * 0.8 + 0.2)).abs() < 1e-12);
        assert!((s.lr(5) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 0.1).abs() < 1e-12);
        assert!(
            (s.lr(10) - 0.01).abs() < 1e-12,
            "bisect_right: the step iteration already decays"
        );
        assert!((s.lr(25) - 0.001).abs() < 1e-12);
        let c = LrScheduler {
            schedule: Schedule::Cosine { max_iter: 100 },
            warmup_iters: 0,
            ..s
        };
        assert!((c.lr(0) - 0.1).abs() < 1e-12);
        assert!((c.lr(50) - 0.05).abs() < 1e-12);
        assert_eq!(c.lr(100), 0.0);
    }
}
