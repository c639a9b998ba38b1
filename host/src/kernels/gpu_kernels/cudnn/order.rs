//! Keeping cuDNN's work in order with cubecl's kernels.
//!
//! cubecl-cuda runs its kernels on a stream of its own that it does not expose, created
//! non-blocking, so work on any other stream (the legacy default one included) is not ordered
//! with it. cuDNN runs on a stream of ours, and one of two orderings joins the two (the kernel
//! policy's `cudnn_order`, `SSLHOST_CUDNN_ORDER`):
//!
//! - **`sync`** (the default): the host waits for cubecl's stream to drain, issues cuDNN's
//!   calls, and waits for cuDNN's stream before returning. Sound whatever cubecl does inside,
//!   and it cannot deadlock; the cost is that the GPU idles while the host issues the next
//!   work, twice for each cuDNN call.
//! - **`flags`**: no host wait. Through a pair of counters in device memory
//!   ([`crate::kernels::gpu_kernels::handshake`]): a one-thread kernel on cubecl's stream stores `n` in
//!   `ready`; `cuStreamWaitValue32(ready >= n)` holds cuDNN's stream until then; cuDNN's calls
//!   run; `cuStreamWriteValue32(done = n)` publishes that they finished; a one-thread kernel on
//!   cubecl's stream holds it until `done >= n`. Every buffer cuDNN touches is a cubecl
//!   allocation, live at the signal and reused by cubecl only after the wait, so the
//!   stream-ordered memory pool stays sound. Nothing on the host may wait for the device
//!   between a signal and its answer: cuDNN's algorithm search (allocations, a free that
//!   synchronises the whole device) runs only after both streams are drained
//!   (`Cudnn::drain`). A run without that drain stalled (docs/PERFORMANCE.md), so this stays
//!   opt-in until the self-test passes with it.

use burn_cubecl::cubecl::client::Client;
use cudarc::driver::sys;

use super::{CudnnError, Pointers};
use crate::kernels::CudnnOrder;
use crate::kernels::gpu_kernels::handshake::Flags;

/// Polls of the waiting kernel before it gives up: with a global load of some hundreds of
/// cycles a poll, seconds, far longer than any one cuDNN call.
const SPIN_LIMIT: u32 = 1 << 24;

/// One of the two orderings, with what it needs.
pub enum Order {
    /// See [`CudnnOrder::Sync`].
    Sync,
    /// See [`CudnnOrder::Flags`].
    Flags {
        client: Client,
        flags: Flags,
        /// The address of the counters.
        address: u64,
        /// Keeps the counters in place for their raw address.
        _pinned: Pointers,
        next: u32,
    },
}

impl Order {
    /// The ordering `mode` on `client`'s device.
    pub fn new(mode: CudnnOrder, client: &Client) -> Result<Self, CudnnError> {
        Ok(match mode {
            CudnnOrder::Sync => Order::Sync,
            CudnnOrder::Flags => {
                let flags = Flags::new(client, [0; 4]);
                let mut pinned = Pointers::new(client);
                let address = pinned.address(flags.handle())?;
                Order::Flags {
                    client: client.clone(),
                    flags,
                    address,
                    _pinned: pinned,
                    next: 0,
                }
            }
        })
    }

    /// Runs `work` (cuDNN calls issued on `stream`) after everything queued on `client` so
    /// far, and before everything queued on `client` afterwards. When `work` fails, nothing is
    /// left waiting on either stream.
    pub fn around<R>(
        &mut self,
        client: &Client,
        stream: sys::CUstream,
        work: impl FnOnce() -> Result<R, CudnnError>,
    ) -> Result<R, CudnnError> {
        match self {
            Order::Sync => {
                burn_cubecl::cubecl::future::block_on(client.sync())
                    .map_err(|e| CudnnError(format!("waiting for cubecl's stream: {e:?}")))?;
                let out = work();
                // SAFETY: a live stream of the current context.
                unsafe { sys::cuStreamSynchronize(stream).result()? };
                out
            }
            Order::Flags {
                flags,
                address,
                next,
                ..
            } => {
                *next = next.wrapping_add(1).max(1);
                let n = *next;
                flags.signal(client, n);
                let (ready, done) = (*address, *address + 4);
                // SAFETY: `ready` and `done` address the live, pinned counters on the device
                // and context of `stream`.
                unsafe {
                    let geq = sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32;
                    sys::cuStreamWaitValue32_v2(stream, ready, n, geq).result()?;
                }
                let out = work();
                // Whether `work` failed or not, `done` reaches `n`, so the wait below ends.
                unsafe {
                    let plain = sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32;
                    sys::cuStreamWriteValue32_v2(stream, done, n, plain).result()?;
                }
                flags.wait(client, n, SPIN_LIMIT);
                out
            }
        }
    }

    /// Whether a wait ever gave up (the counters read back: a sync); `false` for `sync`.
    pub fn timed_out(&self) -> Result<bool, CudnnError> {
        match self {
            Order::Sync => Ok(false),
            Order::Flags { client, flags, .. } => {
                let counters = flags.read(client).map_err(CudnnError)?;
                Ok(counters[2] != 0)
            }
        }
    }
}
