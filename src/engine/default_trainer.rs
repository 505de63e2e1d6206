//! `DefaultTrainer` (Detectron2's): everything a run needs, built from the config inside
//! the library, so a tool is
//! `DefaultTrainer::from_config(&cfg)?.resume_or_load(resume)?.train()`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::checkpointer::Checkpointer;
use super::defaults::{resolve_seed, write_config};
use super::hooks::{BestCheckpointer, EpochStats, EvalHook, MetricsPrinter, TrainingCurves};
use super::train_state::{TrainState, ValMetric};
use super::trainer::{install_interrupt_handler, Hook, TrainEnd, Trainer};
use crate::checkpoint::{LoadReport, TrainedWith};
use crate::config::{AmpDtype, Config, ConfigError, PeriodUnit};
use crate::data::build::build_detection_train_loader;
use crate::data::catalog::registered_datasets;
use crate::distributed;
use crate::error::{Error, Result};
use crate::evaluation::inference::inference_on_datasets;
use crate::modeling::backbone::BACKBONE_REGISTRY;
use crate::modeling::meta_arch::META_ARCH_REGISTRY;
use crate::modeling::{build_model, Model};
use crate::solver::{LrScheduler, Optimizer};
use crate::utils::distance::closest;
use crate::utils::fs::{remove_atomic_temporaries, write_atomic};

/// Every name the run resolves through a registry (meta-architecture, backbone, the
/// datasets of `DATASETS.TRAIN` and `DATASETS.TEST`) is registered, checked before anything
/// is written: an unknown test set must not surface only after training. Errors give the
/// key's file:line and the closest registered name.
fn check_names(cfg: &Config) -> Result<()> {
    let key = |k: &str| cfg.located(k);
    META_ARCH_REGISTRY.get_for(
        &key("MODEL.META_ARCHITECTURE"),
        &cfg.model.meta_architecture,
    )?;
    BACKBONE_REGISTRY.get_for(&key("MODEL.BACKBONE.NAME"), &cfg.model.backbone.name)?;
    let known = registered_datasets();
    for (k, names) in [
        ("DATASETS.TRAIN", &cfg.datasets.train),
        ("DATASETS.TEST", &cfg.datasets.test),
    ] {
        let folder = crate::data::datasets::image_folder::PREFIX;
        if let Some(bad) = names
            .iter()
            .find(|n| !known.contains(n) && !n.starts_with(folder))
        {
            let suggestion = closest(bad, known.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(ConfigError::Invalid(format!(
                "{}: no dataset named `{bad}` is registered; registered: {} (or `folder:PATH` \
                 for an image folder){suggestion}",
                key(k),
                known.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// How a [`DefaultTrainer::train`] call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// Trained to `SOLVER.MAX_ITER` (or was there already, or stopped early) and
    /// evaluated on `DATASETS.TEST`: the metrics, also in `OUTPUT_DIR/eval_results.json`.
    Finished(BTreeMap<String, f64>),
    /// Stopped by Ctrl-C after writing `checkpoint`; `--resume` continues from it.
    Interrupted {
        iteration: usize,
        checkpoint: PathBuf,
    },
}

pub struct DefaultTrainer {
    cfg: Config,
    model: Model,
    optimizer: Optimizer,
    checkpointer: Checkpointer,
    seed: u64,
    start_iter: usize,
    /// The resumed run's evaluation history and epoch sums.
    state: TrainState,
    /// How `MODEL.WEIGHTS` fitted the model (`None`: no weights given).
    load_report: Option<LoadReport>,
    /// `OUTPUT_DIR` checked and its `config.yaml` written ([`Self::resume_or_load`]).
    prepared: bool,
    overwrite: bool,
}

/// What marks a folder as holding a run's results.
fn run_results(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = ["last_checkpoint", "metrics.json", "eval_results.json"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut models: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("model_") && n.ends_with(".safetensors"))
            })
            .collect();
        models.sort();
        found.extend(models);
    }
    found
}

/// Keeps the `metrics.json` records of iterations before `start_iter`: those after the
/// checkpoint a run resumes from were written by the run that stopped, and the resumed run
/// writes them again. Returns how many records it dropped.
fn truncate_metrics(path: &Path, start_iter: usize) -> Result<usize> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0);
    };
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines() {
        let iter = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("iteration").and_then(|i| i.as_u64()));
        if iter.is_some_and(|i| i as usize >= start_iter) {
            dropped += 1;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if dropped > 0 {
        write_atomic(path, kept.as_bytes()).map_err(|e| Error::io("cannot write", path, e))?;
    }
    Ok(dropped)
}

impl DefaultTrainer {
    /// Builds the model with `MODEL.WEIGHTS` loaded (a checkpoint that matches no
    /// parameter is an error) and the optimizer over the trainable parameters. Nothing is
    /// written until [`Self::resume_or_load`] (or [`Self::train`]) has checked `OUTPUT_DIR`.
    pub fn from_config(cfg: &Config) -> Result<Self> {
        check_names(cfg)?;
        let seed = resolve_seed(cfg);
        let (model, report) = build_model(cfg, seed)?;
        if let Some(r) = &report {
            tracing::info!("loaded MODEL.WEIGHTS {}: {r}", cfg.model.weights);
            if r.loaded == 0 {
                return Err(Error::run(format!(
                    "MODEL.WEIGHTS {} matched no parameter of this model",
                    cfg.model.weights
                )));
            }
        }
        let vars = model.trainable_vars();
        let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        tracing::info!(
            "{}: {} parameters, {} trainable in {} tensors ({:.1} MB of f32 gradients to \
             all-reduce per step in data-parallel training)",
            cfg.model.meta_architecture,
            model.params.num_parameters(),
            trainable,
            vars.len(),
            trainable as f64 * 4.0 / 1e6
        );
        let optimizer = Optimizer::from_config(cfg, vars)?;
        Ok(Self {
            checkpointer: Checkpointer::new(&cfg.output_dir),
            cfg: cfg.clone(),
            model,
            optimizer,
            seed,
            start_iter: 0,
            state: TrainState::default(),
            load_report: report,
            prepared: false,
            overwrite: false,
        })
    }

    /// Lets a new run replace the results of another run in `OUTPUT_DIR` (its
    /// checkpoints, metrics, evaluation results and `inference/` are deleted first).
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// With `resume`, continues from the newest valid checkpoint in `OUTPUT_DIR` (the one
    /// `last_checkpoint` names, else the newest `model_*` that loads; weights, optimizer
    /// state, iteration, seed), dropping the `metrics.json` records written after it;
    /// without a checkpoint it starts fresh. Without `resume`, `OUTPUT_DIR` must not hold
    /// another run's results (unless [`Self::with_overwrite`]). Either way, temporary
    /// files of an interrupted write are removed and `OUTPUT_DIR/config.yaml` is written.
    pub fn resume_or_load(mut self, resume: bool) -> Result<Self> {
        self.prepare(resume)?;
        Ok(self)
    }

    /// Loads `OUTPUT_DIR`'s newest valid checkpoint as `resume_or_load(true)` does, but
    /// writes nothing: for evaluating a run's checkpoint without touching its folder.
    pub fn load_newest_checkpoint(mut self) -> Result<Self> {
        let dir = PathBuf::from(&self.cfg.output_dir);
        if distributed::is_main_process() {
            self.resume(&dir, false)?;
        }
        self.sync_from_main()?;
        Ok(self)
    }

    fn prepare(&mut self, resume: bool) -> Result<()> {
        if distributed::is_main_process() {
            self.prepare_output_dir(resume)?;
        }
        self.sync_from_main()?;
        self.prepared = true;
        Ok(())
    }

    /// Data-parallel ranks start from rank 0's state: its iteration, seed and evaluation
    /// history, its weights (with BN statistics) and optimizer state, which rank 0 alone
    /// read from `OUTPUT_DIR` (the other ranks need not see that folder). Weights are
    /// broadcast even in a fresh run, as DDP does.
    fn sync_from_main(&mut self) -> Result<()> {
        if !distributed::in_group() {
            return Ok(());
        }
        let what = "broadcast of the run's state";
        let head = serde_json::json!({
            "start_iter": self.start_iter,
            "seed": self.seed,
            "state": self.state.to_json(),
        });
        let bytes = distributed::broadcast_bytes(head.to_string().as_bytes(), 0, what)?;
        let head: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::run(format!("{what}: {e}")))?;
        let (Some(start), Some(seed), Some(state)) = (
            head["start_iter"].as_u64(),
            head["seed"].as_u64(),
            head["state"].as_str(),
        ) else {
            return Err(Error::run(format!("{what}: malformed")));
        };
        self.start_iter = start as usize;
        self.seed = seed;
        self.state =
            TrainState::from_json(state).map_err(|e| Error::run(format!("{what}: {e}")))?;
        let vars: Vec<candle_core::Var> = self
            .model
            .params
            .vars()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        distributed::broadcast_vars(&vars, 0)?;
        let state = self.optimizer.state_tensors()?;
        let local = if distributed::is_main_process() && !state.is_empty() {
            let host: Vec<(String, candle_core::Tensor)> = state
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(&candle_core::Device::Cpu)?)))
                .collect::<candle_core::Result<_>>()?;
            safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), None)
                .map_err(|e| Error::run(format!("{what}: {e}")))?
        } else {
            Vec::new()
        };
        let bytes = distributed::broadcast_bytes(&local, 0, "broadcast of the optimizer state")?;
        if !distributed::is_main_process() && !bytes.is_empty() {
            let device = self.model.device.clone();
            let tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
            self.optimizer.load_state(&tensors.into_iter().collect())?;
        }
        Ok(())
    }

    fn prepare_output_dir(&mut self, resume: bool) -> Result<()> {
        let dir = PathBuf::from(&self.cfg.output_dir);
        for p in remove_atomic_temporaries(&dir).map_err(|e| Error::io("cannot clean", &dir, e))? {
            tracing::info!("removed {} (left by an interrupted write)", p.display());
        }
        if resume {
            self.resume(&dir, true)?;
        } else {
            self.check_new_run(&dir)?;
        }
        write_config(&self.cfg)?;
        Ok(())
    }

    fn check_new_run(&self, dir: &Path) -> Result<()> {
        let found = run_results(dir);
        if found.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = found
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        if !self.overwrite {
            return Err(Error::run(format!(
                "OUTPUT_DIR {} holds another run's results ({}); continue that run with \
                 --resume, or choose a new OUTPUT_DIR, or pass --overwrite to replace them",
                dir.display(),
                names.join(", ")
            )));
        }
        for p in &found {
            std::fs::remove_file(p).map_err(|e| Error::io("cannot delete", p, e))?;
        }
        let inference = dir.join("inference");
        if inference.is_dir() {
            std::fs::remove_dir_all(&inference)
                .map_err(|e| Error::io("cannot delete", &inference, e))?;
        }
        tracing::warn!(
            "--overwrite: deleted the previous run's {} in {}",
            names.join(", "),
            dir.display()
        );
        Ok(())
    }

    /// `for_training`: also drop the `metrics.json` records the resumed run will redo.
    fn resume(&mut self, dir: &Path, for_training: bool) -> Result<()> {
        let candidates = self.checkpointer.resume_candidates();
        if candidates.is_empty() {
            tracing::info!(
                "--resume: no checkpoint in {}, starting fresh",
                dir.display()
            );
            return Ok(());
        }
        let pointer = dir.join("last_checkpoint");
        if pointer.exists() && self.checkpointer.last_checkpoint().is_none() {
            tracing::warn!(
                "{} names a missing file; trying the checkpoints in the folder",
                pointer.display()
            );
        }
        let mut failures = Vec::new();
        for p in &candidates {
            match Checkpointer::load(p, &self.model, Some(&mut self.optimizer)) {
                Ok(meta) => {
                    self.start_iter = meta.iteration + 1;
                    self.seed = meta.seed;
                    self.state = meta.state;
                    if failures.is_empty() {
                        tracing::info!(
                            "resumed from {} at iteration {}",
                            p.display(),
                            self.start_iter
                        );
                    } else {
                        tracing::warn!(
                            "resumed from {} at iteration {}, the newest checkpoint that loads",
                            p.display(),
                            self.start_iter
                        );
                    }
                    if !for_training {
                        return Ok(());
                    }
                    let metrics = dir.join("metrics.json");
                    let dropped = truncate_metrics(&metrics, self.start_iter)?;
                    if dropped > 0 {
                        tracing::info!(
                            "dropped {dropped} records of iterations >= {} from {} (they are \
                             trained again)",
                            self.start_iter,
                            metrics.display()
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!("cannot resume from {}: {e}", p.display());
                    failures.push(format!("{}: {e}", p.display()));
                }
            }
        }
        Err(Error::run(format!(
            "--resume: no checkpoint in {} loads:\n  {}",
            dir.display(),
            failures.join("\n  ")
        )))
    }

    /// Evaluation of the model as built (`MODEL.WEIGHTS`, or the checkpoint
    /// `resume_or_load(true)` found) without training, as `train_net --eval-only`: weights
    /// that leave parameters missing or mismatched are an error unless
    /// `allow_unmatched`, since the metrics of random heads mean nothing.
    pub fn eval_only(&self, allow_unmatched: bool) -> Result<BTreeMap<String, f64>> {
        let resumed = self.start_iter > 0;
        match (&self.load_report, resumed) {
            (_, true) => {}
            (None, false) => {
                return Err(Error::run(
                    "--eval-only needs trained weights: set MODEL.WEIGHTS or pass --resume",
                ))
            }
            (Some(r), false) => {
                if !r.missing.is_empty() || !r.mismatched.is_empty() {
                    let message = format!(
                        "MODEL.WEIGHTS {} does not fit {}: {r}",
                        self.cfg.model.weights, self.cfg.model.meta_architecture
                    );
                    if !allow_unmatched {
                        return Err(Error::run(format!(
                            "{message}\n(pass --allow-unmatched-weights to evaluate anyway)"
                        )));
                    }
                    tracing::warn!("{message}");
                }
            }
        }
        self.test()
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The iteration training starts (or continues) at.
    pub fn start_iter(&self) -> usize {
        self.start_iter
    }

    /// The checks that need the whole config: what watches the validation metric needs
    /// evaluations during training; multi-label data needs a per-class loss. Returns the
    /// schedule.
    fn check_schedule(cfg: &Config) -> Result<LrScheduler> {
        if cfg.test.eval_period == 0 && cfg.test.early_stop_patience > 0 {
            return Err(ConfigError::Invalid(format!(
                "{}: early stopping counts evaluations, but {} is 0 (evaluation only at the end)",
                cfg.located("TEST.EARLY_STOP_PATIENCE"),
                cfg.located("TEST.EVAL_PERIOD")
            ))
            .into());
        }
        let scheduler = LrScheduler::from_config(cfg)?;
        if cfg.datasets.multi_label
            && cfg.model.classifier.loss == crate::config::ClassifierLoss::CrossEntropy
        {
            return Err(ConfigError::Invalid(format!(
                "{}: `ce` needs one class per image, but DATASETS.MULTI_LABEL gives several; \
                 use bce or focal",
                cfg.located("MODEL.CLASSIFIER.LOSS")
            ))
            .into());
        }
        Ok(scheduler)
    }

    /// The default hooks, in order: metrics (`metrics.json` and the console line), epoch
    /// statistics, evaluation every `TEST.EVAL_PERIOD` and at the end, the best model
    /// (`TEST.BEST_CHECKPOINT`), the training curves.
    fn build_hooks(
        cfg: &Config,
        checkpointer: Checkpointer,
        eval_period: usize,
        scheduler_watches: bool,
    ) -> Vec<Box<dyn Hook + '_>> {
        let out_dir = PathBuf::from(&cfg.output_dir);
        let metrics_file = out_dir.join("metrics.json");
        let metric = ValMetric::from_config(cfg);
        let watched =
            cfg.test.best_checkpoint || cfg.test.early_stop_patience > 0 || scheduler_watches;
        // Every rank evaluates (its shard) and keeps the epoch sums; rank 0 alone logs
        // and writes.
        let main = distributed::is_main_process();
        let mut hooks: Vec<Box<dyn Hook + '_>> = Vec::new();
        if main {
            hooks.push(Box::new(MetricsPrinter::new(
                metrics_file.clone(),
                cfg.solver.log_period,
            )));
        }
        hooks.extend([
            Box::new(EpochStats {
                metrics_file: metrics_file.clone(),
            }),
            Box::new(EvalHook {
                period: eval_period,
                eval: move |m: &Model| inference_on_datasets(cfg, m, &out_dir.join("inference")),
                metrics_file: metrics_file.clone(),
                watched: watched.then(|| metric.clone()),
            }) as Box<dyn Hook + '_>,
        ]);
        if !main {
            return hooks;
        }
        if cfg.test.best_checkpoint {
            hooks.push(Box::new(BestCheckpointer::new(
                checkpointer,
                metric.clone(),
            )));
        }
        hooks.push(Box::new(TrainingCurves {
            output: PathBuf::from(&cfg.output_dir).join("training_curves.png"),
            metrics_file,
            metric,
        }));
        hooks
    }

    /// Trains from the start (or resumed) iteration to `SOLVER.MAX_ITER` (or until early
    /// stopping), evaluating every `TEST.EVAL_PERIOD` and at the end; the final metrics
    /// are also written to `eval_results.json`. Ctrl-C checkpoints and returns.
    pub fn train(&mut self) -> Result<TrainOutcome> {
        let max_iter = self.cfg.solver.max_iter;
        let scheduler = Self::check_schedule(&self.cfg)?;
        // Evaluation needs no training set (so `from_config` allows an empty one);
        // training does, and says so before writing anything.
        if self.cfg.datasets.train.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{} is empty: training needs a registered dataset or `folder:PATH`",
                self.cfg.located("DATASETS.TRAIN")
            ))
            .into());
        }
        if !self.prepared {
            self.prepare(false)?;
        }
        let metric = ValMetric::from_config(&self.cfg);
        let patience = self.cfg.test.early_stop_patience;
        let stopped_before = patience > 0
            && !self.state.evals.is_empty()
            && metric.evals_without_improvement(&self.state.evals)? >= patience;
        if stopped_before {
            tracing::info!(
                "the run stopped early after iteration {} (TEST.EARLY_STOP_PATIENCE)",
                self.start_iter
            );
            return Ok(TrainOutcome::Finished(self.test()?));
        }
        if self.start_iter >= max_iter {
            tracing::info!("the checkpoint is already at SOLVER.MAX_ITER {max_iter}");
            return Ok(TrainOutcome::Finished(self.test()?));
        }
        install_interrupt_handler();
        if distributed::in_group() {
            // Rank 0 generates what the datasets need (the synthetic caches) before the
            // others look; they would otherwise all generate the same files at once.
            if distributed::is_main_process() {
                for name in self
                    .cfg
                    .datasets
                    .train
                    .iter()
                    .chain(&self.cfg.datasets.test)
                {
                    crate::data::catalog::get_dataset(name, &self.cfg)?;
                }
            }
            distributed::barrier("waiting for rank 0's datasets")?;
        }
        let (loader, metadata) =
            build_detection_train_loader(&self.cfg, self.seed, self.start_iter)?;
        let classes = metadata.thing_classes.len();
        if self.cfg.model.meta_architecture == "Classifier"
            && classes != self.cfg.model.classifier.num_classes
        {
            return Err(ConfigError::Invalid(format!(
                "{}: the model has {} classes but DATASETS.TRAIN has {classes} ({}); set \
                 MODEL.CLASSIFIER.NUM_CLASSES {classes}",
                self.cfg.located("MODEL.CLASSIFIER.NUM_CLASSES"),
                self.cfg.model.classifier.num_classes,
                metadata.thing_classes.join(", ")
            ))
            .into());
        }
        let iters_per_epoch = loader.batches_per_epoch();
        let eval_period = match self.cfg.test.eval_period_unit {
            PeriodUnit::Iterations => self.cfg.test.eval_period,
            PeriodUnit::Epochs => self.cfg.test.eval_period * iters_per_epoch,
        };
        tracing::info!(
            "{iters_per_epoch} iterations per epoch; evaluation every {}",
            if eval_period == 0 {
                "run (at the end)".to_string()
            } else {
                format!("{eval_period} iterations")
            }
        );
        let amp = &self.cfg.solver.amp;
        if amp.enabled {
            tracing::info!(
                "mixed precision: the training forward computes in {}{}",
                amp.dtype,
                if amp.dtype == AmpDtype::Float16 {
                    ", with dynamic loss scaling"
                } else {
                    ""
                }
            );
            if self.model.device.is_cpu() {
                tracing::warn!(
                    "SOLVER.AMP on the CPU rounds operands to {} but computes in f32 (candle's \
                     CPU backend has no fast narrow matmul): it checks mixed precision, and is \
                     slower than f32",
                    amp.dtype
                );
            }
        }
        let checkpointer = Checkpointer::new(&self.cfg.output_dir).with_trained_with(TrainedWith {
            config_yaml: self.cfg.to_yaml(),
            class_names: metadata.thing_classes,
        });
        let watches = scheduler.needs_metric();
        let mut trainer = Trainer {
            model: &self.model,
            optimizer: &mut self.optimizer,
            scheduler,
            loader,
            checkpointer: checkpointer.clone(),
            hooks: Self::build_hooks(&self.cfg, checkpointer, eval_period, watches),
            seed: self.seed,
            checkpoint_period: self.cfg.solver.checkpoint_period,
            max_keep: self.cfg.solver.checkpoint_max_keep,
            state: std::mem::take(&mut self.state),
            val_metric: metric,
            early_stop_patience: patience,
            autocast: self.cfg.solver.amp.compute_dtype(),
        };
        let t = Instant::now();
        let end = trainer.train(self.start_iter, max_iter)?;
        let state = std::mem::take(&mut trainer.state);
        drop(trainer);
        self.state = state;
        let last = match end {
            TrainEnd::Interrupted {
                iteration,
                checkpoint,
            } => {
                self.start_iter = iteration + 1;
                return Ok(TrainOutcome::Interrupted {
                    iteration,
                    checkpoint,
                });
            }
            TrainEnd::StoppedEarly { iteration } => iteration,
            TrainEnd::Finished => max_iter - 1,
        };
        self.start_iter = last + 1;
        tracing::info!("training took {:.1} s", t.elapsed().as_secs_f64());
        let Some(final_eval) = self.state.evals.last().filter(|e| e.iteration == last) else {
            return Err(Error::run("the final evaluation is missing"));
        };
        let metrics = final_eval.metrics.clone();
        self.write_results(&metrics)?;
        Ok(TrainOutcome::Finished(metrics))
    }

    /// Evaluates the model on `DATASETS.TEST` and writes `OUTPUT_DIR/eval_results.json`
    /// (with predictions, PR curves and drawn images under `OUTPUT_DIR/inference/`).
    pub fn test(&self) -> Result<BTreeMap<String, f64>> {
        let out = PathBuf::from(&self.cfg.output_dir);
        let metrics = inference_on_datasets(&self.cfg, &self.model, &out.join("inference"))?;
        self.write_results(&metrics)?;
        Ok(metrics)
    }

    fn write_results(&self, metrics: &BTreeMap<String, f64>) -> Result<()> {
        if !distributed::is_main_process() {
            return Ok(());
        }
        let out = PathBuf::from(&self.cfg.output_dir);
        let json = serde_json::to_string_pretty(&metrics)
            .map_err(|e| Error::run(format!("cannot serialise the metrics: {e}")))?;
        let path = out.join("eval_results.json");
        write_atomic(&path, json.as_bytes()).map_err(|e| Error::io("cannot write", &path, e))
    }
}
