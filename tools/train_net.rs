//! Train and evaluate a detector from a config (Detectron2's tools/train_net.py).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Parser;

use candletron::config::Config;
use candletron::data::build::build_detection_train_loader;
use candletron::engine::checkpointer::Checkpointer;
use candletron::engine::defaults::default_setup;
use candletron::engine::trainer::{
    install_interrupt_handler, EvalHook, MetricsPrinter, PeriodicCheckpointer, TrainEnd, Trainer,
};
use candletron::evaluation::inference::inference_on_datasets;
use candletron::modeling::{build_model, Model};
use candletron::solver::{LrScheduler, Optimizer};
use candletron::utils::fs::write_atomic;

#[derive(Parser)]
#[command(
    about = "Train a detector, then evaluate it and draw detections",
    long_about = "Train MODEL.META_ARCHITECTURE on DATASETS.TRAIN for SOLVER.MAX_ITER iterations \
(checkpoints every SOLVER.CHECKPOINT_PERIOD, evaluation every TEST.EVAL_PERIOD, metrics in \
OUTPUT_DIR/metrics.json), then evaluate on DATASETS.TEST: the WIDER FACE protocol for face datasets, \
COCO-style AP otherwise. Writes OUTPUT_DIR/inference/{dataset}/ (predictions in the submission \
layout, pr_curves.png, vis/) and OUTPUT_DIR/eval_results.json. Ctrl-C writes a checkpoint; \
--resume continues from OUTPUT_DIR/last_checkpoint."
)]
struct Args {
    #[arg(long)]
    config_file: PathBuf,
    /// Continue from OUTPUT_DIR/last_checkpoint (weights, optimizer, iteration).
    #[arg(long)]
    resume: bool,
    /// Only evaluate: MODEL.WEIGHTS, or the last checkpoint with --resume.
    #[arg(long)]
    eval_only: bool,
    /// Config overrides `KEY VALUE ...`.
    opts: Vec<String>,
}

fn evaluate(cfg: &Config, model: &Model) -> Result<BTreeMap<String, f64>> {
    let out = PathBuf::from(&cfg.output_dir).join("inference");
    let metrics = inference_on_datasets(cfg, model, &out)?;
    let json = serde_json::to_string_pretty(&metrics)?;
    let path = PathBuf::from(&cfg.output_dir).join("eval_results.json");
    write_atomic(&path, json.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("evaluation results ({}):", cfg.datasets.test.join(", "));
    println!(
        "| {} |",
        metrics.keys().cloned().collect::<Vec<_>>().join(" | ")
    );
    println!("|{}|", vec!["---"; metrics.len()].join("|"));
    println!(
        "| {} |",
        metrics
            .values()
            .map(|v| format!("{v:.4}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("{}", serde_json::to_string(&metrics)?);
    Ok(metrics)
}

fn main() -> Result<()> {
    let threads = candletron::utils::threads::configure();
    candletron::utils::logging::init();
    let args = Args::parse();
    let cfg = Config::from_args(Some(&args.config_file), &args.opts)?;
    let seed = default_setup(&cfg)?;
    tracing::info!("{threads} compute threads");
    let (model, report) = build_model(&cfg, seed)?;
    if let Some(r) = &report {
        tracing::info!("loaded MODEL.WEIGHTS {}: {r}", cfg.model.weights);
        if r.loaded == 0 {
            anyhow::bail!(
                "MODEL.WEIGHTS {} matched no parameter of this model",
                cfg.model.weights
            );
        }
    }
    let out_dir = PathBuf::from(&cfg.output_dir);
    let checkpointer = Checkpointer::new(&out_dir);
    let vars = model.trainable_vars();
    tracing::info!(
        "{}: {} parameters, {} trainable tensors",
        cfg.model.meta_architecture,
        model.params.num_parameters(),
        vars.len()
    );
    let mut optimizer = Optimizer::from_config(&cfg, vars).map_err(|e| anyhow!(e))?;
    let mut start_iter = 0;
    let mut seed = seed;
    if args.resume {
        match checkpointer.last_checkpoint() {
            Some(p) => {
                let meta = Checkpointer::load(&p, &model, Some(&mut optimizer))?;
                start_iter = meta.iteration + 1;
                seed = meta.seed;
                tracing::info!("resumed from {} at iteration {start_iter}", p.display());
            }
            None => tracing::info!(
                "--resume: no checkpoint in {}, starting fresh",
                out_dir.display()
            ),
        }
    }
    if args.eval_only {
        evaluate(&cfg, &model)?;
        return Ok(());
    }
    let max_iter = cfg.solver.max_iter;
    if start_iter < max_iter {
        install_interrupt_handler();
        let scheduler = LrScheduler::from_config(&cfg).map_err(|e| anyhow!(e))?;
        let (loader, _) = build_detection_train_loader(&cfg, seed, start_iter)?;
        let metrics_file = out_dir.join("metrics.json");
        let eval_cfg = cfg.clone();
        let mut trainer = Trainer {
            model: &model,
            optimizer,
            scheduler,
            loader,
            checkpointer: Checkpointer::new(&out_dir),
            hooks: vec![
                Box::new(MetricsPrinter::new(
                    metrics_file.clone(),
                    cfg.solver.log_period,
                )),
                Box::new(PeriodicCheckpointer {
                    checkpointer: Checkpointer::new(&out_dir),
                    period: cfg.solver.checkpoint_period,
                }),
                Box::new(EvalHook {
                    period: cfg.test.eval_period,
                    eval: move |m: &Model| {
                        inference_on_datasets(&eval_cfg, m, &out_dir.join("inference"))
                    },
                    metrics_file,
                }),
            ],
            seed,
        };
        let t = std::time::Instant::now();
        if let TrainEnd::Interrupted {
            iteration,
            checkpoint,
        } = trainer.train(start_iter, max_iter)?
        {
            println!(
                "stopped at iteration {iteration}; checkpoint {} (continue with --resume)",
                checkpoint.display()
            );
            return Ok(());
        }
        tracing::info!("training took {:.1} s", t.elapsed().as_secs_f64());
    } else {
        tracing::info!("the checkpoint is already at SOLVER.MAX_ITER {max_iter}");
    }
    evaluate(&cfg, &model)?;
    Ok(())
}
