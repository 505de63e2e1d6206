//! Serve a trained detector or classifier over HTTP (see `candletron::serve`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use candletron::engine::{inference_config, Predictor};
use candletron::serve::{serve, BatchingConfig, RequestLimits, ServeConfig};

#[derive(Parser)]
#[command(
    about = "Serve a detector (POST /v1/detect) or classifier (POST /v1/classify) over HTTP, with dynamic batching, /metrics and a web page at /",
    after_help = "Prints `listening on http://HOST:PORT` on stdout once the model is loaded. \
                  SIGINT or SIGTERM stops accepting, answers the requests already accepted and \
                  exits 0; a second signal exits at once (130)."
)]
struct Args {
    /// Config file: the one the model was trained with. Without it, the config stored in
    /// --weights when training wrote them, else the defaults.
    #[arg(long, visible_alias = "config")]
    config_file: Option<PathBuf>,
    /// Model weights; overrides MODEL.WEIGHTS.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (see the `listening on` line).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most images per model call; 1 turns dynamic batching off. Batches are where a GPU
    /// gains throughput; on CPU they are about even with single images (see the load table
    /// in docs/benchmarks.md).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_batch: u16,
    /// Longest a request waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    max_wait_ms: u64,
    /// Most requests admitted at once (read, decoded, waiting or computed); more are
    /// answered 503 with Retry-After. Bounds memory at about
    /// queue x (max-body-mb + the decoded image).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    queue: u32,
    /// Largest request body in MiB; larger ones are answered 413.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_body_mb: u32,
    /// Largest image in pixels (width x height), checked from its header before decoding;
    /// larger ones are answered 400. The default is 4096 x 4096.
    #[arg(long, default_value_t = 16_777_216, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    max_pixels: u64,
    /// Longest wait for a request's body, in seconds (408 after it).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout_s: u64,
    /// The `model` field of every answer (default: the weights' file name without extension).
    #[arg(long)]
    name: Option<String>,
    /// Class names, comma-separated (default: those stored in weights written by training,
    /// else ImageNet's for a 1000-class classifier, else `class N`).
    #[arg(long, value_delimiter = ',')]
    class_names: Vec<String>,
    /// Serve even when the weights leave model parameters unloaded or mismatched.
    #[arg(long)]
    allow_unmatched_weights: bool,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
}

/// Completes at the first SIGINT or SIGTERM; a second one ends the process at once.
async fn shutdown_signal(
    mut interrupt: tokio::signal::unix::Signal,
    mut terminate: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping: no new connections; answering the requests already accepted");
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("second signal: exiting without finishing");
        std::process::exit(130);
    });
}

fn model_name(cfg_weights: &str) -> String {
    Path::new(cfg_weights)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("model")
        .to_string()
}

fn main() -> Result<()> {
    candletron::utils::threads::configure();
    candletron::utils::logging::init();
    let args = Args::parse();
    let cfg = inference_config(
        args.config_file.as_deref(),
        args.weights.as_deref(),
        &args.opts,
    )?;
    let config = ServeConfig {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| model_name(&cfg.model.weights)),
        batching: BatchingConfig {
            max_batch: args.max_batch as usize,
            max_wait: Duration::from_millis(args.max_wait_ms),
            queue: args.queue as usize,
        },
        limits: RequestLimits {
            max_body_bytes: args.max_body_mb as usize * 1024 * 1024,
            max_pixels: args.max_pixels,
            body_timeout: Duration::from_secs(args.body_timeout_s),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before the port opens: a signal right after `listening on` stops cleanly.
        let interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let class_names = args.class_names.clone();
        let allow_unmatched = args.allow_unmatched_weights;
        let load = move || {
            let predictor = if allow_unmatched {
                Predictor::from_config_allowing_unmatched(&cfg)?
            } else {
                Predictor::from_config(&cfg)?
            };
            if class_names.is_empty() {
                Ok(predictor)
            } else {
                predictor.with_class_names(class_names)
            }
        };
        let on_ready = |addr: std::net::SocketAddr| {
            println!("listening on http://{addr}");
        };
        serve(
            listener,
            config,
            load,
            on_ready,
            shutdown_signal(interrupt, terminate),
        )
        .await
        .map_err(anyhow::Error::from)
    })?;
    if summary.unanswered > 0 {
        tracing::warn!(
            "{} requests reached the server but were not answered",
            summary.unanswered
        );
    }
    println!(
        "stopped: {} requests answered, {} unanswered",
        summary.answered, summary.unanswered
    );
    Ok(())
}
