//! Our own cubecl kernels compiled for a CUDA GPU on a machine that has none: [`compile`].
//!
//! The step's other kernels are burn's. Ours ([`hold`](super::hold), the
//! [`handshake`](super::handshake)'s signal and wait, the captured step's word copy) can be
//! checked without a GPU, because cubecl-cuda lowers a kernel to PTX in-process (its LLVM
//! backend: no NVRTC, no driver). The same lowering runs here, given the device properties its
//! runtime would register for a compute capability. NVIDIA's `ptxas` then takes the PTX to
//! machine code, as the driver does when it loads the module: [`assemble`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn_cubecl::cubecl::cuda::{CUDA_MAX_BINDINGS, CudaCompilationOptions, CudaCompiler};
use burn_cubecl::cubecl::cuda::{CudaRepresentation, CudaRuntime};
use burn_cubecl::cubecl::features::{AtomicUsage, Plane};
use burn_cubecl::cubecl::ir::nvidia::SmArch;
use burn_cubecl::cubecl::ir::{
    DeviceIdentity, ElemType, FloatKind, HardwareProperties, MemoryDeviceProperties, Type,
};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::profile::TimingMethod;
use cubecl_llvm::nvptx::ptx_version::PtxVersion;
use cubecl_llvm::shared::lowered_features::{GpuTarget, restrict_features};
use cubecl_server::kernel::CompiledKernel;
use cubecl_server::runtime::Runtime;

/// The compute capabilities CUDA 13 compiles for (it dropped those before Turing), with
/// examples of each: the GPUs a researcher may train on. The lent H100s and H200s are 90.
pub const ARCHITECTURES: &[(u32, &str)] = &[
    (75, "Turing: T4, RTX 20"),
    (80, "Ampere: A100"),
    (86, "Ampere: A10, RTX 30"),
    (89, "Ada: L4, L40, RTX 40"),
    (90, "Hopper: H100, H200"),
    (100, "Blackwell: B200"),
    (120, "Blackwell: RTX 50"),
];

/// The CUDA version of the lent machines' driver (580), as `cuDriverGetVersion` reports it:
/// the lowering emits the newest PTX it loads (9.0).
pub const DRIVER: i32 = 13000;

/// One kernel's PTX.
pub struct Ptx {
    /// The kernel's name in our code.
    pub kernel: &'static str,
    /// Its entry point in the module.
    pub entry: String,
    /// The module's text.
    pub text: String,
}

/// The settings a `#[cube(launch)]` kernel's own launch function gives it, for `cube_dim`
/// (checked bounds, 32-bit addresses): the same settings, the same kernel.
pub(crate) fn launch_settings(cube_dim: CubeDim) -> KernelSettings {
    KernelSettings::new(cube_dim.into(), ExecutionMode::Checked, AddressType::U32)
}

/// Each of our kernels, as our code launches it, lowered to PTX for compute capability
/// `arch` (90 for Hopper) under a driver of CUDA `driver` (13000 for 13.0): its PTX, or why it
/// did not lower.
pub fn compile(arch: u32, driver: i32) -> Vec<(&'static str, Result<Ptx, String>)> {
    let device = Arc::new(device_properties(arch));
    let target = Arc::new(CudaRuntime::target_properties());
    let [signal, wait] = super::handshake::offline(device.clone(), target.clone());
    let kernels = [
        ("hold", super::hold::offline(device.clone(), target.clone())),
        ("signal", signal),
        ("wait", wait),
        (
            "copy_words",
            crate::kernels::views::copy::offline(device, target),
        ),
    ];
    let options = compilation_options(arch, driver);
    kernels
        .into_iter()
        .map(|(name, kernel)| (name, lower(name, kernel.as_ref(), &options)))
        .collect()
}

/// `kernel` through cubecl-cuda's compiler, as its runtime compiles a kernel it has not seen.
fn lower(
    name: &'static str,
    kernel: &dyn CubeKernel,
    options: &CudaCompilationOptions,
) -> Result<Ptx, String> {
    let definition = define_kernel(kernel).map_err(|e| format!("defining it: {e}"))?;
    let compiled =
        CompiledKernel::compile(kernel, definition, &mut CudaCompiler::default(), options)
            .map_err(|e| format!("lowering it: {e}"))?;
    match compiled.repr {
        Some(CudaRepresentation::Llvm(module)) => {
            let bytes: Vec<u8> = module
                .ptx
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            let text = String::from_utf8(bytes).map_err(|e| format!("its PTX: {e}"))?;
            Ok(Ptx {
                kernel: name,
                entry: module.entrypoint,
                text,
            })
        }
        Some(CudaRepresentation::Cpp(_)) => Err(
            "cubecl-cuda compiled it to CUDA C++ (its `cpp` feature is on): NVRTC, which is \
                 not here, would make the PTX"
                .to_string(),
        ),
        None => Err("it is a precompiled kernel: there is nothing to lower".to_string()),
    }
}

/// What cubecl-cuda's runtime registers for a device of compute capability `arch`, where it
/// bears on how a kernel lowers: the types and atomics, the plane features, and what the LLVM
/// backend cannot honour taken away. The matrix-product features (tensor cores, TMA) are left
/// out: none of our kernels asks for them. The limits are an H100's, whatever `arch`: none of
/// them bears on how these kernels lower.
fn device_properties(arch: u32) -> DeviceProperties {
    let hardware = HardwareProperties {
        load_width: 128,
        vector_register_count: None,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: CUDA_MAX_BINDINGS,
        max_shared_memory_size: 227 * 1024,
        max_cube_count: (i32::MAX as u32, 65535, 65535),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(132),
        num_tensor_cores: None,
        min_tensor_cores_dim: None,
        num_cpu_cores: None,
        last_level_cache_size: None,
        max_vector_size: VectorSize::MAX,
        cube_mma_reserved_shared_memory: 0,
    };
    let memory = 80 << 30;
    let mut props = DeviceProperties::new(
        Default::default(),
        MemoryDeviceProperties::new(memory / 4, 512).with_max_memory(memory),
        hardware,
        TimingMethod::Device,
        DeviceIdentity {
            name: format!("offline sm_{arch}"),
            fingerprint: format!("ptx_sm{arch}"),
            physical: None,
        },
    );
    cubecl_cpp::register_supported_types(&mut props);
    let float = |kind| ElemType::Float(kind);
    let all = AtomicUsage::Add | AtomicUsage::LoadStore | AtomicUsage::Exchange;
    if arch >= 60 {
        props.register_atomic_type_usage(Type::atomic(float(FloatKind::F64)), all);
    }
    if arch >= 70 {
        props.register_atomic_type_usage(Type::atomic(float(FloatKind::F16)), AtomicUsage::Add);
        props.register_atomic_type_usage(
            Type::atomic(Type::new(float(FloatKind::F16)).with_vector_size(2)),
            all,
        );
        props.features.plane.insert(Plane::Sync);
    }
    props.features.memory_reinterpret = true;
    props.features.alignment = true;
    props.features.device_memory_scope = true;
    props.features.plane.insert(Plane::Ops);
    props.features.plane.insert(Plane::NonUniformControlFlow);
    restrict_features(&mut props, GpuTarget::Nvptx);
    props
}

/// The options cubecl-cuda's runtime compiles with on compute capability `arch` under a driver
/// of CUDA `driver`.
fn compilation_options(arch: u32, driver: i32) -> CudaCompilationOptions {
    let mut options = CudaCompilationOptions::default();
    let features = &mut options.cpp.supports_features;
    features.fast_math = true;
    features.dp4a = arch >= 61;
    // Launch parameters passed as grid constants: the server pushes them in the shape this
    // flag names, so the lowering must agree.
    features.grid_constants = arch >= 70;
    features.clusters = arch >= 90;
    features.elect_sync = arch >= 90;
    options.cpp.warp_size = 32;
    options.arch = Some(SmArch::new(arch, true));
    options.ptx_version = PtxVersion::for_driver(driver);
    options
}

/// NVIDIA's PTX assembler, where this machine has one: `$PTXAS` (`scripts/ptxas.sh` fetches
/// CUDA 13.0's), else `ptxas` on the `PATH`, else under `$CUDA_HOME` or `/usr/local/cuda`.
pub fn find_ptxas() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PTXAS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let homes = std::env::var_os("CUDA_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/local/cuda")])
        .map(|home| home.join("bin"));
    on_path
        .chain(homes)
        .map(|dir| dir.join("ptxas"))
        .find(|candidate| candidate.is_file())
}

/// `ptx` assembled by `ptxas` to machine code for the architecture its `.target` names
/// (`sm_90a` for Hopper), as the driver does when it loads the module: what `ptxas -v` says of
/// each entry (registers, stack, spills), or its errors. The machine code is written beside the
/// PTX in `dir`, and kept.
pub fn assemble(ptxas: &Path, ptx: &Ptx, dir: &Path) -> Result<String, String> {
    let target = ptx
        .text
        .lines()
        .find_map(|line| line.trim().strip_prefix(".target "))
        .and_then(|targets| targets.split(',').next())
        .ok_or_else(|| format!("{}: the PTX names no .target", ptx.kernel))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let source = dir.join(format!("{}.ptx", ptx.kernel));
    std::fs::write(&source, &ptx.text).map_err(|e| format!("{}: {e}", source.display()))?;
    let output = std::process::Command::new(ptxas)
        .arg(format!("-arch={}", target.trim()))
        .arg("-v")
        .arg(&source)
        .arg("-o")
        .arg(dir.join(format!("{}.cubin", ptx.kernel)))
        .output()
        .map_err(|e| format!("running {}: {e}", ptxas.display()))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    if output.status.success() {
        Ok(said)
    } else {
        Err(format!(
            "{} refused {}: {said}",
            ptxas.display(),
            source.display()
        ))
    }
}
