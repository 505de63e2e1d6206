//! What a run has learned about itself besides the weights and the optimizer: every
//! evaluation's metrics and the current epoch's running sums. `ReduceLROnPlateau`, the
//! best checkpoint and early stopping are pure functions of the evaluation history, and
//! the state travels in every checkpoint, so a resumed run decides exactly as an
//! uninterrupted one (Detectron2's `EventStorage` plays this part there, but is not saved).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, MetricMode};
use crate::error::{Error, Result};

/// The metrics of the evaluation after `iteration` (0-based).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub iteration: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// Sums over the iterations of the epoch in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    pub iterations: usize,
    pub sums: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub evals: Vec<EvalRecord>,
    pub epoch: EpochSums,
}

impl TrainState {
    pub fn to_json(&self) -> String {
        // Non-finite metrics have no JSON form; they never count as an improvement either.
        let mut clean = self.clone();
        for e in &mut clean.evals {
            e.metrics.retain(|_, v| v.is_finite());
        }
        for v in clean.epoch.sums.values_mut() {
            if !v.is_finite() {
                *v = 0.0;
            }
        }
        serde_json::to_string(&clean).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("bad training state: {e}"))
    }
}

/// The metric a run watches (`TEST.VAL_METRIC`, `TEST.VAL_METRIC_MODE`).
#[derive(Debug, Clone, PartialEq)]
pub struct ValMetric {
    /// Empty: the first of [`HEADLINE_METRICS`] an evaluation reports.
    pub name: String,
    pub mode: MetricMode,
}

/// The headline metric of each task, in the order an empty `TEST.VAL_METRIC` tries them.
pub const HEADLINE_METRICS: [&str; 4] = ["top1", "mAP", "AP", "easy"];

impl ValMetric {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            name: cfg.test.val_metric.clone(),
            mode: cfg.test.val_metric_mode,
        }
    }

    /// The watched value in one evaluation's metrics; several test sets prefix their
    /// metrics with the dataset name, and the default then reads the first set's.
    pub fn value(&self, metrics: &BTreeMap<String, f64>) -> Result<f64> {
        Ok(self.resolve(metrics)?.1)
    }

    /// The watched metric's key and value in one evaluation's metrics.
    pub fn resolve(&self, metrics: &BTreeMap<String, f64>) -> Result<(String, f64)> {
        if !self.name.is_empty() {
            return metrics
                .get(&self.name)
                .map(|v| (self.name.clone(), *v))
                .ok_or_else(|| {
                    Error::run(format!(
                        "TEST.VAL_METRIC `{}` is not among the evaluation's metrics: {}",
                        self.name,
                        metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                });
        }
        for h in HEADLINE_METRICS {
            if let Some(v) = metrics.get(h) {
                return Ok((h.to_string(), *v));
            }
            let suffix = format!("/{h}");
            if let Some((k, v)) = metrics.iter().find(|(k, _)| k.ends_with(&suffix)) {
                return Ok((k.clone(), *v));
            }
        }
        Err(Error::run(format!(
            "the evaluation reports none of {}; set TEST.VAL_METRIC to one of: {}",
            HEADLINE_METRICS.join(", "),
            metrics.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }

    /// The name shown in messages.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            "the headline metric"
        } else {
            &self.name
        }
    }

    /// Strictly better (Detectron2's `BestCheckpointer` compare); NaN never is.
    pub fn better(&self, a: f64, best: f64) -> bool {
        match self.mode {
            MetricMode::Max => a > best,
            MetricMode::Min => a < best,
        }
    }

    /// The watched values of `evals`, oldest first.
    pub fn history(&self, evals: &[EvalRecord]) -> Result<Vec<f64>> {
        evals.iter().map(|e| self.value(&e.metrics)).collect()
    }

    /// The best evaluation so far: (value, iteration), the earliest among equals.
    pub fn best(&self, evals: &[EvalRecord]) -> Result<Option<(f64, usize)>> {
        let mut best: Option<(f64, usize)> = None;
        for e in evals {
            let v = self.value(&e.metrics)?;
            if !v.is_finite() {
                continue;
            }
            if best.is_none_or(|(b, _)| self.better(v, b)) {
                best = Some((v, e.iteration));
            }
        }
        Ok(best)
    }

    /// Evaluations since the best one (0 when the latest is the best).
    pub fn evals_without_improvement(&self, evals: &[EvalRecord]) -> Result<usize> {
        let Some((_, at)) = self.best(evals)? else {
            return Ok(evals.len());
        };
        Ok(evals.iter().filter(|e| e.iteration > at).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(iteration: usize, top1: f64) -> EvalRecord {
        EvalRecord {
            iteration,
            metrics: [("top1".to_string(), top1), ("loss".to_string(), 1.0 - top1)].into(),
        }
    }

    #[test]
    fn best_and_patience_count_strict_improvements() {
        let evals = vec![rec(9, 0.5), rec(19, 0.7), rec(29, 0.7), rec(39, 0.6)];
        let max = ValMetric {
            name: String::new(),
            mode: MetricMode::Max,
        };
        assert_eq!(max.best(&evals).unwrap(), Some((0.7, 19)));
        assert_eq!(max.evals_without_improvement(&evals).unwrap(), 2);
        let min = ValMetric {
            name: "loss".into(),
            mode: MetricMode::Min,
        };
        let (v, at) = min.best(&evals).unwrap().unwrap();
        assert!((v - 0.3).abs() < 1e-12 && at == 19);
        let bad = ValMetric {
            name: "AP".into(),
            mode: MetricMode::Max,
        };
        let e = bad.best(&evals).unwrap_err().to_string();
        assert!(
            e.contains("TEST.VAL_METRIC `AP`") && e.contains("loss, top1"),
            "{e}"
        );
        // Prefixed metrics of several test sets: the default reads the first headline.
        let m: BTreeMap<String, f64> = [("a/top1".to_string(), 0.25)].into();
        assert_eq!(max.value(&m).unwrap(), 0.25);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = TrainState {
            evals: vec![rec(9, 0.1 + 0.2)],
            ..Default::default()
        };
        s.epoch.iterations = 3;
        s.epoch.sums.insert("total_loss".into(), 1.0 / 3.0);
        assert_eq!(TrainState::from_json(&s.to_json()).unwrap(), s);
        assert!(TrainState::from_json("{").is_err());
    }
}
