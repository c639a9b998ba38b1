//! Colour ops with per-sample factors, as torchvision's `transforms.v2.functional` on float
//! images in `[0, 1]`: brightness, contrast, saturation, hue, greyscale, solarize, normalize,
//! and colour jitter with a random order per sample.
//!
//! Images have 1 or 3 channels (torchvision's rule). On one channel, saturation and hue are
//! no-ops and greyscale is the identity, as in torchvision.

use burn::tensor::{Device, Tensor, TensorData};

use super::{SubBatchFn, check_len, dims, map_flagged, map_groups, per_sample};
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

/// `ratio·a + (1 − ratio)·b`, clamped to `[0, 1]` (torchvision's `_blend`).
fn blend(a: Tensor<4>, b: Tensor<4>, ratio: Tensor<4>) -> Tensor<4> {
    let rest = ratio.clone().neg().add_scalar(1.0);
    (a * ratio + b * rest).clamp(0.0, 1.0)
}

/// Luma of `[N, 3, H, W]` (or the image itself for one channel): `[N, 1, H, W]`.
pub fn rgb_to_grayscale(images: Tensor<4>) -> Result<Tensor<4>> {
    let [_, c, _, _] = dims(&images, "rgb_to_grayscale")?;
    color_channels("rgb_to_grayscale", c)?;
    Ok(luma(images))
}

fn luma(x: Tensor<4>) -> Tensor<4> {
    if x.dims()[1] == 1 {
        return x;
    }
    let r = x.clone().narrow(1, 0, 1);
    let g = x.clone().narrow(1, 1, 1);
    let b = x.narrow(1, 2, 1);
    r.mul_scalar(LUMA[0]) + g.mul_scalar(LUMA[1]) + b.mul_scalar(LUMA[2])
}

/// Multiplies sample `n` by `factors[n]` and clamps to `[0, 1]` (`adjust_brightness`).
pub fn adjust_brightness(images: Tensor<4>, factors: &[f64]) -> Result<Tensor<4>> {
    let [n, ..] = dims(&images, "adjust_brightness")?;
    check_factors("adjust_brightness", factors, n, 0.0, f64::MAX)?;
    Ok(brightness(images, factors))
}

fn brightness(x: Tensor<4>, factors: &[f64]) -> Tensor<4> {
    let f = factors_tensor(factors, &x.device());
    (x * f).clamp(0.0, 1.0)
}

/// Blends sample `n` with the mean of its luma by `factors[n]` (`adjust_contrast`).
pub fn adjust_contrast(images: Tensor<4>, factors: &[f64]) -> Result<Tensor<4>> {
    let [n, c, _, _] = dims(&images, "adjust_contrast")?;
    color_channels("adjust_contrast", c)?;
    check_factors("adjust_contrast", factors, n, 0.0, f64::MAX)?;
    Ok(contrast(images, factors))
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
    Ok(saturation(images, factors))
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
    Ok(hue(images, factors))
}

/// `x - floor(x)`: the fractional part, in `[0, 1)` for any sign.
fn fract(x: Tensor<4>) -> Tensor<4> {
    x.clone() - x.floor()
}

fn hue(x: Tensor<4>, factors: &[f64]) -> Tensor<4> {
    if x.dims()[1] == 1 {
        return x;
    }
    let shift = factors_tensor(factors, &x.device());
    // RGB -> HSV as torchvision's `_rgb_to_hsv` (after Pillow).
    let r = x.clone().narrow(1, 0, 1);
    let g = x.clone().narrow(1, 1, 1);
    let b = x.clone().narrow(1, 2, 1);
    let maxc = x.clone().max_dim(1);
    let minc = x.min_dim(1);
    let eqc = maxc.clone().equal(minc.clone());
    let range = maxc.clone() - minc;
    let s = range.clone() / maxc.clone().mask_fill(eqc.clone(), 1.0);
    let divisor = range.mask_fill(eqc, 1.0);
    let rc = (maxc.clone() - r.clone()) / divisor.clone();
    let gc = (maxc.clone() - g.clone()) / divisor.clone();
    let bc = (maxc.clone() - b) / divisor;
    let is_r = maxc.clone().equal(r);
    let is_g = maxc.clone().equal(g).bool_and(is_r.clone().bool_not());
    let is_b = is_r.clone().bool_or(is_g.clone()).bool_not();
    let hr = (bc.clone() - gc.clone()) * is_r.float();
    let hg = (rc.clone().add_scalar(2.0) - bc) * is_g.float();
    let hb = (gc.add_scalar(4.0) - rc) * is_b.float();
    let h = fract((hr + hg + hb).div_scalar(6.0).add_scalar(1.0));
    let h = fract(h + shift);
    // HSV -> RGB: channel k is v - v·s·clamp(min(t, 4 - t), 0, 1) with t = (n_k + 6h) mod 6
    // and n = 5, 3, 1 for r, g, b; the same values as torchvision's sector table.
    let v = maxc;
    let vs = v.clone() * s;
    let h6 = h.mul_scalar(6.0);
    let channel = |offset: f32| {
        let t = h6.clone().add_scalar(offset);
        let t = fract(t.div_scalar(6.0)).mul_scalar(6.0);
        let k = t.clone().min_pair(t.neg().add_scalar(4.0)).clamp(0.0, 1.0);
        v.clone() - vs.clone() * k
    };
    Tensor::cat(vec![channel(5.0), channel(3.0), channel(1.0)], 1)
}

/// Replaces the flagged samples by their luma, repeated over the channels (torchvision's
/// `RandomGrayscale`: the output keeps the input's channel count).
pub fn grayscale(images: Tensor<4>, flags: &[bool]) -> Result<Tensor<4>> {
    let [n, c, h, w] = dims(&images, "grayscale")?;
    color_channels("grayscale", c)?;
    check_len("grayscale", "flags", flags.len(), n)?;
    if c == 1 {
        return Ok(images);
    }
    map_flagged(images, flags, move |x| {
        let m = x.dims()[0];
        Ok(luma(x).expand([m, c, h, w]))
    })
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
        let mask = x.clone().greater_equal_elem(threshold);
        let inverted = x.clone().neg().add_scalar(1.0);
        Ok(x.mask_where(mask, inverted))
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
    let device = images.device();
    let m = Tensor::<4>::from_data(TensorData::new(m, [1, c, 1, 1]), &device);
    let s = Tensor::<4>::from_data(TensorData::new(s, [1, c, 1, 1]), &device);
    Ok((images - m) / s)
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
