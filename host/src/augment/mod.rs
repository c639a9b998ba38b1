//! Augmentations as plain Burn batch ops on `[N, C, H, W]` with per-sample random parameters
//! drawn from a seeded generator. Plain Rust: nothing here knows Rhai.
//!
//! Every op follows torchvision (`transforms.v2`) on float images in `[0, 1]`:
//!
//! - [`resized_crop`] and [`hflip`] (`resize.rs`): a crop resized with antialiased bilinear
//!   interpolation (`align_corners=False`) is separable, so each sample's crop + resize (+ flip)
//!   is `A_n · x_n · B_nᵀ` with small interpolation matrices, one batched matmul for the batch.
//! - colour ops (`color.rs`): brightness, contrast, saturation, hue, greyscale, solarize,
//!   normalize, and [`color_jitter`] with a per-sample random order of the four adjustments.
//! - [`gaussian_blur`] (`blur.rs`): reflect-padded Gaussian blur, also as per-sample matrices.
//! - [`Transform`] (`transform.rs`) composes [`Augment`] ops; the random parameters of each op
//!   are drawn on the host (`params.rs`), so a seed gives the same views on every device.
//!
//! The deterministic kernels take their parameters explicitly (one entry per sample), so they
//! can be tested against torchvision outputs.

mod blur;
mod color;
mod params;
mod resize;
mod transform;

pub use blur::{blur_matrix, default_kernel_size, gaussian_blur, gaussian_kernel1d};
pub use color::{
    JitterOp, JitterParams, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
    color_jitter, grayscale, normalize, rgb_to_grayscale, solarize,
};
pub use params::{ColorJitter, CropBox, GaussianBlur, RandomResizedCrop, bernoulli};
pub use resize::{hflip, resize_weights, resized_crop};
pub use transform::{Augment, Transform};

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Result};

/// The largest output side a crop may ask for (a typo such as `random_resized_crop(32000)`
/// should be an error, not an allocation failure).
pub const MAX_SIZE: usize = 8192;

/// Checks that a batch has no empty dimension and returns its `[N, C, H, W]`.
pub(crate) fn dims(x: &Tensor<4>, op: &str) -> Result<[usize; 4]> {
    let d = x.dims();
    if d.contains(&0) {
        return Err(Error::Shape(format!(
            "{op}: images must be a non-empty [N, C, H, W] batch, got {d:?}"
        )));
    }
    Ok(d)
}

/// Checks that a per-sample parameter list has one entry per sample.
pub(crate) fn check_len(op: &str, what: &str, len: usize, n: usize) -> Result<()> {
    if len != n {
        return Err(Error::Invalid(format!(
            "{op}: {len} {what} for a batch of {n} images"
        )));
    }
    Ok(())
}

/// Per-sample scalars as a `[n, 1, 1, 1]` tensor, to broadcast over a batch.
pub(crate) fn per_sample(values: &[f32], device: &Device) -> Tensor<4> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len(), 1, 1, 1]),
        device,
    )
}

fn index_tensor(idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [idx.len()]), device)
}

/// Runs `f` on `x` without autodiff, unless `x` requires gradients; the result gets the
/// input's autodiff association back.
///
/// Views are data, not part of a model's graph: on the inner backend no op pays autodiff's
/// bookkeeping, and the backend's own kernels run (with autodiff, burn 0.22 falls back to
/// generic `clamp`s built on a slow `mask_fill`). Nesting is free: an inner call finds the
/// tensor already plain.
pub(crate) fn plain(
    x: Tensor<4>,
    f: impl FnOnce(Tensor<4>) -> Result<Tensor<4>>,
) -> Result<Tensor<4>> {
    if !x.is_autodiff() || x.is_require_grad() {
        return f(x);
    }
    Ok(f(x.without_autodiff())?.autodiff())
}

/// `max(a, b)` elementwise. Extra handles keep both operands shared, so burn-flex takes its
/// vectorised out-of-place path instead of the in-place loop, which branches on every element
/// (slow on random data).
pub(crate) fn max2(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    let _shared = (a.clone(), b.clone());
    a.max_pair(b)
}

/// `min(a, b)` elementwise; see [`max2`].
pub(crate) fn min2(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    let _shared = (a.clone(), b.clone());
    a.min_pair(b)
}

/// A function applied to a sub-batch.
pub(crate) type SubBatchFn<'a> = Box<dyn FnOnce(Tensor<4>) -> Result<Tensor<4>> + 'a>;

/// Applies each function to its own samples (disjoint index sets, in that order) and leaves
/// the other samples unchanged; the batch keeps its order. The functions must keep the
/// per-sample shape. Empty groups cost nothing; a single group holding the whole batch in
/// order runs on the batch directly.
pub(crate) fn map_groups(
    x: Tensor<4>,
    groups: Vec<(Vec<usize>, SubBatchFn<'_>)>,
) -> Result<Tensor<4>> {
    plain(x, |x| map_groups_plain(x, groups))
}

fn map_groups_plain(x: Tensor<4>, groups: Vec<(Vec<usize>, SubBatchFn<'_>)>) -> Result<Tensor<4>> {
    let n = x.dims()[0];
    let mut groups: Vec<_> = groups.into_iter().filter(|(i, _)| !i.is_empty()).collect();
    if groups.is_empty() {
        return Ok(x);
    }
    if groups.len() == 1 && groups[0].0.iter().copied().eq(0..n) {
        let (_, f) = groups.pop().expect("one group");
        return f(x);
    }
    let device = x.device();
    let mut covered = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut parts = Vec::with_capacity(groups.len() + 1);
    for (idx, f) in groups {
        for &i in &idx {
            if i >= n || covered[i] {
                return Err(Error::Invalid(format!(
                    "sample index {i} out of range or repeated (batch of {n})"
                )));
            }
            covered[i] = true;
        }
        let sub = x.clone().select(0, index_tensor(&idx, &device));
        parts.push(f(sub)?);
        order.extend(idx);
    }
    let rest: Vec<usize> = (0..n).filter(|&i| !covered[i]).collect();
    if !rest.is_empty() {
        parts.push(x.select(0, index_tensor(&rest, &device)));
        order.extend(rest);
    }
    let joined = Tensor::cat(parts, 0);
    // joined[k] holds sample order[k]; put every sample back at its place.
    let mut position = vec![0; n];
    for (k, &i) in order.iter().enumerate() {
        position[i] = k;
    }
    if position.iter().copied().eq(0..n) {
        Ok(joined)
    } else {
        Ok(joined.select(0, index_tensor(&position, &device)))
    }
}

/// Applies `f` to the samples whose flag is set, leaving the others unchanged.
pub(crate) fn map_flagged<'a>(
    x: Tensor<4>,
    flags: &[bool],
    f: impl FnOnce(Tensor<4>) -> Result<Tensor<4>> + 'a,
) -> Result<Tensor<4>> {
    let idx: Vec<usize> = (0..flags.len()).filter(|&i| flags[i]).collect();
    map_groups(x, vec![(idx, Box::new(f))])
}
