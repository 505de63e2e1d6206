//! Thread-pool defaults that are fast on small machines.
//!
//! Candle parallelises matmuls with rayon-style threads, sized from `RAYON_NUM_THREADS`
//! (re-read, and without it /proc/cpuinfo re-parsed, on every call), and element-wise
//! ops on its own spinning pool sized from `CANDLE_NUM_THREADS`. With both pools busy on
//! 2 vCPUs, runs were bimodal (up to 5x slower) from the two pools spinning against each
//! other. Defaults set here, before any tensor work, unless the user set them:
//! `RAYON_NUM_THREADS` = available cores, `CANDLE_NUM_THREADS` = 1 (element-wise work
//! is memory-bound; our heavy kernels run on rayon).

/// Call first thing in `main`, while the process is single-threaded. Returns the number
/// of compute threads in use.
pub fn configure() -> usize {
    keep_freed_memory();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    num_threads()
}

/// The rayon thread count in effect.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Every tensor op allocates its output, and glibc serves blocks above 128 KiB with
/// `mmap` and unmaps them on free: each op then page-faults and zeroes fresh pages. A
/// profile of a MobileNetV2 training step showed a large share of the time there. glibc caps the
/// mmap threshold at 32 MiB (a larger value is refused), and detection batches have
/// bigger activations, so mmap is switched off instead (`M_MMAP_MAX = 0`) with a single
/// arena (other threads' arenas would need mmap for big blocks) and heap
/// trimming switched off (-1): freed tensor buffers stay in the heap for reuse.
/// `MALLOC_MMAP_MAX_`, `MALLOC_ARENA_MAX`, `MALLOC_TRIM_THRESHOLD_` set by the user win.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |k: &str| std::env::var_os(k).is_none();
        // SAFETY: mallopt only adjusts allocator parameters; called before threads start.
        unsafe {
            if unset("MALLOC_MMAP_MAX_") && unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_MAX, 0);
            }
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
            if unset("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            }
        }
    }
}
