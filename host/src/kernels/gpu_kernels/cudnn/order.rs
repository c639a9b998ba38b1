//! Keeping cuDNN's work in order with cubecl's kernels.
//!
//! cubecl-cuda runs its kernels on a stream of its own that it does not expose, created
//! non-blocking, so work on any other stream (the legacy default one included) is not ordered
//! with it. cuDNN runs on a stream of ours, and one of three orderings joins the two, or, the
//! fourth, on cubecl's stream once it has been found (the kernel policy's `cudnn_order`,
//! `SSLHOST_CUDNN_ORDER`). Two of them use a pair of counters
//! in device memory ([`crate::kernels::gpu_kernels::handshake`]): a one-thread kernel on
//! cubecl's stream stores `n` in `ready` once what was queued before it has run, and
//! `cuStreamWaitValue32(ready >= n)` holds cuDNN's stream until then. A stream wait is not a
//! kernel: it occupies no processor while it waits.
//!
//! - **`sync`** (the default): the host waits for cubecl's stream to drain, issues cuDNN's
//!   calls, and waits for cuDNN's stream before returning. The GPU idles while the host
//!   issues the next work, twice for each cuDNN call.
//! - **`signal`**: cuDNN's stream waits for `ready` on the device, so cuDNN's calls are issued
//!   while cubecl's kernels still run; the host waits for cuDNN's stream before returning,
//!   so what cubecl queues afterwards (readers of cuDNN's outputs, reuse of its buffers)
//!   comes after. One host wait a call instead of two.
//! - **`flags`**: no host wait. cuDNN's stream publishes `done = n` when its calls are done
//!   (`cuStreamWriteValue32`), and a one-thread kernel on cubecl's stream spins until it
//!   does. A spinning kernel can deadlock the device: while it runs, anything that needs the
//!   device idle blocks the work it waits for. Loading a kernel's module is such a thing, and
//!   CUDA loads modules lazily, at a kernel's first launch: cuDNN's kernels at their first
//!   call, and cubecl's at their first use. That is the likely cause of the stall of the
//!   first GPU run of this mode (docs/PERFORMANCE.md, session 10): every cuDNN call of a new
//!   shape then took a whole spin limit. So the first call of each shape and pass runs under
//!   `sync` (which loads its kernels, with both streams drained; cuDNN's algorithm search,
//!   which allocates and frees, also runs drained), and later ones use the counters. A kernel
//!   cubecl compiles and first launches while a spin is pending can still stall it until the
//!   spin gives up, which breaks the ordering and is reported (`timed_out`): this mode is for
//!   measuring, after a first step that has loaded everything.
//! - **`stream`**: cuDNN's calls go on cubecl's own stream, so they need no ordering at all:
//!   what cubecl queued before runs first, what it queues after runs after, and nothing
//!   waits on the host. cubecl does not say which stream that is; one launch watched through
//!   CUPTI does ([`crate::kernels::gpu_kernels::cupti`]), once for each cubecl stream that
//!   calls cuDNN. cubecl's launches are issued by its server thread, so cuDNN's calls come
//!   after a round trip to it, which returns once everything queued before has been issued. A device
//!   graph's capture records cuDNN's launches with cubecl's; cubecl's window guards only the
//!   pages its own launches were bound to, so inside a recording each call is followed by a
//!   one-thread launch bound to its buffers ([`crate::kernels::gpu_kernels::hold`]), and the
//!   graph keeps cuDNN's workspace and saved statistics too. This is the one ordering a graph
//!   is taken under. Where CUPTI is missing or taken (a profiler), this falls back to
//!   `signal`, and says so.
//!
//! In all four, every buffer cuDNN touches is a cubecl allocation, live while cuDNN runs and
//! reused by cubecl only after cuDNN's calls have finished (under `stream`, reused by work
//! queued after them on the same stream), so the stream-ordered memory pool stays sound. The
//! ones cubecl wrote are complete before cuDNN starts (a host wait, the signal kernel after
//! their writers, or the stream's own order).

use std::collections::HashMap;

use burn_cubecl::cubecl::client::Client;
use cubecl_environment::stream::StreamId;
use cudarc::driver::sys;

use super::{CUPTI, CudnnError, Pointers, library_dirs, wait_for_cubecl};
use crate::kernels::CudnnOrder;
use crate::kernels::gpu_kernels::cupti;
use crate::kernels::gpu_kernels::handshake::{Flags, SPIN_LIMIT};

/// One of the three orderings, with what it needs.
pub enum Order {
    /// See [`CudnnOrder::Sync`].
    Sync,
    /// See [`CudnnOrder::Signal`] and [`CudnnOrder::Flags`].
    Counters(Box<Counters>),
    /// See [`CudnnOrder::Stream`].
    Shared(Box<Shared>),
}

/// cuDNN on cubecl's streams: which CUDA stream each cubecl stream id launches on.
pub struct Shared {
    /// The probe's one-thread kernel (its counters are never read).
    probe: Flags,
    /// By cubecl stream id (`StreamId::value`), the CUDA stream of its launches.
    streams: HashMap<u64, sys::CUstream>,
}

impl Shared {
    /// The CUDA stream the calling code's cubecl launches go to, found on its first call.
    fn stream(&mut self, client: &Client) -> Result<sys::CUstream, CudnnError> {
        let id = StreamId::current().value;
        if let Some(stream) = self.streams.get(&id) {
            return Ok(*stream);
        }
        // Whatever was queued before is out of the way before anything is watched.
        wait_for_cubecl(client)?;
        let found = cupti::launch_stream(&library_dirs(&CUPTI), || {
            self.probe.signal(client, 1);
            wait_for_cubecl(client).map_err(|e| e.0)
        })
        .map_err(CudnnError)?;
        let stream = found as sys::CUstream;
        tracing::debug!("cubecl stream {id} launches on CUDA stream {found:#x}");
        self.streams.insert(id, stream);
        Ok(stream)
    }
}

/// The counters of `signal` and `flags`.
pub struct Counters {
    /// Whether cubecl's stream waits on the device (`flags`) or the host waits (`signal`).
    spin: bool,
    client: Client,
    flags: Flags,
    /// The address of the counters.
    address: u64,
    /// Keeps the counters in place for their raw address.
    _pinned: Pointers,
    next: u32,
}

impl Order {
    /// The ordering `mode` on `client`'s device.
    pub fn new(mode: CudnnOrder, client: &Client) -> Result<Self, CudnnError> {
        let spin = match mode {
            CudnnOrder::Sync => return Ok(Order::Sync),
            CudnnOrder::Signal => false,
            CudnnOrder::Flags => true,
            CudnnOrder::Stream => {
                let mut shared = Shared {
                    probe: Flags::new(client, [0; 4]),
                    streams: HashMap::new(),
                };
                match shared.stream(client) {
                    Ok(_) => {
                        // A graph may record cuDNN's calls under this ordering, and the launch
                        // that follows each there must not compile inside the window. Where
                        // it fails, no graph is taken (`gpu_kernels::graph_refusal`).
                        if let Err(why) = crate::kernels::gpu_kernels::hold::warm(client) {
                            tracing::warn!("{why}: no device graph with cuDNN's kernels");
                        }
                        return Ok(Order::Shared(Box::new(shared)));
                    }
                    Err(why) => {
                        tracing::warn!(
                            "cuDNN on cubecl's stream: {why}; ordered by `signal` instead"
                        );
                        false
                    }
                }
            }
        };
        let flags = Flags::new(client, [0; 4]);
        let mut pinned = Pointers::new(client);
        let address = pinned.address(flags.handle())?;
        Ok(Order::Counters(Box::new(Counters {
            spin,
            client: client.clone(),
            flags,
            address,
            _pinned: pinned,
            next: 0,
        })))
    }

    /// The ordering's name, as `SSLHOST_CUDNN_ORDER` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Order::Sync => CudnnOrder::Sync.name(),
            Order::Counters(c) if c.spin => CudnnOrder::Flags.name(),
            Order::Counters(_) => CudnnOrder::Signal.name(),
            Order::Shared(_) => CudnnOrder::Stream.name(),
        }
    }

    /// Under `stream`, the CUDA stream cuDNN's calls go on for the calling code (cubecl's);
    /// `None` under the others, whose calls go on cuDNN's own stream.
    pub fn shared_stream(&mut self, client: &Client) -> Result<Option<sys::CUstream>, CudnnError> {
        match self {
            Order::Shared(shared) => shared.stream(client).map(Some),
            _ => Ok(None),
        }
    }

    /// Runs `work` (cuDNN calls issued on `stream`, the stream cuDNN's handle issues on:
    /// its own, or cubecl's under `stream`) after everything queued on `client` so far, and
    /// before everything queued on `client` afterwards. `first`: the first call of its shape
    /// and pass, which runs as under `sync` whatever the ordering (see the module notes).
    /// When `work` fails, nothing is left waiting on either stream.
    pub fn around<R>(
        &mut self,
        client: &Client,
        stream: sys::CUstream,
        first: bool,
        work: impl FnOnce() -> Result<R, CudnnError>,
    ) -> Result<R, CudnnError> {
        match self {
            Order::Counters(c) if !first => {
                let Counters {
                    spin,
                    flags,
                    address,
                    next,
                    ..
                } = c.as_mut();
                *next = next.wrapping_add(1).max(1);
                let n = *next;
                flags.signal(client, n);
                // The signal reaches the driver before cuDNN's stream waits for it.
                client
                    .flush()
                    .map_err(|e| CudnnError(format!("flushing cubecl's stream: {e:?}")))?;
                let (ready, done) = (*address, *address + 4);
                // SAFETY: `ready` and `done` address the live, pinned counters on the device
                // and context of `stream`.
                unsafe {
                    let geq = sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32;
                    sys::cuStreamWaitValue32_v2(stream, ready, n, geq).result()?;
                }
                let out = work();
                if *spin {
                    // Whether `work` failed or not, `done` reaches `n`, so the wait below ends.
                    unsafe {
                        let plain =
                            sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32;
                        sys::cuStreamWriteValue32_v2(stream, done, n, plain).result()?;
                    }
                    flags.wait(client, n, SPIN_LIMIT);
                } else {
                    // SAFETY: a live stream of the current context.
                    unsafe { sys::cuStreamSynchronize(stream).result()? };
                }
                out
            }
            Order::Shared(_) if !first => {
                // cubecl's server thread has issued everything queued before once this
                // returns (its tasks run in order); what the caller queues after is issued
                // after cuDNN's calls. A check of no buffers, not a flush: a flush also frees
                // pages queued for freeing, a driver call that a graph's recording forbids.
                client
                    .check(std::iter::empty())
                    .map_err(|e| CudnnError(format!("reaching cubecl's server: {e:?}")))?;
                work()
            }
            _ => {
                wait_for_cubecl(client)?;
                let out = work();
                // SAFETY: a live stream of the current context.
                unsafe { sys::cuStreamSynchronize(stream).result()? };
                out
            }
        }
    }

    /// Whether a spin ever gave up (the counters read back: a sync); `false` without spins.
    pub fn timed_out(&self) -> Result<bool, CudnnError> {
        match self {
            Order::Counters(c) if c.spin => {
                let counters = c.flags.read(&c.client).map_err(CudnnError)?;
                Ok(counters[2] != 0)
            }
            _ => Ok(false),
        }
    }
}
