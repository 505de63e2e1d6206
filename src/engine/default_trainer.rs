//! `DefaultTrainer` (Detectron2's): everything a run needs, built from the config inside
//! the library, so a tool is
//! `DefaultTrainer::from_config(&cfg)?.resume_or_load(resume)?.train()`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::checkpointer::Checkpointer;
use super::defaults::default_setup;
use super::trainer::{
    install_interrupt_handler, EvalHook, Hook, MetricsPrinter, PeriodicCheckpointer, TrainEnd,
    Trainer,
};
use crate::checkpoint::TrainedWith;
use crate::config::{Config, ConfigError};
use crate::data::build::build_detection_train_loader;
use crate::data::catalog::registered_datasets;
use crate::error::{Error, Result};
use crate::evaluation::inference::inference_on_datasets;
use crate::modeling::backbone::BACKBONE_REGISTRY;
use crate::modeling::meta_arch::META_ARCH_REGISTRY;
use crate::modeling::{build_model, Model};
use crate::solver::{LrScheduler, Optimizer};
use crate::utils::distance::closest;
use crate::utils::fs::write_atomic;

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
        if let Some(bad) = names.iter().find(|n| !known.contains(n)) {
            let suggestion = closest(bad, known.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(ConfigError::Invalid(format!(
                "{}: no dataset named `{bad}` is registered; registered: {}{suggestion}",
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
    /// Trained to `SOLVER.MAX_ITER` (or was there already) and evaluated on
    /// `DATASETS.TEST`: the metrics, also in `OUTPUT_DIR/eval_results.json`.
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
}

impl DefaultTrainer {
    /// Creates `OUTPUT_DIR` (with its `config.yaml`), builds the model with
    /// `MODEL.WEIGHTS` loaded (a checkpoint that matches no parameter is an error) and
    /// the optimizer over the trainable parameters.
    pub fn from_config(cfg: &Config) -> Result<Self> {
        check_names(cfg)?;
        let seed = default_setup(cfg)?;
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
        tracing::info!(
            "{}: {} parameters, {} trainable tensors",
            cfg.model.meta_architecture,
            model.params.num_parameters(),
            vars.len()
        );
        let optimizer = Optimizer::from_config(cfg, vars)?;
        Ok(Self {
            checkpointer: Checkpointer::new(&cfg.output_dir),
            cfg: cfg.clone(),
            model,
            optimizer,
            seed,
            start_iter: 0,
        })
    }

    /// With `resume`, continues from `OUTPUT_DIR/last_checkpoint` (weights, optimizer
    /// state, iteration, seed) when there is one; otherwise keeps `MODEL.WEIGHTS`.
    pub fn resume_or_load(mut self, resume: bool) -> Result<Self> {
        if !resume {
            return Ok(self);
        }
        match self.checkpointer.last_checkpoint() {
            Some(p) => {
                let meta = Checkpointer::load(&p, &self.model, Some(&mut self.optimizer))?;
                self.start_iter = meta.iteration + 1;
                self.seed = meta.seed;
                tracing::info!(
                    "resumed from {} at iteration {}",
                    p.display(),
                    self.start_iter
                );
            }
            None => tracing::info!(
                "--resume: no checkpoint in {}, starting fresh",
                self.checkpointer.dir.display()
            ),
        }
        Ok(self)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The iteration training starts (or continues) at.
    pub fn start_iter(&self) -> usize {
        self.start_iter
    }

    /// The default hooks: metrics (`metrics.json` and the console line from one record
    /// per step), periodic and final checkpoints, evaluation every `TEST.EVAL_PERIOD`.
    fn build_hooks(cfg: &Config, checkpointer: Checkpointer) -> Vec<Box<dyn Hook + '_>> {
        let out_dir = PathBuf::from(&cfg.output_dir);
        let metrics_file = out_dir.join("metrics.json");
        vec![
            Box::new(MetricsPrinter::new(
                metrics_file.clone(),
                cfg.solver.log_period,
            )),
            Box::new(PeriodicCheckpointer {
                checkpointer,
                period: cfg.solver.checkpoint_period,
            }),
            Box::new(EvalHook {
                period: cfg.test.eval_period,
                eval: move |m: &Model| inference_on_datasets(cfg, m, &out_dir.join("inference")),
                metrics_file,
            }),
        ]
    }

    /// Trains from the start (or resumed) iteration to `SOLVER.MAX_ITER`, then
    /// evaluates on `DATASETS.TEST` ([`Self::test`]). Ctrl-C checkpoints and returns.
    pub fn train(&mut self) -> Result<TrainOutcome> {
        let max_iter = self.cfg.solver.max_iter;
        if self.start_iter < max_iter {
            install_interrupt_handler();
            let scheduler = LrScheduler::from_config(&self.cfg)?;
            let (loader, metadata) =
                build_detection_train_loader(&self.cfg, self.seed, self.start_iter)?;
            let checkpointer =
                Checkpointer::new(&self.cfg.output_dir).with_trained_with(TrainedWith {
                    config_yaml: self.cfg.to_yaml(),
                    class_names: metadata.thing_classes,
                });
            let mut trainer = Trainer {
                model: &self.model,
                optimizer: &mut self.optimizer,
                scheduler,
                loader,
                checkpointer: checkpointer.clone(),
                hooks: Self::build_hooks(&self.cfg, checkpointer),
                seed: self.seed,
            };
            let t = Instant::now();
            let end = trainer.train(self.start_iter, max_iter)?;
            if let TrainEnd::Interrupted {
                iteration,
                checkpoint,
            } = end
            {
                self.start_iter = iteration + 1;
                return Ok(TrainOutcome::Interrupted {
                    iteration,
                    checkpoint,
                });
            }
            self.start_iter = max_iter;
            tracing::info!("training took {:.1} s", t.elapsed().as_secs_f64());
        } else {
            tracing::info!("the checkpoint is already at SOLVER.MAX_ITER {max_iter}");
        }
        Ok(TrainOutcome::Finished(self.test()?))
    }

    /// Evaluates the model on `DATASETS.TEST` and writes `OUTPUT_DIR/eval_results.json`
    /// (with predictions, PR curves and drawn images under `OUTPUT_DIR/inference/`).
    pub fn test(&self) -> Result<BTreeMap<String, f64>> {
        let out = PathBuf::from(&self.cfg.output_dir);
        let metrics = inference_on_datasets(&self.cfg, &self.model, &out.join("inference"))?;
        let json = serde_json::to_string_pretty(&metrics)
            .map_err(|e| Error::run(format!("cannot serialise the metrics: {e}")))?;
        let path = out.join("eval_results.json");
        write_atomic(&path, json.as_bytes()).map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(metrics)
    }
}
