//! Ctrl-C and SIGTERM as a flag that long loops check between steps: training writes a
//! checkpoint and returns, evaluation stops. SIGTERM is what schedulers and spot instances
//! send before they kill a job, so it gets the same clean stop. A second signal while the
//! first is being handled ends the process at once (exit status 130), as users expect
//! from pressing Ctrl-C twice.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Routes SIGINT and SIGTERM to the flag (idempotent).
pub fn install_interrupt_handler() {
    // SAFETY: the handler only touches an atomic and calls `_exit`, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
