//! The state every script function shares in one run: the device, its kernel policy and the
//! seeded generator. It is part of the run context (`crate::context`).

use burn::tensor::Device;

use crate::device::DeviceKind;
use crate::kernels::{GpuKernelSet, KernelPolicy, Precision};
use crate::tensor::HostRng;

/// Device and random state of a run.
#[derive(Debug, Clone)]
pub struct Session {
    /// Where tensors and networks live (with autodiff enabled).
    pub device: Device,
    /// Every kernel choice of the run: the precision (`--precision`), the environment's kernel
    /// sets, and a bench variant's GPU kernels and activations where one is timed.
    pub kernels: KernelPolicy,
    /// Seeded generator for initialisation and `randn`.
    pub rng: HostRng,
    /// The seed the generator started from.
    pub seed: u64,
    /// `--set key=value` pairs, applied by the script's `config(..)`.
    pub overrides: Vec<(String, String)>,
    /// The configuration `config(..)` resolved, once it has run.
    pub config: Option<serde_json::Value>,
    /// Where datasets are looked for first (`--data`, else `SSLHOST_DATA`).
    pub data_root: Option<std::path::PathBuf>,
    /// The current training step, set by the training loop (live swaps happen between steps).
    pub step: Option<u64>,
    /// The step `steps(..)` starts from: 0, or where a resumed run continues.
    pub start_step: u64,
    /// The random generator's position when the current step began: a checkpoint written
    /// after a failure before any update of the step resumes at that step, exactly.
    pub step_rng: Option<crate::tensor::RngState>,
    /// Whether the current step changed tracked state (an optimiser step, a momentum update,
    /// an enqueue): then a failure's checkpoint continues after it.
    pub step_updated: bool,
    /// The checkpoint a resumed run continues from (`--resume`).
    pub resume_from: Option<std::path::PathBuf>,
    /// The step that checkpoint continues from.
    pub resume_step: Option<u64>,
    /// The resolved configuration of the run being resumed: the base `config(..)` starts from.
    pub saved_config: Option<serde_json::Value>,
    /// `--force`: resume even with settings that change the data order or the model.
    pub force: bool,
    /// `--print-config`: `config(..)` prints the resolved config and the process exits.
    pub print_config: bool,
    /// `sslhost check`: datasets cut to [`CHECK_SAMPLES`], batches to [`CHECK_BATCH`], loops
    /// to [`CHECK_STEPS`] steps, and no run directory.
    pub check: bool,
    /// The kNN monitor, which remembers the raw pixels' accuracy of the splits it has seen.
    pub knn: crate::train::knn::Monitor,
    /// `sslhost check --preset`: the kind of device the recipe's presets are picked for
    /// (`device_kind()`), where it is not the device the check runs on.
    pub preset: Option<DeviceKind>,
}

/// Samples per dataset under `sslhost check`.
pub const CHECK_SAMPLES: usize = 256;
/// Largest batch under `sslhost check`.
pub const CHECK_BATCH: usize = 16;
/// Steps of a training loop under `sslhost check`.
pub const CHECK_STEPS: u64 = 2;

impl Session {
    /// A session on `device` seeded with `seed`.
    pub fn new(device: Device, seed: u64) -> Self {
        Session {
            device,
            kernels: KernelPolicy::default(),
            rng: HostRng::new(seed),
            seed,
            overrides: Vec::new(),
            config: None,
            data_root: std::env::var_os("SSLHOST_DATA").map(Into::into),
            step: None,
            start_step: 0,
            step_rng: None,
            step_updated: false,
            resume_from: None,
            resume_step: None,
            saved_config: None,
            force: false,
            print_config: false,
            check: false,
            knn: Default::default(),
            preset: None,
        }
    }

    /// The same session with datasets looked for first in `root` (`--data`).
    pub fn with_data_root(mut self, root: Option<std::path::PathBuf>) -> Self {
        if root.is_some() {
            self.data_root = root;
        }
        self
    }

    /// The step the loop runs next: the one after the current step, or the start step
    /// before the loop begins. A checkpoint continues from here.
    pub fn next_step(&self) -> u64 {
        self.step.map_or(self.start_step, |s| s + 1)
    }

    /// The same session with the kernel policy `kernels` (built by `main` from the command
    /// line and the environment).
    pub fn with_kernels(mut self, kernels: KernelPolicy) -> Self {
        self.kernels = kernels;
        self
    }

    /// The same session multiplying in `precision` (`--precision`).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.kernels.precision = precision;
        self
    }

    /// The same session taking a bench `variant`'s GPU kernels and activations.
    pub fn with_variant(mut self, variant: Option<GpuVariant>) -> Self {
        if let Some(v) = variant {
            self.kernels.gpu = v.gpu;
            self.kernels.half_activations = v.half_activations;
        }
        self
    }

    /// The same session picking the recipe's presets for devices of `kind` (`--preset`),
    /// whatever device it runs on.
    pub fn with_preset(mut self, kind: Option<DeviceKind>) -> Self {
        self.preset = kind;
        self
    }

    /// The same session with `--set` overrides.
    pub fn with_overrides(mut self, overrides: Vec<(String, String)>) -> Self {
        self.overrides = overrides;
        self
    }
}

/// The choices of the GPU code path that are measured against each other: the GPU kernels
/// (burn's batch norm, over rows in either layout, or cuDNN's with its convolutions), and half
/// activations or f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuVariant {
    /// The GPU kernel set.
    pub gpu: GpuKernelSet,
    /// A ResNet's activations in the half type ([`precision::half_activations`]).
    pub half_activations: bool,
}

impl std::str::FromStr for GpuVariant {
    type Err = String;

    /// `BATCH_NORM:ACTIVATIONS`: `burn`, `rows`, `nhwc` or `cudnn`, then `f32` or `half`
    /// (`nhwc:half`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("expected BATCH_NORM:ACTIVATIONS (burn|rows|nhwc|cudnn : f32|half), got `{s}`")
        };
        let (norm, act) = s.split_once(':').ok_or_else(bad)?;
        let gpu = GpuKernelSet::parse(norm).ok_or_else(bad)?;
        let half_activations = match act {
            "f32" => false,
            "half" => true,
            _ => return Err(bad()),
        };
        Ok(GpuVariant {
            gpu,
            half_activations,
        })
    }
}

/// Makes `session` the session of the thread's current run context (tools and tests; a run
/// enters a context of its own, `crate::context`), with its kernel policy.
pub fn install(session: Session) {
    crate::kernels::install(session.kernels);
    crate::context::session(|c| *c.borrow_mut() = session);
}

/// Runs `f` with the current run context's session (a CPU session seeded with 0 outside any).
pub fn with<T>(f: impl FnOnce(&mut Session) -> T) -> T {
    crate::context::session(|c| f(&mut c.borrow_mut()))
}

/// Marks the current step as having changed tracked state (see [`Session::step_updated`]).
pub fn note_update() {
    with(|s| s.step_updated = true);
}

/// The current session's resolved configuration, if the script called `config(..)`.
pub fn resolved_config() -> Option<serde_json::Value> {
    with(|s| s.config.clone())
}

/// The current device.
pub fn device() -> Device {
    with(|s| s.device.clone())
}

/// The kind of device the recipe's presets are for (`device_kind()`): the run's device's,
/// or the one `--preset` names.
pub fn preset_kind() -> DeviceKind {
    with(|s| s.preset.unwrap_or_else(|| crate::device::kind(&s.device)))
}
