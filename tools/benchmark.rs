//! Speed of the backbone, of inference and of a training step, like Detectron2's
//! `tools/benchmark.py`: warm-up, then the median over timed iterations.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::{Optimizer, ParamsAdamW, SGD};
use clap::{Parser, ValueEnum};

use candletron::config::{AmpDtype, Config, OptimizerName};
use candletron::data::build::build_detection_train_loader;
use candletron::layers::autocast;
use candletron::layers::params::ParamStore;
use candletron::modeling::backbone::build_backbone;
use candletron::modeling::build_model;
use candletron::structures::Instances;
use candletron::structures::ModelInput;

/// One optimizer update from a gradient store.
type OptimizerStep = dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Backbone forward (eval, norms folded) on random images.
    Backbone,
    /// Whole-model forward (eval, norms folded) on random images.
    Inference,
    /// One training step: forward, losses, backward, optimizer step.
    Train,
    /// The training data loader (read, augment, batch) of `DATASETS.TRAIN`; `--size` sets
    /// `INPUT.TRAIN_SIZE` and `--batch` `SOLVER.IMS_PER_BATCH`.
    Data,
}

#[derive(Parser)]
#[command(about = "Time the backbone, inference or a training step (median ms/iter after warm-up)")]
struct Args {
    /// Config file (defaults in code otherwise).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum)]
    task: Task,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Square input size.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Timed iterations (default 30, 5 for train).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    iters: Option<u32>,
    /// Untimed iterations first (default 5, 2 for train).
    #[arg(long)]
    warmup: Option<usize>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
}

fn main() -> Result<()> {
    let threads = candletron::utils::threads::configure();
    candletron::utils::logging::init();
    let args = Args::parse();
    let cfg = Config::from_args(args.config.as_deref(), &args.opts)?;
    if args.batch == 0 || args.size == 0 {
        bail!("--batch and --size must be positive");
    }
    if args.task == Task::Data {
        return bench_data(cfg, &args, threads);
    }
    let train = args.task == Task::Train;
    let iters = args
        .iters
        .map_or(if train { 5 } else { 30 }, |n| n as usize);
    let warmup = args.warmup.unwrap_or(if train { 2 } else { 5 });
    let (model, _) = build_model(&cfg, 0)?;
    let device = model.device.clone();
    // Network input for the backbone alone; whole-model tasks take pixels in 0..255 and
    // go through the model's own preprocessing, as every tool does.
    let images = Tensor::randn(0f32, 1.0, (args.batch, 3, args.size, args.size), &device)?;
    let pixels = (0..args.batch)
        .map(|_| Tensor::rand(0f32, 255.0, (3, args.size, args.size), &device))
        .collect::<candle_core::Result<Vec<_>>>()?;

    let mut step: Box<dyn FnMut() -> Result<()>> = match args.task {
        Task::Backbone => {
            let store = std::sync::Arc::new(ParamStore::new(0));
            let backbone =
                build_backbone(&cfg, store.var_builder(candle_core::DType::F32, &device))?
                    .fused()?;
            Box::new(move || {
                backbone.forward_t(&images, false)?;
                Ok(())
            })
        }
        Task::Data => unreachable!("handled above"),
        Task::Inference => {
            let fused = model.fused()?;
            let inputs: Vec<ModelInput> = pixels.into_iter().map(ModelInput::new).collect();
            Box::new(move || {
                fused.inference(&inputs)?;
                Ok(())
            })
        }
        Task::Train => {
            let inputs: Vec<ModelInput> = if cfg.model.meta_architecture == "Classifier" {
                let classes = cfg.model.classifier.num_classes as u32;
                let labels: Vec<u32> = (0..args.batch as u32).map(|i| i * 7 % classes).collect();
                labels
                    .iter()
                    .zip(pixels)
                    .map(|(&l, p)| ModelInput::new(p).with_label(l as usize))
                    .collect::<Vec<_>>()
            } else {
                // Detectors: a fixed spread of boxes from 1/16 to 1/2 of the image per image.
                let s = args.size as f32;
                let boxes: Vec<[f32; 4]> = (1..=5)
                    .map(|k| {
                        let side = s * (k as f32) / 10.0;
                        let o = s * 0.05 * k as f32;
                        [o, o, (o + side).min(s), (o + side).min(s)]
                    })
                    .collect();
                let inst = Instances {
                    classes: vec![0; boxes.len()],
                    ignore: vec![false; boxes.len()],
                    boxes,
                };
                pixels
                    .into_iter()
                    .map(|p| ModelInput::new(p).with_instances(inst.clone()))
                    .collect()
            };
            let vars: Vec<_> = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
            let mut opt: Box<OptimizerStep> = match cfg.solver.optimizer {
                OptimizerName::AdamW => {
                    let mut o = candle_nn::AdamW::new(
                        vars,
                        ParamsAdamW {
                            lr: cfg.solver.base_lr,
                            weight_decay: cfg.solver.weight_decay,
                            ..Default::default()
                        },
                    )?;
                    Box::new(move |g| Ok(o.step(g)?))
                }
                OptimizerName::Sgd => {
                    let mut o = SGD::new(vars, cfg.solver.base_lr)?;
                    Box::new(move |g| Ok(o.step(g)?))
                }
            };
            // `SOLVER.AMP` with bfloat16: the forward under autocast, as the trainer runs
            // it. Float16 needs the trainer's loss scaling, which the plain optimizers
            // here do not do.
            let amp = &cfg.solver.amp;
            if amp.enabled && amp.dtype != AmpDtype::BFloat16 {
                bail!("the benchmark times SOLVER.AMP.DTYPE bfloat16 only (float16 needs the trainer's loss scaling)");
            }
            let autocast = amp.compute_dtype();
            Box::new(move || {
                let losses = {
                    let _scope = autocast::Scope::new(autocast)?;
                    model.losses(&inputs)?
                };
                let total = losses
                    .values()
                    .try_fold(None::<Tensor>, |acc, l| -> Result<_> {
                        Ok(Some(match acc {
                            None => l.clone(),
                            Some(a) => (a + l)?,
                        }))
                    })?;
                let Some(total) = total else {
                    bail!("the model returned no losses in training")
                };
                let grads = total.backward()?;
                opt(&grads)
            })
        }
    };

    // CUDA and Metal queue work asynchronously: a step counts until its kernels finish
    // (this replaces reading a sum of the outputs back, which added work to every step).
    let mut step = move || -> Result<()> {
        step()?;
        Ok(device.synchronize()?)
    };
    for _ in 0..warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let per_s = args.batch as f64 / (median / 1000.0);
    let task = match args.task {
        Task::Backbone => "backbone",
        Task::Inference => "inference",
        Task::Train => "train",
        Task::Data => "data",
    };
    println!(
        "{task}: {} batch {} at {}x{}, {threads} threads: median {median:.2} ms/iter ({:.2}..{:.2}), {per_s:.1} images/s over {iters} iters",
        cfg.model.meta_architecture, args.batch, args.size, args.size, times[0], times[times.len() - 1]
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"task": task, "batch": args.batch, "size": args.size, "median_ms": median, "images_per_s": per_s, "threads": threads})
        );
    }
    Ok(())
}

/// Loader throughput: batches taken from the training loader as a training loop would.
fn bench_data(mut cfg: Config, args: &Args, threads: usize) -> Result<()> {
    cfg.input.train_size = args.size;
    cfg.solver.ims_per_batch = args.batch;
    let iters = args.iters.map_or(30, |n| n as usize);
    let warmup = args.warmup.unwrap_or(cfg.dataloader.prefetch);
    let (mut loader, _) = build_detection_train_loader(&cfg, 0, 0)?;
    for _ in 0..warmup {
        loader.next().transpose()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        loader.next().transpose()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The mean, not the median: with prefetch most waits are near zero and the cost
    // shows up in the occasional long one.
    let mean = times.iter().sum::<f64>() / iters as f64;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let per_s = args.batch as f64 / (mean / 1000.0);
    println!(
        "data: {} ({}) batch {} at {}, {} workers: {mean:.2} ms/batch (mean; median {median:.2}), {per_s:.1} images/s over {iters} batches",
        cfg.datasets.train.join(","),
        cfg.input.augmentation,
        args.batch,
        args.size,
        cfg.dataloader.num_workers
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"task": "data", "batch": args.batch, "size": args.size, "median_ms": median, "mean_ms": mean, "images_per_s": per_s, "threads": threads, "workers": cfg.dataloader.num_workers})
        );
    }
    Ok(())
}
