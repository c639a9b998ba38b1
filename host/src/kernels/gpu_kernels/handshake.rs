//! Two one-thread cubecl kernels that let another CUDA stream take turns with cubecl's own
//! without a host sync: [`Flags::signal`] stores a count once everything queued before it on
//! cubecl's stream has run, and [`Flags::wait`] holds everything queued after it until the
//! other stream has stored the same count in the next counter. `super::cudnn`'s orderings
//! (`SSLHOST_CUDNN_ORDER=signal` the first, `flags` both) pair them with the driver's stream
//! memory operations.
//!
//! The wait is bounded: after `limit` polls it gives up and records the count in a third
//! counter, so a stalled partner costs time and a failed self-test, never a hung device.

use burn_cubecl::CubeDevice;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;

/// Stores `value` in `flags[0]` (`ready`). No fence is needed before it: the kernels queued
/// before this one have finished, and their writes are visible device-wide, before it starts.
/// (cubecl's device-wide fence, `sync_storage`, also has no lowering on its CPU runtime, where
/// the tests run these kernels.)
#[cube(launch)]
fn signal_kernel(flags: &mut [Atomic<u32>], value: u32) {
    if UNIT_POS == 0 {
        flags[0].store(value);
    }
}

/// Polls `flags[1]` (`done`) until it reaches `value`; after `limit` polls stores `value` in
/// `flags[2]` (`timed_out`) and returns. The kernels after it start once it has ended, and
/// the partner's writes were complete before it wrote `done` (the driver's write has a memory
/// barrier), so no fence is needed after it either.
#[cube(launch)]
fn wait_kernel(flags: &mut [Atomic<u32>], value: u32, #[comptime] limit: u32) {
    if UNIT_POS == 0 {
        let mut polls = 0u32;
        while flags[1].load() < value && polls < limit {
            polls += 1u32;
        }
        if polls >= limit {
            flags[2].store(value);
        }
    }
}

/// Polls of the waiting kernel before it gives up, as cuDNN's orderings launch it: with a
/// global load of some hundreds of cycles a poll, seconds, far longer than any one cuDNN call.
pub const SPIN_LIMIT: u32 = 1 << 24;

/// The two kernels as [`Flags::signal`] and [`Flags::wait`] launch them (the wait with
/// [`SPIN_LIMIT`]), built where there is no device, for [`super::ptx`] to compile.
#[cfg(feature = "cuda")]
pub(super) fn offline(
    device: std::sync::Arc<DeviceProperties>,
    target: std::sync::Arc<TargetProperties>,
) -> [Box<dyn CubeKernel>; 2] {
    let settings = || super::ptx::launch_settings(CubeDim::new_1d(1));
    let flags = || BufferCompilationArg { inplace: None };
    [
        Box::new(signal_kernel::SignalKernel::new(
            settings(),
            device.clone(),
            target.clone(),
            flags(),
            (),
        )),
        Box::new(wait_kernel::WaitKernel::new(
            settings(),
            device,
            target,
            flags(),
            (),
            SPIN_LIMIT,
        )),
    ]
}

/// The counters `ready`, `done`, `timed_out` (and one spare), in a buffer of cubecl's.
pub struct Flags {
    handle: Handle,
}

impl Flags {
    /// Counters starting at `values`.
    pub fn new(client: &Client, values: [u32; 4]) -> Self {
        Flags {
            handle: client.create_from_slice(u32::as_bytes(&values)),
        }
    }

    /// The buffer, for its device address.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    fn arg(&self) -> BufferArg {
        // SAFETY: the buffer holds four u32s.
        unsafe { BufferArg::from_raw_parts(self.handle.clone(), 4) }
    }

    /// Queues on `client`'s stream: `ready = value` once what is queued before has run.
    pub fn signal(&self, client: &Client, value: u32) {
        let one = CubeCount::Static(1, 1, 1);
        signal_kernel::launch(client, one, CubeDim::new_1d(1), self.arg(), value);
    }

    /// Queues on `client`'s stream: nothing after runs before `done >= value` (or `limit`
    /// polls, then `timed_out = value`).
    pub fn wait(&self, client: &Client, value: u32, limit: u32) {
        let one = CubeCount::Static(1, 1, 1);
        wait_kernel::launch(client, one, CubeDim::new_1d(1), self.arg(), value, limit);
    }

    /// The counters, read back (a sync of `client`'s stream).
    pub fn read(&self, client: &Client) -> Result<[u32; 4], String> {
        let bytes = client
            .read_one(self.handle.clone())
            .map_err(|e| format!("reading the counters: {e:?}"))?;
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        words
            .try_into()
            .map_err(|w: Vec<u32>| format!("{} counters read back, not 4", w.len()))
    }
}

/// The kernels on `device`, one stream alone, for the tests: a signal, a wait whose partner
/// has already finished, and a wait that times out; the counters after each.
pub fn exercise(device: &CubeDevice) -> Result<[[u32; 4]; 3], String> {
    let client = device.client();
    let signalled = Flags::new(&client, [0; 4]);
    signalled.signal(&client, 5);
    let finished = Flags::new(&client, [0, 7, 0, 0]);
    finished.wait(&client, 7, 1 << 20);
    let stalled = Flags::new(&client, [0; 4]);
    stalled.wait(&client, 3, 1000);
    Ok([
        signalled.read(&client)?,
        finished.read(&client)?,
        stalled.read(&client)?,
    ])
}
