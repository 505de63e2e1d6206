//! The MPI backend (`--features mpi`, over the system's MPI library, OpenMPI on Debian):
//! ranks come from `mpirun -np K train_net ...`, and the tensors are reduced on the
//! host. CPU training across cores or machines, and the backend the distributed tests
//! run on.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, WithDType};
use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};
use mpi::Count;

use super::Communicator;

struct Inner {
    /// Dropped before the universe: MPI_Finalize must come last.
    world: SimpleCommunicator,
    _universe: Universe,
}

/// MPI's world communicator. Calls are serialised by a lock (MPI_THREAD_SERIALIZED).
pub struct MpiCommunicator {
    inner: Mutex<Inner>,
    rank: usize,
    size: usize,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED and every call goes through the
// mutex, so no two threads are ever inside MPI at once.
unsafe impl Send for MpiCommunicator {}
unsafe impl Sync for MpiCommunicator {}

impl MpiCommunicator {
    /// Joins the world of the `mpirun` that started this process. `None` when MPI was
    /// already initialised in this process.
    pub fn init() -> Result<Self> {
        let Some((universe, level)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            candle_core::bail!("MPI is already initialised in this process")
        };
        if level < mpi::Threading::Serialized {
            candle_core::bail!(
                "the MPI library offers thread level {level:?}; candletron needs Serialized"
            );
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self {
            inner: Mutex::new(Inner {
                world,
                _universe: universe,
            }),
            rank,
            size,
        })
    }

    /// `op` on a host copy of `t`'s values, returned as a tensor on `t`'s device.
    fn on_host<T: WithDType + Equivalence>(
        &self,
        t: &Tensor,
        op: impl FnOnce(&SimpleCommunicator, &mut [T]),
    ) -> Result<Tensor> {
        let mut buf: Vec<T> =
            crate::ops::host::to_vec1(&t.flatten_all()?.to_device(&Device::Cpu)?)?;
        self.with(|w| op(w, &mut buf))?;
        Tensor::from_vec(buf, t.shape(), t.device())
    }

    fn with<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> Result<T> {
        let g = self
            .inner
            .lock()
            .map_err(|_| candle_core::Error::msg("the MPI lock is poisoned"))?;
        Ok(f(&g.world))
    }
}

/// Whether this process was started by `mpirun` (OpenMPI, MPICH or Intel MPI set these).
pub fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|k| std::env::var_os(k).is_some())
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        fn sum<T: Equivalence + Copy>(w: &SimpleCommunicator, buf: &mut [T]) {
            let send = buf.to_vec();
            w.all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        match t.dtype() {
            DType::F32 => self.on_host::<f32>(t, sum),
            DType::F64 => self.on_host::<f64>(t, sum),
            other => candle_core::bail!("MPI all-reduce of {other:?} is not supported"),
        }
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        fn from<T: Equivalence>(w: &SimpleCommunicator, buf: &mut [T], root: usize) {
            w.process_at_rank(root as i32).broadcast_into(buf);
        }
        match t.dtype() {
            DType::F32 => self.on_host::<f32>(t, |w, b| from(w, b, root)),
            DType::F64 => self.on_host::<f64>(t, |w, b| from(w, b, root)),
            other => candle_core::bail!("MPI broadcast of {other:?} is not supported"),
        }
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let n = bytes.len() as Count;
        let mut counts = vec![0 as Count; self.size];
        self.with(|w| w.all_gather_into(&n, &mut counts[..]))?;
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let total: Count = counts.iter().sum();
        let mut recv = vec![0u8; total as usize];
        self.with(|w| {
            let mut part = PartitionMut::new(&mut recv[..], &counts[..], &displs[..]);
            w.all_gather_varcount_into(bytes, &mut part)
        })?;
        Ok(counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| recv[d as usize..(d + c) as usize].to_vec())
            .collect())
    }

    fn broadcast_bytes(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>> {
        let mut n = bytes.len() as u64;
        self.with(|w| w.process_at_rank(root as i32).broadcast_into(&mut n))?;
        let mut buf = if self.rank == root {
            bytes.to_vec()
        } else {
            vec![0u8; n as usize]
        };
        self.with(|w| w.process_at_rank(root as i32).broadcast_into(&mut buf[..]))?;
        Ok(buf)
    }

    fn barrier(&self) -> Result<()> {
        self.with(|w| w.barrier())
    }

    fn abort(&self, code: i32) {
        // Without the lock: the rank may be stuck inside MPI holding it.
        // SAFETY: MPI_Abort may be called at any time after MPI_Init.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
}
