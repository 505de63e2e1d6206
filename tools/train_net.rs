//! Train and evaluate a detector from a config (Detectron2's tools/train_net.py).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use candletron::config::Config;
use candletron::engine::launch::{LaunchArgs, Placement};
use candletron::engine::{DefaultTrainer, TrainOutcome};
use candletron::evaluation::widerface::SETTINGS;

#[derive(Parser)]
#[command(
    about = "Train a detector or classifier, then evaluate it and draw its results",
    long_about = "Train MODEL.META_ARCHITECTURE on DATASETS.TRAIN for SOLVER.MAX_ITER iterations \
(checkpoints every SOLVER.CHECKPOINT_PERIOD, evaluation every TEST.EVAL_PERIOD iterations or \
epochs with model_best and early stopping when asked, metrics in OUTPUT_DIR/metrics.json, \
training_curves.png), then evaluate on DATASETS.TEST: the WIDER FACE protocol for face datasets, \
COCO-style AP for other detection datasets, top-1/top-5/F1 or mAP/F1 for classification. Writes \
OUTPUT_DIR/inference/{dataset}/ (predictions in the submission layout, pr_curves.png, vis/; \
confusion_matrix.png, correct.png, wrong.png) and OUTPUT_DIR/eval_results.json. Ctrl-C or SIGTERM writes a \
checkpoint and exits cleanly; --resume continues from the newest valid checkpoint. A new run \
refuses an OUTPUT_DIR holding another run's results unless --overwrite. Data-parallel: \
`mpirun -np K train_net ...` (built with --features mpi) or --num-gpus N (--features nccl); \
SOLVER.IMS_PER_BATCH is the global batch, split over the ranks."
)]
struct Args {
    #[arg(long)]
    config_file: PathBuf,
    /// Continue the run in OUTPUT_DIR from its newest valid checkpoint (weights,
    /// optimizer, iteration).
    #[arg(long)]
    resume: bool,
    /// Start a new run in an OUTPUT_DIR that holds another run's results, deleting them.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Only evaluate: MODEL.WEIGHTS, or the newest checkpoint with --resume.
    #[arg(long)]
    eval_only: bool,
    /// With --eval-only: evaluate even when the weights leave parameters unloaded.
    #[arg(long, requires = "eval_only")]
    allow_unmatched_weights: bool,
    /// GPUs on this machine: one worker process each, joined by NCCL (build with
    /// `--features nccl`). CPU ranks come from `mpirun -np K` instead (`--features mpi`).
    #[arg(long, default_value_t = 1)]
    num_gpus: usize,
    /// Machines in the run, each started with the same command and its --machine-rank.
    #[arg(long, default_value_t = 1)]
    num_machines: usize,
    /// This machine's index, 0..num-machines.
    #[arg(long, default_value_t = 0)]
    machine_rank: usize,
    /// `tcp://HOST:PORT` of machine 0, where the ranks meet; `auto`: a free local port
    /// (one machine).
    #[arg(long, default_value = "auto")]
    dist_url: String,
    /// Seconds a rank waits for the others in a collective before it stops the run with
    /// an error (a rank died or hangs).
    #[arg(long, default_value_t = 1800)]
    dist_timeout: u64,
    /// Config overrides `KEY VALUE ...`.
    opts: Vec<String>,
}

/// The metrics as a table and as one JSON line (the last line of the output). The WIDER
/// FACE settings come in the protocol's order (easy, medium, hard), the rest by name.
fn print_metrics(cfg: &Config, metrics: &BTreeMap<String, f64>) -> Result<()> {
    if !candletron::distributed::is_main_process() {
        return Ok(());
    }
    let rank = |k: &str| {
        let setting = k.rsplit('/').next().unwrap_or(k);
        SETTINGS
            .iter()
            .position(|s| *s == setting)
            .unwrap_or(SETTINGS.len())
    };
    let mut rows: Vec<(&String, &f64)> = metrics.iter().collect();
    // Stable: keys of equal rank (several datasets, or non-WIDER metrics) keep their order.
    rows.sort_by_key(|(k, _)| {
        let dataset = k.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        (dataset.to_string(), rank(k))
    });
    println!("evaluation results ({}):", cfg.datasets.test.join(", "));
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    println!("| {} |", keys.join(" | "));
    println!("|{}|", vec!["---"; rows.len()].join("|"));
    let values: Vec<String> = rows.iter().map(|(_, v)| format!("{v:.4}")).collect();
    println!("| {} |", values.join(" | "));
    println!("{}", serde_json::to_string(metrics)?);
    Ok(())
}

fn main() -> Result<()> {
    let threads = candletron::utils::threads::configure();
    candletron::utils::logging::init();
    let args = Args::parse();
    let launch = LaunchArgs {
        num_gpus: args.num_gpus,
        num_machines: args.num_machines,
        machine_rank: args.machine_rank,
        dist_url: args.dist_url.clone(),
        timeout: Duration::from_secs(args.dist_timeout.max(1)),
    };
    Ok(candletron::engine::launch::launch(&launch, |p| {
        run(args, p, threads).map_err(|e| candletron::Error::run(e.to_string()))
    })?)
}

fn run(args: Args, placement: Placement, threads: usize) -> Result<()> {
    let mut opts = args.opts.clone();
    if let Some(gpu) = placement.local_rank {
        // A launcher worker trains on its own GPU.
        opts.extend(["MODEL.DEVICE".to_string(), format!("cuda:{gpu}")]);
    }
    let cfg = Config::from_args(Some(&args.config_file), &opts)?;
    tracing::info!("{threads} compute threads");
    let trainer = DefaultTrainer::from_config(&cfg)?;
    if args.eval_only {
        // Evaluation writes inference/ and eval_results.json only: no config.yaml, no
        // check for a training run's results (evaluating one is the point).
        let trainer = if args.resume {
            trainer.load_newest_checkpoint()?
        } else {
            trainer
        };
        return print_metrics(&cfg, &trainer.eval_only(args.allow_unmatched_weights)?);
    }
    let mut trainer = trainer
        .with_overwrite(args.overwrite)
        .resume_or_load(args.resume)?;
    match trainer.train()? {
        TrainOutcome::Finished(metrics) => print_metrics(&cfg, &metrics),
        TrainOutcome::Interrupted {
            iteration,
            checkpoint,
        } if candletron::distributed::is_main_process() => {
            println!(
                "stopped at iteration {iteration}; checkpoint {} (continue with --resume)",
                checkpoint.display()
            );
            Ok(())
        }
        TrainOutcome::Interrupted { .. } => Ok(()),
    }
}
