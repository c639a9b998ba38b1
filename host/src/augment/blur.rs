//! Gaussian blur with reflect padding, per-sample sigma, as batched matrices.
//!
//! torchvision pads by `kernel / 2` in "reflect" mode and convolves with a separable Gaussian.
//! Both steps are linear along each axis, so sample `n`'s blur is `K_n · x_n · K'_nᵀ` with
//! `K_n: [H, H]` (the reflected taps folded in) and `K'_n: [W, W]`: two batched matmuls.

use burn::tensor::{Tensor, TensorData};

use super::{check_len, dims, map_flagged};
use crate::error::{Error, Result};

/// torchvision's 1-D Gaussian kernel: `softmax(-(x/σ)²)` over `x = linspace(-l, l, k)`,
/// `l = (k − 1) / (2√2)`, i.e. weights `∝ exp(-j² / 2σ²)` for taps `j = -k/2..=k/2`.
pub fn gaussian_kernel1d(kernel_size: usize, sigma: f64) -> Vec<f64> {
    let r = (kernel_size / 2) as f64;
    let w: Vec<f64> = (0..kernel_size)
        .map(|i| {
            let j = i as f64 - r;
            (-(j * j) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|v| v / total).collect()
}

/// The blur kernel size for an image side: about 10% of it, odd, at least 3 (23 for 224, as
/// BYOL and SimCLR; 3 for 32).
pub fn default_kernel_size(height: usize, width: usize) -> usize {
    let k = (0.1 * height.min(width) as f64).round() as usize;
    (k | 1).max(3)
}

/// Reflects an index into `0..len` (torch's "reflect" padding: the edge is not repeated),
/// folding again for pads longer than the axis.
fn reflect(i: i64, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as i64 - 1);
    let m = i.rem_euclid(period);
    (if m >= len as i64 { period - m } else { m }) as usize
}

/// The `[len, len]` matrix of a 1-D blur with `taps` (odd count) and reflect padding:
/// `out[o] = Σ_j taps[j] · in[reflect(o + j − k/2)]`.
pub fn blur_matrix(len: usize, taps: &[f64]) -> Vec<f32> {
    let r = (taps.len() / 2) as i64;
    let mut m = vec![0.0f64; len * len];
    for o in 0..len {
        for (j, &t) in taps.iter().enumerate() {
            let src = reflect(o as i64 + j as i64 - r, len);
            m[o * len + src] += t;
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}

/// Blurs sample `n` with a `kernel_size` Gaussian of `sigmas[n]` (`None`: left unchanged),
/// reflect padding, as torchvision's `gaussian_blur`. `[N, C, H, W]` in and out.
pub fn gaussian_blur(
    images: Tensor<4>,
    sigmas: &[Option<f64>],
    kernel_size: usize,
) -> Result<Tensor<4>> {
    let [n, _, h, w] = dims(&images, "gaussian_blur")?;
    check_len("gaussian_blur", "sigmas", sigmas.len(), n)?;
    if kernel_size.is_multiple_of(2) || kernel_size > super::MAX_SIZE {
        return Err(Error::Invalid(format!(
            "gaussian_blur: kernel_size must be odd and positive, got {kernel_size}"
        )));
    }
    if let Some(s) = sigmas
        .iter()
        .flatten()
        .find(|s| !(s.is_finite() && **s > 0.0))
    {
        return Err(Error::Invalid(format!(
            "gaussian_blur: sigma must be positive, got {s}"
        )));
    }
    let flags: Vec<bool> = sigmas.iter().map(Option::is_some).collect();
    let applied: Vec<f64> = sigmas.iter().flatten().copied().collect();
    map_flagged(images, &flags, move |x| {
        let m = applied.len();
        let device = x.device();
        let mut rows = Vec::with_capacity(m * h * h);
        let mut cols_t = Vec::with_capacity(m * w * w);
        for &sigma in &applied {
            let taps = gaussian_kernel1d(kernel_size, sigma);
            rows.extend(blur_matrix(h, &taps));
            let cols = if w == h {
                rows[rows.len() - h * h..].to_vec()
            } else {
                blur_matrix(w, &taps)
            };
            for j in 0..w {
                for o in 0..w {
                    cols_t.push(cols[o * w + j]);
                }
            }
        }
        let a = Tensor::<4>::from_data(TensorData::new(rows, [m, 1, h, h]), &device);
        let bt = Tensor::<4>::from_data(TensorData::new(cols_t, [m, 1, w, w]), &device);
        Ok(a.matmul(x).matmul(bt))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sizes() {
        assert_eq!(default_kernel_size(224, 224), 23);
        assert_eq!(default_kernel_size(32, 32), 3);
        assert_eq!(default_kernel_size(96, 96), 11);
        assert_eq!(default_kernel_size(4, 4), 3);
    }

    #[test]
    fn reflect_indices() {
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(-2, 5), 2);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(6, 5), 2);
        assert_eq!(reflect(3, 1), 0);
        assert_eq!(reflect(-7, 3), 1);
    }

    #[test]
    fn matrix_rows_sum_to_one() {
        let taps = gaussian_kernel1d(7, 1.3);
        let m = blur_matrix(4, &taps);
        for o in 0..4 {
            let s: f32 = m[o * 4..(o + 1) * 4].iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
    }
}
