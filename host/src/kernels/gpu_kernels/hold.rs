//! A launch that binds buffers another library works on, so that cubecl accounts for them as
//! for its own kernels' buffers: [`hold`].
//!
//! cuDNN reads and writes cubecl's buffers through raw addresses, which cubecl hands out
//! without counting them as used by any launch. Two of cubecl's guarantees rest on launches:
//! - a device graph's capture window guards, for the graph's life, the memory pages its
//!   launches were bound to, so that no later allocation is placed where every replay still
//!   writes; pages only cuDNN used inside the window (its workspace, batch norm's saved
//!   statistics and reserve) would not be guarded;
//! - a buffer made on another cubecl stream stays allocated until the launches bound to it
//!   on this stream have run; an address alone is held only while it is taken, before
//!   cuDNN's work is queued.
//!
//! A one-thread kernel bound to every buffer of a cuDNN call, queued on the same stream right
//! after it, gives both: the capture window records its binding of each page, and the
//! cross-stream hold lasts until it, and so cuDNN's work before it, has run. It reads and
//! writes nothing; in a graph it replays as one tiny launch. Outside a recording, and with
//! every buffer made on the calling stream (the common case), nothing is launched:
//! [`after_foreign_call`] decides.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;
use cubecl_environment::stream::StreamId;

use crate::kernels::recording::recording;

/// Launches of [`hold`] so far, in the process.
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many launches [`hold`] has queued in the process: a recording's count says how many
/// of cuDNN's calls its graph holds the buffers of.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Buffers bound by one launch: a call of cuDNN's binds up to a dozen. Fewer are padded
/// with the last one again, so that one kernel is compiled, whatever the count: it is
/// compiled and loaded before any capture window opens ([`warm`]), where neither may happen.
pub const PER_LAUNCH: usize = 16;

/// Binds `buffers` and does nothing with them: the one unit's only statement is never true.
/// They are declared written, so that a launch that fails (a kernel that does not compile)
/// marks them failed, and a later read says so, rather than a graph silently not keeping
/// their pages.
#[cube(launch)]
fn hold_kernel(buffers: &mut Sequence<Box<[u32]>>, never: u32) {
    if UNIT_POS == never {
        terminate!();
    }
    let _ = buffers.len();
}

/// The kernel as [`hold`] launches it, built where there is no device, for
/// [`super::ptx`] to compile.
#[cfg(feature = "cuda")]
pub(super) fn offline(
    device: std::sync::Arc<DeviceProperties>,
    target: std::sync::Arc<TargetProperties>,
) -> Box<dyn CubeKernel> {
    let buffers = SequenceCompilationArg {
        values: (0..PER_LAUNCH)
            .map(|_| BufferCompilationArg { inplace: None })
            .collect(),
    };
    Box::new(hold_kernel::HoldKernel::new(
        super::ptx::launch_settings(CubeDim::new_1d(1)),
        device,
        target,
        buffers,
        (),
    ))
}

/// Queues on `client`'s stream one launch bound to each of `buffers` (several launches of
/// [`PER_LAUNCH`] for more), after everything queued so far, returning how many.
pub fn hold(client: &Client, buffers: &[Handle]) -> usize {
    let mut launches = 0;
    for chunk in buffers.chunks(PER_LAUNCH) {
        let last = &chunk[chunk.len() - 1];
        let args: SequenceArg<Box<[u32]>> = chunk
            .iter()
            .chain(std::iter::repeat(last))
            .take(PER_LAUNCH)
            // SAFETY: the kernel reads and writes no element, whatever the buffer's length.
            .map(|h| unsafe { BufferArg::from_raw_parts(h.clone(), 1) })
            .collect();
        let one = CubeCount::Static(1, 1, 1);
        hold_kernel::launch(client, one, CubeDim::new_1d(1), args, u32::MAX);
        launches += 1;
    }
    LAUNCHES.fetch_add(launches as u64, Ordering::Relaxed);
    launches
}

/// Why the kernel cannot be launched, once [`warm`] has found it so.
static UNUSABLE: OnceLock<String> = OnceLock::new();

/// Compiles and loads the kernel with one launch, outside any recording (a window may do
/// neither), and reads its buffer back: an error, remembered ([`unusable`]), where the launch
/// failed.
pub fn warm(client: &Client) -> Result<(), String> {
    let probe = client.create_from_slice(u32::as_bytes(&[0]));
    hold(client, std::slice::from_ref(&probe));
    client.read_one(probe).map(|_| ()).map_err(|e| {
        let why = format!("the launch that binds cuDNN's buffers failed: {e:?}");
        UNUSABLE.get_or_init(|| why.clone());
        why
    })
}

/// Why no graph can keep cuDNN's buffers: the kernel failed when [`warm`] launched it.
pub fn unusable() -> Option<&'static str> {
    UNUSABLE.get().map(String::as_str)
}

/// After another library's call that used `buffers` on `client`'s stream: binds all of them
/// while a [`Recording`] is open on that stream, else those made on another cubecl stream,
/// else nothing. Returns the launches queued.
///
/// Not while cubecl merely says the stream is capturing (`client.is_capturing()`), which it
/// says from `graph_prepare` on: a run whose steps keep departing from their recording stays
/// prepared, and would pay a launch per cuDNN call every step. The launch places nothing
/// (its metadata rides in its parameters), so the warm-up runs need not make it to leave the
/// memory pool as the recording finds it.
///
/// [`Recording`]: crate::kernels::recording::Recording
pub fn after_foreign_call(client: &Client, buffers: &[Handle]) -> usize {
    if recording() {
        return hold(client, buffers);
    }
    let here = StreamId::current();
    let elsewhere: Vec<Handle> = buffers
        .iter()
        .filter(|h| h.stream != here)
        .cloned()
        .collect();
    hold(client, &elsewhere)
}
