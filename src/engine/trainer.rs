//! The training loop with hooks, as Detectron2's `SimpleTrainer` + `HookBase`:
//! data -> forward -> named losses -> backward -> optimizer step, then every hook's
//! `after_step` (metrics, evaluation, best model, curves), then the loop's own
//! checkpoint, early-stopping and Ctrl-C checks.
//!
//! Checkpoints are written by the loop after the hooks, not by a hook before them (as
//! Detectron2 orders its `PeriodicCheckpointer`): a checkpoint then holds the evaluation
//! of its own iteration, which `ReduceLROnPlateau`, the best model and early stopping of
//! the resumed run depend on. `model_final` is written before the final evaluation, so
//! a failed or interrupted evaluation never costs the trained model.
//!
//! Failure modes are explicit: a non-finite loss stops training with the iteration and
//! the loss term named (the last checkpoint on disk is untouched); Ctrl-C finishes the
//! current step, writes a checkpoint and returns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::run_bail as bail;
use candle_core::{DType, Tensor};

use super::checkpointer::{CheckpointMeta, Checkpointer};
use super::train_state::{TrainState, ValMetric};
use crate::data::loader::DataLoader;
use crate::distributed::{average_gradients, mean_over_ranks};
use crate::layers::autocast;
use crate::modeling::Model;
use crate::ops::host;
use crate::solver::{LrScheduler, Optimizer};

/// One iteration's numbers.
#[derive(Debug, Clone, Default)]
pub struct StepMetrics {
    pub iteration: usize,
    pub losses: BTreeMap<String, f64>,
    pub total_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Non-loss statistics of the batch the model reports (e.g. `accuracy`).
    pub scalars: BTreeMap<String, f64>,
    /// Seconds for the whole step and for waiting on data.
    pub time: f64,
    pub data_time: f64,
    /// Data-parallel runs: seconds in the gradient and loss all-reduces (the ranks' wait
    /// for each other included).
    pub comm_time: Option<f64>,
    /// Reads of tensor values into host memory by the step (forward, backward, update,
    /// logging; the data-parallel reductions included): each is a device sync on a GPU.
    pub host_reads: u64,
    /// Float16 training: the loss scale of this step, and whether its gradients
    /// overflowed, so that the update was skipped.
    pub loss_scale: Option<f64>,
    pub skipped: bool,
}

pub struct TrainContext<'a> {
    pub iter: usize,
    pub max_iter: usize,
    pub model: &'a Model,
    pub optimizer: &'a Optimizer,
    pub metrics: &'a StepMetrics,
    pub seed: u64,
    /// Iterations per pass over the training data.
    pub iters_per_epoch: usize,
    /// The evaluation history and epoch sums hooks read and extend; saved with every
    /// checkpoint.
    pub state: &'a mut TrainState,
}

pub trait Hook {
    fn before_train(&mut self, _start_iter: usize, _max_iter: usize) -> Result<()> {
        Ok(())
    }
    fn after_step(&mut self, _ctx: &mut TrainContext) -> Result<()> {
        Ok(())
    }
    fn after_train(&mut self, _ctx: &mut TrainContext) -> Result<()> {
        Ok(())
    }
}

pub use crate::utils::interrupt::{install_interrupt_handler, interrupted};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainEnd {
    Finished,
    /// `TEST.EARLY_STOP_PATIENCE` evaluations without improvement: `model_final` holds
    /// the model of this iteration.
    StoppedEarly {
        iteration: usize,
    },
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
    /// `model_{iter}` every this many iterations (0: none), keeping the newest
    /// `max_keep` (0: all).
    pub checkpoint_period: usize,
    pub max_keep: usize,
    pub state: TrainState,
    pub val_metric: ValMetric,
    /// Evaluations without improvement that stop the run (0: never).
    pub early_stop_patience: usize,
    /// Mixed precision: the dtype the training forward computes in (`SOLVER.AMP`).
    pub autocast: Option<DType>,
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
    fn meta(&self, iteration: usize) -> CheckpointMeta {
        CheckpointMeta {
            iteration,
            seed: self.seed,
            state: self.state.clone(),
        }
    }

    /// Whether the evaluation history says stop: the latest evaluation is
    /// `early_stop_patience` past the best one.
    pub fn should_stop(&self) -> Result<bool> {
        if self.early_stop_patience == 0 {
            return Ok(false);
        }
        let n = self
            .val_metric
            .evals_without_improvement(&self.state.evals)?;
        Ok(n >= self.early_stop_patience)
    }

    /// Trains iterations `start_iter..max_iter`.
    pub fn train(&mut self, start_iter: usize, max_iter: usize) -> Result<TrainEnd> {
        for h in &mut self.hooks {
            h.before_train(start_iter, max_iter)?;
        }
        let iters_per_epoch = self.loader.batches_per_epoch();
        // The optimised variables, whose gradients data-parallel ranks average.
        let vars = self.optimizer.vars();
        let mut last = StepMetrics::default();
        let mut last_iter = max_iter.saturating_sub(1);
        let mut stopped = false;
        for iter in start_iter..max_iter {
            let t0 = Instant::now();
            let data = self
                .loader
                .next()
                .ok_or_else(|| Error::run("the training loader ended"))??;
            let data_time = t0.elapsed().as_secs_f64();
            let reads_before = host::reads();
            let out = {
                let _autocast = autocast::Scope::new(self.autocast)?;
                self.model.forward_train(&data.inputs)?
            };
            let total = add_all(&out.losses)?;
            let loss_scale = self.optimizer.loss_scale();
            let total = match loss_scale {
                Some(s) => (total * s)?,
                None => total,
            };
            let mut grads = total.backward()?;
            let t = Instant::now();
            average_gradients(&mut grads, &vars)?;
            let mut comm_time = t.elapsed().as_secs_f64();
            let observed = if self.scheduler.needs_metric() {
                self.val_metric.history(&self.state.evals)?
            } else {
                Vec::new()
            };
            let lr = self.scheduler.lr(iter, &observed);
            let grad_norm = self.optimizer.step(&grads, lr)?;
            // The step's one read: losses, statistics and the gradient norm together, after
            // the update, so that a GPU runs the whole step without waiting. A non-finite
            // loss is reported below before anything is written, so the update it made to
            // the weights in memory is never saved.
            let mut values = {
                let mut all = Vec::with_capacity(out.losses.len() + out.scalars.len() + 1);
                for t in out.losses.values().chain(out.scalars.values()) {
                    all.push(t.to_dtype(DType::F64)?.reshape(())?);
                }
                all.push(grad_norm);
                host::to_vec1::<f64>(&Tensor::stack(&all, 0)?)?
            };
            let grad_norm = values.pop().unwrap_or(0.0);
            let skipped = self.optimizer.finish_step(grad_norm);
            if skipped {
                tracing::info!(
                    "iteration {iter}: gradients overflowed at loss scale {}; update skipped, \
                     scale lowered to {}",
                    loss_scale.unwrap_or(1.0),
                    self.optimizer.loss_scale().unwrap_or(1.0)
                );
            }
            // Losses and statistics for the logs, averaged over data-parallel ranks with
            // every rank's stop request, so that all ranks stop at the same iteration.
            let distributed = crate::distributed::in_group();
            let mut stop_requested = false;
            if distributed {
                let t = Instant::now();
                values.push(interrupted() as u8 as f64);
                values = mean_over_ranks(&values, "mean of the losses")?;
                stop_requested = values.pop().is_some_and(|v| v > 0.0);
                comm_time += t.elapsed().as_secs_f64();
            }
            let host_reads = host::reads() - reads_before;
            let mut losses = BTreeMap::new();
            for (name, &v) in out.losses.keys().zip(&values) {
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
            let scalars: BTreeMap<String, f64> = out
                .scalars
                .keys()
                .cloned()
                .zip(values[out.losses.len()..].iter().copied())
                .collect();
            last = StepMetrics {
                iteration: iter,
                total_loss: losses.values().sum(),
                losses,
                lr,
                grad_norm,
                scalars,
                time: t0.elapsed().as_secs_f64(),
                data_time,
                comm_time: distributed.then_some(comm_time),
                host_reads,
                loss_scale,
                skipped,
            };
            let mut ctx = TrainContext {
                iter,
                max_iter,
                model: self.model,
                optimizer: self.optimizer,
                metrics: &last,
                seed: self.seed,
                iters_per_epoch,
                state: &mut self.state,
            };
            for h in &mut self.hooks {
                h.after_step(&mut ctx)?;
            }
            let next = iter + 1;
            let evaluated_now = self.state.evals.last().is_some_and(|e| e.iteration == iter);
            if evaluated_now && next < max_iter && self.should_stop()? {
                tracing::warn!(
                    "stopping early after iteration {next}: {} evaluations without a better \
                     {} (TEST.EARLY_STOP_PATIENCE)",
                    self.early_stop_patience,
                    self.val_metric.label()
                );
                last_iter = iter;
                stopped = true;
                break;
            }
            if stop_requested || (!distributed && interrupted()) {
                let path = self.checkpointer.save_iteration(
                    &self.meta(iter),
                    self.model,
                    self.optimizer,
                )?;
                if crate::distributed::is_main_process() {
                    tracing::warn!(
                        "interrupted: wrote {}; continue with --resume",
                        path.display()
                    );
                }
                return Ok(TrainEnd::Interrupted {
                    iteration: iter,
                    checkpoint: path,
                });
            }
            if self.checkpoint_period > 0
                && next.is_multiple_of(self.checkpoint_period)
                && next < max_iter
            {
                self.checkpointer
                    .save_iteration(&self.meta(iter), self.model, self.optimizer)?;
                for p in self.checkpointer.prune(self.max_keep)? {
                    tracing::info!("deleted {} (SOLVER.CHECKPOINT_MAX_KEEP)", p.display());
                }
            }
        }
        let p = self.checkpointer.save(
            "model_final",
            self.model,
            Some(self.optimizer),
            &self.meta(last_iter),
        )?;
        tracing::info!("wrote {}", p.display());
        let mut ctx = TrainContext {
            iter: last_iter,
            max_iter,
            model: self.model,
            optimizer: self.optimizer,
            metrics: &last,
            seed: self.seed,
            iters_per_epoch,
            state: &mut self.state,
        };
        for h in &mut self.hooks {
            h.after_train(&mut ctx)?;
        }
        Ok(if stopped {
            TrainEnd::StoppedEarly {
                iteration: last_iter,
            }
        } else {
            TrainEnd::Finished
        })
    }
}
