//! Per row, the `k` highest scores among a row's candidates: as a mask, SSD's
//! hard-negative mining as one op on the device that holds the scores; as indices in
//! rank order, the per-level top-k of an RPN's proposals.
//!
//! Mining picks, per image, the negatives with the largest background loss. Done on the
//! host, it reads the losses back mid-step, a device sync on a GPU; as an op it stays on
//! the device, and the host only supplies what it already knows (which anchors are
//! negatives, how many to keep). Order is `f32::total_cmp` descending with ties to the
//! lower index, i.e. a stable sort, so the CPU and CUDA versions pick the same anchors.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::parallel::cpu_slice;

/// `scores` (N, R) f32, `candidates` (N, R) u8 (non-zero: may be picked), `k` (N) u32 ->
/// (N, R) f32 with 1 at the `k[i]` highest-scoring candidates of row `i` (all of them if
/// fewer), 0 elsewhere. No gradient: the mask selects, the caller multiplies.
pub fn top_k_mask(scores: &Tensor, candidates: &Tensor, k: &Tensor) -> Result<Tensor> {
    let (n, r) = scores.dims2()?;
    if candidates.dims() != [n, r] || k.dims() != [n] {
        candle_core::bail!(
            "top_k_mask: scores {:?}, candidates {:?} and k {:?} do not fit",
            scores.dims(),
            candidates.dims(),
            k.dims()
        );
    }
    if (scores.dtype(), candidates.dtype(), k.dtype()) != (DType::F32, DType::U8, DType::U32) {
        candle_core::bail!("top_k_mask: scores f32, candidates u8 and k u32 expected");
    }
    scores
        .contiguous()?
        .apply_op3_no_bwd(&candidates.contiguous()?, &k.contiguous()?, &TopKMask)
}

struct TopKMask;

/// One row: the candidates' indices sorted by score, descending, stably.
fn row_mask(scores: &[f32], candidates: &[u8], k: usize, out: &mut [f32]) {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&j| candidates[j] != 0).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    for &j in idx.iter().take(k) {
        out[j] = 1.0;
    }
}

impl candle_core::CustomOp3 for TopKMask {
    fn name(&self) -> &'static str {
        "top-k-mask"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        sl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, r) = sl.shape().dims2()?;
        let scores = cpu_slice::<f32>(ss, sl, "top_k_mask")?;
        let candidates = cpu_slice::<u8>(cs, cl, "top_k_mask")?;
        let k = cpu_slice::<u32>(ks, kl, "top_k_mask")?;
        let mut out = vec![0f32; n * r];
        if r > 0 {
            out.par_chunks_mut(r).enumerate().for_each(|(i, row)| {
                let at = i * r..(i + 1) * r;
                row_mask(&scores[at.clone()], &candidates[at], k[i] as usize, row);
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, r))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::top_k_mask_cuda::forward((ss, sl), (cs, cl), (ks, kl))
    }
}

/// The largest `k` of [`top_k_indices`] on CUDA: its kernel sorts a row's picks in
/// shared memory (`TOP_K_MAX` in the source).
pub const CUDA_TOP_K_MAX: usize = 4096;

/// `scores` (N, R) f32, `candidates` (N, R) u8 -> (N, k) u32: per row, the indices of
/// the `k` highest-scoring candidates, best first (ties to the lower index), then `R`
/// where the row has fewer than `k` candidates. On CUDA, `k` is at most [`CUDA_TOP_K_MAX`].
pub fn top_k_indices(scores: &Tensor, candidates: &Tensor, k: usize) -> Result<Tensor> {
    let (n, r) = scores.dims2()?;
    if candidates.dims() != [n, r] {
        candle_core::bail!(
            "top_k_indices: scores {:?} and candidates {:?} do not fit",
            scores.dims(),
            candidates.dims()
        );
    }
    if (scores.dtype(), candidates.dtype()) != (DType::F32, DType::U8) {
        candle_core::bail!("top_k_indices: scores f32 and candidates u8 expected");
    }
    if r >= u32::MAX as usize {
        candle_core::bail!("top_k_indices: {r} columns do not fit u32 indices");
    }
    scores
        .contiguous()?
        .apply_op2_no_bwd(&candidates.contiguous()?, &TopKIndices { k })
}

struct TopKIndices {
    k: usize,
}

/// One row's indices: candidates by score, descending, stably; `r` pads.
fn row_indices(scores: &[f32], candidates: &[u8], out: &mut [u32]) {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&j| candidates[j] != 0).collect();
    let by_rank = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if idx.len() > out.len() && !out.is_empty() {
        idx.select_nth_unstable_by(out.len() - 1, by_rank);
        idx.truncate(out.len());
    }
    idx.sort_by(by_rank);
    for (t, o) in out.iter_mut().enumerate() {
        *o = idx.get(t).map_or(scores.len(), |&j| j) as u32;
    }
}

impl candle_core::CustomOp2 for TopKIndices {
    fn name(&self) -> &'static str {
        "top-k-indices"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        sl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, r) = sl.shape().dims2()?;
        let scores = cpu_slice::<f32>(ss, sl, "top_k_indices")?;
        let candidates = cpu_slice::<u8>(cs, cl, "top_k_indices")?;
        let k = self.k;
        let mut out = vec![0u32; n * k];
        if k > 0 {
            out.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
                let at = i * r..(i + 1) * r;
                row_indices(&scores[at.clone()], &candidates[at], row);
            });
        }
        Ok((CpuStorage::U32(out), Shape::from((n, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::top_k_mask_cuda::indices((ss, sl), (cs, cl), self.k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The mask by brute force: candidate j is picked when fewer than k candidates rank
    /// above it (a higher score in total order, or the same score at a lower index).
    fn reference(scores: &[f32], candidates: &[u8], k: usize) -> Vec<f32> {
        (0..scores.len())
            .map(|j| {
                if candidates[j] == 0 {
                    return 0.0;
                }
                let above = (0..scores.len())
                    .filter(|&i| {
                        candidates[i] != 0
                            && (scores[i].total_cmp(&scores[j]).is_gt()
                                || (scores[i].total_cmp(&scores[j]).is_eq() && i < j))
                    })
                    .count();
                (above < k) as u8 as f32
            })
            .collect()
    }

    #[allow(clippy::disallowed_methods)]
    fn run(scores: &[f32], candidates: &[u8], k: &[u32]) -> Vec<f32> {
        let (n, r) = (k.len(), scores.len() / k.len());
        let dev = Device::Cpu;
        top_k_mask(
            &Tensor::from_slice(scores, (n, r), &dev).unwrap(),
            &Tensor::from_slice(candidates, (n, r), &dev).unwrap(),
            &Tensor::from_slice(k, n, &dev).unwrap(),
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
    }

    #[test]
    fn picks_the_k_highest_candidates_ties_to_the_lower_index() {
        // Ties, signed zeros, infinities and a NaN (above +inf in total order).
        let scores = [
            1.0,
            3.0,
            3.0,
            -0.0,
            0.0,
            f32::NAN,
            f32::INFINITY,
            3.0,
            -1.0,
            f32::NEG_INFINITY,
            2.0,
            3.0,
        ];
        let candidates = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1];
        for k in 0..=13u32 {
            let got = run(&scores, &candidates, &[k]);
            assert_eq!(got, reference(&scores, &candidates, k as usize), "k {k}");
        }
        // NaN, +inf, then the first two of the three candidate 3.0s.
        let got = run(&scores, &candidates, &[4]);
        assert_eq!(
            got,
            [0., 1., 1., 0., 0., 1., 1., 0., 0., 0., 0., 0.].to_vec()
        );
    }

    #[test]
    fn rows_are_independent_and_match_brute_force() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (n, r) = (5, 300);
        // Scores from a small set, so that ties are common.
        let scores: Vec<f32> = (0..n * r)
            .map(|_| rng.random_range(0..40) as f32 / 8.0)
            .collect();
        let candidates: Vec<u8> = (0..n * r).map(|_| rng.random_bool(0.7) as u8).collect();
        let k: Vec<u32> = vec![0, 1, 37, 210, 300];
        let got = run(&scores, &candidates, &k);
        for (i, &ki) in k.iter().enumerate() {
            let at = i * r..(i + 1) * r;
            assert_eq!(
                got[at.clone()],
                reference(&scores[at.clone()], &candidates[at], ki as usize)[..],
                "row {i}"
            );
        }
    }

    /// The indices are the mask's picks, best first: ties, specials, rows with fewer
    /// candidates than k (padded with R), k of 0.
    #[test]
    fn indices_list_the_masks_picks_in_rank_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, r) = (4, 200);
        let mut scores: Vec<f32> = (0..n * r)
            .map(|_| rng.random_range(0..30) as f32 / 4.0)
            .collect();
        scores[5] = f32::NAN;
        scores[6] = f32::NEG_INFINITY;
        scores[7] = -0.0;
        let mut candidates: Vec<u8> = (0..n * r).map(|_| rng.random_bool(0.6) as u8).collect();
        // The last row has 10 candidates.
        for (j, c) in candidates[3 * r..].iter_mut().enumerate() {
            *c = u8::from(j % 20 == 0);
        }
        let dev = Device::Cpu;
        let st = Tensor::from_slice(&scores, (n, r), &dev).unwrap();
        let ct = Tensor::from_slice(&candidates, (n, r), &dev).unwrap();
        for k in [0usize, 1, 17, 150] {
            let got: Vec<u32> = top_k_indices(&st, &ct, k)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for i in 0..n {
                let at = i * r..(i + 1) * r;
                let row = &got[i * k..(i + 1) * k];
                let mask = reference(&scores[at.clone()], &candidates[at.clone()], k);
                let picked: Vec<u32> = row.iter().copied().filter(|&j| j < r as u32).collect();
                let mut sorted = picked.clone();
                sorted.sort_unstable();
                let want: Vec<u32> = (0..r as u32).filter(|&j| mask[j as usize] == 1.0).collect();
                assert_eq!(sorted, want, "row {i}, k {k}: the mask's picks");
                assert!(row[picked.len()..].iter().all(|&j| j == r as u32));
                let s = &scores[at];
                for w in picked.windows(2) {
                    let (a, b) = (w[0] as usize, w[1] as usize);
                    assert!(
                        s[a].total_cmp(&s[b]).then(b.cmp(&a)).is_gt(),
                        "row {i}, k {k}: {a} before {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_and_dtypes_are_checked() {
        let dev = Device::Cpu;
        let s = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let c = Tensor::zeros((2, 3), DType::U8, &dev).unwrap();
        let k = Tensor::zeros(2, DType::U32, &dev).unwrap();
        assert!(top_k_mask(&s, &c, &k).is_ok());
        assert!(top_k_mask(&s, &c.narrow(1, 0, 2).unwrap(), &k).is_err());
        assert!(top_k_mask(&s, &c, &k.narrow(0, 0, 1).unwrap()).is_err());
        assert!(top_k_mask(&s, &c.to_dtype(DType::F32).unwrap(), &k).is_err());
    }
}
