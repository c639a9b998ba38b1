//! Whether the calling thread's stream is being recorded into a device graph.
//!
//! Kernels of another library's (cuDNN's) that run inside a recording must tell cubecl which
//! buffers they used, or the graph would not keep them (`gpu_kernels::hold`). A recording is
//! of one cubecl stream, and a cubecl stream is a thread's: the work a window records is
//! issued by the thread that opened it, so the flag is the thread's own.

use std::cell::Cell;

thread_local! {
    static OPEN: Cell<usize> = const { Cell::new(0) };
}

/// A capture window on this thread's stream, from before it opens until after it closes.
#[must_use = "the window is open only while this lives"]
pub struct Recording(());

impl Recording {
    /// Marks this thread's stream as recording until the value drops.
    pub fn open() -> Self {
        OPEN.with(|n| n.set(n.get() + 1));
        Recording(())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        OPEN.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Whether a [`Recording`] is open on this thread.
pub fn recording() -> bool {
    OPEN.with(|n| n.get() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_lasts_while_its_value_lives_and_is_the_threads_own() {
        assert!(!recording());
        let outer = Recording::open();
        assert!(recording());
        std::thread::spawn(|| assert!(!recording())).join().unwrap();
        {
            let _inner = Recording::open();
            assert!(recording());
        }
        assert!(recording(), "the outer window is still open");
        drop(outer);
        assert!(!recording());
    }
}
