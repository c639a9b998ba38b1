//! The GPU kernels checked against burn's own ops, layer by layer: what `sslhost
//! gpu-selftest` runs on a GPU (cuDNN against burn's kernels, on every ResNet-18 CIFAR layer
//! shape at the recipes' batch) and what the tests run on the CPU and on the cubecl CPU
//! runtime (the extension's autodiff wiring against burn's autodiff).

use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, FloatDType, Tensor};

use crate::kernels::NormEpilogue;

/// What follows a layer's batch norm in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Nothing (a shortcut's batch norm).
    None,
    /// ReLU.
    Relu,
    /// The residual added, then ReLU (a block's end).
    AddRelu,
}

/// One layer of a ResNet as the GPU kernels see it: a convolution (`c_in` → `c_out` on a
/// `side`² map, square `kernel`, `stride`, "same" padding) and the batch norm after it.
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// The input map's side.
    pub side: usize,
    /// The square kernel's side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// The batch norm's tail.
    pub tail: Tail,
}

/// Every convolution shape of ResNet-18 with the CIFAR stem (32x32 images) at `batch`: the
/// stem, stage 1's 3x3s, and for stages 2–4 the strided 3x3 and 1x1 shortcut that open them
/// and their 3x3s, each with the tail it has in the network.
pub fn resnet18_cifar_layers(batch: usize) -> Vec<Layer> {
    let layer = |c_in, c_out, side, kernel, stride, tail| Layer {
        batch,
        c_in,
        c_out,
        side,
        kernel,
        stride,
        tail,
    };
    let mut layers = vec![
        layer(3, 64, 32, 3, 1, Tail::Relu),
        layer(64, 64, 32, 3, 1, Tail::Relu),
        layer(64, 64, 32, 3, 1, Tail::AddRelu),
    ];
    for (c, side) in [(128, 16), (256, 8), (512, 4)] {
        layers.extend([
            layer(c / 2, c, side * 2, 3, 2, Tail::Relu),
            layer(c / 2, c, side * 2, 1, 2, Tail::None),
            layer(c, c, side, 3, 1, Tail::AddRelu),
        ]);
    }
    layers
}

/// The names of what [`compare`] measures, in its order (the last only for an add tail).
pub const MEASURED: [&str; 8] = [
    "output",
    "mean",
    "variance",
    "dx",
    "dweight",
    "dgamma",
    "dbeta",
    "dresidual",
];

/// `layer` through the GPU kernels ([`super::conv2d`], [`super::batch_norm_train`]) against
/// burn's own ops on the same random values, on `device`, the activations in `dtype` (input,
/// weight and residual cast to it, as under half activations): the relative L2 distance of
/// each of [`MEASURED`] from burn's.
pub fn compare(device: &Device, dtype: FloatDType, layer: Layer) -> Vec<(&'static str, f32)> {
    let device = device.clone().autodiff();
    let l = layer;
    let pad = l.kernel / 2;
    let out_side = (l.side + 2 * pad - l.kernel) / l.stride + 1;
    let random = |shape: [usize; 4], d| Tensor::<4>::random(shape, d, &device);
    let x0 = random(
        [l.batch, l.c_in, l.side, l.side],
        Distribution::Normal(0.0, 1.0),
    );
    let fan_in = (l.c_in * l.kernel * l.kernel) as f64;
    let w0 = random(
        [l.c_out, l.c_in, l.kernel, l.kernel],
        Distribution::Normal(0.0, (2.0 / fan_in).sqrt()),
    );
    let g0 = Tensor::<1>::random([l.c_out], Distribution::Uniform(0.5, 1.5), &device);
    let b0 = Tensor::<1>::random([l.c_out], Distribution::Normal(0.0, 0.5), &device);
    let out_shape = [l.batch, l.c_out, out_side, out_side];
    let r0 = random(out_shape, Distribution::Normal(0.0, 1.0));
    // A weighting of the output, so the gradients are not the trivial ones of a sum.
    let weights = random(out_shape, Distribution::Normal(0.0, 1.0));
    let run = |ours: bool| {
        let (x, w, g, b, r) = (
            x0.clone().require_grad(),
            w0.clone().require_grad(),
            g0.clone().require_grad(),
            b0.clone().require_grad(),
            r0.clone().require_grad(),
        );
        let (xh, wh, rh) = (
            x.clone().cast(dtype),
            w.clone().cast(dtype),
            r.clone().cast(dtype),
        );
        let out = if ours {
            let y = super::conv2d(xh, wh, l.stride, pad);
            let tail = match l.tail {
                Tail::None => NormEpilogue::None,
                Tail::Relu => NormEpilogue::Relu,
                Tail::AddRelu => NormEpilogue::AddRelu(rh),
            };
            super::batch_norm_train(y, g.clone(), b.clone(), 1e-5, tail)
        } else {
            let options = crate::kernels::conv_options(l.stride, pad);
            let y = burn::tensor::module::conv2d(xh, wh, None, options).cast(FloatDType::F32);
            let mut out = burn::tensor::module::batch_norm_train(y, g.clone(), b.clone(), 1e-5);
            out.output = match l.tail {
                Tail::None => out.output,
                Tail::Relu => relu(out.output),
                Tail::AddRelu => relu(out.output + rh.cast(FloatDType::F32)),
            }
            .cast(dtype);
            out
        };
        let y = out.output.cast(FloatDType::F32);
        let grads = (y.clone() * weights.clone()).sum().backward();
        let flat = |t: Tensor<4>| values(t.reshape([-1]));
        let grad4 = |t: &Tensor<4>| t.grad(&grads).map(flat).unwrap_or_default();
        let grad1 = |t: &Tensor<1>| t.grad(&grads).map(values).unwrap_or_default();
        let mut all = vec![
            flat(y),
            values(out.mean),
            values(out.variance),
            grad4(&x),
            grad4(&w),
            grad1(&g),
            grad1(&b),
        ];
        if l.tail == Tail::AddRelu {
            all.push(grad4(&r));
        }
        all
    };
    let (ours, burn) = (run(true), run(false));
    MEASURED
        .into_iter()
        .zip(ours.iter().zip(&burn))
        .map(|(name, (o, b))| (name, rel_distance(b, o)))
        .collect()
}

/// A tensor's values as f32.
fn values(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// `‖b − a‖ / ‖a‖`; infinite when the lengths differ or either is empty (a missing
/// gradient), NaN passes through.
pub fn rel_distance(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return f32::INFINITY;
    }
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt() as f32
}

/// How far from burn's a GPU kernel's result may be in `dtype`: f32 products may use TF32 on
/// one side and not the other (about 3e-4); bf16 rounds each product's inputs to 8 bits of
/// mantissa on both sides, in different orders, and the gradients go through several such
/// products.
pub fn tolerance(dtype: FloatDType) -> f32 {
    if dtype == FloatDType::F32 { 2e-3 } else { 3e-2 }
}

/// One layer checked in one type.
#[derive(Debug, Clone)]
pub struct Check {
    /// The activations' type.
    pub dtype: FloatDType,
    /// The layer.
    pub layer: Layer,
    /// [`compare`]'s distances.
    pub distances: Vec<(&'static str, f32)>,
}

impl Check {
    /// The largest distance and what it was of.
    pub fn worst(&self) -> (&'static str, f32) {
        self.distances.iter().copied().fold(("none", 0.0), |w, d| {
            if d.1.is_nan() || d.1 > w.1 { d } else { w }
        })
    }

    /// Whether every distance is within [`tolerance`] (NaN is not).
    pub fn passed(&self) -> bool {
        let tol = tolerance(self.dtype);
        self.distances.iter().all(|(_, d)| *d <= tol)
    }
}
