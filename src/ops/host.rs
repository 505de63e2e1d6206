//! Reads of tensor values into host memory, counted.
//!
//! On a GPU every such read waits for the device to finish all queued work, so a training
//! step that reads often runs at the speed of its round trips, not of its kernels. All code
//! above the ops reads through these functions (clippy's `disallowed_methods` forbids the
//! direct `Tensor::to_vec*` / `to_scalar` calls elsewhere), which makes the count complete:
//! a test pins the reads of one training step of each model, and `metrics.json` reports
//! them per step. Reads are counted on every device, so the CPU's count is the GPU's.
//!
//! Kernels that only ever run on the CPU (the fused training batch norm) read their own
//! host buffers directly and are not counted: on a GPU they are replaced by device code.

use std::cell::Cell;

use candle_core::{Result, Tensor, WithDType};

thread_local! {
    /// Per thread: a training step runs on one thread, while loader threads, evaluation
    /// workers or other tests run beside it.
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Reads made through this module by the calling thread since it started.
pub fn reads() -> u64 {
    READS.with(Cell::get)
}

fn count() {
    READS.with(|r| r.set(r.get() + 1));
}

#[allow(clippy::disallowed_methods)]
pub fn to_scalar<T: WithDType>(t: &Tensor) -> Result<T> {
    count();
    t.to_scalar()
}

#[allow(clippy::disallowed_methods)]
pub fn to_vec1<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count();
    t.to_vec1()
}

#[allow(clippy::disallowed_methods)]
pub fn to_vec2<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<T>>> {
    count();
    t.to_vec2()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_read_is_counted() {
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let before = reads();
        assert_eq!(to_vec2::<f32>(&t).unwrap()[1], [3.0, 4.0]);
        assert_eq!(to_vec1::<f32>(&t.flatten_all().unwrap()).unwrap().len(), 4);
        let s: f32 = to_scalar(&t.sum_all().unwrap()).unwrap();
        assert_eq!(s, 10.0);
        assert_eq!(reads() - before, 3);
    }
}
