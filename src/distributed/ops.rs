//! What data-parallel training does with the group: average the gradients, start every
//! rank from the same weights, make batch-dependent normalisers global, and sum batch
//! statistics with a gradient (SyncBN).

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, Var};

use super::{all_reduce_sum, broadcast, in_group, world_size};
use crate::ops::host;

/// Gradients are reduced in buckets of about this many elements (PyTorch DDP's 25 MB of
/// f32): a few large messages instead of one per tensor, without a copy of the whole
/// model at once.
pub const BUCKET_ELEMENTS: usize = 25 * 1024 * 1024 / 4;

/// Buckets of consecutive tensors, in the order given (the same on every rank), of at
/// most [`BUCKET_ELEMENTS`] elements unless one tensor alone is larger.
fn buckets(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut n) = (0, 0);
    for (i, &s) in sizes.iter().enumerate() {
        if n > 0 && n + s > BUCKET_ELEMENTS {
            out.push(start..i);
            start = i;
            n = 0;
        }
        n += s;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Replaces each variable's gradient by its mean over ranks, as DDP's all-reduce does.
/// A variable without a gradient on some ranks counts as zero there; one without a
/// gradient on every rank keeps none (so the optimizer skips it, as a single process
/// would). Returns the number of elements reduced.
pub fn average_gradients(grads: &mut GradStore, vars: &[Var]) -> Result<usize> {
    let world = world_size();
    if !in_group() || vars.is_empty() {
        return Ok(0);
    }
    let sizes: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
    let mut reduced = 0;
    for range in buckets(&sizes) {
        let vs = &vars[range];
        let (dtype, device) = (vs[0].dtype(), vs[0].device().clone());
        let mut parts = Vec::with_capacity(vs.len() + 1);
        let mut present = Vec::with_capacity(vs.len());
        for v in vs {
            if v.dtype() != dtype {
                candle_core::bail!("gradients of mixed dtypes ({:?}, {dtype:?})", v.dtype());
            }
            match grads.get(v.as_tensor()) {
                Some(g) => {
                    parts.push(g.flatten_all()?);
                    present.push(1f32);
                }
                None => {
                    parts.push(Tensor::zeros(v.elem_count(), dtype, &device)?);
                    present.push(0f32);
                }
            }
        }
        parts.push(Tensor::new(present.as_slice(), &device)?.to_dtype(dtype)?);
        let flat = Tensor::cat(&parts, 0)?;
        reduced += flat.elem_count();
        let sum = all_reduce_sum(&flat, "all-reduce of the gradients")?;
        let mean = (sum.narrow(0, 0, flat.elem_count() - vs.len())? / world as f64)?;
        let flags: Vec<f32> = host::to_vec1(
            &sum.narrow(0, flat.elem_count() - vs.len(), vs.len())?
                .to_dtype(DType::F32)?,
        )?;
        let mut offset = 0;
        for (v, flag) in vs.iter().zip(flags) {
            let n = v.elem_count();
            if flag > 0.0 {
                let g = mean.narrow(0, offset, n)?.reshape(v.shape())?;
                grads.insert(v.as_tensor(), g);
            } else {
                grads.remove(v.as_tensor());
            }
            offset += n;
        }
    }
    Ok(reduced)
}

/// Sets every variable to rank `root`'s value (the initial weights, or a checkpoint
/// only `root` read).
pub fn broadcast_vars(vars: &[Var], root: usize) -> Result<()> {
    if !in_group() {
        return Ok(());
    }
    let sizes: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
    for range in buckets(&sizes) {
        let vs = &vars[range];
        // Buckets by dtype would reorder; mixed dtypes go one tensor at a time.
        let same = vs.iter().all(|v| v.dtype() == vs[0].dtype());
        if !same {
            for v in vs {
                v.set(&broadcast(v.as_tensor(), root, "broadcast of the weights")?)?;
            }
            continue;
        }
        let flat: Vec<Tensor> = vs
            .iter()
            .map(|v| v.as_tensor().flatten_all())
            .collect::<Result<_>>()?;
        let flat = broadcast(&Tensor::cat(&flat, 0)?, root, "broadcast of the weights")?;
        let mut offset = 0;
        for v in vs {
            let n = v.elem_count();
            v.set(&flat.narrow(0, offset, n)?.reshape(v.shape())?)?;
            offset += n;
        }
    }
    Ok(())
}

/// The sum of `local` over ranks: a normaliser (positive anchors, sampled ROIs) counted
/// over the global batch, so that the loss does not depend on how the batch is split.
/// Every rank must call it, even one whose count is zero.
pub fn global_count(local: usize, what: &str) -> Result<usize> {
    if !in_group() {
        return Ok(local);
    }
    let t = Tensor::new(&[local as f64], &Device::Cpu)?;
    let sum: Vec<f64> = host::to_vec1(&all_reduce_sum(&t, what)?)?;
    Ok(sum[0].round() as usize)
}

/// The mean of each value over ranks (losses and statistics for the logs).
pub fn mean_over_ranks(values: &[f64], what: &str) -> Result<Vec<f64>> {
    let world = world_size();
    if !in_group() || values.is_empty() {
        return Ok(values.to_vec());
    }
    let t = Tensor::new(values, &Device::Cpu)?;
    let sum: Vec<f64> = host::to_vec1(&all_reduce_sum(&t, what)?)?;
    Ok(sum.into_iter().map(|v| v / world as f64).collect())
}

/// All-gather of bytes for a backend whose only collective is a sum: every rank's
/// lengths, then a rank-by-length table where each rank fills its own row (bytes are
/// exact in f32).
pub fn all_gather_bytes_by_sum(
    comm: &dyn super::Communicator,
    bytes: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let mut lens = vec![0f64; world];
    lens[rank] = bytes.len() as f64;
    let lens: Vec<f64> =
        host::to_vec1(&comm.all_reduce_sum(&Tensor::new(lens.as_slice(), &Device::Cpu)?)?)?;
    let width = lens.iter().fold(0f64, |a, &b| a.max(b)) as usize;
    let mut table = vec![0f32; world * width];
    for (i, &b) in bytes.iter().enumerate() {
        table[rank * width + i] = b as f32;
    }
    let table: Vec<f32> = host::to_vec1(&comm.all_reduce_sum(&Tensor::from_vec(
        table,
        world * width,
        &Device::Cpu,
    )?)?)?;
    Ok(lens
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            table[r * width..r * width + n as usize]
                .iter()
                .map(|&v| v as u8)
                .collect()
        })
        .collect())
}

/// Broadcast of bytes for a backend whose only collective is a sum.
pub fn broadcast_bytes_by_sum(
    comm: &dyn super::Communicator,
    bytes: &[u8],
    root: usize,
) -> Result<Vec<u8>> {
    let mine = if comm.rank() == root { bytes } else { &[] };
    let mut all = all_gather_bytes_by_sum(comm, mine)?;
    Ok(std::mem::take(&mut all[root]))
}

/// The forward value of [`all_reduce_autograd`] is its second input, the sum computed
/// outside the graph; its gradient with respect to the first input is the sum of the
/// output gradients over ranks (the transpose of an all-reduce is an all-reduce).
struct ReducedSum;

fn copy_contiguous(s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("all_reduce_autograd: the reduced tensor is not contiguous")
    };
    Ok(match s {
        CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
        other => candle_core::bail!("all_reduce_autograd: {:?} is not supported", other.dtype()),
    })
}

impl CustomOp2 for ReducedSum {
    fn name(&self) -> &'static str {
        "all-reduce"
    }

    fn cpu_fwd(
        &self,
        _a: &CpuStorage,
        _al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((copy_contiguous(b, bl)?, bl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _a: &candle_core::CudaStorage,
        _al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        if !bl.is_contiguous() || bl.start_offset() != 0 {
            candle_core::bail!("all_reduce_autograd: the reduced tensor is not contiguous")
        }
        Ok((b.try_clone(bl)?, bl.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = all_reduce_sum(&grad_res.contiguous()?, "all-reduce of SyncBN gradients")?;
        Ok((Some(g), None))
    }
}

/// Sum of `t` over ranks with a gradient: each rank's `t` receives the sum over ranks of
/// the gradients of the result. SyncBN's batch statistics go through it.
pub fn all_reduce_autograd(t: &Tensor, what: &str) -> Result<Tensor> {
    if !in_group() {
        return Ok(t.clone());
    }
    let t = t.contiguous()?;
    let sum = all_reduce_sum(&t.detach(), what)?.contiguous()?;
    t.apply_op2(&sum, ReducedSum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_order_and_split_at_the_size() {
        let b = BUCKET_ELEMENTS;
        assert!(buckets(&[]).is_empty());
        assert_eq!(buckets(&[3, 4]), vec![0..2]);
        assert_eq!(buckets(&[b, 1, b - 1, 2]), vec![0..1, 1..3, 3..4]);
        assert_eq!(buckets(&[2 * b, 1]), vec![0..1, 1..2]);
    }

    #[test]
    fn a_world_of_one_changes_nothing() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let loss = (v.as_tensor() * 3.0).unwrap().sum_all().unwrap();
        let mut grads = loss.backward().unwrap();
        assert_eq!(
            average_gradients(&mut grads, std::slice::from_ref(&v)).unwrap(),
            0
        );
        let g: Vec<f32> = grads.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![3.0, 3.0]);
        assert_eq!(global_count(7, "test").unwrap(), 7);
        assert_eq!(mean_over_ranks(&[1.5], "test").unwrap(), vec![1.5]);
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let r = all_reduce_autograd(&t, "test").unwrap();
        assert_eq!(r.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}
