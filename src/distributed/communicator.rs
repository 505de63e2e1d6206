//! The collectives data-parallel training needs, over one engine's process group.

use candle_core::{Result, Tensor};

/// A process group of `world_size` ranks. Every rank calls the same collectives in the
/// same order; tensors keep their shape, dtype and device.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The engine, for logs: `mpi`, `nccl`, `single`.
    fn backend(&self) -> &'static str;
    /// Element-wise sum over ranks (f32 or f64).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s tensor, on every rank (same shape and dtype everywhere).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Every rank's bytes (any length per rank), in rank order.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Rank `root`'s bytes, on every rank.
    fn broadcast_bytes(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>>;
    fn barrier(&self) -> Result<()>;
    /// Ends every rank's process with `code` (MPI_Abort; NCCL's launcher kills the
    /// group when one worker exits).
    fn abort(&self, code: i32);
}

/// The world of one: every collective is the identity. What a run without a group uses,
/// and the reference the distributed tests compare against.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
    fn broadcast_bytes(&self, bytes: &[u8], _root: usize) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) {
        std::process::exit(code)
    }
}
