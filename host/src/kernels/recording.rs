//! Whether the calling code's stream is being recorded into a device graph.
//!
//! Kernels of another library's (cuDNN's) that run inside a recording must tell cubecl which
//! buffers they used, or the graph would not keep them (`gpu_kernels::hold`), and must not
//! make a first call that waits on the host. A recording is of one cubecl stream. The thread
//! that opens it is not the one that runs the work: burn's fusion runs queued operations,
//! cuDNN's among them, on a thread of its own, which takes on the stream of the thread that
//! queued them (cubecl's `StreamId::executes`). So the flag is kept by stream, not by thread.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Open recordings, by stream: one entry each, so nested windows count.
static OPEN: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// How many recordings are open, for a check without the lock.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The calling code's stream: cubecl's stream id, the same on fusion's thread as on the thread
/// that queued the work.
#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
fn stream() -> u64 {
    cubecl_environment::stream::StreamId::current().value
}

/// The calling thread, where no cubecl runtime is built in (and no graph can be recorded).
#[cfg(not(any(feature = "cuda", feature = "cubecl-cpu")))]
fn stream() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}

/// A capture window on the calling code's stream, from before it opens until after it
/// closes.
#[must_use = "the window is open only while this lives"]
pub struct Recording {
    stream: u64,
}

impl Recording {
    /// Marks the calling code's stream as recording until the value drops.
    pub fn open() -> Self {
        let stream = stream();
        OPEN.lock().unwrap_or_else(|e| e.into_inner()).push(stream);
        COUNT.fetch_add(1, Ordering::Release);
        Recording { stream }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = open.iter().position(|s| *s == self.stream) {
            open.swap_remove(at);
            COUNT.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Whether a [`Recording`] is open on the calling code's stream.
pub fn recording() -> bool {
    if COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    let stream = stream();
    OPEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_lasts_while_its_value_lives_and_is_its_streams_own() {
        assert!(!recording());
        let outer = Recording::open();
        assert!(recording());
        // Another thread's code runs on another stream.
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
