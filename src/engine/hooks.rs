//! The hooks of a training run (Detectron2's `engine/hooks.py`): metrics and progress,
//! periodic evaluation, the best model, per-epoch training statistics and their curves.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::checkpointer::{CheckpointMeta, Checkpointer};
use super::train_state::{EvalRecord, ValMetric};
use super::trainer::{Hook, TrainContext};
use crate::error::{Error, Result};
use crate::modeling::Model;
use crate::utils::curves::{plot_training_curves, Curve};

/// Runs `eval` every `period` iterations and after the last one (Detectron2's
/// `EvalHook`), records the metrics in the run's state and in `metrics.json`. When
/// something watches the validation metric, an evaluation without it is an error at
/// once, not at the end of the run.
pub struct EvalHook<F: FnMut(&Model) -> Result<BTreeMap<String, f64>>> {
    pub period: usize,
    pub eval: F,
    pub metrics_file: PathBuf,
    pub watched: Option<ValMetric>,
}

impl<F: FnMut(&Model) -> Result<BTreeMap<String, f64>>> EvalHook<F> {
    fn run(&mut self, ctx: &mut TrainContext) -> Result<()> {
        let m = (self.eval)(ctx.model)?;
        if let Some(w) = &self.watched {
            w.value(&m)?;
        }
        tracing::info!("evaluation after iteration {}: {m:?}", ctx.iter + 1);
        let mut obj = serde_json::Map::new();
        obj.insert("iteration".into(), ctx.iter.into());
        for (k, v) in &m {
            obj.insert(format!("eval/{k}"), (*v).into());
        }
        append_line(
            &self.metrics_file,
            &serde_json::Value::Object(obj).to_string(),
        )?;
        ctx.state.evals.push(EvalRecord {
            iteration: ctx.iter,
            metrics: m,
        });
        Ok(())
    }
}

impl<F: FnMut(&Model) -> Result<BTreeMap<String, f64>>> Hook for EvalHook<F> {
    fn after_step(&mut self, ctx: &mut TrainContext) -> Result<()> {
        let next = ctx.iter + 1;
        if self.period > 0 && next.is_multiple_of(self.period) && next < ctx.max_iter {
            self.run(ctx)?;
        }
        Ok(())
    }

    fn after_train(&mut self, ctx: &mut TrainContext) -> Result<()> {
        if ctx.state.evals.last().map(|e| e.iteration) != Some(ctx.iter) {
            self.run(ctx)?;
        }
        Ok(())
    }
}

/// Detectron2's `BestCheckpointer`: after each evaluation, `model_best` is written when
/// the validation metric is strictly better than every earlier one (the first finite
/// value counts). The best so far comes from the run's evaluation history, so a resumed
/// run continues the comparison.
pub struct BestCheckpointer {
    pub checkpointer: Checkpointer,
    pub metric: ValMetric,
    checked: Option<usize>,
}

impl BestCheckpointer {
    pub fn new(checkpointer: Checkpointer, metric: ValMetric) -> Self {
        Self {
            checkpointer,
            metric,
            checked: None,
        }
    }

    fn check(&mut self, ctx: &mut TrainContext) -> Result<()> {
        let Some(latest) = ctx.state.evals.last() else {
            return Ok(());
        };
        if latest.iteration != ctx.iter || self.checked == Some(ctx.iter) {
            return Ok(());
        }
        self.checked = Some(ctx.iter);
        let (label, value) = self.metric.resolve(&latest.metrics)?;
        let earlier = &ctx.state.evals[..ctx.state.evals.len() - 1];
        let previous = self.metric.best(earlier)?;
        if !value.is_finite() {
            tracing::warn!("not saving model_best: {label} is {value}");
            return Ok(());
        }
        if let Some((best, at)) = previous {
            if !self.metric.better(value, best) {
                tracing::info!(
                    "not saving model_best: {label} {value:.5} is not better than {best:.5} \
                     after iteration {}",
                    at + 1
                );
                return Ok(());
            }
        }
        let meta = CheckpointMeta {
            iteration: ctx.iter,
            seed: ctx.seed,
            state: ctx.state.clone(),
        };
        let p = self
            .checkpointer
            .save_best(ctx.model, &meta, (&label, value))?;
        match previous {
            Some((best, at)) => tracing::info!(
                "wrote {}: {label} {value:.5} after iteration {}, better than {best:.5} after {}",
                p.display(),
                ctx.iter + 1,
                at + 1
            ),
            None => tracing::info!(
                "wrote {}: {label} {value:.5} after iteration {}",
                p.display(),
                ctx.iter + 1
            ),
        }
        Ok(())
    }
}

impl Hook for BestCheckpointer {
    fn after_step(&mut self, ctx: &mut TrainContext) -> Result<()> {
        self.check(ctx)
    }

    fn after_train(&mut self, ctx: &mut TrainContext) -> Result<()> {
        self.check(ctx)
    }
}

/// The mean training loss and model statistics (`accuracy`, ...) of each epoch, as a
/// `metrics.json` record `{"epoch", "iteration", "train/loss", "train/...}`; the
/// running sums are part of the saved state, so an epoch cut by a resume still averages
/// all its iterations.
pub struct EpochStats {
    pub metrics_file: PathBuf,
}

impl Hook for EpochStats {
    fn after_step(&mut self, ctx: &mut TrainContext) -> Result<()> {
        let e = &mut ctx.state.epoch;
        e.iterations += 1;
        *e.sums.entry("loss".into()).or_default() += ctx.metrics.total_loss;
        for (k, v) in &ctx.metrics.scalars {
            *e.sums.entry(k.clone()).or_default() += v;
        }
        let next = ctx.iter + 1;
        if !next.is_multiple_of(ctx.iters_per_epoch.max(1)) {
            return Ok(());
        }
        let mut obj = serde_json::Map::new();
        obj.insert("iteration".into(), ctx.iter.into());
        obj.insert("epoch".into(), (next / ctx.iters_per_epoch.max(1)).into());
        let n = e.iterations.max(1) as f64;
        for (k, v) in &e.sums {
            obj.insert(format!("train/{k}"), (v / n).into());
        }
        append_line(
            &self.metrics_file,
            &serde_json::Value::Object(obj).to_string(),
        )?;
        *e = Default::default();
        Ok(())
    }
}

/// `training_curves.png`: loss and accuracy (or the validation metric) per epoch, train
/// and validation, drawn from `metrics.json` after every epoch and at the end.
pub struct TrainingCurves {
    pub metrics_file: PathBuf,
    pub output: PathBuf,
    pub metric: ValMetric,
}

impl TrainingCurves {
    fn draw(&self, iters_per_epoch: usize) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(&self.metrics_file) else {
            return Ok(());
        };
        let ipe = iters_per_epoch.max(1) as f64;
        let (mut train_loss, mut train_acc, mut val_loss, mut val_metric) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for line in text.lines() {
            let Ok(serde_json::Value::Object(o)) = serde_json::from_str(line) else {
                continue;
            };
            let num = |k: &str| o.get(k).and_then(|v| v.as_f64());
            let Some(iter) = num("iteration") else {
                continue;
            };
            let epoch = (iter + 1.0) / ipe;
            if o.contains_key("epoch") {
                if let Some(v) = num("train/loss") {
                    train_loss.push((epoch, v));
                }
                if let Some(v) = num("train/accuracy") {
                    train_acc.push((epoch, v));
                }
            } else if o.keys().any(|k| k.starts_with("eval/")) {
                if let Some(v) = num("eval/loss") {
                    val_loss.push((epoch, v));
                }
                let metrics: BTreeMap<String, f64> = o
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("eval/")?.to_string(), v.as_f64()?)))
                    .collect();
                if let Ok(v) = self.metric.value(&metrics) {
                    val_metric.push((epoch, v));
                }
            }
        }
        if train_loss.is_empty() && val_metric.is_empty() {
            return Ok(());
        }
        let name = if self.metric.name.is_empty() {
            "accuracy".to_string()
        } else {
            self.metric.name.clone()
        };
        let panels = vec![
            (
                "loss".to_string(),
                vec![Curve::new("train", train_loss), Curve::new("val", val_loss)],
            ),
            (
                name,
                vec![
                    Curve::new("train", train_acc),
                    Curve::new("val", val_metric),
                ],
            ),
        ];
        let img = plot_training_curves(&panels, "epoch");
        img.save(&self.output)
            .map_err(|e| Error::run(format!("cannot write {}: {e}", self.output.display())))
    }
}

impl Hook for TrainingCurves {
    fn after_step(&mut self, ctx: &mut TrainContext) -> Result<()> {
        if (ctx.iter + 1).is_multiple_of(ctx.iters_per_epoch.max(1)) {
            self.draw(ctx.iters_per_epoch)?;
        }
        Ok(())
    }

    fn after_train(&mut self, ctx: &mut TrainContext) -> Result<()> {
        self.draw(ctx.iters_per_epoch)
    }
}

/// Appends a record to `metrics.json`; rank 0 alone writes in data-parallel training.
pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    if !crate::distributed::is_main_process() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io("cannot write", path, e))
}

/// JSON lines in `metrics.json` every `period` iterations, and a console line with a
/// progress bar, losses, learning rate and ETA (from the median step time of the run).
pub struct MetricsPrinter {
    pub metrics_file: PathBuf,
    pub period: usize,
    start_iter: usize,
    times: Vec<f64>,
}

impl MetricsPrinter {
    pub fn new(metrics_file: PathBuf, period: usize) -> Self {
        Self {
            metrics_file,
            period: period.max(1),
            start_iter: 0,
            times: Vec::new(),
        }
    }
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Hook for MetricsPrinter {
    fn before_train(&mut self, start_iter: usize, _max_iter: usize) -> Result<()> {
        self.start_iter = start_iter;
        Ok(())
    }

    fn after_step(&mut self, ctx: &mut TrainContext) -> Result<()> {
        let m = ctx.metrics;
        self.times.push(m.time);
        let next = ctx.iter + 1;
        if !next.is_multiple_of(self.period) && next != ctx.max_iter && ctx.iter != self.start_iter
        {
            return Ok(());
        }
        let mut obj = serde_json::Map::new();
        obj.insert("iteration".into(), ctx.iter.into());
        obj.insert("total_loss".into(), m.total_loss.into());
        for (k, v) in &m.losses {
            obj.insert(k.clone(), (*v).into());
        }
        obj.insert("lr".into(), m.lr.into());
        obj.insert("grad_norm".into(), m.grad_norm.into());
        if let Some(scale) = m.loss_scale {
            obj.insert("loss_scale".into(), scale.into());
        }
        for (k, v) in &m.scalars {
            obj.insert(k.clone(), (*v).into());
        }
        obj.insert("time".into(), m.time.into());
        obj.insert("data_time".into(), m.data_time.into());
        if let Some(c) = m.comm_time {
            obj.insert("comm_time".into(), c.into());
        }
        obj.insert("host_reads".into(), m.host_reads.into());
        append_line(
            &self.metrics_file,
            &serde_json::Value::Object(obj).to_string(),
        )?;

        // Skip the first step (allocation warm-up) in the ETA once there are others.
        let recent: Vec<f64> = if self.times.len() > 1 {
            self.times[1..].to_vec()
        } else {
            self.times.clone()
        };
        let mut sorted = recent.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let eta = median * (ctx.max_iter - next) as f64;
        let frac = next as f64 / ctx.max_iter.max(1) as f64;
        let filled = (frac * 24.0).round() as usize;
        let losses: Vec<String> = m
            .losses
            .iter()
            .map(|(k, v)| format!("{k}: {v:.4}"))
            .collect();
        tracing::info!(
            "[{}{}] iter {next}/{} eta {}  total_loss: {:.4}  {}  lr: {:.2e}  time: {:.3}  data_time: {:.3}",
            "#".repeat(filled),
            "-".repeat(24 - filled.min(24)),
            ctx.max_iter,
            hms(eta),
            m.total_loss,
            losses.join("  "),
            m.lr,
            m.time,
            m.data_time
        );
        Ok(())
    }
}
