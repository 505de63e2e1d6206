//! The training loop with hooks, as Detectron2's `SimpleTrainer` + `HookBase`:
//! data -> forward -> named losses -> backward -> optimizer step, then every hook's
//! `after_step` (checkpoints, evaluation, metrics, progress).
//!
//! Failure modes are explicit: a non-finite loss stops training with the iteration and
//! the loss term named (the last checkpoint on disk is untouched); Ctrl-C finishes the
//! current step, writes a checkpoint and returns.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::run_bail as bail;
use candle_core::Tensor;

use super::checkpointer::{CheckpointMeta, Checkpointer};
use crate::data::loader::DataLoader;
use crate::modeling::Model;
use crate::solver::{LrScheduler, Optimizer};

/// One iteration's numbers.
#[derive(Debug, Clone, Default)]
pub struct StepMetrics {
    pub iteration: usize,
    pub losses: BTreeMap<String, f64>,
    pub total_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Seconds for the whole step and for waiting on data.
    pub time: f64,
    pub data_time: f64,
}

pub struct TrainContext<'a> {
    pub iter: usize,
    pub max_iter: usize,
    pub model: &'a Model,
    pub optimizer: &'a Optimizer,
    pub metrics: &'a StepMetrics,
    pub seed: u64,
}

pub trait Hook {
    fn before_train(&mut self, _start_iter: usize, _max_iter: usize) -> Result<()> {
        Ok(())
    }
    fn after_step(&mut self, _ctx: &TrainContext) -> Result<()> {
        Ok(())
    }
    fn after_train(&mut self, _ctx: &TrainContext) -> Result<()> {
        Ok(())
    }
}

pub use crate::utils::interrupt::{install_interrupt_handler, interrupted};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainEnd {
    Finished,
    /// Ctrl-C: the checkpoint written at this iteration resumes the run.
    Interrupted {
        iteration: usize,
        checkpoint: PathBuf,
    },
}

pub struct Trainer<'a> {
    pub model: &'a Model,
    pub optimizer: &'a mut Optimizer,
    pub scheduler: LrScheduler,
    pub loader: DataLoader,
    pub checkpointer: Checkpointer,
    pub hooks: Vec<Box<dyn Hook + 'a>>,
    pub seed: u64,
}

fn add_all(losses: &BTreeMap<String, Tensor>) -> Result<Tensor> {
    let mut it = losses.values();
    let Some(first) = it.next() else {
        bail!("the model returned no losses in training")
    };
    let mut total = first.clone();
    for l in it {
        total = (total + l)?;
    }
    Ok(total)
}

impl<'a> Trainer<'a> {
    /// Trains iterations `start_iter..max_iter`.
    pub fn train(&mut self, start_iter: usize, max_iter: usize) -> Result<TrainEnd> {
        for h in &mut self.hooks {
            h.before_train(start_iter, max_iter)?;
        }
        let mut last = StepMetrics::default();
        for iter in start_iter..max_iter {
            let t0 = Instant::now();
            let data = self
                .loader
                .next()
                .ok_or_else(|| Error::run("the training loader ended"))??;
            let data_time = t0.elapsed().as_secs_f64();
            let loss_map = self.model.losses(&data.inputs)?;
            let mut losses = BTreeMap::new();
            for (name, l) in &loss_map {
                let v = l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                if !v.is_finite() {
                    bail!(
                        "iteration {iter}: loss `{name}` is {v}; training stopped. The last good checkpoint is {}",
                        self.checkpointer
                            .last_checkpoint()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "(none written yet)".into())
                    );
                }
                losses.insert(name.clone(), v);
            }
            let total = add_all(&loss_map)?;
            let grads = total.backward()?;
            let lr = self.scheduler.lr(iter);
            let grad_norm = self.optimizer.step(&grads, lr)?;
            last = StepMetrics {
                iteration: iter,
                total_loss: losses.values().sum(),
                losses,
                lr,
                grad_norm,
                time: t0.elapsed().as_secs_f64(),
                data_time,
            };
            let ctx = TrainContext {
                iter,
                max_iter,
                model: self.model,
                optimizer: self.optimizer,
                metrics: &last,
                seed: self.seed,
            };
            for h in &mut self.hooks {
                h.after_step(&ctx)?;
            }
            if interrupted() {
                let path = self.checkpointer.save_iteration(
                    iter,
                    self.seed,
                    self.model,
                    self.optimizer,
                )?;
                tracing::warn!(
                    "interrupted: wrote {}; continue with --resume",
                    path.display()
                );
                return Ok(TrainEnd::Interrupted {
                    iteration: iter,
                    checkpoint: path,
                });
            }
        }
        let ctx = TrainContext {
            iter: max_iter.saturating_sub(1),
            max_iter,
            model: self.model,
            optimizer: self.optimizer,
            metrics: &last,
            seed: self.seed,
        };
        for h in &mut self.hooks {
            h.after_train(&ctx)?;
        }
        Ok(TrainEnd::Finished)
    }
}

/// Writes `model_{iter}` every `period` iterations and `model_final` at the end.
pub struct PeriodicCheckpointer {
    pub checkpointer: Checkpointer,
    pub period: usize,
    /// Periodic checkpoints kept (0: all).
    pub max_keep: usize,
}

impl Hook for PeriodicCheckpointer {
    fn after_step(&mut self, ctx: &TrainContext) -> Result<()> {
        let next = ctx.iter + 1;
        if self.period > 0 && next.is_multiple_of(self.period) && next < ctx.max_iter {
            self.checkpointer
                .save_iteration(ctx.iter, ctx.seed, ctx.model, ctx.optimizer)?;
            for p in self.checkpointer.prune(self.max_keep)? {
                tracing::info!("deleted {} (SOLVER.CHECKPOINT_MAX_KEEP)", p.display());
            }
        }
        Ok(())
    }

    fn after_train(&mut self, ctx: &TrainContext) -> Result<()> {
        let meta = CheckpointMeta {
            iteration: ctx.iter,
            seed: ctx.seed,
        };
        let p = self
            .checkpointer
            .save("model_final", ctx.model, Some(ctx.optimizer), &meta)?;
        tracing::info!("wrote {}", p.display());
        Ok(())
    }
}

/// Runs `eval` every `period` iterations (not at the end: the caller evaluates the
/// final model) and records its metrics in `metrics.json`.
pub struct EvalHook<F: FnMut(&Model) -> Result<BTreeMap<String, f64>>> {
    pub period: usize,
    pub eval: F,
    pub metrics_file: PathBuf,
}

impl<F: FnMut(&Model) -> Result<BTreeMap<String, f64>>> Hook for EvalHook<F> {
    fn after_step(&mut self, ctx: &TrainContext) -> Result<()> {
        let next = ctx.iter + 1;
        if self.period > 0 && next.is_multiple_of(self.period) && next < ctx.max_iter {
            let m = (self.eval)(ctx.model)?;
            tracing::info!("evaluation at iteration {}: {m:?}", ctx.iter);
            let mut obj = serde_json::Map::new();
            obj.insert("iteration".into(), ctx.iter.into());
            for (k, v) in m {
                obj.insert(format!("eval/{k}"), v.into());
            }
            append_line(
                &self.metrics_file,
                &serde_json::Value::Object(obj).to_string(),
            )?;
        }
        Ok(())
    }
}

fn append_line(path: &PathBuf, line: &str) -> Result<()> {
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

    fn after_step(&mut self, ctx: &TrainContext) -> Result<()> {
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
        obj.insert("time".into(), m.time.into());
        obj.insert("data_time".into(), m.data_time.into());
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
