//! GPU kernels of our own choosing for what a ResNet training step spends its GPU time in:
//! cuDNN's convolutions (forward, input and weight gradients) and its batch norm with the
//! ReLU and residual-add-and-ReLU tails fused in, channels last, on the cubecl CUDA backend.
//!
//! [`ops::GpuKernels`] is a Burn backend extension, so autodiff, the Rhai surface and every
//! recipe stay as they are. Its default bodies ([`reference`]) are each backend's own tensor
//! ops: the CPU tests check the extension's autodiff wiring against burn's autodiff through
//! them, and the GPU self-test (`sslhost gpu-selftest`) checks cuDNN against them. cuDNN is
//! loaded at run time (`cudnn`, cargo feature `cuda`): a binary built without it, or a
//! machine without it, runs burn's kernels and says so once. `cupti` finds the CUDA stream
//! cubecl launches on, for cuDNN's `stream` ordering.

mod ops;
pub mod reference;
pub mod rows;
pub mod selftest;

#[cfg(feature = "cuda")]
pub mod cudnn;
#[cfg(any(feature = "cuda", test))]
pub mod cupti;
#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
pub mod handshake;
#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
pub mod hold;
#[cfg(feature = "cuda")]
pub mod ptx;

pub use ops::GpuKernels;

use crate::device::DeviceKind;
use burn::backend::Dispatch;
use burn::tensor::module::BatchNormTrainOutput;
use burn::tensor::{Device, Tensor};

use crate::kernels::NormEpilogue;

/// `x` `[N, C, H, W]`, `weight` `[K, C, r, r]` → `[N, K, H', W']` through the extension, in
/// `x`'s type (the weight is cast to it).
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    let y = <Dispatch as GpuKernels>::gpu_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
    );
    Tensor::from_dispatch(y)
}

/// Batch norm with the batch's statistics and its epilogue through the extension: `x`
/// `[N, C, ..]` (f32 or a half type), `gamma`, `beta` `[C]` → the output in `x`'s type, and
/// the batch mean and biased variance `[C]`, detached.
pub fn batch_norm_train<const D: usize>(
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
    let (output, mean, inv_std) = match epilogue {
        NormEpilogue::None => {
            <Dispatch as GpuKernels>::gpu_batch_norm(x, gamma, beta, false, epsilon)
        }
        NormEpilogue::Relu => {
            <Dispatch as GpuKernels>::gpu_batch_norm(x, gamma, beta, true, epsilon)
        }
        NormEpilogue::AddRelu(residual) => <Dispatch as GpuKernels>::gpu_batch_norm_add_relu(
            x,
            gamma,
            beta,
            residual.into_dispatch(),
            epsilon,
        ),
    };
    let inv_std = Tensor::<1>::from_dispatch(inv_std);
    // var = 1/inv_std² − ε: what the running average takes, from what the backward keeps.
    let variance = inv_std.powf_scalar(-2.0).sub_scalar(epsilon);
    BatchNormTrainOutput {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance,
    }
}

/// Whether training tensors on `device` take the GPU kernels: the policy's `cudnn` set, on
/// CUDA where cuDNN loads (the first call loads it and logs the outcome once), or on the
/// cubecl CPU runtime, where the reference bodies run through the same extension, fusion and
/// autodiff as CUDA's.
pub fn active(device: &Device) -> bool {
    crate::kernels::current().gpu == crate::kernels::GpuKernelSet::Cudnn
        && match crate::device::kind(device) {
            DeviceKind::Cuda => loaded(),
            DeviceKind::CubeclCpu => true,
            DeviceKind::Cpu => false,
        }
}

#[cfg(feature = "cuda")]
fn loaded() -> bool {
    cudnn::library().is_ok()
}

#[cfg(not(feature = "cuda"))]
fn loaded() -> bool {
    false
}

/// What the extension's operations run on `device`: `"cuDNN 9.x.y"`, or burn's kernels and
/// why.
pub fn kernels_name(device: &Device) -> String {
    let kind = crate::device::kind(device);
    if kind != DeviceKind::Cuda {
        return format!("burn's ({} device)", kind.name());
    }
    #[cfg(feature = "cuda")]
    {
        match cudnn::library() {
            Ok(v) => format!("cuDNN {}.{}.{}", v / 10000, v / 100 % 100, v % 100),
            Err(why) => format!("burn's ({why})"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        "burn's (built without CUDA)".into()
    }
}

/// The ordering cuDNN's calls ran under, as `SSLHOST_CUDNN_ORDER` names it (`stream` asked
/// for may have fallen back to `signal`); `None` where cuDNN never ran.
pub fn cudnn_ordering() -> Option<&'static str> {
    #[cfg(feature = "cuda")]
    {
        cudnn::ordering()
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

/// How many launches binding another library's buffers ([`hold`]) the process has queued;
/// 0 in a build without a GPU runtime.
pub fn hold_launches() -> u64 {
    #[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
    {
        hold::launches()
    }
    #[cfg(not(any(feature = "cuda", feature = "cubecl-cpu")))]
    {
        0
    }
}

/// Runs `work`, the recorded part of a capture (up to and including its stop), with a
/// [`Recording`](crate::kernels::recording::Recording) open on the calling code's stream, so
/// that cuDNN's calls inside bind their buffers ([`hold`]): what `work` returned, and how
/// many launches bound them.
pub fn recorded<T>(work: impl FnOnce() -> T) -> (T, u64) {
    let _window = crate::kernels::recording::Recording::open();
    let before = hold_launches();
    let out = work();
    (out, hold_launches() - before)
}

/// Why a device graph of the calling thread's stream on `device` would miss cuDNN's work,
/// where it would: cuDNN serves the step there and its calls go on a stream of their own,
/// which a capture of cubecl's stream does not record. Under `stream` they go on cubecl's,
/// unless it fell back to `signal` (no CUPTI): the ordering cuDNN ran under counts, else the
/// one asked for.
pub fn graph_refusal(device: &Device) -> Option<String> {
    let served = crate::device::kind(device) == DeviceKind::Cuda && active(device);
    order_refusal(
        served,
        crate::kernels::current().cudnn_order,
        cudnn_ordering(),
        hold_unusable(),
    )
}

/// Why the launch that binds cuDNN's buffers in a graph cannot run, where it was found so.
fn hold_unusable() -> Option<&'static str> {
    #[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
    {
        hold::unusable()
    }
    #[cfg(not(any(feature = "cuda", feature = "cubecl-cpu")))]
    {
        None
    }
}

/// [`graph_refusal`]'s rule: `served`, whether cuDNN serves the step; `asked`, the policy's
/// ordering; `ran`, the one cuDNN's calls ran under, if any ran; `unbound`, why the launch
/// that binds cuDNN's buffers in a graph failed, if it did.
fn order_refusal(
    served: bool,
    asked: crate::kernels::CudnnOrder,
    ran: Option<&str>,
    unbound: Option<&str>,
) -> Option<String> {
    if !served {
        return None;
    }
    let stream = crate::kernels::CudnnOrder::Stream.name();
    let order = ran.unwrap_or(asked.name());
    if order != stream {
        return Some(format!(
            "cuDNN's calls are ordered by `{order}`, on a stream of their own, which a graph \
             of cubecl's stream would not record (SSLHOST_CUDNN_ORDER=stream puts them on \
             cubecl's)"
        ));
    }
    unbound.map(|why| format!("{why}, so a graph would not keep cuDNN's buffers"))
}

/// Whether one of the waits that order cubecl's kernels after cuDNN's gave up (read back
/// from the device); `None` where cuDNN never ran.
pub fn ordering_timed_out() -> Option<bool> {
    #[cfg(feature = "cuda")]
    {
        cudnn::ordering_timed_out()
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

/// The output's shape and type of a convolution, for fusion's lazy tensors.
#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
fn conv_output_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
    weight: &burn::backend::fusion::custom::TensorSpec,
    stride: &usize,
    padding: &usize,
) -> burn::backend::fusion::custom::TensorSpec {
    let (x_dims, w_dims) = (&x.shape, &weight.shape);
    let side = |n: usize, k: usize| (n + 2 * padding - k) / stride + 1;
    let shape = burn::tensor::Shape::new([
        x_dims[0],
        w_dims[0],
        side(x_dims[2], w_dims[2]),
        side(x_dims[3], w_dims[3]),
    ]);
    burn::backend::fusion::custom::TensorSpec::new(shape, x.dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::CudnnOrder;

    #[test]
    fn a_graph_with_cudnn_needs_its_calls_on_cubecls_stream() {
        // Where cuDNN does not serve the step, its ordering does not matter.
        assert_eq!(order_refusal(false, CudnnOrder::Sync, None, None), None);
        let failed = Some("the launch failed");
        assert_eq!(
            order_refusal(false, CudnnOrder::Stream, Some("signal"), failed),
            None
        );
        // On cubecl's stream, asked for and run so.
        assert_eq!(order_refusal(true, CudnnOrder::Stream, None, None), None);
        assert_eq!(
            order_refusal(true, CudnnOrder::Stream, Some("stream"), None),
            None
        );
        // Unless the launch that binds cuDNN's buffers failed.
        let why = order_refusal(true, CudnnOrder::Stream, Some("stream"), failed).unwrap();
        assert!(why.starts_with("the launch failed"), "{why}");
        // On a stream of its own: asked for, or fallen back to for want of CUPTI.
        for (asked, ran, named) in [
            (CudnnOrder::Sync, None, "sync"),
            (CudnnOrder::Signal, None, "signal"),
            (CudnnOrder::Flags, Some("flags"), "flags"),
            (CudnnOrder::Stream, Some("signal"), "signal"),
        ] {
            let why = order_refusal(true, asked, ran, None).expect("refused");
            assert!(why.contains(&format!("ordered by `{named}`")), "{why}");
            assert!(why.contains("SSLHOST_CUDNN_ORDER=stream"), "{why}");
        }
    }
}
