//! Turns panics inside Burn into errors, so no panic reaches the user.
//!
//! Burn reports some misuse by panicking. [`catch`] runs a closure under `catch_unwind` and
//! returns the panic message as [`Error::Backend`]; the process-wide hook installed by
//! [`install_hook`] keeps such caught panics from printing a backtrace.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use crate::error::{Error, Result};

thread_local! {
    static CATCHING: Cell<usize> = const { Cell::new(0) };
}

/// How many [`catch_any_thread`] calls are running: while one is, panics on every thread are
/// silent and the first one's message is kept in [`FIRST_ELSEWHERE`].
static QUIET_EVERYWHERE: AtomicUsize = AtomicUsize::new(0);
static FIRST_ELSEWHERE: Mutex<Option<String>> = Mutex::new(None);

/// Installs the panic hook once: panics inside [`catch`] (and on any thread during
/// [`catch_any_thread`]) are silent, others print as usual.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET_EVERYWHERE.load(Ordering::SeqCst) > 0 {
                // The first panic is the cause; later ones follow from it.
                if let Ok(mut first) = FIRST_ELSEWHERE.lock() {
                    first.get_or_insert_with(|| payload_message(info.payload()));
                }
            } else if CATCHING.with(Cell::get) == 0 {
                default(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// [`catch`] for work that other threads do for `f` (a backend's device thread): while `f`
/// runs, a panic on any thread is silent, and if `f` fails the error names the panic that
/// another thread raised meanwhile (the cause; `f` itself only sees a closed channel).
pub fn catch_any_thread<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    QUIET_EVERYWHERE.fetch_add(1, Ordering::SeqCst);
    let out = catch(f);
    QUIET_EVERYWHERE.fetch_sub(1, Ordering::SeqCst);
    let elsewhere = FIRST_ELSEWHERE
        .lock()
        .ok()
        .and_then(|mut first| first.take());
    match (out, elsewhere) {
        (Err(_), Some(cause)) => Err(panic_error(cause)),
        (out, _) => out,
    }
}

/// Runs `f`, converting a panic into [`Error::Backend`] with the panic's message.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    CATCHING.with(|c| c.set(c.get() + 1));
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    out.unwrap_or_else(|payload| Err(panic_error(payload_message(payload.as_ref()))))
}

/// The error a caught panic stands for: a misuse Burn reports by panicking (a second
/// backward over one graph, a failed tensor check) reads as the user's error; anything
/// else is the backend's.
pub fn panic_error(message: String) -> Error {
    if message.contains("graph tape has already been consumed") {
        return Error::Invalid(
            "backward() ran a second time over the same graph: the graph is freed by the first \
             backward (there is no retain_graph); add the losses and call backward once, or \
             run the forward pass again"
                .into(),
        );
    }
    if let Some(rest) = message.strip_prefix("=== Tensor Operation Error ===") {
        // "Operation: 'X'", "Reason:", "1. ...": one line.
        let parts: Vec<&str> = rest
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "Reason:")
            .collect();
        return Error::Invalid(format!("tensor operation {}", parts.join(" ")));
    }
    Error::Backend(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_threads_panic_is_the_reported_cause() {
        let out: Result<()> = catch_any_thread(|| {
            let worker = std::thread::spawn(|| panic!("no driver on the device thread"));
            match worker.join() {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::Other("the channel closed".into())),
            }
        });
        let err = out.unwrap_err().to_string();
        assert!(err.contains("no driver on the device thread"), "{err}");
        // Success passes through untouched, and the kept message does not leak into it.
        assert_eq!(catch_any_thread(|| Ok(7)).unwrap(), 7);
    }

    #[test]
    fn burns_reports_of_misuse_read_as_the_users_error() {
        let e = panic_error("Cannot run backward: graph tape has already been consumed".into());
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(
            e.to_string().contains("backward() ran a second time"),
            "{e}"
        );
        let check = "=== Tensor Operation Error ===\n  Operation: 'Reshape'\n  Reason:\n    1. \
                     The given shape doesn't have the same number of elements.\n";
        let e = panic_error(check.into()).to_string();
        assert_eq!(
            e,
            "invalid argument: tensor operation Operation: 'Reshape' 1. The given shape doesn't \
             have the same number of elements."
        );
        assert!(matches!(
            panic_error("index out of bounds".into()),
            Error::Backend(_)
        ));
    }
}
