//! Detectron2's `WarmupMultiStepLR` and `WarmupCosineLR`, and PyTorch's
//! `ReduceLROnPlateau`, as pure functions of the iteration and of the validation metrics
//! seen before it, so a resumed run gets exactly the rate an uninterrupted one would.

use crate::config::{
    Config, ConfigError, LrSchedulerName, MetricMode, ThresholdMode, WarmupMethod,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    MultiStep { steps: Vec<usize>, gamma: f64 },
    Cosine { max_iter: usize },
    Plateau(Plateau),
}

/// PyTorch's `ReduceLROnPlateau`: one `step(metric)` per evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Plateau {
    pub mode: MetricMode,
    pub factor: f64,
    pub patience: usize,
    pub threshold: f64,
    pub threshold_mode: ThresholdMode,
    pub cooldown: usize,
    pub min_lr: f64,
}

/// PyTorch's `eps`: a reduction smaller than this is not applied.
const PLATEAU_EPS: f64 = 1e-8;

impl Plateau {
    /// Whether `a` improves on `best` (PyTorch's `is_better`).
    pub fn is_better(&self, a: f64, best: f64) -> bool {
        match (self.mode, self.threshold_mode) {
            (MetricMode::Max, ThresholdMode::Rel) => a > best * (1.0 + self.threshold),
            (MetricMode::Max, ThresholdMode::Abs) => a > best + self.threshold,
            (MetricMode::Min, ThresholdMode::Rel) => a < best * (1.0 - self.threshold),
            (MetricMode::Min, ThresholdMode::Abs) => a < best - self.threshold,
        }
    }

    /// The rate after stepping on each of `metrics` in turn, from `base_lr`.
    pub fn lr_after(&self, base_lr: f64, metrics: &[f64]) -> f64 {
        let mut best = match self.mode {
            MetricMode::Max => f64::NEG_INFINITY,
            MetricMode::Min => f64::INFINITY,
        };
        let (mut bad, mut cooldown, mut lr) = (0usize, 0usize, base_lr);
        for &m in metrics {
            if self.is_better(m, best) {
                best = m;
                bad = 0;
            } else {
                bad += 1;
            }
            if cooldown > 0 {
                cooldown -= 1;
                bad = 0;
            }
            if bad > self.patience {
                let new = (lr * self.factor).max(self.min_lr);
                if lr - new > PLATEAU_EPS {
                    lr = new;
                }
                cooldown = self.cooldown;
                bad = 0;
            }
        }
        lr
    }
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
            LrSchedulerName::ReduceLrOnPlateau => {
                if cfg.test.eval_period == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "{}: ReduceLROnPlateau steps at every evaluation, but {} is 0 \
                         (evaluation only at the end); set it, e.g. TEST.EVAL_PERIOD 1 \
                         TEST.EVAL_PERIOD_UNIT epochs",
                        cfg.located("SOLVER.LR_SCHEDULER_NAME"),
                        cfg.located("TEST.EVAL_PERIOD")
                    )));
                }
                let p = &s.plateau;
                Schedule::Plateau(Plateau {
                    mode: cfg.test.val_metric_mode,
                    factor: p.factor,
                    patience: p.patience,
                    threshold: p.threshold,
                    threshold_mode: p.threshold_mode,
                    cooldown: p.cooldown,
                    min_lr: p.min_lr,
                })
            }
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

    /// Whether the rate depends on the validation metric.
    pub fn needs_metric(&self) -> bool {
        matches!(self.schedule, Schedule::Plateau(_))
    }

    /// The learning rate used by the update of iteration `iter` (0-based); `metrics` are
    /// the validation metric's values of the evaluations before it, oldest first (only
    /// `ReduceLROnPlateau` reads them).
    pub fn lr(&self, iter: usize, metrics: &[f64]) -> f64 {
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
        if let Schedule::Plateau(p) = &self.schedule {
            return warm * p.lr_after(self.base_lr, metrics);
        }
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
            Schedule::Plateau(_) => 1.0,
        };
        self.base_lr * warm * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl LrScheduler {
        fn lr_at(&self, iter: usize) -> f64 {
            self.lr(iter, &[])
        }
    }

    fn plateau(patience: usize, cooldown: usize) -> Plateau {
        Plateau {
            mode: MetricMode::Max,
            factor: 0.1,
            patience,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown,
            min_lr: 1e-6,
        }
    }

    #[test]
    fn plateau_follows_pytorch() {
        // torch.optim.lr_scheduler.ReduceLROnPlateau(opt(lr=0.01), "max", factor=0.1,
        // patience=2, min_lr=1e-6), stepped on these values, gives after each step:
        let metrics = [
            0.5, 0.6, 0.6, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7,
        ];
        let want = [
            0.01, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 0.001, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5,
        ];
        let p = plateau(2, 0);
        for (k, w) in want.iter().enumerate() {
            let got = p.lr_after(0.01, &metrics[..=k]);
            assert!((got - w).abs() < 1e-15, "after step {k}: {got} != {w}");
        }
        // The floor: never below MIN_LR, and a reduction of less than eps is skipped.
        let flat = vec![0.5; 40];
        assert!((p.lr_after(0.01, &flat) - 1e-6).abs() < 1e-18);
        // Cooldown 1: the evaluation after a reduction does not count as bad.
        let c = plateau(0, 1);
        assert!((c.lr_after(1.0, &[0.5, 0.5]) - 0.1).abs() < 1e-15);
        assert!((c.lr_after(1.0, &[0.5, 0.5, 0.5]) - 0.1).abs() < 1e-15);
        assert!((c.lr_after(1.0, &[0.5, 0.5, 0.5, 0.5]) - 0.01).abs() < 1e-15);
        // Min mode with an absolute threshold: 0.95 is not 0.1 below 1.0.
        let m = Plateau {
            mode: MetricMode::Min,
            threshold: 0.1,
            threshold_mode: ThresholdMode::Abs,
            ..plateau(0, 0)
        };
        assert!((m.lr_after(1.0, &[1.0, 0.95]) - 0.1).abs() < 1e-15);
        assert_eq!(m.lr_after(1.0, &[1.0, 0.85]), 1.0);
    }

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
        assert!((s.lr_at(0) - 0.1 * 0.001).abs() < 1e-12);
        assert!((s.lr_at(1) - 0.1 * (0.001 * 0.8 + 0.2)).abs() < 1e-12);
        assert!((s.lr_at(5) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(9) - 0.1).abs() < 1e-12);
        assert!(
            (s.lr_at(10) - 0.01).abs() < 1e-12,
            "bisect_right: the step iteration already decays"
        );
        assert!((s.lr_at(25) - 0.001).abs() < 1e-12);
        let c = LrScheduler {
            schedule: Schedule::Cosine { max_iter: 100 },
            warmup_iters: 0,
            ..s
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(50) - 0.05).abs() < 1e-12);
        assert_eq!(c.lr_at(100), 0.0);
    }
}
