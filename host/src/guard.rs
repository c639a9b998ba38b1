//! Turns panics inside Burn into errors, so no panic reaches the user.
//!
//! Burn reports some misuse by panicking. [`catch`] runs a closure under `catch_unwind` and
//! returns the panic message as [`Error::Backend`]; the process-wide hook installed by
//! [`install_hook`] keeps such caught panics from printing a backtrace.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::error::{Error, Result};

thread_local! {
    static CATCHING: Cell<usize> = const { Cell::new(0) };
}

/// Installs the panic hook once: panics inside [`catch`] are silent, others print as usual.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) == 0 {
                default(info);
            }
        }));
    });
}

/// Runs `f`, converting a panic into [`Error::Backend`] with the panic's message.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    CATCHING.with(|c| c.set(c.get() + 1));
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    out.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Backend(msg))
    })
}
