//! SIGTERM / SIGINT: the handler only sets a flag; the main loop polls [`stop_requested`].

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks the main loop to stop (what the signal handler does; also usable from tests).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

#[cfg(unix)]
extern "C" fn on_signal(_signum: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handlers. Returns false if the OS refused.
#[cfg(unix)]
pub fn install() -> bool {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let mut ok = true;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `on_signal` is an `extern "C"` function that only performs an atomic store,
        // which is async-signal-safe; `signal` has no other preconditions.
        let previous = unsafe { libc::signal(sig, handler) };
        ok &= previous != libc::SIG_ERR;
    }
    ok
}

#[cfg(not(unix))]
pub fn install() -> bool {
    false
}
