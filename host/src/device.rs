//! Picking the device: `--device auto|cuda|cpu`, always with autodiff enabled.
//!
//! The CPU backend is burn-flex. CUDA is compiled in with the cargo feature `cuda`; `auto`
//! uses it when a GPU answers and falls back to the CPU otherwise, saying why. The feature
//! `cubecl-cpu` adds `--device cubecl-cpu`: the GPU code path (cubecl kernels, fusion,
//! autotune) compiled for the CPU, which tests what a CUDA run computes on a machine without
//! a GPU.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA if built in and a GPU answers, else the CPU.
    Auto,
    /// CUDA, or an error.
    Cuda,
    /// The CPU (burn-flex).
    Cpu,
    /// The GPU code path on the CPU (burn-cpu: cubecl kernels compiled through LLVM), with
    /// the cargo feature `cubecl-cpu`. Slow; for checking what a GPU run computes.
    CubeclCpu,
}

/// The CPU device with autodiff.
pub fn cpu() -> Device {
    Device::flex().autodiff()
}

/// The kinds of device a run can be on: what a recipe adapts its defaults to (`cubecl-cpu`
/// takes the CPU presets, and the host's GPU code path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// burn-flex on the CPU, with the host's CPU kernels.
    Cpu,
    /// A CUDA GPU.
    Cuda,
    /// cubecl's CPU runtime: the GPU code path compiled for the CPU.
    CubeclCpu,
}

impl DeviceKind {
    /// `"cpu"`, `"cuda"` or `"cubecl-cpu"`, as scripts see it (`device_kind()`).
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::CubeclCpu => "cubecl-cpu",
        }
    }
}

/// The kind of `device`.
pub fn kind(device: &Device) -> DeviceKind {
    if *device == Device::flex() {
        DeviceKind::Cpu
    } else if is_cubecl_cpu(device) {
        DeviceKind::CubeclCpu
    } else {
        DeviceKind::Cuda
    }
}

/// Whether the host takes its GPU code path on `device`: one input shape per kernel (the kNN's
/// last batch), top-k on the device, GPU batch norm. Every device but burn-flex.
pub fn gpu_path(device: &Device) -> bool {
    kind(device) != DeviceKind::Cpu
}

#[cfg(feature = "cubecl-cpu")]
fn is_cubecl_cpu(device: &Device) -> bool {
    *device == Device::cpu()
}

#[cfg(not(feature = "cubecl-cpu"))]
fn is_cubecl_cpu(_device: &Device) -> bool {
    false
}

/// The device for `choice`, and a sentence saying which it is and why.
pub fn select(choice: DeviceChoice) -> Result<(Device, String)> {
    match choice {
        DeviceChoice::Cpu => Ok((cpu(), "cpu (burn-flex): --device cpu".into())),
        DeviceChoice::Cuda => cuda().map(|d| (d, "cuda:0: --device cuda".into())),
        DeviceChoice::CubeclCpu => cubecl_cpu().map(|d| {
            let why = "cubecl-cpu (the GPU code path compiled for the CPU): --device cubecl-cpu";
            (d, why.into())
        }),
        DeviceChoice::Auto => match cuda() {
            Ok(d) => Ok((d, "cuda:0: a GPU answered".into())),
            Err(why) => Ok((cpu(), format!("cpu (burn-flex): {why}"))),
        },
    }
}

/// Whether the NVIDIA driver's library loads. Asked first, so that a machine without one gets
/// a one-line answer instead of burn's device thread panicking (and logging the dozens of file
/// names cudarc tried). Elsewhere than glibc the probe below answers alone.
#[cfg(feature = "cuda")]
fn driver_present() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        [c"libcuda.so.1", c"libcuda.so"].iter().any(|name| {
            // SAFETY: `name` is a valid C string; a handle that opens is closed at once.
            unsafe {
                let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
                !handle.is_null() && libc::dlclose(handle) == 0
            }
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    use burn::tensor::Tensor;
    if !driver_present() {
        return Err(Error::Other(
            "CUDA is not usable here (no NVIDIA driver: libcuda.so.1 does not load)".into(),
        ));
    }
    cache_compiled_kernels();
    // A GPU that cannot run one tiny op (no driver, no device) counts as absent. Burn runs
    // the device on a thread of its own, whose panic (say, no libcuda) is the cause to report.
    crate::guard::catch_any_thread(|| {
        let device = Device::cuda(0).autodiff();
        let sum = Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>();
        if sum == 4.0 {
            // The budget of one tensor (crate::budget): this GPU's memory.
            if let Ok(bytes) = cudarc::driver::CudaContext::new(0).and_then(|c| c.total_mem()) {
                crate::budget::set_device_bytes(bytes as u64);
            }
            Ok(device)
        } else {
            Err(Error::Other(format!("the GPU computed 1+1+1+1 = {sum}")))
        }
    })
    .map_err(|e| {
        // cudarc's "cannot load libcuda" lists every file name it tried: keep the sentence.
        let why = e.to_string();
        let why = why.split(" - searched for").next().unwrap_or(&why);
        Error::Other(format!("CUDA is not usable here ({why})"))
    })
}

/// Turns on cubecl's on-disk cache of compiled kernels (their PTX), which cubecl leaves off
/// by default, so that a process's first step loads the kernels an earlier process compiled
/// instead of compiling them again (about 600 for a ResNet-18 step; compiling them is most of
/// a cold first step's 160 s). It lives beside the autotune results, in cubecl's environment
/// folder. With `SSLHOST_KERNEL_CACHE=0` cubecl's own setting stands (off unless a
/// `cubecl.toml` turns it on). The rest of cubecl's configuration is read as cubecl reads it
/// (`cubecl.toml`, its environment variables). Returns whether the cache is on. It must run
/// before anything reads cubecl's configuration (the first CUDA device does), and changes
/// nothing after.
#[cfg(feature = "cuda")]
pub fn cache_compiled_kernels() -> bool {
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let wanted = std::env::var("SSLHOST_KERNEL_CACHE").map_or(true, |v| v != "0");
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = config.compilation.cache || wanted;
    if !CubeClRuntimeConfig::try_set(config) {
        tracing::debug!("cubecl's configuration was read before sslhost could set it");
    }
    let on = CubeClRuntimeConfig::get().compilation.cache;
    tracing::info!(
        "compiled GPU kernels are {} (SSLHOST_KERNEL_CACHE)",
        if on { "cached on disk" } else { "not cached" }
    );
    on
}

/// The cubecl CPU runtime with autodiff.
#[cfg(feature = "cubecl-cpu")]
pub fn cubecl_cpu() -> Result<Device> {
    Ok(Device::cpu().autodiff())
}

#[cfg(not(feature = "cubecl-cpu"))]
pub fn cubecl_cpu() -> Result<Device> {
    Err(Error::Other(
        "this binary was built without the cubecl CPU runtime (cargo feature `cubecl-cpu`)".into(),
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    Err(Error::Other(
        "this binary was built without CUDA (cargo feature `cuda`)".into(),
    ))
}
