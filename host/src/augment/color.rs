//! Colour ops with per-sample factors, as torchvision's `transforms.v2.functional` on float
//! images in `[0, 1]`: brightness, contrast, saturation, hue, greyscale, solarize, normalize,
//! and colour jitter with a random order per sample.
//!
//! Images have 1 or 3 channels (torchvision's rule). On one channel, saturation and hue are
//! no-ops and greyscale is the identity, as in torchvision.

use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{SubBatchFn, check_len, dims, map_flagged, map_groups, max2, min2, per_sample, plain};
use crate::error::{Error, Result};

/// ITU-R 601-2 luma weights, as torchvision (`0.2989, 0.587, 0.114`).
pub const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

fn color_channels(op: &str, c: usize) -> Result<()> {
    if c != 1 && c != 3 {
        return Err(Error::Shape(format!(
            "{op}: images must have 1 or 3 channels, got {c}"
        )));
    }
    Ok(())
}

fn check_factor(op: &str, factor: Option<f64>, low: f64, high: f64) -> Result<()> {
    match factor {
        Some(f) if !(low..=high).contains(&f) => Err(Error::Invalid(format!(
            "{op}: factor {f} outside [{low}, {high}]"
        ))),
        _ => Ok(()),
    }
}

fn check_factors(op: &str, factors: &[f64], n: usize, low: f64, high: f64) -> Result<()> {
    check_len(op, "factors", factors.len(), n)?;
    factors
        .iter()
        .try_for_each(|&f| check_factor(op, Some(f), low, high))
}

fn factors_tensor(factors: &[f64], device: &Device) -> Tensor<4> {
    let v: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
    per_sample(&v, device)
}

// Performance notes (burn-flex, the CPU backend; every kernel runs without autodiff, see
// `plain`): elementwise ops on strided views (`narrow` on the channel axis, `expand`) and
// `floor`, `max_dim` are several times slower than plain contiguous ops, and `mask_where` on a
// uniquely owned operand takes a branchy loop that is slow on random masks. So channels are
// gathered with `select`, reductions over the three channels are pairwise (`max2`, `min2`),
// and selections by a mask are arithmetic blends with the mask as 0/1 floats.

/// Channel `i` of `[N, C, H, W]` as a contiguous `[N, 1, H, W]`.
fn channel(x: Tensor<4>, i: usize) -> Tensor<4> {
    let device = x.device();
    let index = Tensor::<1, Int>::from_data(TensorData::new(vec![i as i64], [1]), &device);
    x.select(1, index)
}

/// Clamps to `[0, 1]`.
fn clamp01(x: Tensor<4>) -> Tensor<4> {
    relu(x).clamp_max(1.0)
}

/// `ratio·a + (1 − ratio)·b`, clamped to `[0, 1]` (torchvision's `_blend`).
fn blend(a: Tensor<4>, b: Tensor<4>, ratio: Tensor<4>) -> Tensor<4> {
    let rest = ratio.clone().neg().add_scalar(1.0);
    clamp01(a * ratio + b * rest)
}

/// Luma of `[N, 3, H, W]` (or the image itself for one channel): `[N, 1, H, W]`.
pub fn rgb_to_grayscale(images: Tensor<4>) -> Result<Tensor<4>> {
    let [_, c, _, _] = dims(&images, "rgb_to_grayscale")?;
    color_channels("rgb_to_grayscale", c)?;
    plain(images, |x| Ok(luma(x)))
}

fn luma(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    if c == 1 {
        return x;
    }
    // [1, 1, 1, 3] @ [1, N, 3, H·W]: one small matmul instead of five elementwise ops.
    let weights = Tensor::<4>::from_data(TensorData::new(LUMA.to_vec(), [1, 1, 1, 3]), &x.device());
    weights
        .matmul(x.reshape([1, n, 3, h * w]))
        .reshape([n, 1, h, w])
}

/// Multiplies sample `n` by `factors[n]` and clamps to `[0, 1]` (`adjust_brightness`).
pub fn adjust_brightness(images: Tensor<4>, factors: &[f64]) -> Result<Tensor<4>> {
    let [n, ..] = dims(&images, "adjust_brightness")?;
    check_factors("adjust_brightness", factors, n, 0.0, f64::MAX)?;
    plain(images, |x| Ok(brightness(x, factors)))
}

fn brightness(x: Tensor<4>, factors: &[f64]) -> Tensor<4> {
    let f = factors_tensor(factors, &x.device());
    clamp01(x * f)
}

/// Blends sample `n` with the mean of its luma by `factors[n]` (`adjust_contrast`).
pub fn adjust_contrast(images: Tensor<4>, factors: &[f64]) -> Result<Tensor<4>> {
    let [n, c, _, _] = dims(&images, "adjust_contrast")?;
    color_channels("adjust_contrast", c)?;
    check_factors("adjust_contrast", factors, n, 0.0, f64::MAX)?;
    plain(images, |x| Ok(contrast(x, factors)))
}

fn contrast(x: Tensor<4>, factors: &[f64]) -> Tensor<4> {
    let f = factors_tensor(factors, &x.device());
    let mean = luma(x.clone()).mean_dims(&[1, 2, 3]);
    blend(x, mean, f)
}

/// Blends sample `n` with its luma by `factors[n]` (`adjust_saturation`); a no-op on one
/// channel.
pub fn adjust_saturation(images: Tensor<4>, factors: &[f64]) -> Result<Tensor<4>> {
    let [n, c, _, _] = dims(&images, "adjust_saturation")?;
    color_channels("adjust_saturation", c)?;
    check_factors("adjust_saturation", factors, n, 0.0, f64::MAX)?;
    plain(images, |x| Ok(saturation(x, factors)))
}

fn saturation(x: Tensor<4>, factors: &[f64]) -> Tensor<4> {
    if x.dims()[1] == 1 {
        return x;
    }
    let f = factors_tensor(factors, &x.device());
    let gray = luma(x.clone());
    blend(x, gray, f)
}

/// Rotates the hue of sample `n` by `factors[n]` turns, in `[-0.5, 0.5]` (`adjust_hue`); a
/// no-op on one channel.
pub fn adjust_hue(images: Tensor<4>, factors: &[f64]) -> Result<Tensor<4>> {
    let [n, c, _, _] = dims(&images, "adjust_hue")?;
    color_channels("adjust_hue", c)?;
    check_factors("adjust_hue", factors, n, -0.5, 0.5)?;
    plain(images, |x| Ok(hue(x, factors)))
}

fn hue(x: Tensor<4>, factors: &[f64]) -> Tensor<4> {
    if x.dims()[1] == 1 {
        return x;
    }
    let device = x.device();
    let sixths: Vec<f64> = factors.iter().map(|f| 6.0 * f).collect();
    let shift = factors_tensor(&sixths, &device);
    let r = channel(x.clone(), 0);
    let g = channel(x.clone(), 1);
    let b = channel(x, 2);
    // HSV value and chroma (v·s).
    let v = max2(max2(r.clone(), g.clone()), b.clone());
    let range = v.clone() - min2(min2(r.clone(), g.clone()), b.clone());
    // The hue in sixths of a turn, as torchvision's `_rgb_to_hsv` (after Pillow): the largest
    // channel picks the sector, ties going to red, then green. Grey pixels (range 0) get 0.
    let is_r = v.clone().equal(r.clone()).float();
    let not_r = is_r.clone().neg().add_scalar(1.0);
    let is_g = v.clone().equal(g.clone()).float() * not_r.clone();
    let is_b = not_r - is_g.clone();
    let from_r = (g.clone() - b.clone()) * is_r;
    let from_g = (range.clone().mul_scalar(2.0) + b.clone() - r.clone()) * is_g;
    let from_b = (range.clone().mul_scalar(4.0) + r - g) * is_b;
    // In [-1, 5] before the shift (at most ±3 sixths): +12 makes it positive, so truncation
    // is floor, and h6 ends in [0, 6).
    let h6 = (from_r + from_g + from_b) / range.clone().clamp_min(f32::MIN_POSITIVE)
        + shift.add_scalar(12.0);
    let turns = h6.clone().div_scalar(6.0).int().float();
    let h6 = h6 - turns.mul_scalar(6.0);
    // HSV -> RGB: channel k is v − range·clamp(min(t, 4 − t), 0, 1) with t = (h6 + n_k) mod 6,
    // n = 5, 3, 1 for r, g, b: the values of torchvision's sector table (`_hsv_to_rgb`).
    let offsets = Tensor::<4>::from_data(
        TensorData::new(vec![5.0f32, 3.0, 1.0], [1, 3, 1, 1]),
        &device,
    );
    let t = h6 + offsets; // in [1, 11)
    let wrap = t.clone().greater_equal_elem(6.0).float();
    let t = t - wrap.mul_scalar(6.0);
    let k = relu(min2(t.clone(), t.neg().add_scalar(4.0))).clamp_max(1.0);
    v - range * k
}

/// Replaces the flagged samples by their luma, repeated over the channels (torchvision's
/// `RandomGrayscale`: the output keeps the input's channel count).
pub fn grayscale(images: Tensor<4>, flags: &[bool]) -> Result<Tensor<4>> {
    let [n, c, _, _] = dims(&images, "grayscale")?;
    color_channels("grayscale", c)?;
    check_len("grayscale", "flags", flags.len(), n)?;
    if c == 1 {
        return Ok(images);
    }
    map_flagged(images, flags, move |x| Ok(luma(x).repeat_dim(1, c)))
}

/// Inverts the pixels `>= threshold` of the flagged samples (torchvision's `solarize`).
pub fn solarize(images: Tensor<4>, threshold: f64, flags: &[bool]) -> Result<Tensor<4>> {
    let [n, ..] = dims(&images, "solarize")?;
    check_len("solarize", "flags", flags.len(), n)?;
    if !threshold.is_finite() {
        return Err(Error::Invalid(format!(
            "solarize: threshold must be finite, got {threshold}"
        )));
    }
    map_flagged(images, flags, move |x| {
        // x + m·(1 − 2x) with m = [x >= threshold]: 1 − x where m is 1, x where it is 0.
        let m = x.clone().greater_equal_elem(threshold).float();
        Ok(x.clone() + m * x.mul_scalar(-2.0).add_scalar(1.0))
    })
}

/// `(x − mean[c]) / std[c]` per channel; `mean` and `std` have 1 entry (every channel) or C.
pub fn normalize(images: Tensor<4>, mean: &[f64], std: &[f64]) -> Result<Tensor<4>> {
    let [_, c, _, _] = dims(&images, "normalize")?;
    let stats = |what: &str, v: &[f64]| -> Result<Vec<f32>> {
        if v.len() == 1 {
            Ok(vec![v[0] as f32; c])
        } else if v.len() == c {
            Ok(v.iter().map(|&x| x as f32).collect())
        } else {
            Err(Error::Shape(format!(
                "normalize: {} {what} values for {c}-channel images (give 1 or {c})",
                v.len()
            )))
        }
    };
    let m = stats("mean", mean)?;
    let s = stats("std", std)?;
    if let Some(bad) = mean.iter().chain(std).find(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "normalize: non-finite statistic {bad}"
        )));
    }
    if std.contains(&0.0) {
        return Err(Error::Invalid("normalize: std must not be zero".into()));
    }
    plain(images, |x| {
        let device = x.device();
        let m = Tensor::<4>::from_data(TensorData::new(m, [1, c, 1, 1]), &device);
        let s = Tensor::<4>::from_data(TensorData::new(s, [1, c, 1, 1]), &device);
        Ok((x - m) / s)
    })
}

/// The four adjustments of colour jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JitterOp {
    /// `adjust_brightness`.
    Brightness,
    /// `adjust_contrast`.
    Contrast,
    /// `adjust_saturation`.
    Saturation,
    /// `adjust_hue`.
    Hue,
}

impl JitterOp {
    /// The ops in torchvision's index order (`fn_idx` 0..4).
    pub const ALL: [JitterOp; 4] = [
        JitterOp::Brightness,
        JitterOp::Contrast,
        JitterOp::Saturation,
        JitterOp::Hue,
    ];
}

/// One sample's colour jitter: the order of the four ops and each factor (`None`: skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct JitterParams {
    /// The order the ops are applied in.
    pub order: [JitterOp; 4],
    /// Brightness factor.
    pub brightness: Option<f64>,
    /// Contrast factor.
    pub contrast: Option<f64>,
    /// Saturation factor.
    pub saturation: Option<f64>,
    /// Hue shift in turns.
    pub hue: Option<f64>,
}

impl JitterParams {
    fn factor(&self, op: JitterOp) -> Option<f64> {
        match op {
            JitterOp::Brightness => self.brightness,
            JitterOp::Contrast => self.contrast,
            JitterOp::Saturation => self.saturation,
            JitterOp::Hue => self.hue,
        }
    }
}

/// Colour jitter with per-sample order and factors (`None`: the sample is left unchanged), as
/// torchvision's `ColorJitter` inside `RandomApply`.
///
/// At each of the four positions the batch is split by which op the sample applies there, each
/// part is adjusted with its own factors, and the batch is put back in order: every sample
/// gets exactly its four ops in its own order.
pub fn color_jitter(images: Tensor<4>, params: &[Option<JitterParams>]) -> Result<Tensor<4>> {
    let [n, c, _, _] = dims(&images, "color_jitter")?;
    color_channels("color_jitter", c)?;
    check_len("color_jitter", "parameter sets", params.len(), n)?;
    for p in params.iter().flatten() {
        check_factor("color_jitter brightness", p.brightness, 0.0, f64::MAX)?;
        check_factor("color_jitter contrast", p.contrast, 0.0, f64::MAX)?;
        check_factor("color_jitter saturation", p.saturation, 0.0, f64::MAX)?;
        check_factor("color_jitter hue", p.hue, -0.5, 0.5)?;
        let mut seen = [false; 4];
        for op in p.order {
            seen[op as usize] = true;
        }
        if seen.contains(&false) {
            return Err(Error::Invalid(format!(
                "color_jitter: order {:?} is not a permutation of the four ops",
                p.order
            )));
        }
    }
    let mut x = images;
    for position in 0..4 {
        let mut groups: Vec<(Vec<usize>, SubBatchFn<'_>)> = Vec::new();
        for op in JitterOp::ALL {
            if c == 1 && matches!(op, JitterOp::Saturation | JitterOp::Hue) {
                continue; // no-ops on one channel
            }
            let (idx, factors): (Vec<usize>, Vec<f64>) = params
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let p = p.as_ref()?;
                    if p.order[position] != op {
                        return None;
                    }
                    Some((i, p.factor(op)?))
                })
                .unzip();
            let f: SubBatchFn<'_> = match op {
                JitterOp::Brightness => Box::new(move |t| Ok(brightness(t, &factors))),
                JitterOp::Contrast => Box::new(move |t| Ok(contrast(t, &factors))),
                JitterOp::Saturation => Box::new(move |t| Ok(saturation(t, &factors))),
                JitterOp::Hue => Box::new(move |t| Ok(hue(t, &factors))),
            };
            groups.push((idx, f));
        }
        x = map_groups(x, groups)?;
    }
    Ok(x)
}
