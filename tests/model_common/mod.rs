//! Helpers shared by the model tests on the CPU (burn-flex) and on the GPU code path.
#![allow(dead_code)]

use burn::tensor::FloatDType;
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use sslhost::kernels::gpu_kernels::rows::batch_norm_train_rows;
use sslhost::kernels::{self, GpuKernelSet, KernelPolicy, Precision};
use sslhost::models::ResNetConfig;
use sslhost::models::layers::LinearConfig;
use sslhost::session::GpuVariant;
use sslhost::tensor::HostRng;

/// A small CIFAR ResNet and a linear head on `device` in `precision`, the ResNet's activations
/// kept in the half type or not, its batch norms over rows or burn's: the output's dtype, the
/// output, and the gradient of the head's weight after one backward.
pub fn resnet_step(
    device: &Device,
    precision: Precision,
    variant: GpuVariant,
) -> (DType, Vec<f32>, Vec<f32>) {
    kernels::install(KernelPolicy {
        precision,
        half_activations: variant.half_activations,
        gpu: variant.gpu,
        ..KernelPolicy::default()
    });
    let mut rng = HostRng::new(5);
    let config = ResNetConfig {
        cifar_stem: true,
        widths: [8, 8, 16, 16],
        blocks: Some([1, 1, 1, 1]),
        ..ResNetConfig::new(18)
    };
    let mut net = config.init(&mut rng, device).unwrap();
    let head = LinearConfig::new(16, 4).init(&mut rng, device);
    let x = Tensor::<4>::from_data(
        TensorData::new(rng.normal_vec(16 * 3 * 12 * 12, 1.0), [16, 3, 12, 12]),
        device,
    );
    let y = head.forward(net.forward(x));
    let weights = Tensor::<2>::from_data(TensorData::new(rng.normal_vec(64, 1.0), [16, 4]), device);
    let grads = y.clone().mul(weights).sum().backward();
    let head_grad = head.weight.val().grad(&grads).unwrap();
    kernels::install(KernelPolicy::default());
    (
        y.dtype(),
        values(y.reshape([-1])),
        values(head_grad.reshape([-1])),
    )
}

/// Burn's batch norm and f32 activations.
pub const PLAIN: GpuVariant = GpuVariant {
    gpu: GpuKernelSet::Burn,
    half_activations: false,
};

/// Every batch norm a GPU code path can train with.
pub const BATCH_NORMS: [GpuKernelSet; 3] =
    [GpuKernelSet::Burn, GpuKernelSet::Rows, GpuKernelSet::Nhwc];

/// A variant with half activations and the GPU kernels `gpu`.
pub fn half(gpu: GpuKernelSet) -> GpuVariant {
    GpuVariant {
        gpu,
        half_activations: true,
    }
}

/// A tensor's values as f32.
pub fn values(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Relative L2 distance of `b` from `a`.
pub fn rel_distance(a: &[f32], b: &[f32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f32 = a.iter().map(|x| x * x).sum();
    (diff / norm).sqrt()
}

/// The row-wise batch norm (viewed channels last or not) on an input of `dtype` against burn's
/// op on the same values in f32, on `device`: the output's and the input gradient's dtypes,
/// and the relative distance of each of output, mean, variance and the gradients of `x`,
/// `gamma` and `beta`.
pub fn rows_against_burn(
    device: &Device,
    dtype: FloatDType,
    channels_last: bool,
) -> (DType, DType, Vec<(&'static str, f32)>) {
    let device = device.clone().autodiff();
    let x0 = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(0.7, 2.0), &device).cast(dtype);
    let g0 = Tensor::<1>::random([5], Distribution::Uniform(0.5, 1.5), &device);
    let b0 = Tensor::<1>::random([5], Distribution::Normal(0.0, 1.0), &device);
    // A weighting of the output, so the gradients are not the trivial ones of a sum.
    let w = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
    let run = |rows: bool| {
        let (x, g, b) = (
            x0.clone().require_grad(),
            g0.clone().require_grad(),
            b0.clone().require_grad(),
        );
        let (out, w) = if rows {
            let out = batch_norm_train_rows(x.clone(), g.clone(), b.clone(), 1e-5, channels_last);
            (out, w.clone())
        } else {
            let x32 = x.clone().cast(FloatDType::F32);
            let out = burn::tensor::module::batch_norm_train(x32, g.clone(), b.clone(), 1e-5);
            (out, w.clone().cast(FloatDType::F32))
        };
        let out_dtype = out.output.dtype();
        let y = out.output.clone().cast(FloatDType::F32).reshape([-1]);
        let grads = (out.output * w).sum().backward();
        let dx = x.grad(&grads).unwrap();
        let dx_dtype = dx.dtype();
        let dx = dx.cast(FloatDType::F32).reshape([-1]);
        let (dg, db) = (g.grad(&grads).unwrap(), b.grad(&grads).unwrap());
        let values = [y, out.mean, out.variance, dx, dg, db].map(values);
        (out_dtype, dx_dtype, values)
    };
    let ((out_dtype, dx_dtype, rows), (_, _, burn)) = (run(true), run(false));
    let names = ["output", "mean", "variance", "dx", "dgamma", "dbeta"];
    let distances = names
        .into_iter()
        .zip(rows.iter().zip(&burn))
        .map(|(name, (r, b))| (name, rel_distance(b, r)))
        .collect();
    (out_dtype, dx_dtype, distances)
}
