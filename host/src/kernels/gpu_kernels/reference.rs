//! The GPU kernels' operations written in any backend's own tensor ops: what the trait's
//! default bodies run (burn-flex, and a cubecl device without cuDNN), and the reference the
//! tests and the GPU self-test compare cuDNN against.
//!
//! Batch norm computes in f32 whatever its input's type, and hands back its output in the
//! input's type, as cuDNN does for a half input.

use crate::kernels::conv_options;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{DType, FloatDType, Shape};

/// `t` in `dtype` (a no-op where it is).
fn cast_to<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, FloatDType::from(dtype))
    }
}

/// `t` in f32.
fn f32_of<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    cast_to::<B>(t, DType::F32)
}

/// `x` `[N, C, H, W]`, `weight` `[K, C, r, r]` → `[N, K, H', W']` in `x`'s type.
pub fn conv2d<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    stride: usize,
    padding: usize,
) -> FloatTensor<B> {
    let weight = cast_to::<B>(weight, x.dtype());
    B::conv2d(x, weight, None, conv_options(stride, padding))
}

/// The gradient of [`conv2d`] with respect to `x`, from the output's gradient `dy`.
pub fn conv2d_input_grad<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    stride: usize,
    padding: usize,
) -> FloatTensor<B> {
    let dtype = x.dtype();
    let (weight, dy) = (cast_to::<B>(weight, dtype), cast_to::<B>(dy, dtype));
    B::conv2d_x_backward(x, weight, dy, conv_options(stride, padding))
}

/// The gradient of [`conv2d`] with respect to `weight` (in `weight`'s type).
pub fn conv2d_weight_grad<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    stride: usize,
    padding: usize,
) -> FloatTensor<B> {
    let dtype = weight.dtype();
    let (x, dy) = (cast_to::<B>(x, dtype), cast_to::<B>(dy, dtype));
    B::conv2d_weight_backward(x, weight, dy, conv_options(stride, padding))
}

/// `[N, C, ..]` viewed as `[N, C, P]`, and `N·P` (the values a channel).
fn rows<B: Backend>(t: FloatTensor<B>) -> (FloatTensor<B>, usize) {
    let dims = t.shape();
    let (n, c) = (dims[0], dims[1]);
    let plane: usize = dims.iter().skip(2).product();
    (B::float_reshape(t, Shape::new([n, c, plane])), n * plane)
}

/// `[N, C, P]` → one value a channel, shaped `[1, C, 1]`.
fn channel_sum<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    B::float_sum_dim(B::float_sum_dim(t, 2), 0)
}

/// A `[C]` vector shaped `[1, C, 1]`.
fn per_channel<B: Backend>(v: FloatTensor<B>) -> FloatTensor<B> {
    let c = v.shape().num_elements();
    B::float_reshape(v, Shape::new([1, c, 1]))
}

/// A `[1, C, 1]` tensor back to `[C]`.
fn vector<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let c = t.shape().num_elements();
    B::float_reshape(t, Shape::new([c]))
}

/// Batch norm with the batch's statistics, then `relu` and/or the residual add:
/// `x` `[N, C, ..]`, `gamma`, `beta` `[C]` (f32), `residual` the shape of `x` (added before
/// the ReLU) → (output in `x`'s type, mean `[C]`, `1/sqrt(var + ε)` `[C]`, both f32).
pub fn batch_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    relu: bool,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (dtype, dims) = (x.dtype(), x.shape());
    let (x, count) = rows::<B>(f32_of::<B>(x));
    let count = count as f64;
    let mean = B::float_div_scalar(channel_sum::<B>(x.clone()), count.into());
    let centered = B::float_sub(x, mean.clone());
    let squares = B::float_mul(centered.clone(), centered.clone());
    let var = B::float_div_scalar(channel_sum::<B>(squares), count.into());
    let inv_std = B::float_recip(B::float_sqrt(B::float_add_scalar(var, epsilon.into())));
    let scale = B::float_mul(per_channel::<B>(gamma), inv_std.clone());
    let mut y = B::float_add(B::float_mul(centered, scale), per_channel::<B>(beta));
    if let Some(r) = residual {
        y = B::float_add(y, rows::<B>(f32_of::<B>(r)).0);
    }
    if relu {
        y = B::relu(y);
    }
    let y = cast_to::<B>(B::float_reshape(y, dims), dtype);
    (y, vector::<B>(mean), vector::<B>(inv_std))
}

/// The gradients of [`batch_norm`] from the output's gradient `dy`, given the forward's
/// input `x`, output `y` (whose sign gates a ReLU's gradient), `gamma` and saved `mean` and
/// `inv_std`: (`dx` in `x`'s type, the gradient before the batch norm's own part in `y`'s
/// type — the residual's, when there was one — `dgamma`, `dbeta` f32).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    y: FloatTensor<B>,
    dy: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    inv_std: FloatTensor<B>,
    relu: bool,
) -> (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
) {
    let (x_dtype, y_dtype, dims) = (x.dtype(), y.dtype(), x.shape());
    let mut g = f32_of::<B>(dy);
    if relu {
        g = B::relu_backward(f32_of::<B>(y), g);
    }
    let dz = cast_to::<B>(g.clone(), y_dtype);
    let (g, count) = rows::<B>(g);
    let (x, _) = rows::<B>(f32_of::<B>(x));
    let count = count as f64;
    let inv_std = per_channel::<B>(inv_std);
    let x_hat = B::float_mul(B::float_sub(x, per_channel::<B>(mean)), inv_std.clone());
    let dbeta = channel_sum::<B>(g.clone());
    let dgamma = channel_sum::<B>(B::float_mul(g.clone(), x_hat.clone()));
    // γ/σ · (dy − Σdy/m − x̂ · Σdy·x̂/m), with the 1/m taken into γ/σ.
    let k = B::float_div_scalar(B::float_mul(per_channel::<B>(gamma), inv_std), count.into());
    let inner = B::float_sub(
        B::float_sub(B::float_mul_scalar(g, count.into()), dbeta.clone()),
        B::float_mul(x_hat, dgamma.clone()),
    );
    let dx = cast_to::<B>(B::float_reshape(B::float_mul(inner, k), dims), x_dtype);
    (dx, dz, vector::<B>(dgamma), vector::<B>(dbeta))
}
