//! Which CUDA stream cubecl launches its kernels on, learnt by watching one launch through
//! CUPTI's callback API.
//!
//! cubecl-cuda keeps its streams private (cubecl issue #1613), so cuDNN cannot simply be
//! given cubecl's stream. CUPTI, NVIDIA's tools interface, calls back on every driver call
//! made in the process with the call's parameters, and a kernel launch's include the stream
//! (`cuLaunchKernel`'s, which cubecl 0.11.3 uses, and `cuLaunchKernelEx`'s).
//! [`launch_stream`] subscribes, lets a probe launch one one-thread kernel through cubecl,
//! unsubscribes, and returns the stream that launch went to. The callback is on for that
//! probe only, so nothing is watched while training runs.
//!
//! CUPTI is loaded at run time like cuDNN: `libcupti.so` from the loader's path, a CUDA
//! toolkit (`extras/CUPTI/lib64`) or a Python environment (PyTorch's wheels bring it). Only
//! one subscriber may exist in a process, so under a profiler that uses CUPTI the probe fails
//! and says so; the caller then orders cuDNN another way. The declarations below are CUPTI's
//! callback ABI (`cupti_callbacks.h`, `generated_cuda_meta.h`), the same in CUDA 12 and 13.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `CUPTI_CB_DOMAIN_DRIVER_API`.
const DRIVER_API: c_int = 1;
/// `CUPTI_API_ENTER`: the callback before the driver runs the call.
const API_ENTER: c_int = 0;
/// `CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel` and its per-thread-stream form.
const LAUNCH_KERNEL: [u32; 2] = [307, 442];
/// `CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx` and its per-thread-stream form.
const LAUNCH_KERNEL_EX: [u32; 2] = [652, 653];

/// `CUpti_CallbackData`: what a driver-API callback is told.
#[repr(C)]
pub struct CallbackData {
    pub callback_site: c_int,
    pub function_name: *const c_char,
    pub function_params: *const c_void,
    pub function_return_value: *mut c_void,
    pub symbol_name: *const c_char,
    pub context: *mut c_void,
    pub context_uid: u32,
    pub correlation_data: *mut u64,
    pub correlation_id: u32,
}

/// `cuLaunchKernel_params`: `cuLaunchKernel`'s arguments, as the callback sees them.
#[repr(C)]
pub struct LaunchParams {
    pub function: *mut c_void,
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub stream: *mut c_void,
    pub kernel_params: *mut *mut c_void,
    pub extra: *mut *mut c_void,
}

/// `CUlaunchConfig`: how `cuLaunchKernelEx` is told the sizes and the stream.
#[repr(C)]
pub struct LaunchConfig {
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub stream: *mut c_void,
    pub attributes: *mut c_void,
    pub attribute_count: c_uint,
}

/// `cuLaunchKernelEx_params`: `cuLaunchKernelEx`'s arguments.
#[repr(C)]
pub struct LaunchExParams {
    pub config: *const LaunchConfig,
    pub function: *mut c_void,
    pub kernel_params: *mut *mut c_void,
    pub extra: *mut *mut c_void,
}

/// The streams of the one-block, one-thread launches seen while subscribed (the probe's
/// kernel is such a launch; a training step's kernels are not).
static SEEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// CUPTI's callback: records the stream of every one-thread kernel launch, through
/// `cuLaunchKernel` or `cuLaunchKernelEx`.
///
/// # Safety
/// `data`, for the driver domain and a launch id, points to a live [`CallbackData`] whose
/// parameters are a [`LaunchParams`] or, for the `Ex` ids, a [`LaunchExParams`] (CUPTI's
/// contract).
pub unsafe extern "C" fn on_driver_call(
    _userdata: *mut c_void,
    domain: c_int,
    id: u32,
    data: *const c_void,
) {
    let plain = LAUNCH_KERNEL.contains(&id);
    if domain != DRIVER_API || !(plain || LAUNCH_KERNEL_EX.contains(&id)) || data.is_null() {
        return;
    }
    // SAFETY: the function's contract.
    let data = unsafe { &*(data as *const CallbackData) };
    if data.callback_site != API_ENTER || data.function_params.is_null() {
        return;
    }
    // SAFETY: a launch's parameters, of the form its id says, by the function's contract.
    let (grid, block, stream) = unsafe {
        if plain {
            let p = &*(data.function_params as *const LaunchParams);
            (p.grid, p.block, p.stream)
        } else {
            let p = &*(data.function_params as *const LaunchExParams);
            let Some(config) = p.config.as_ref() else {
                return;
            };
            (config.grid, config.block, config.stream)
        }
    };
    if grid == [1, 1, 1] && block == [1, 1, 1] {
        SEEN.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stream as usize);
    }
}

/// The one stream among `seen`, or why there is none.
fn one_stream(seen: &[usize]) -> Result<usize, String> {
    let mut streams = seen.to_vec();
    streams.sort_unstable();
    streams.dedup();
    match streams.as_slice() {
        [stream] => Ok(*stream),
        [] => Err("the probe's launch was not seen (no kernel launch callback)".into()),
        many => Err(format!(
            "one-thread launches on {} streams while probing; which is cubecl's is unclear",
            many.len()
        )),
    }
}

type Subscribe = unsafe extern "C" fn(
    *mut *mut c_void,
    unsafe extern "C" fn(*mut c_void, c_int, u32, *const c_void),
    *mut c_void,
) -> c_int;
type EnableCallback = unsafe extern "C" fn(u32, *mut c_void, c_int, u32) -> c_int;
type Unsubscribe = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The three CUPTI entry points the probe needs.
struct Cupti {
    subscribe: Subscribe,
    enable_callback: EnableCallback,
    unsubscribe: Unsubscribe,
}

/// Opens CUPTI from the loader's path, then from each of `dirs`; its entry points, or why
/// not.
fn open(dirs: &[PathBuf]) -> Result<Cupti, String> {
    let names = ["libcupti.so", "libcupti.so.13", "libcupti.so.12"];
    let candidates = names
        .iter()
        .map(PathBuf::from)
        .chain(dirs.iter().flat_map(|d| names.iter().map(|n| d.join(n))));
    let lib = candidates
        .filter_map(|path| dlopen(&path, false))
        .next()
        .ok_or(
            "CUPTI (libcupti.so) not found in the loader's path, a CUDA toolkit's \
                extras/CUPTI/lib64 or a Python environment",
        )?;
    let symbol = |name: &CStr| {
        // SAFETY: `lib` is an open handle and `name` a C string.
        let f = unsafe { libc::dlsym(lib, name.as_ptr()) };
        if f.is_null() {
            Err(format!("CUPTI has no {}", name.to_string_lossy()))
        } else {
            Ok(f)
        }
    };
    // SAFETY: each symbol has the type CUPTI declares for it (the types above).
    unsafe {
        Ok(Cupti {
            subscribe: std::mem::transmute::<*mut c_void, Subscribe>(symbol(c"cuptiSubscribe")?),
            enable_callback: std::mem::transmute::<*mut c_void, EnableCallback>(symbol(
                c"cuptiEnableCallback",
            )?),
            unsubscribe: std::mem::transmute::<*mut c_void, Unsubscribe>(symbol(
                c"cuptiUnsubscribe",
            )?),
        })
    }
}

/// The library at `path` opened, its symbols kept to itself unless `global` (then they
/// resolve the loads of libraries opened later, as cuDNN's sub-libraries need); its handle
/// stays open for the process. `None` where it does not open.
pub(super) fn dlopen(path: &Path, global: bool) -> Option<*mut c_void> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let scope = if global {
        libc::RTLD_GLOBAL
    } else {
        libc::RTLD_LOCAL
    };
    // SAFETY: `name` is a valid C string; the handle is deliberately never closed.
    let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | scope) };
    (!lib.is_null()).then_some(lib)
}

/// The stream (a `CUstream`, as an address) of the one-thread kernel that `probe` launches
/// through cubecl. `probe` must leave every launch it makes issued to the driver when it
/// returns (a sync of cubecl's stream), and launch no other one-thread kernel. CUPTI is
/// looked for in `dirs` after the loader's path.
pub fn launch_stream(
    dirs: &[PathBuf],
    probe: impl FnOnce() -> Result<(), String>,
) -> Result<usize, String> {
    let cupti = open(dirs)?;
    let mut subscriber: *mut c_void = std::ptr::null_mut();
    // SAFETY: CUPTI's entry points with valid arguments; the callback is a plain function.
    let status =
        unsafe { (cupti.subscribe)(&mut subscriber, on_driver_call, std::ptr::null_mut()) };
    match status {
        0 => {}
        // CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED
        39 => return Err("CUPTI is taken by another subscriber (a profiler?)".into()),
        _ => return Err(format!("cuptiSubscribe failed with CUPTI status {status}")),
    }
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let enabled = LAUNCH_KERNEL
        .iter()
        .chain(&LAUNCH_KERNEL_EX)
        .try_for_each(|&id| {
            // SAFETY: a live subscriber.
            match unsafe { (cupti.enable_callback)(1, subscriber, DRIVER_API, id) } {
                0 => Ok(()),
                status => Err(format!(
                    "cuptiEnableCallback failed with CUPTI status {status}"
                )),
            }
        });
    let probed = enabled.and_then(|()| probe());
    // SAFETY: the subscriber made above, released once.
    unsafe { (cupti.unsubscribe)(subscriber) };
    probed?;
    let seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(|e| e.into_inner()));
    one_stream(&seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What CUPTI hands the callback for a launch of `grid` blocks on `stream`, through
    /// `cuLaunchKernel` or, for the `Ex` ids, `cuLaunchKernelEx`.
    fn call(id: u32, site: c_int, grid: [c_uint; 3], stream: usize) {
        let block = if grid == [1, 1, 1] {
            [1, 1, 1]
        } else {
            [256, 1, 1]
        };
        let params = LaunchParams {
            function: std::ptr::null_mut(),
            grid,
            block,
            shared_mem_bytes: 0,
            stream: stream as *mut c_void,
            kernel_params: std::ptr::null_mut(),
            extra: std::ptr::null_mut(),
        };
        let config = LaunchConfig {
            grid,
            block,
            shared_mem_bytes: 0,
            stream: stream as *mut c_void,
            attributes: std::ptr::null_mut(),
            attribute_count: 0,
        };
        let ex = LaunchExParams {
            config: &config,
            function: std::ptr::null_mut(),
            kernel_params: std::ptr::null_mut(),
            extra: std::ptr::null_mut(),
        };
        let function_params = if LAUNCH_KERNEL_EX.contains(&id) {
            &ex as *const LaunchExParams as *const c_void
        } else {
            &params as *const LaunchParams as *const c_void
        };
        let data = CallbackData {
            callback_site: site,
            function_name: c"cuLaunchKernel".as_ptr(),
            function_params,
            function_return_value: std::ptr::null_mut(),
            symbol_name: std::ptr::null(),
            context: std::ptr::null_mut(),
            context_uid: 0,
            correlation_data: std::ptr::null_mut(),
            correlation_id: 0,
        };
        // SAFETY: `data` and `params` live through the call.
        unsafe {
            on_driver_call(
                std::ptr::null_mut(),
                DRIVER_API,
                id,
                &data as *const CallbackData as *const c_void,
            )
        };
    }

    #[test]
    fn the_probe_launch_names_its_stream_and_nothing_else_counts() {
        SEEN.lock().unwrap().clear();
        // A step's kernels, the exit callback and another driver call are not the probe.
        call(307, API_ENTER, [64, 1, 1], 0xa0);
        call(307, 1, [1, 1, 1], 0xb0);
        call(50, API_ENTER, [1, 1, 1], 0xc0);
        assert!(one_stream(&SEEN.lock().unwrap()).is_err());
        call(652, API_ENTER, [8, 1, 1], 0xd0);
        assert!(one_stream(&SEEN.lock().unwrap()).is_err());
        // The probe's one-thread launch, through any form of the call.
        for id in [307, 442, 652, 653] {
            call(id, API_ENTER, [1, 1, 1], 0x7f00);
        }
        let seen = std::mem::take(&mut *SEEN.lock().unwrap());
        assert_eq!(seen, vec![0x7f00; 4]);
        assert_eq!(one_stream(&seen), Ok(0x7f00));
        // Two streams cannot be told apart.
        let err = one_stream(&[0x7f00, 0x7e00]).unwrap_err();
        assert!(err.contains("2 streams"), "{err}");
    }

    #[test]
    fn the_launch_parameters_sit_where_the_driver_puts_them() {
        // cuLaunchKernel_params: the function, seven 32-bit sizes, then the stream at 40.
        assert_eq!(std::mem::offset_of!(LaunchParams, stream), 40);
        assert_eq!(std::mem::size_of::<LaunchParams>(), 64);
        // CUpti_CallbackData: the parameters after the site and the name.
        assert_eq!(std::mem::offset_of!(CallbackData, function_params), 16);
        assert_eq!(std::mem::offset_of!(CallbackData, correlation_id), 64);
        // CUlaunchConfig: seven 32-bit sizes, then the stream at 32.
        assert_eq!(std::mem::offset_of!(LaunchConfig, stream), 32);
        assert_eq!(std::mem::size_of::<LaunchConfig>(), 56);
    }

    #[test]
    fn a_missing_cupti_is_an_error_that_says_where_it_looked() {
        // Without CUPTI: where it was looked for. With it: the empty probe launched nothing.
        let err = launch_stream(&[PathBuf::from("/nonexistent")], || Ok(())).unwrap_err();
        assert!(
            err.contains("CUPTI (libcupti.so) not found") || err.contains("not seen"),
            "{err}"
        );
    }
}
