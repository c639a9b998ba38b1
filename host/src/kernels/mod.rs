//! Which kernels compute a training step, chosen in one place.
//!
//! [`policy`] holds every choice (precision, half activations, the CPU and GPU kernel sets,
//! cuDNN's ordering), built once from the command line and the environment. The functions
//! here are the one dispatch the models and the tensor API call: for each op they read the
//! policy and the tensor's device and send it to
//!
//! - [`cpu_kernels`]: our own kernels for f32 on burn-flex (convolutions, batch norm with its
//!   epilogue, linear layers, cross-entropy, all with their backwards);
//! - [`gpu_kernels`]: on the GPU code path, cuDNN's convolutions and batch norm (`cudnn`), or
//!   batch norm over contiguous rows (`rows`, `nhwc`);
//! - burn's own ops, for everything else.
//!
//! [`precision`] wraps the products in the policy's half type, as `torch.autocast` does;
//! [`recording`] says whether a device graph is being recorded, which another library's
//! kernels must tell cubecl about.

pub mod cpu_kernels;
pub mod gpu_kernels;
pub mod policy;
pub mod precision;
pub mod recording;
pub mod views;

pub use policy::{
    CpuKernelSet, CudnnOrder, GpuKernelSet, KernelPolicy, Precision, PrecisionChoice, current,
    install, installed, precision, restore,
};

/// Values per row of the flat parameter vectors' `[rows, FLAT_ROW]` view (`models::flat`);
/// the CPU update kernels walk the vectors row by row.
pub const FLAT_ROW: usize = 1024;

use burn::backend::Dispatch;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::BatchNormTrainOutput;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor};

use cpu_kernels::CpuKernels;

/// burn's options for a square convolution with the same stride and zero padding on both axes.
pub fn conv_options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1)
}

/// Whether tensors of `dtype` on `device` take the CPU kernels: f32 on burn-flex, unless the
/// policy says `SSLHOST_CPU_KERNELS=burn`.
pub fn cpu_takes(dtype: DType, device: &Device) -> bool {
    dtype == DType::F32 && *device == Device::flex() && current().cpu != CpuKernelSet::Burn
}

/// A batch norm's backward step's parents in the order its forward recorded them: `x`,
/// `gamma`, `beta`, and the residual when there are four (else `None`).
pub(crate) fn norm_parents<T, const N: usize>(parents: [Option<T>; N]) -> [Option<T>; 4] {
    let mut parents = parents.into_iter();
    std::array::from_fn(|_| parents.next().flatten())
}

/// `[N, C, H, W]` with weight `[C_out, C, k, k]` → `[N, C_out, H', W']`: no bias, square
/// kernel, the same stride and zero padding on both axes.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    let device = x.device();
    if cpu_takes(x.dtype(), &device) {
        let out = <Dispatch as CpuKernels>::gemm_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            stride,
            padding,
        );
        Tensor::from_dispatch(out)
    } else if gpu_kernels::active(&device) {
        gpu_kernels::conv2d(x, weight, stride, padding)
    } else {
        burn::tensor::module::conv2d(x, weight, None, conv_options(stride, padding))
    }
}

/// What a batch norm applies to its output in the same pass.
// Built and consumed within one call, never stored: boxing the tensor would only add an
// allocation per layer.
#[allow(clippy::large_enum_variant)]
pub enum NormEpilogue<const D: usize> {
    /// The normalised output as it is.
    None,
    /// `relu(bn(x))`.
    Relu,
    /// `relu(bn(x) + residual)`: the end of a ResNet block.
    AddRelu(Tensor<D>),
}

impl<const D: usize> NormEpilogue<D> {
    /// The epilogue as separate tensor ops, for a batch norm computed elsewhere.
    pub fn apply(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            NormEpilogue::None => x,
            NormEpilogue::Relu => relu(x),
            NormEpilogue::AddRelu(residual) => relu(x.add(residual)),
        }
    }
}

/// Which batch norm training tensors on `device` take: `"cpu"` (f32 on burn-flex), or the
/// policy's GPU kernel set (`"burn"`, `"rows"`, `"nhwc"`, `"cudnn"`).
pub fn batch_norm_kernel(device: &Device) -> &'static str {
    if cpu_takes(DType::F32, device) {
        "cpu"
    } else {
        current().gpu.name()
    }
}

/// Batch norm with the batch's statistics, then its epilogue: `x` `[N, C, ..]` (f32, or a
/// half type under half activations), `gamma`, `beta` `[C]` → the output in `x`'s type, and
/// the batch mean and biased variance `[C]`, detached.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    epilogue: NormEpilogue<D>,
) -> BatchNormTrainOutput<D> {
    let device = x.device();
    if cpu_takes(x.dtype(), &device) {
        return cpu_batch_norm(x, gamma, beta, epsilon, epilogue);
    }
    if D == 4 && gpu_kernels::active(&device) {
        return gpu_kernels::batch_norm_train(x, gamma, beta, epsilon, epilogue);
    }
    let dtype = x.dtype();
    let out = match current().gpu {
        GpuKernelSet::Rows => {
            gpu_kernels::rows::batch_norm_train_rows(x, gamma, beta, epsilon, false)
        }
        // `cudnn` where cuDNN does not run takes the fastest of the rest.
        GpuKernelSet::Nhwc | GpuKernelSet::Cudnn => {
            gpu_kernels::rows::batch_norm_train_rows(x, gamma, beta, epsilon, true)
        }
        // burn's op takes f32: a half input is cast to f32 and the output back.
        GpuKernelSet::Burn => {
            let x = x.cast(FloatDType::F32);
            let out = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
            BatchNormTrainOutput {
                output: out.output.cast(dtype),
                ..out
            }
        }
    };
    // The epilogue in the activations' own type, as autocast's ReLU.
    let output = epilogue.apply(out.output);
    BatchNormTrainOutput { output, ..out }
}

/// The CPU kernels' fused batch norm and epilogue.
fn cpu_batch_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    epilogue: NormEpilogue<D>,
) -> BatchNormTrainOutput<D> {
    let (x, gamma, beta) = (
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
    );
    let (output, mean, variance) = match epilogue {
        NormEpilogue::None => {
            <Dispatch as CpuKernels>::fused_batch_norm_train(x, gamma, beta, false, epsilon)
        }
        NormEpilogue::Relu => {
            <Dispatch as CpuKernels>::fused_batch_norm_train(x, gamma, beta, true, epsilon)
        }
        NormEpilogue::AddRelu(residual) => {
            <Dispatch as CpuKernels>::fused_batch_norm_add_relu_train(
                x,
                gamma,
                beta,
                residual.into_dispatch(),
                epsilon,
            )
        }
    };
    BatchNormTrainOutput {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}

/// A linear layer's product without bias: `x` `[N, in]`, `weight` `[out, in]` (PyTorch's
/// layout) → `x · weightᵀ` `[N, out]`.
pub fn linear(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    if cpu_takes(x.dtype(), &x.device()) {
        let out = <Dispatch as CpuKernels>::gemm_linear(x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(out)
    } else {
        x.matmul(weight.transpose())
    }
}

/// Per-row cross-entropy of `logits` `[N, C]` against class indices `targets` `[N]` (each
/// below `C`): `logsumexp(row) − row[target]`, `[N]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let device = logits.device();
    let [rows, classes] = logits.dims();
    debug_assert_eq!([rows], targets.dims());
    // The kernel takes the class indices as f32, exact below 2^24.
    if cpu_takes(logits.dtype(), &device) && classes <= 1 << 24 {
        let out = <Dispatch as CpuKernels>::fused_cross_entropy(
            logits.into_dispatch(),
            targets.float().into_dispatch(),
        );
        return Tensor::from_dispatch(out);
    }
    log_softmax(logits, 1)
        .gather(1, targets.reshape([rows, 1]))
        .neg()
        .reshape([rows])
}
