//! Data-parallel training: the process group every rank joins, as `torch.distributed`'s
//! default group and Detectron2's `comm` module.
//!
//! One [`Communicator`] per process, installed by [`init`] before the model is built and
//! removed by [`shutdown`] (which finalises the backend). Without one the process is a
//! world of one and every collective is the identity, so single-process code pays
//! nothing. The collectives are those of existing engines, MPI (`--features mpi`) and
//! NCCL (`--features nccl`); none is written here.
//!
//! Every collective goes through the functions of this module, which time it
//! ([`watchdog`]): a rank that died or hangs makes the others stop with an error naming
//! the collective after the timeout instead of waiting forever.

mod communicator;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ops;
pub mod watchdog;

pub use communicator::{Communicator, SingleProcess};
pub use ops::{
    all_reduce_autograd, average_gradients, broadcast_vars, global_count, mean_over_ranks,
};

use std::sync::{Arc, RwLock};

use candle_core::{Result, Tensor};

static GROUP: RwLock<Option<Arc<dyn Communicator>>> = RwLock::new(None);

/// Makes `comm` this process's group. A second group is an error: ranks would disagree
/// on which one a collective runs in.
pub fn init(comm: Arc<dyn Communicator>) -> Result<()> {
    let mut g = GROUP
        .write()
        .map_err(|_| candle_core::Error::msg("poisoned"))?;
    if g.is_some() {
        candle_core::bail!("the process group is already initialised");
    }
    tracing::info!(
        "rank {} of {} ({})",
        comm.rank(),
        comm.world_size(),
        comm.backend()
    );
    *g = Some(comm);
    Ok(())
}

/// Leaves the group: waits for every rank, then drops the communicator (MPI_Finalize,
/// NCCL's comm destroy). Idempotent.
pub fn shutdown() -> Result<()> {
    let comm = GROUP.write().ok().and_then(|mut g| g.take());
    if let Some(c) = comm {
        if c.world_size() > 1 {
            watchdog::guard("barrier at shutdown", || c.barrier())?;
        }
    }
    watchdog::stop();
    Ok(())
}

/// The group's communicator, if one is installed.
pub fn group() -> Option<Arc<dyn Communicator>> {
    GROUP.read().ok().and_then(|g| g.clone())
}

/// Whether a process group is installed. Its collectives then run even in a world of one
/// (`mpirun -np 1`, one NCCL rank), which tests the data-parallel path against a plain run.
pub fn in_group() -> bool {
    group().is_some()
}

/// Number of ranks (1 without a group).
pub fn world_size() -> usize {
    group().map_or(1, |c| c.world_size())
}

/// This process's rank (0 without a group).
pub fn rank() -> usize {
    group().map_or(0, |c| c.rank())
}

/// Whether this process writes files and logs: rank 0.
pub fn is_main_process() -> bool {
    rank() == 0
}

/// Sum of `t` over ranks (the identity without a group).
pub fn all_reduce_sum(t: &Tensor, what: &str) -> Result<Tensor> {
    match group() {
        Some(c) => watchdog::guard(what, || c.all_reduce_sum(t)),
        _ => Ok(t.clone()),
    }
}

/// Rank `root`'s `t` on every rank.
pub fn broadcast(t: &Tensor, root: usize, what: &str) -> Result<Tensor> {
    match group() {
        Some(c) => watchdog::guard(what, || c.broadcast(t, root)),
        _ => Ok(t.clone()),
    }
}

/// Every rank's bytes, in rank order.
pub fn all_gather_bytes(bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
    match group() {
        Some(c) => watchdog::guard(what, || c.all_gather_bytes(bytes)),
        _ => Ok(vec![bytes.to_vec()]),
    }
}

/// Rank `root`'s bytes on every rank.
pub fn broadcast_bytes(bytes: &[u8], root: usize, what: &str) -> Result<Vec<u8>> {
    match group() {
        Some(c) => watchdog::guard(what, || c.broadcast_bytes(bytes, root)),
        _ => Ok(bytes.to_vec()),
    }
}

/// The items of a sharded pass (rank r holds the dataset's items r, r + world, ...) from
/// every rank, back in dataset order, on every rank; in a world of one, `items`.
pub fn gather_interleaved<T>(items: Vec<T>, what: &str) -> Result<Vec<T>>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    if !in_group() {
        return Ok(items);
    }
    let bytes = serde_json::to_vec(&items).map_err(candle_core::Error::wrap)?;
    let mut per_rank: Vec<std::vec::IntoIter<T>> = all_gather_bytes(&bytes, what)?
        .iter()
        .map(|b| serde_json::from_slice::<Vec<T>>(b).map(|v| v.into_iter()))
        .collect::<std::result::Result<_, _>>()
        .map_err(candle_core::Error::wrap)?;
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for it in per_rank.iter_mut() {
            out.extend(it.next());
        }
        if out.len() == before {
            return Ok(out);
        }
    }
}

/// Waits for every rank.
pub fn barrier(what: &str) -> Result<()> {
    match group() {
        Some(c) => watchdog::guard(what, || c.barrier()),
        _ => Ok(()),
    }
}

/// Ends every rank's process: called when this rank cannot go on, so that the others do
/// not wait in their next collective. Returns only without a group of several ranks.
pub fn abort_others(code: i32) {
    if let Some(c) = group() {
        if c.world_size() > 1 {
            c.abort(code);
        }
    }
}
