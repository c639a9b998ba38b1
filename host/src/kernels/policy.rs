//! Which kernels a run takes, decided once.
//!
//! One [`KernelPolicy`] holds every choice that changes what a training step computes with:
//! what products multiply in, whether a ResNet's activations stay in the half type, the CPU
//! kernel set, the GPU kernel set, how cuDNN's stream is ordered, and whether the step is
//! being recorded as a device graph. `main` builds it from the
//! command line and the environment ([`KernelPolicy::from_env`]), a session installs it on the
//! thread that runs the script ([`install`]), and the dispatch in [`super`] reads it
//! ([`current`]). Nothing else reads these environment variables.
//!
//! The policy belongs to a thread, as `torch.autocast`'s state does: each run, and each test
//! thread, installs its own. A thread that installed none takes the environment's.

use burn::tensor::Device;

use crate::device::{DeviceKind, kind};
use std::cell::Cell;

use burn::tensor::FloatDType;

use crate::error::{Error, Result};

/// What matrix ops compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Convolutions and linear layers in bf16 with f32 weights kept as the master copy.
    Bf16,
    /// As [`Precision::Bf16`] in f16, without loss scaling: for devices without bf16 (the
    /// cubecl CPU runtime, where tests check the GPU code path), not for long training.
    F16,
}

impl Precision {
    /// `"f32"`, `"bf16"` or `"f16"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The half type products run in, if any.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }
}

/// Which of the host's CPU kernels run on burn-flex (`SSLHOST_CPU_KERNELS`), for A/B runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKernelSet {
    /// Each of ours where it pays (unset).
    #[default]
    All,
    /// Ours with im2col + GEMM only: no Winograd, no direct convolutions (`im2col`).
    Im2col,
    /// Ours without the direct convolutions (`no-direct`).
    NoDirect,
    /// burn-flex's own ops (`burn`).
    Burn,
}

impl CpuKernelSet {
    /// As `SSLHOST_CPU_KERNELS` spells it (`""` for [`CpuKernelSet::All`]).
    pub fn name(self) -> &'static str {
        match self {
            CpuKernelSet::All => "",
            CpuKernelSet::Im2col => "im2col",
            CpuKernelSet::NoDirect => "no-direct",
            CpuKernelSet::Burn => "burn",
        }
    }

    /// The set [`CpuKernelSet::name`] spells `name` (not empty).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Im2col, Self::NoDirect, Self::Burn]
            .into_iter()
            .find(|v| v.name() == name)
    }
}

/// What the GPU code path trains ResNets with (`SSLHOST_GPU_BATCH_NORM`, and the first half
/// of a bench variant): batch norm, and with `cudnn` the convolutions too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuKernelSet {
    /// burn's own ops.
    #[default]
    Burn,
    /// Batch norm over the contiguous rows of an `[N, C, H·W]` view, with a written-out
    /// backward (`rows`).
    Rows,
    /// The same over an `[N, H·W, C]` view, contiguous where cubecl's convolutions leave
    /// their outputs (`nhwc`).
    Nhwc,
    /// cuDNN's batch norm with its ReLU and residual tails fused in, and cuDNN's
    /// convolutions, channels last (`cudnn`); `nhwc` where cuDNN does not run.
    Cudnn,
}

impl GpuKernelSet {
    /// `"burn"`, `"rows"`, `"nhwc"` or `"cudnn"`.
    pub fn name(self) -> &'static str {
        match self {
            GpuKernelSet::Burn => "burn",
            GpuKernelSet::Rows => "rows",
            GpuKernelSet::Nhwc => "nhwc",
            GpuKernelSet::Cudnn => "cudnn",
        }
    }

    /// The set [`GpuKernelSet::name`] spells `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Burn, Self::Rows, Self::Nhwc, Self::Cudnn]
            .into_iter()
            .find(|v| v.name() == name)
    }
}

/// How cuDNN's stream is ordered with cubecl's (`SSLHOST_CUDNN_ORDER`; see
/// `gpu_kernels::cudnn::order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CudnnOrder {
    /// The host waits for each stream on both sides of every cuDNN call (`sync`).
    #[default]
    Sync,
    /// cuDNN's stream waits on the device for cubecl's, the host for cuDNN's (`signal`).
    Signal,
    /// Counters in device memory both ways, no host wait (`flags`).
    Flags,
    /// cuDNN on cubecl's own stream, found through CUPTI: no ordering needed, no host wait
    /// (`stream`).
    Stream,
}

impl CudnnOrder {
    /// Its `SSLHOST_CUDNN_ORDER` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Signal => "signal",
            Self::Flags => "flags",
            Self::Stream => "stream",
        }
    }

    /// The ordering named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Sync, Self::Signal, Self::Flags, Self::Stream]
            .into_iter()
            .find(|v| v.name() == name)
    }
}

/// Every kernel choice of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelPolicy {
    /// What convolutions and linear layers multiply in (`--precision`).
    pub precision: Precision,
    /// A ResNet's activations kept in the products' half type (`SSLHOST_HALF_ACTIVATIONS=1`).
    pub half_activations: bool,
    /// The CPU kernels (`SSLHOST_CPU_KERNELS`).
    pub cpu: CpuKernelSet,
    /// The GPU kernels (`SSLHOST_GPU_BATCH_NORM`).
    pub gpu: GpuKernelSet,
    /// cuDNN's ordering (`SSLHOST_CUDNN_ORDER`).
    pub cudnn_order: CudnnOrder,
    /// The step is recorded as a device graph and replayed (`train::capture`): the optimisers
    /// and the EMA write their results into the buffers they read, and take each step's
    /// values (learning rate, EMA rate, bias corrections) from buffers the host writes before
    /// the step, since a replay reads and writes only the buffers it was recorded with. Off,
    /// a parameter kept from before an update keeps its old values, as on the CPU. Set by
    /// what records (the capture probe), not by the environment.
    pub capture: bool,
}

/// `name`'s value, or `None` when unset or empty.
fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The error for a value `name` does not take.
fn bad(name: &str, value: &str, allowed: &str) -> Error {
    Error::Invalid(format!("{name}={value}: expected {allowed}"))
}

impl KernelPolicy {
    /// f32 products and the environment's choices for the rest; an unknown value is an
    /// error naming the variable.
    pub fn from_env() -> Result<Self> {
        let half_activations = match setting("SSLHOST_HALF_ACTIVATIONS").as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(v) => return Err(bad("SSLHOST_HALF_ACTIVATIONS", v, "0 or 1")),
        };
        let cpu = match setting("SSLHOST_CPU_KERNELS") {
            None => CpuKernelSet::All,
            Some(v) => CpuKernelSet::parse(&v)
                .ok_or_else(|| bad("SSLHOST_CPU_KERNELS", &v, "im2col, no-direct or burn"))?,
        };
        let gpu = match setting("SSLHOST_GPU_BATCH_NORM") {
            None => GpuKernelSet::Burn,
            Some(v) => GpuKernelSet::parse(&v)
                .ok_or_else(|| bad("SSLHOST_GPU_BATCH_NORM", &v, "burn, rows, nhwc or cudnn"))?,
        };
        let cudnn_order = match setting("SSLHOST_CUDNN_ORDER") {
            None => CudnnOrder::Sync,
            Some(v) => CudnnOrder::parse(&v)
                .ok_or_else(|| bad("SSLHOST_CUDNN_ORDER", &v, "sync, signal, flags or stream"))?,
        };
        Ok(KernelPolicy {
            precision: Precision::F32,
            half_activations,
            cpu,
            gpu,
            cudnn_order,
            capture: false,
        })
    }

    /// The same policy multiplying in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The same policy with the step recorded (`capture`) or not.
    pub fn with_capture(mut self, capture: bool) -> Self {
        self.capture = capture;
        self
    }

    /// The half type a ResNet's activations stay in, if they do.
    pub fn activation_dtype(self) -> Option<FloatDType> {
        self.precision.half().filter(|_| self.half_activations)
    }

    /// What a ResNet's activations are stored in: `"f32"`, `"bf16"` or `"f16"`.
    pub fn activations_name(self) -> &'static str {
        match self.activation_dtype() {
            None => "f32",
            Some(FloatDType::BF16) => "bf16",
            Some(_) => "f16",
        }
    }
}

/// What the user asked convolutions and linear layers to multiply in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionChoice {
    /// bf16 on CUDA (as torch.autocast), f32 on the CPU.
    Auto,
    /// f32 everywhere.
    F32,
    /// bf16 products with f32 weights, gradients and optimiser state (on the CPU too, slowly:
    /// for checking what a GPU run computes).
    Bf16,
    /// f16 products, without loss scaling: for devices without bf16 (the cubecl CPU runtime,
    /// where tests check the GPU code path), not for long training.
    F16,
}

/// The precision `choice` means on `device`.
pub fn precision(choice: PrecisionChoice, device: &Device) -> Precision {
    match choice {
        PrecisionChoice::Auto if kind(device) == DeviceKind::Cuda => Precision::Bf16,
        PrecisionChoice::Auto | PrecisionChoice::F32 => Precision::F32,
        PrecisionChoice::Bf16 => Precision::Bf16,
        PrecisionChoice::F16 => Precision::F16,
    }
}

thread_local! {
    static CURRENT: Cell<Option<KernelPolicy>> = const { Cell::new(None) };
}

/// Makes `policy` this thread's.
pub fn install(policy: KernelPolicy) {
    CURRENT.with(|c| c.set(Some(policy)));
}

/// The policy installed on this thread, if any (to restore it later).
pub fn installed() -> Option<KernelPolicy> {
    CURRENT.with(Cell::get)
}

/// Puts back what [`installed`] returned.
pub fn restore(policy: Option<KernelPolicy>) {
    CURRENT.with(|c| c.set(policy));
}

/// This thread's policy: the installed one, else the environment's (f32 products; an
/// environment value it does not take counts as unset here, `main` reports it).
pub fn current() -> KernelPolicy {
    CURRENT.with(|c| {
        c.get().unwrap_or_else(|| {
            let policy = KernelPolicy::from_env().unwrap_or_default();
            c.set(Some(policy));
            policy
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sets_parse_their_own_names_and_nothing_else() {
        for set in [
            CpuKernelSet::Im2col,
            CpuKernelSet::NoDirect,
            CpuKernelSet::Burn,
        ] {
            assert_eq!(CpuKernelSet::parse(set.name()), Some(set));
        }
        for set in [
            GpuKernelSet::Burn,
            GpuKernelSet::Rows,
            GpuKernelSet::Nhwc,
            GpuKernelSet::Cudnn,
        ] {
            assert_eq!(GpuKernelSet::parse(set.name()), Some(set));
        }
        for order in [
            CudnnOrder::Sync,
            CudnnOrder::Signal,
            CudnnOrder::Flags,
            CudnnOrder::Stream,
        ] {
            assert_eq!(CudnnOrder::parse(order.name()), Some(order));
        }
        assert_eq!(CudnnOrder::parse("events"), None);
        assert_eq!(CpuKernelSet::parse(""), None);
        assert_eq!(CpuKernelSet::parse("winograd"), None);
        assert_eq!(GpuKernelSet::parse("cuda"), None);
    }
}
