//! Timeouts for collectives. MPI and NCCL wait forever for a rank that never arrives
//! (it crashed without its launcher noticing, or hangs), so each collective is timed by
//! a thread of its own: past the timeout it prints which collective waited how long on
//! which rank, and ends the process (exit code 3) so the launcher ends the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// PyTorch's default process-group timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct State {
    /// The collective in progress and when it began.
    current: Option<(String, Instant)>,
    timeout: Duration,
}

static STATE: Mutex<State> = Mutex::new(State {
    current: None,
    timeout: DEFAULT_TIMEOUT,
});
static STARTED: Once = Once::new();
static STOPPED: AtomicBool = AtomicBool::new(false);

/// How long a collective may wait for the other ranks.
pub fn set_timeout(timeout: Duration) {
    if let Ok(mut s) = STATE.lock() {
        s.timeout = timeout;
    }
}

/// Runs the collective `f`, named `what` in the timeout message.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> T {
    start_thread();
    if let Ok(mut s) = STATE.lock() {
        s.current = Some((what.to_string(), Instant::now()));
    }
    let out = f();
    if let Ok(mut s) = STATE.lock() {
        s.current = None;
    }
    out
}

/// Stops watching (the group is gone).
pub fn stop() {
    STOPPED.store(true, Ordering::Relaxed);
}

fn start_thread() {
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(200));
                if STOPPED.load(Ordering::Relaxed) {
                    return;
                }
                let expired = STATE.lock().ok().and_then(|s| {
                    s.current
                        .as_ref()
                        .filter(|(_, t)| t.elapsed() > s.timeout)
                        .map(|(what, t)| (what.clone(), t.elapsed()))
                });
                if let Some((what, waited)) = expired {
                    eprintln!(
                        "error: rank {}: `{what}` waited {:.0} s for the other ranks (the \
                         timeout, --dist-timeout): a rank has died or hangs; stopping this \
                         rank. The last checkpoint in OUTPUT_DIR resumes the run.",
                        super::rank(),
                        waited.as_secs_f64()
                    );
                    // Not `exit`: the backend's exit handlers could wait on the dead rank.
                    // SAFETY: `_exit` ends the process without running any Rust code.
                    unsafe { libc::_exit(3) };
                }
            });
    });
}
