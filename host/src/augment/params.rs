//! The random ops' configurations and their parameter sampling, drawn on the host from a
//! [`HostRng`] exactly as torchvision's transforms draw them (`get_params`, `make_params`).

use super::MAX_SIZE;
use super::color::{JitterOp, JitterParams};
use crate::error::{Error, Result};
use crate::tensor::HostRng;

/// A crop box in pixels: rows `top..top+height`, columns `left..left+width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// `n` coin flips that come up true with probability `p` (torchvision's `rand(1) < p`).
pub fn bernoulli(n: usize, p: f64, rng: &mut HostRng) -> Vec<bool> {
    (0..n).map(|_| rng.uniform() < p).collect()
}

/// A uniform integer in `0..n` (`n >= 1`).
fn below(n: usize, rng: &mut HostRng) -> usize {
    ((rng.uniform() * n as f64) as usize).min(n - 1)
}

/// A uniform number in `[low, high)`.
fn uniform(low: f64, high: f64, rng: &mut HostRng) -> f64 {
    low + (high - low) * rng.uniform()
}

pub(crate) fn check_probability(op: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Invalid(format!(
            "{op}: probability must be in [0, 1], got {p}"
        )));
    }
    Ok(())
}

fn check_range(op: &str, what: &str, r: [f64; 2], positive: bool) -> Result<()> {
    let ok = r[0].is_finite() && r[1].is_finite() && r[0] <= r[1];
    if !ok || (positive && r[0] <= 0.0) {
        return Err(Error::Invalid(format!(
            "{op}: {what} must be [low, high] with {}low <= high, got {r:?}",
            if positive { "0 < " } else { "" }
        )));
    }
    Ok(())
}

/// torchvision's `RandomResizedCrop`: a random box covering `scale` of the area with aspect
/// ratio (w/h) in `ratio` (log-uniform), resized to `size = [height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomResizedCrop {
    /// Output `[height, width]`.
    pub size: [usize; 2],
    /// Range of the box area as a fraction of the image (default `[0.08, 1]`).
    pub scale: [f64; 2],
    /// Range of the box aspect ratio w/h (default `[3/4, 4/3]`).
    pub ratio: [f64; 2],
}

impl RandomResizedCrop {
    /// A square crop of side `size` with torchvision's default scale and ratio.
    pub fn new(size: usize) -> Self {
        RandomResizedCrop {
            size: [size, size],
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
        }
    }

    /// Sets the area range.
    pub fn with_scale(mut self, scale: [f64; 2]) -> Self {
        self.scale = scale;
        self
    }

    /// Sets the aspect-ratio range.
    pub fn with_ratio(mut self, ratio: [f64; 2]) -> Self {
        self.ratio = ratio;
        self
    }

    /// Checks sizes and ranges.
    pub fn check(&self) -> Result<()> {
        if self.size.iter().any(|&s| s == 0 || s > MAX_SIZE) {
            return Err(Error::Invalid(format!(
                "random_resized_crop: size must be 1..={MAX_SIZE}, got {:?}",
                self.size
            )));
        }
        check_range("random_resized_crop", "scale", self.scale, true)?;
        check_range("random_resized_crop", "ratio", self.ratio, true)
    }

    /// One box for an `height x width` image: torchvision's `get_params` (10 tries, then a
    /// central crop clamped to the ratio range).
    pub fn sample(&self, height: usize, width: usize, rng: &mut HostRng) -> CropBox {
        let area = (height * width) as f64;
        let log_ratio = [self.ratio[0].ln(), self.ratio[1].ln()];
        for _ in 0..10 {
            let target_area = area * uniform(self.scale[0], self.scale[1], rng);
            let aspect = uniform(log_ratio[0], log_ratio[1], rng).exp();
            // Python's round() rounds half to even.
            let w = (target_area * aspect).sqrt().round_ties_even() as usize;
            let h = (target_area / aspect).sqrt().round_ties_even() as usize;
            if 0 < w && w <= width && 0 < h && h <= height {
                let top = below(height - h + 1, rng);
                let left = below(width - w + 1, rng);
                return CropBox {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.ratio[0] {
            let h = (width as f64 / self.ratio[0]).round_ties_even() as usize;
            (width, h.clamp(1, height))
        } else if in_ratio > self.ratio[1] {
            let w = (height as f64 * self.ratio[1]).round_ties_even() as usize;
            (w.clamp(1, width), height)
        } else {
            (width, height)
        };
        CropBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }
}

/// torchvision's `ColorJitter` inside `RandomApply(p)`: factors uniform in
/// `[max(0, 1 − b), 1 + b]` (brightness, contrast, saturation), hue shift in `[−h, h]`, in a
/// random order per sample; a zero strength skips that op.
#[derive(Debug, Clone, PartialEq)]
pub struct ColorJitter {
    /// Brightness strength.
    pub brightness: f64,
    /// Contrast strength.
    pub contrast: f64,
    /// Saturation strength.
    pub saturation: f64,
    /// Hue strength, in `[0, 0.5]`.
    pub hue: f64,
    /// Probability that a sample is jittered at all.
    pub p: f64,
}

impl ColorJitter {
    /// Jitter strengths, applied with probability 1.
    pub fn new(brightness: f64, contrast: f64, saturation: f64, hue: f64) -> Self {
        ColorJitter {
            brightness,
            contrast,
            saturation,
            hue,
            p: 1.0,
        }
    }

    /// Sets the probability of applying the jitter.
    pub fn with_p(mut self, p: f64) -> Self {
        self.p = p;
        self
    }

    /// Checks the strengths and the probability.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Invalid(format!(
                    "color_jitter: {name} must be >= 0, got {v}"
                )));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(Error::Invalid(format!(
                "color_jitter: hue must be in [0, 0.5], got {}",
                self.hue
            )));
        }
        check_probability("color_jitter", self.p)
    }

    /// One sample's parameters, or `None` when the jitter is not applied.
    pub fn sample(&self, rng: &mut HostRng) -> Option<JitterParams> {
        if rng.uniform() >= self.p {
            return None;
        }
        // torch.randperm(4), as a Fisher-Yates shuffle.
        let mut order = JitterOp::ALL;
        for i in (1..4).rev() {
            order.swap(i, below(i + 1, rng));
        }
        let mut factor = |strength: f64| {
            (strength > 0.0).then(|| uniform((1.0 - strength).max(0.0), 1.0 + strength, rng))
        };
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let saturation = factor(self.saturation);
        let hue = (self.hue > 0.0).then(|| uniform(-self.hue, self.hue, rng));
        Some(JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        })
    }
}

/// torchvision's `GaussianBlur(kernel_size, sigma)` inside `RandomApply(p)`: sigma uniform in
/// `sigma`; the kernel is `kernel_size`, or about 10% of the image side when `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianBlur {
    /// Probability that a sample is blurred.
    pub p: f64,
    /// Range of sigma (default `[0.1, 2.0]`).
    pub sigma: [f64; 2],
    /// Odd kernel size; `None`: [`default_kernel_size`](super::default_kernel_size).
    pub kernel_size: Option<usize>,
}

impl GaussianBlur {
    /// A blur applied with probability `p`, sigma in `[0.1, 2]`, kernel 10% of the image.
    pub fn new(p: f64) -> Self {
        GaussianBlur {
            p,
            sigma: [0.1, 2.0],
            kernel_size: None,
        }
    }

    /// Checks the probability, the sigma range and the kernel size.
    pub fn check(&self) -> Result<()> {
        check_probability("gaussian_blur", self.p)?;
        check_range("gaussian_blur", "sigma", self.sigma, true)?;
        if let Some(k) = self.kernel_size
            && (k.is_multiple_of(2) || k > MAX_SIZE)
        {
            return Err(Error::Invalid(format!(
                "gaussian_blur: kernel_size must be odd and positive, got {k}"
            )));
        }
        Ok(())
    }

    /// One sample's sigma, or `None` when the blur is not applied.
    pub fn sample(&self, rng: &mut HostRng) -> Option<f64> {
        if rng.uniform() >= self.p {
            return None;
        }
        Some(uniform(self.sigma[0], self.sigma[1], rng))
    }
}
