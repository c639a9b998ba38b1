//! [`Augment`] ops composed into a [`Transform`]: draw each op's per-sample parameters on the
//! host, then run the op on the whole batch on its device.

use std::fmt;

use burn::tensor::Tensor;

use super::blur::{default_kernel_size, gaussian_blur};
use super::color::{color_jitter, grayscale, normalize, solarize};
use super::dims;
use super::params::{ColorJitter, GaussianBlur, RandomResizedCrop, bernoulli, check_probability};
use super::resize::{hflip, resized_crop};
use crate::error::{Error, Result};
use crate::tensor::HostRng;

/// One augmentation op with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Augment {
    /// Random crop of random size and ratio, resized (torchvision `RandomResizedCrop`).
    RandomResizedCrop(RandomResizedCrop),
    /// Horizontal flip with probability `p` (`RandomHorizontalFlip`).
    HorizontalFlip {
        /// Probability of flipping a sample.
        p: f64,
    },
    /// Colour jitter in random order, applied with probability `p` (`RandomApply(ColorJitter)`).
    ColorJitter(ColorJitter),
    /// Luma replacing the colours with probability `p`, channels kept (`RandomGrayscale`).
    Grayscale {
        /// Probability of greying a sample.
        p: f64,
    },
    /// Gaussian blur with random sigma, applied with probability `p`.
    GaussianBlur(GaussianBlur),
    /// Pixels `>= threshold` inverted with probability `p` (`RandomSolarize`).
    Solarize {
        /// Probability of solarizing a sample.
        p: f64,
        /// Pixels at or above it are inverted.
        threshold: f64,
    },
    /// `(x − mean) / std` per channel (1 value for every channel, or one per channel).
    Normalize {
        /// Channel means.
        mean: Vec<f64>,
        /// Channel standard deviations.
        std: Vec<f64>,
    },
}

impl Augment {
    /// Checks the op's settings.
    pub fn check(&self) -> Result<()> {
        match self {
            Augment::RandomResizedCrop(c) => c.check(),
            Augment::HorizontalFlip { p } => check_probability("hflip", *p),
            Augment::ColorJitter(j) => j.check(),
            Augment::Grayscale { p } => check_probability("grayscale", *p),
            Augment::GaussianBlur(b) => b.check(),
            Augment::Solarize { p, threshold } => {
                check_probability("solarize", *p)?;
                if !threshold.is_finite() {
                    return Err(Error::Invalid(format!(
                        "solarize: threshold must be finite, got {threshold}"
                    )));
                }
                Ok(())
            }
            Augment::Normalize { mean, std } => {
                if mean.is_empty() || std.is_empty() {
                    return Err(Error::Invalid(
                        "normalize: mean and std must not be empty".into(),
                    ));
                }
                if mean.len() != std.len() && mean.len() != 1 && std.len() != 1 {
                    return Err(Error::Invalid(format!(
                        "normalize: {} means but {} stds",
                        mean.len(),
                        std.len()
                    )));
                }
                if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s != 0.0)) {
                    return Err(Error::Invalid(format!(
                        "normalize: std must be finite and non-zero, got {s}"
                    )));
                }
                if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
                    return Err(Error::Invalid(format!(
                        "normalize: mean must be finite, got {m}"
                    )));
                }
                Ok(())
            }
        }
    }
}

fn list(v: &[f64]) -> String {
    // Four decimals are enough to read a setting (4/3 shows as 1.3333).
    let items: Vec<String> = v
        .iter()
        .map(|x| format!("{}", (x * 1e4).round() / 1e4))
        .collect();
    format!("[{}]", items.join(", "))
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Augment::RandomResizedCrop(c) => write!(
                f,
                "random_resized_crop({}x{}, scale {}, ratio {})",
                c.size[0],
                c.size[1],
                list(&c.scale),
                list(&c.ratio)
            ),
            Augment::HorizontalFlip { p } => write!(f, "hflip({p})"),
            Augment::ColorJitter(j) => write!(
                f,
                "color_jitter({}, {}, {}, {}, p {})",
                j.brightness, j.contrast, j.saturation, j.hue, j.p
            ),
            Augment::Grayscale { p } => write!(f, "grayscale({p})"),
            Augment::GaussianBlur(b) => {
                write!(
                    f,
                    "gaussian_blur(p {}, sigma {}, kernel ",
                    b.p,
                    list(&b.sigma)
                )?;
                match b.kernel_size {
                    Some(k) => write!(f, "{k})"),
                    None => write!(f, "10%)"),
                }
            }
            Augment::Solarize { p, threshold } => {
                write!(f, "solarize(p {p}, threshold {threshold})")
            }
            Augment::Normalize { mean, std } => {
                write!(f, "normalize({}, {})", list(mean), list(std))
            }
        }
    }
}

/// A sequence of ops applied in order to a batch, each with fresh per-sample parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transform {
    ops: Vec<Augment>,
}

impl Transform {
    /// A transform from ops, each checked.
    pub fn new(ops: Vec<Augment>) -> Result<Self> {
        ops.iter().try_for_each(Augment::check)?;
        Ok(Transform { ops })
    }

    /// The ops in order.
    pub fn ops(&self) -> &[Augment] {
        &self.ops
    }

    /// Applies the ops to `images` `[N, C, H, W]` (floats in `[0, 1]`) with parameters drawn
    /// from `rng`; returns the views, `[N, C, H', W']` (`H', W'` from a crop, if any).
    ///
    /// Parameters are drawn op by op, sample by sample, so a seed gives the same views on
    /// every device. A horizontal flip right after a crop is folded into the crop's
    /// interpolation matrices (the same result, one pass fewer).
    ///
    /// The ops run without autodiff (views are data); the result has the input's autodiff
    /// association but no gradient history, unless the input itself requires gradients.
    pub fn apply(&self, images: Tensor<4>, rng: &mut HostRng) -> Result<Tensor<4>> {
        let [n, c, ..] = dims(&images, "transform")?;
        if self
            .ops
            .iter()
            .any(|op| matches!(op, Augment::ColorJitter(_) | Augment::Grayscale { .. }))
            && c != 1
            && c != 3
        {
            return Err(Error::Shape(format!(
                "transform: colour ops need 1 or 3 channels, got images of shape {:?}",
                images.dims()
            )));
        }
        super::plain(images, |x| self.apply_plain(x, n, rng))
    }

    fn apply_plain(&self, images: Tensor<4>, n: usize, rng: &mut HostRng) -> Result<Tensor<4>> {
        let mut x = images;
        let mut i = 0;
        while i < self.ops.len() {
            let [_, _, h, w] = x.dims();
            x = match &self.ops[i] {
                Augment::RandomResizedCrop(crop) => {
                    let boxes: Vec<_> = (0..n).map(|_| crop.sample(h, w, rng)).collect();
                    let flips = match self.ops.get(i + 1) {
                        Some(Augment::HorizontalFlip { p }) => {
                            i += 1;
                            bernoulli(n, *p, rng)
                        }
                        _ => vec![false; n],
                    };
                    resized_crop(x, &boxes, crop.size, &flips)?
                }
                Augment::HorizontalFlip { p } => hflip(x, &bernoulli(n, *p, rng))?,
                Augment::ColorJitter(j) => {
                    let params: Vec<_> = (0..n).map(|_| j.sample(rng)).collect();
                    color_jitter(x, &params)?
                }
                Augment::Grayscale { p } => grayscale(x, &bernoulli(n, *p, rng))?,
                Augment::GaussianBlur(b) => {
                    let sigmas: Vec<_> = (0..n).map(|_| b.sample(rng)).collect();
                    let k = b.kernel_size.unwrap_or_else(|| default_kernel_size(h, w));
                    gaussian_blur(x, &sigmas, k)?
                }
                Augment::Solarize { p, threshold } => {
                    solarize(x, *threshold, &bernoulli(n, *p, rng))?
                }
                Augment::Normalize { mean, std } => normalize(x, mean, std)?,
            };
            i += 1;
        }
        Ok(x)
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transform([")?;
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{op}")?;
        }
        write!(f, "])")
    }
}
