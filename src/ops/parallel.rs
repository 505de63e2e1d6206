//! Helpers the CPU kernels share: typed views of storage and parallel buffer fills.

/// The contiguous values of a CPU storage as a slice, for the custom ops' kernels; `op`
/// names the op in the error.
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} kernels need contiguous inputs");
    };
    Ok(&s.as_slice::<T>()?[start..end])
}

/// A new buffer of `len` values built `chunk` at a time in parallel: `f(state, i, chunk)`
/// fills chunk `i`, with `state` from `init` once per rayon task (scratch space).
///
/// `vec![0; len]` costs a pass of its own: recycled heap memory is zeroed with a
/// memset that streams the whole buffer through DRAM before the kernel writes it again
/// (a measurable share of a training step). Here each chunk is zeroed just before `f` gets it, while it
/// is in cache, so kernels that accumulate still see zeros and the buffer is written
/// from memory's point of view once.
pub(crate) fn par_chunks_zeroed<T, S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) -> Vec<T>
where
    T: candle_core::WithDType,
{
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |state, (i, o)| {
            for v in o.iter_mut() {
                v.write(T::zero());
            }
            // SAFETY: every element of `o` was written just above, and `MaybeUninit<T>`
            // has the layout of `T`.
            let o = unsafe { &mut *(o as *mut [MaybeUninit<T>] as *mut [T]) };
            f(state, i, o)
        });
    // SAFETY: the chunks cover `0..len` and each was initialised above.
    unsafe { out.set_len(len) };
    out
}

/// A new buffer of `len` values, `chunk` at a time in parallel: chunk `i` takes the
/// values `f(i)` yields, written once and never zeroed (for kernels that produce each
/// value in one go). Panics if `f(i)` yields fewer values than its chunk holds.
pub(crate) fn par_chunks_from<T, I>(
    len: usize,
    chunk: usize,
    f: impl Fn(usize) -> I + Sync,
) -> Vec<T>
where
    T: candle_core::WithDType,
    I: Iterator<Item = T>,
{
    use rayon::prelude::*;
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, o)| {
            let mut written = 0;
            for (o, v) in o.iter_mut().zip(f(i)) {
                o.write(v);
                written += 1;
            }
            assert_eq!(written, o.len(), "chunk {i} only partly written");
        });
    // SAFETY: every chunk of `0..len` was fully written (asserted above; a panic leaves
    // the length at 0).
    unsafe { out.set_len(len) };
    out
}

/// Fills a new buffer of `x.len()` values, `chunk` at a time in parallel, without
/// zeroing it first (a measurable share of these memory-bound passes).
pub(crate) fn par_fill(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, o)| f(i, o));
    // SAFETY: the chunks cover 0..len and `f` writes every element of its chunk.
    unsafe { out.set_len(len) };
    out
}
