//! Logging setup shared by the tools: `RUST_LOG` filters, `info` by default; colours only
//! on a terminal, so a log written to a file or a pipe stays plain text.

use std::io::IsTerminal;

/// The rank of a data-parallel process, from what `mpirun` or `train_net`'s launcher put
/// in its environment (before any group exists), or 0.
pub fn rank_from_env() -> usize {
    ["CANDLETRON_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Ranks other than 0 of a data-parallel run log warnings and errors only (as
/// Detectron2's), so the console shows one run's progress.
pub fn init() {
    let default = if rank_from_env() == 0 { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
