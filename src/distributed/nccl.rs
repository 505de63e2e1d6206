//! The NCCL backend (`--features nccl`): one rank per GPU, tensors reduced on the device
//! by NCCL. The unique id that joins the ranks is made by rank 0 and handed to the others
//! by the launcher's rendezvous (`engine::launch`).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use super::Communicator;

/// NCCL's communicator, shared by the group and the ops that run its collectives.
struct SharedComm(Comm);

// SAFETY: every collective is issued from the thread that drives training, in the same
// order on every rank; NCCL allows a communicator to be used from one thread at a time,
// whichever it is.
unsafe impl Send for SharedComm {}
unsafe impl Sync for SharedComm {}

/// A rank's NCCL communicator and its GPU.
pub struct NcclCommunicator {
    comm: Arc<SharedComm>,
    device: Device,
    rank: usize,
    size: usize,
}

/// The 128 bytes of an NCCL unique id, made by rank 0.
pub fn new_unique_id() -> Result<Vec<u8>> {
    let id = Id::new().map_err(|e| candle_core::Error::msg(format!("ncclGetUniqueId: {e:?}")))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

impl NcclCommunicator {
    /// Joins the group `unique_id` names as `rank` of `size`, on GPU `device` (a CUDA
    /// device of this process).
    pub fn new(device: &Device, rank: usize, size: usize, unique_id: &[u8]) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            candle_core::bail!("NCCL needs a CUDA device, got {device:?}")
        };
        let mut raw = [0 as core::ffi::c_char; 128];
        if unique_id.len() != raw.len() {
            candle_core::bail!("an NCCL unique id has 128 bytes, got {}", unique_id.len());
        }
        for (r, &b) in raw.iter_mut().zip(unique_id) {
            *r = b as core::ffi::c_char;
        }
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, size, Id::uninit(raw))
            .map_err(|e| candle_core::Error::msg(format!("ncclCommInitRank: {e:?}")))?;
        Ok(Self {
            comm: Arc::new(SharedComm(comm)),
            device: device.clone(),
            rank,
            size,
        })
    }

    fn on_device(&self, t: &Tensor) -> Result<Tensor> {
        t.to_device(&self.device)?.contiguous()
    }
}

/// NCCL's all-reduce (or broadcast) as an op over device storage.
struct Collective {
    comm: Arc<SharedComm>,
    /// `None`: all-reduce sum; `Some(root)`: broadcast from root.
    root: Option<usize>,
}

fn nccl_err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::msg(format!("NCCL: {e:?}"))
}

impl CustomOp1 for Collective {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(
        &self,
        _s: &candle_core::CpuStorage,
        _l: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives need CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL collectives need contiguous tensors")
        };
        let dev = s.device().clone();
        macro_rules! run {
            ($t:ty) => {{
                let src = s.as_cuda_slice::<$t>()?.slice(a..b);
                let mut dst = dev.alloc_zeros::<$t>(b - a)?;
                match self.root {
                    None => self.comm.0.all_reduce(&src, &mut dst, &ReduceOp::Sum),
                    Some(root) => self.comm.0.broadcast(Some(&src), &mut dst, root as i32),
                }
                .map_err(nccl_err)?;
                CudaStorage::wrap_cuda_slice(dst, dev)
            }};
        }
        let out = match s.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            other => candle_core::bail!("NCCL collectives of {other:?} are not supported"),
        };
        Ok((out, l.shape().clone()))
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let op = Collective {
            comm: self.comm.clone(),
            root: None,
        };
        self.on_device(t)?
            .apply_op1_no_bwd(&op)?
            .to_device(t.device())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let op = Collective {
            comm: self.comm.clone(),
            root: Some(root),
        };
        self.on_device(t)?
            .apply_op1_no_bwd(&op)?
            .to_device(t.device())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        super::ops::all_gather_bytes_by_sum(self, bytes)
    }

    fn broadcast_bytes(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>> {
        super::ops::broadcast_bytes_by_sum(self, bytes, root)
    }

    fn barrier(&self) -> Result<()> {
        // A one-element all-reduce, then wait for the stream: NCCL has no barrier.
        let t = Tensor::zeros(1, DType::F32, &self.device)?;
        crate::ops::host::to_vec1::<f32>(&self.all_reduce_sum(&t)?)?;
        Ok(())
    }

    fn abort(&self, code: i32) {
        // The launcher stops the other workers when one exits.
        std::process::exit(code)
    }
}
