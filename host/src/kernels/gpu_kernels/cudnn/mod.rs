//! cuDNN under the cubecl CUDA backend: the library found and loaded at run time, one handle
//! and stream, the cubecl ↔ cuDNN ordering ([`order`]), and [`GpuKernels`] for burn's
//! `CubeBackend` on a CUDA device.
//!
//! Nothing about cuDNN is needed at build time: cudarc's bindings load `libcudnn.so.9` on first
//! use. [`library`] first preloads it from the places PyTorch users have it, so that cudarc's
//! plain `dlopen` by name finds the already-loaded copy. A CUDA device without cuDNN runs the
//! reference bodies (burn's own kernels) and [`library`] says why once.
//!
//! Activations are kept channels last (an `[N, C, H, W]` shape over NHWC storage, as cubecl's
//! own convolutions leave theirs), weights are handed to cuDNN as KRSC, and every cuDNN call
//! runs through [`order::Order::around`]. A call cuDNN refuses (a shape or type it does not
//! support) falls back to the reference body for that shape, with one warning; convolutions
//! whose channels do not fill its half-type vectors (the 3-channel stem) take the reference
//! body without asking.

mod batch_norm;
mod conv;
mod order;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::__private::Runtime;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::cubecl::zspace::metadata::Metadata;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use cudarc::cudnn::sys as dnn;
use cudarc::driver::sys as cu;

use super::{GpuKernels, reference};

/// What went wrong in a cuDNN or driver call.
#[derive(Debug, Clone)]
pub struct CudnnError(pub String);

impl std::fmt::Display for CudnnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<cudarc::cudnn::result::CudnnError> for CudnnError {
    fn from(e: cudarc::cudnn::result::CudnnError) -> Self {
        CudnnError(format!("cuDNN: {e:?}"))
    }
}

impl From<cudarc::driver::result::DriverError> for CudnnError {
    fn from(e: cudarc::driver::result::DriverError) -> Self {
        CudnnError(format!("CUDA driver: {e:?}"))
    }
}

/// `status` as a result.
fn check(status: dnn::cudnnStatus_t, what: &str) -> Result<(), CudnnError> {
    status
        .result()
        .map_err(|e| CudnnError(format!("{what}: {e:?}")))
}

/// cuDNN's version, once it has loaded; else why not. The first call looks for the library
/// and logs the outcome.
pub fn library() -> Result<usize, &'static str> {
    static LOADED: OnceLock<Result<usize, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let outcome = load();
            match &outcome {
                Ok(version) => tracing::info!(
                    "cuDNN {}.{}.{} loaded: convolutions and batch norm run in cuDNN",
                    version / 10000,
                    version / 100 % 100,
                    version % 100
                ),
                Err(why) => tracing::warn!("{why}: burn's kernels instead"),
            }
            outcome
        })
        .as_ref()
        .map(|v| *v)
        .map_err(String::as_str)
}

fn load() -> Result<usize, String> {
    let found = preload();
    // SAFETY: a check of whether the library opens, with no symbol used.
    if !unsafe { dnn::is_culib_present() } {
        return Err(format!(
            "cuDNN 9 (libcudnn.so.9) not found in the loader's path, CUDA_HOME or a Python \
             environment's nvidia/cudnn/lib{}",
            found
                .map(|p| format!(" (tried {})", p.display()))
                .unwrap_or_default()
        ));
    }
    let version = cudarc::cudnn::result::get_version();
    if !(90000..100000).contains(&version) {
        return Err(format!("cuDNN {version} found where 9.x is needed"));
    }
    Ok(version)
}

/// Opens `libcudnn.so.9` (and its sub-libraries beside it) from the first place that has it,
/// so that cudarc's `dlopen` by name finds it loaded: the loader's own search first
/// (LD_LIBRARY_PATH, the system folders), then `$CUDA_HOME`/`$CUDA_PATH`, then the
/// `nvidia/cudnn/lib` of every Python environment on the PATH (where PyTorch's wheels put it).
/// Returns the last path tried when none opened.
fn preload() -> Option<PathBuf> {
    if dlopen_global(Path::new("libcudnn.so.9")) {
        return None;
    }
    let mut last = None;
    for dir in library_dirs(&CUDNN) {
        let path = dir.join("libcudnn.so.9");
        if !path.is_file() {
            continue;
        }
        // The sub-libraries first, so that the main library's own loads find them loaded.
        for sub in [
            "graph",
            "engines_precompiled",
            "engines_runtime_compiled",
            "heuristic",
        ]
        .iter()
        .chain(&["ops", "cnn", "adv"])
        {
            dlopen_global(&dir.join(format!("libcudnn_{sub}.so.9")));
        }
        if dlopen_global(&path) {
            tracing::debug!("cuDNN from {}", path.display());
            return None;
        }
        last = Some(path);
    }
    last
}

/// Where a library of NVIDIA's is, after the loader's own search: these folders of
/// `$CUDA_HOME` and `$CUDA_PATH`, then these of the `nvidia` package of every Python
/// environment on the PATH (where PyTorch's wheels put them).
struct Places {
    in_toolkit: &'static [&'static str],
    in_python: &'static [&'static str],
}

/// cuDNN's places.
const CUDNN: Places = Places {
    in_toolkit: &["lib64", "lib"],
    in_python: &["nvidia/cudnn/lib"],
};

/// CUPTI's places: a toolkit keeps it apart, and the wheels have had three layouts.
const CUPTI: Places = Places {
    in_toolkit: &["extras/CUPTI/lib64", "lib64"],
    in_python: &[
        "nvidia/cuda_cupti/lib",
        "nvidia/cu13/lib",
        "nvidia/cu12/lib",
    ],
};

/// The folders to look in for a library at `places`.
fn library_dirs(places: &Places) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.extend(places.in_toolkit.iter().map(|sub| root.join(sub)));
        }
    }
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        for bin in std::env::split_paths(&path) {
            if bin.join("python3").exists()
                && let Some(prefix) = bin.parent()
            {
                prefixes.push(prefix.to_path_buf());
            }
        }
    }
    prefixes.push(PathBuf::from("/usr/local"));
    prefixes.push(PathBuf::from("/usr"));
    // A toolkit where it installs by default, when no variable names one.
    dirs.extend(
        places
            .in_toolkit
            .iter()
            .map(|sub| Path::new("/usr/local/cuda").join(sub)),
    );
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("python3") {
                    for packages in ["site-packages", "dist-packages"] {
                        let packages = entry.path().join(packages);
                        dirs.extend(places.in_python.iter().map(|sub| packages.join(sub)));
                    }
                }
            }
        }
    }
    dirs
}

/// Whether `path` opens with its symbols global; the handle stays open for the process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn dlopen_global(path: &Path) -> bool {
    super::cupti::dlopen(path, true).is_some()
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn dlopen_global(_path: &Path) -> bool {
    false
}

/// Raw device addresses of cubecl buffers, each pinned in place for as long as this lives,
/// and the buffers, for cubecl to account for once cuDNN has used them ([`Pointers::used`]).
pub struct Pointers {
    client: Client,
    held: Vec<Box<dyn std::any::Any>>,
    buffers: Vec<Handle>,
}

type CudaServer = <CudaRuntime as Runtime>::Server;

impl Pointers {
    /// No addresses yet, for buffers of `client`.
    pub fn new(client: &Client) -> Self {
        Pointers {
            client: client.clone(),
            held: Vec::new(),
            buffers: Vec::new(),
        }
    }

    /// The device address of `handle`'s first byte (its offset included).
    pub fn address(&mut self, handle: &Handle) -> Result<u64, CudnnError> {
        let resource = self
            .client
            .get_resource::<CudaServer>(handle.clone())
            .map_err(|e| CudnnError(format!("the address of a buffer: {e:?}")))?;
        let ptr = resource.resource().ptr;
        self.held.push(Box::new(resource));
        self.buffers.push(handle.clone());
        Ok(ptr)
    }

    /// Once cuDNN's calls on these buffers are queued on cubecl's stream (or waited for):
    /// binds them in a launch after the calls where cubecl must know of them, inside a
    /// graph's recording (which then keeps their pages) or when one was made on another
    /// cubecl stream (which then keeps it until the calls have run); see [`super::hold`].
    pub fn used(&self) {
        super::hold::after_foreign_call(&self.client, &self.buffers);
    }

    /// [`address`](Self::address) as a `*const c_void` for cuDNN.
    pub fn of(&mut self, t: &CubeTensor) -> Result<*mut std::ffi::c_void, CudnnError> {
        Ok(self.address(&t.handle)? as *mut std::ffi::c_void)
    }
}

/// The one cuDNN handle of the process, its stream, the ordering counters and what was learnt
/// per shape.
pub struct Cudnn {
    handle: dnn::cudnnHandle_t,
    /// cuDNN's own stream.
    stream: cu::CUstream,
    /// The stream the handle issues on: cuDNN's own, or cubecl's under `stream`.
    on: cu::CUstream,
    order: order::Order,
    /// Shapes cuDNN refused, by key: they take the reference bodies from then on.
    refused: HashSet<String>,
    /// The passes and shapes cuDNN has run, by pass and key ([`cudnn_or`]). A first call runs
    /// ordered as under `sync` (`order`'s notes), which waits on the host: so inside a
    /// graph's recording only these run in cuDNN.
    ran: HashSet<String>,
    /// Whether the call in progress is the first of its pass and shape, as [`cudnn_or`]
    /// found it.
    first: bool,
    conv: conv::Plans,
    norm: batch_norm::Plans,
}

// SAFETY: the handle and stream are used only under the `STATE` mutex, with the device's
// (primary) context made current on the calling thread first.
unsafe impl Send for Cudnn {}

static STATE: Mutex<Option<Cudnn>> = Mutex::new(None);

impl Cudnn {
    fn new(client: &Client) -> Result<Self, CudnnError> {
        make_context_current()?;
        let stream = cudarc::driver::result::stream::create(
            cudarc::driver::result::stream::StreamKind::NonBlocking,
        )?;
        let handle = cudarc::cudnn::result::create_handle()?;
        // SAFETY: both are live; the stream belongs to the current context.
        unsafe { cudarc::cudnn::result::set_stream(handle, stream as dnn::cudaStream_t)? };
        let order = order::Order::new(crate::kernels::current().cudnn_order, client)?;
        tracing::info!(
            "cuDNN's calls are ordered with cubecl's kernels by `{}` (SSLHOST_CUDNN_ORDER)",
            order.name()
        );
        Ok(Cudnn {
            handle,
            stream,
            on: stream,
            order,
            refused: HashSet::new(),
            ran: HashSet::new(),
            first: true,
            conv: conv::Plans::default(),
            norm: batch_norm::Plans::default(),
        })
    }

    /// Runs `work` with the process's cuDNN state (made on first use, on `client`'s device),
    /// the device's context current on this thread; `None` without running it where the
    /// state is still to be made inside a graph's recording (making it waits on the host).
    fn with<R>(
        client: &Client,
        in_window: bool,
        work: impl FnOnce(&mut Cudnn) -> Result<Option<R>, CudnnError>,
    ) -> Result<Option<R>, CudnnError> {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_none() {
            if in_window {
                return Ok(None);
            }
            *state = Some(Cudnn::new(client)?);
        }
        make_context_current()?;
        work(state.as_mut().expect("made above"))
    }

    /// Waits until both streams are idle: before cuDNN searches a new shape's algorithms,
    /// which allocates, frees (a device-wide sync) and synchronises its stream, so that no
    /// wait of the `flags` ordering is pending while it does.
    fn drain(&mut self, client: &Client) -> Result<(), CudnnError> {
        wait_for_cubecl(client)?;
        // SAFETY: a live stream of the current context.
        unsafe { cu::cuStreamSynchronize(self.stream).result()? };
        Ok(())
    }

    /// Issues `calls` on cuDNN's stream, ordered with `client`'s kernels both ways; `buffers`
    /// holds every buffer the calls use.
    fn ordered(
        &mut self,
        client: &Client,
        buffers: &Pointers,
        calls: impl FnOnce(dnn::cudnnHandle_t) -> Result<(), CudnnError>,
    ) -> Result<(), CudnnError> {
        let handle = self.handle;
        if let Some(stream) = self.order.shared_stream(client)?
            && stream != self.on
        {
            // SAFETY: a live handle, and a live stream of cubecl's in the current context.
            unsafe { cudarc::cudnn::result::set_stream(handle, stream as dnn::cudaStream_t)? };
            self.on = stream;
        }
        let out = self
            .order
            .around(client, self.on, self.first, || calls(handle));
        // Launches cuDNN queued before failing are recorded too.
        buffers.used();
        out
    }
}

/// Whether a wait ordering cubecl's kernels after cuDNN's ever gave up; `None` where cuDNN
/// never ran.
pub fn ordering_timed_out() -> Option<bool> {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    state.as_ref().map(|c| c.order.timed_out().unwrap_or(true))
}

/// Waits on the host until `client`'s stream has run everything queued on it.
fn wait_for_cubecl(client: &Client) -> Result<(), CudnnError> {
    burn_cubecl::cubecl::future::block_on(client.sync())
        .map_err(|e| CudnnError(format!("waiting for cubecl's stream: {e:?}")))
}

/// The ordering cuDNN's calls ran under (`stream` falls back to `signal` without CUPTI);
/// `None` where cuDNN never ran.
pub fn ordering() -> Option<&'static str> {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    state.as_ref().map(|c| c.order.name())
}

/// Makes device 0's primary context (the one cubecl-cuda runs in) current on this thread.
fn make_context_current() -> Result<(), CudnnError> {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if DONE.with(std::cell::Cell::get) {
        return Ok(());
    }
    // SAFETY: device 0 exists (cubecl made its context on it); retaining the primary context
    // again only raises its reference count.
    unsafe {
        let device = cudarc::driver::result::device::get(0)?;
        let ctx = cudarc::driver::result::primary_ctx::retain(device)?;
        cudarc::driver::result::ctx::set_current(ctx)?;
    }
    DONE.with(|d| d.set(true));
    Ok(())
}

/// Whether `t` is on the CUDA device cuDNN serves (device 0) and cuDNN is loaded.
fn served(t: &CubeTensor) -> bool {
    matches!(&t.device, CubeDevice::Cuda(d) if d.index == 0) && library().is_ok()
}

/// `1.0` and `0.0` as cuDNN's scaling factors (f32 for every data type but f64).
const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

/// A scaling factor as cuDNN takes it.
fn scale(v: &f32) -> *const std::ffi::c_void {
    v as *const f32 as *const std::ffi::c_void
}

/// cuDNN's name for a float type, if it takes it.
fn data_type(dtype: DType) -> Option<dnn::cudnnDataType_t> {
    match dtype {
        DType::F32 => Some(dnn::cudnnDataType_t::CUDNN_DATA_FLOAT),
        DType::BF16 => Some(dnn::cudnnDataType_t::CUDNN_DATA_BFLOAT16),
        DType::F16 => Some(dnn::cudnnDataType_t::CUDNN_DATA_HALF),
        _ => None,
    }
}

/// NHWC strides of an `[N, C, H, W]` shape.
fn nhwc_strides(dims: [usize; 4]) -> [usize; 4] {
    let [_, c, h, w] = dims;
    [h * w * c, 1, w * c, c]
}

/// The four dims of a rank-4 tensor.
fn dims4(t: &CubeTensor) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// `t` `[N, C, H, W]` stored channels last (a copy unless it already is).
fn channels_last(t: CubeTensor) -> CubeTensor {
    let dims = dims4(&t);
    if t.meta.strides().iter().copied().eq(nhwc_strides(dims)) {
        return t;
    }
    // [N, C, H, W] → [N, H, W, C] made contiguous → viewed back as [N, C, H, W].
    let nhwc = burn_cubecl::kernel::into_contiguous(permuted(t, [0, 2, 3, 1]));
    permuted(nhwc, [0, 3, 1, 2])
}

/// `t` with its axes permuted (a view).
fn permuted(t: CubeTensor, axes: [usize; 4]) -> CubeTensor {
    use burn::backend::ops::FloatTensorOps;
    <CubeBackend as FloatTensorOps<CubeBackend>>::float_permute(t, &axes)
}

/// `t` in `dtype`.
fn cast(t: CubeTensor, dtype: DType) -> CubeTensor {
    if t.dtype == dtype {
        t
    } else {
        burn_cubecl::kernel::cast(t, dtype)
    }
}

/// `t` contiguous.
fn contiguous(t: CubeTensor) -> CubeTensor {
    burn_cubecl::kernel::into_contiguous(t)
}

/// A new `[N, C, H, W]` tensor stored channels last, like `like`'s client and device.
fn empty_channels_last(like: &CubeTensor, dims: [usize; 4], dtype: DType) -> CubeTensor {
    let bytes = dims.iter().product::<usize>() * dtype.size();
    let handle = like.client.empty(bytes.max(1));
    let meta = Metadata::new(dims, nhwc_strides(dims));
    CubeTensor::new(
        like.client.clone(),
        handle,
        meta,
        like.device.clone(),
        dtype,
    )
}

/// A new contiguous tensor of `shape`.
fn empty(like: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    let bytes = shape.num_elements() * dtype.size();
    let handle = like.client.empty(bytes.max(1));
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        dtype,
    )
}

/// A workspace of `bytes` (at least one, so every call has an address to pass).
fn workspace(like: &CubeTensor, bytes: usize) -> Handle {
    like.client.empty(bytes.max(1))
}

/// Runs `fast` (cuDNN) for `pass` on the shape `key`, or `slow` (the reference) where cuDNN is
/// not served or refused this key before; a refusal is logged once and remembered. Inside a
/// graph's recording a pass and shape cuDNN has not run before take `slow` too, this once:
/// its first call waits on the host (its algorithm search, its module loads), which would
/// end the capture and lose the step's state. The graph then holds burn's kernels there.
fn cudnn_or<R>(
    like: &CubeTensor,
    pass: &str,
    key: impl FnOnce() -> String,
    fast: impl FnOnce(&mut Cudnn) -> Result<R, CudnnError>,
    slow: impl FnOnce() -> R,
) -> R {
    if !served(like) {
        return slow();
    }
    let key = key();
    let ran = format!("{pass} {key}");
    let in_window = crate::kernels::recording::recording();
    let outcome = Cudnn::with(&like.client, in_window, |c| {
        if c.refused.contains(&key) {
            return Ok(None);
        }
        c.first = !c.ran.contains(&ran);
        if in_window && c.first {
            return Ok(None);
        }
        match fast(c) {
            Ok(r) => {
                if c.first {
                    c.ran.insert(ran.clone());
                }
                Ok(Some(r))
            }
            Err(e) => {
                tracing::warn!("cuDNN refused {key} ({e}): burn's kernel for this shape");
                c.refused.insert(key);
                Ok(None)
            }
        }
    });
    match outcome {
        Ok(Some(r)) => r,
        Ok(None) => {
            if in_window {
                tracing::warn!(
                    "cuDNN: {ran} first met inside a graph's recording, where its first \
                     call's host waits would end the capture: burn's kernel in the graph"
                );
            }
            slow()
        }
        Err(e) => {
            tracing::warn!("cuDNN unusable ({e}): burn's kernel");
            slow()
        }
    }
}

/// A batch norm's backward in cuDNN, or by the reference ops: (dx, the residual's gradient
/// for an add tail, dgamma, dbeta).
fn norm_backward(
    x: CubeTensor,
    y: CubeTensor,
    dy: CubeTensor,
    saved: batch_norm::Saved,
    tail: batch_norm::Tail,
) -> (CubeTensor, Option<CubeTensor>, CubeTensor, CubeTensor) {
    cudnn_or(
        &x,
        "backward",
        || batch_norm::key(&x, tail),
        |c| c.norm_backward(&x, &y, dy.clone(), &saved, tail),
        || {
            let relu = tail != batch_norm::Tail::None;
            let (dx, dz, dgamma, dbeta) = saved.reference(x.clone(), y.clone(), dy.clone(), relu);
            let add = tail == batch_norm::Tail::AddRelu;
            (dx, add.then_some(dz), dgamma, dbeta)
        },
    )
}

/// A convolution pass of `geometry` (`what`: forward, input or weight gradient): `fast` in
/// cuDNN, or `slow` by the reference ops where cuDNN is not served, refused the shape before,
/// or does not take its channels ([`conv::Geometry::vectorised`]).
fn conv_pass(
    x: &CubeTensor,
    geometry: conv::Geometry,
    what: &str,
    fast: impl FnOnce(&mut Cudnn) -> Result<CubeTensor, CudnnError>,
    slow: impl FnOnce() -> CubeTensor,
) -> CubeTensor {
    if !geometry.vectorised() {
        return slow();
    }
    cudnn_or(x, what, || format!("conv {what} {geometry:?}"), fast, slow)
}

impl GpuKernels for CubeBackend {
    fn gpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let geometry = conv::Geometry::of(&x, &weight, stride, padding);
        conv_pass(
            &x,
            geometry,
            "forward",
            |c| c.conv_forward(x.clone(), weight.clone(), geometry),
            || reference::conv2d::<Self>(x.clone(), weight.clone(), stride, padding),
        )
    }

    fn gpu_conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let geometry = conv::Geometry::of(&x, &weight, stride, padding);
        conv_pass(
            &x,
            geometry,
            "input gradient",
            |c| c.conv_input_grad(&x, weight.clone(), dy.clone(), geometry),
            || {
                let (x, weight, dy) = (x.clone(), weight.clone(), dy.clone());
                reference::conv2d_input_grad::<Self>(x, weight, dy, stride, padding)
            },
        )
    }

    fn gpu_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let geometry = conv::Geometry::of(&x, &weight, stride, padding);
        conv_pass(
            &x,
            geometry,
            "weight gradient",
            |c| c.conv_weight_grad(x.clone(), &weight, dy.clone(), geometry),
            || {
                let (x, weight, dy) = (x.clone(), weight.clone(), dy.clone());
                reference::conv2d_weight_grad::<Self>(x, weight, dy, stride, padding)
            },
        )
    }

    fn gpu_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let tail = batch_norm::Tail::of(relu, false);
        cudnn_or(
            &x,
            "forward",
            || batch_norm::key(&x, tail),
            |c| c.norm_forward(x.clone(), gamma.clone(), beta.clone(), None, tail, epsilon),
            || {
                reference::batch_norm::<Self>(
                    x.clone(),
                    gamma.clone(),
                    beta.clone(),
                    None,
                    relu,
                    epsilon,
                )
            },
        )
    }

    fn gpu_batch_norm_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let tail = batch_norm::Tail::of(true, true);
        cudnn_or(
            &x,
            "forward",
            || batch_norm::key(&x, tail),
            |c| {
                let z = Some(residual.clone());
                c.norm_forward(x.clone(), gamma.clone(), beta.clone(), z, tail, epsilon)
            },
            || {
                let z = Some(residual.clone());
                reference::batch_norm::<Self>(
                    x.clone(),
                    gamma.clone(),
                    beta.clone(),
                    z,
                    true,
                    epsilon,
                )
            },
        )
    }

    fn gpu_batch_norm_backward(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let saved = batch_norm::Saved {
            gamma,
            beta,
            mean,
            inv_std,
            epsilon,
        };
        let tail = batch_norm::Tail::of(relu, false);
        let (dx, _, dgamma, dbeta) = norm_backward(x, y, dy, saved, tail);
        (dx, dgamma, dbeta)
    }

    fn gpu_batch_norm_add_relu_backward(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        epsilon: f64,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let saved = batch_norm::Saved {
            gamma,
            beta,
            mean,
            inv_std,
            epsilon,
        };
        let tail = batch_norm::Tail::of(true, true);
        let (dx, dz, dgamma, dbeta) = norm_backward(x, y, dy, saved, tail);
        let dz = dz.expect("an add tail has a residual gradient");
        (dx, dz, dgamma, dbeta)
    }
}
