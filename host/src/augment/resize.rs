//! Crop + resize + horizontal flip as batched interpolation matrices.
//!
//! torchvision resizes float tensors with `interpolate(mode="bilinear", align_corners=False,
//! antialias=True)`, which is separable: every output row is a weighted sum of input rows and
//! every output column of input columns. For sample `n` with crop box `(top, left, h, w)`:
//!
//! ```text
//! out_n = A_n · x_n · B_nᵀ      A_n: [S_h, H] (rows top..top+h),  B_n: [S_w, W] (cols left..left+w)
//! ```
//!
//! A horizontal flip reverses the rows of `B_n`. The whole batch is two batched matmuls.

use burn::tensor::{Tensor, TensorData};

use super::params::CropBox;
use super::{MAX_SIZE, check_len, dims, map_flagged, plain};
use crate::error::{Error, Result};

/// The antialiased bilinear weights torch uses to resize `in_size` samples to `out_size`
/// (`align_corners=False`), as a row-major `[out_size, in_size]` matrix.
///
/// Scale `s = in/out`; output `o` is centred at `(o + 0.5)·s` and takes a triangle filter of
/// half-width `max(s, 1)` over the inputs, normalised to sum 1 (PyTorch's
/// `_compute_indices_min_size_weights_aa`). Upsampling reduces to plain bilinear.
pub fn resize_weights(in_size: usize, out_size: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out_size * in_size];
    let scale = in_size as f64 / out_size as f64;
    let (support, invscale) = if scale >= 1.0 {
        (scale, 1.0 / scale)
    } else {
        (1.0, 1.0)
    };
    for o in 0..out_size {
        let center = scale * (o as f64 + 0.5);
        // Truncation toward zero, as the C++ casts.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let row = &mut m[o * in_size..(o + 1) * in_size];
        let mut total = 0.0;
        for (j, w) in row.iter_mut().enumerate().take(hi).skip(lo) {
            let t = ((j as f64 - center + 0.5) * invscale).abs();
            let v = if t < 1.0 { 1.0 - t } else { 0.0 };
            *w = v as f32;
            total += v;
        }
        if total != 0.0 {
            for w in &mut row[lo..hi] {
                *w = (*w as f64 / total) as f32;
            }
        }
    }
    m
}

/// Interpolation matrix `[out, total]` taking the window `start..start+len` of an axis of
/// length `total` to `out` samples, reversed when `flip`.
fn axis_matrix(start: usize, len: usize, total: usize, out: usize, flip: bool) -> Vec<f32> {
    let w = resize_weights(len, out);
    let mut m = vec![0.0f32; out * total];
    for o in 0..out {
        let src = if flip { out - 1 - o } else { o };
        m[o * total + start..o * total + start + len]
            .copy_from_slice(&w[src * len..(src + 1) * len]);
    }
    m
}

/// Crops each sample to its box and resizes it to `size = [height, width]`, then flips it
/// horizontally where `flips` says so; torchvision's `resized_crop` (bilinear, antialias) and
/// `hflip`.
///
/// `images`: `[N, C, H, W]`; `boxes`, `flips`: one per sample; returns `[N, C, size[0], size[1]]`.
pub fn resized_crop(
    images: Tensor<4>,
    boxes: &[CropBox],
    size: [usize; 2],
    flips: &[bool],
) -> Result<Tensor<4>> {
    let [n, _, h, w] = dims(&images, "resized_crop")?;
    check_len("resized_crop", "crop boxes", boxes.len(), n)?;
    check_len("resized_crop", "flip flags", flips.len(), n)?;
    let [sh, sw] = size;
    if sh == 0 || sw == 0 || sh > MAX_SIZE || sw > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "resized_crop: output size must be 1..={MAX_SIZE}, got {size:?}"
        )));
    }
    for b in boxes {
        if b.height == 0 || b.width == 0 || b.top + b.height > h || b.left + b.width > w {
            return Err(Error::Invalid(format!(
                "resized_crop: box {b:?} does not fit in a {h}x{w} image"
            )));
        }
    }
    let mut rows = Vec::with_capacity(n * sh * h);
    let mut cols_t = Vec::with_capacity(n * w * sw);
    for (b, &flip) in boxes.iter().zip(flips) {
        rows.extend(axis_matrix(b.top, b.height, h, sh, false));
        // Stored transposed: [W, S_w], so that x · Bᵀ is a plain matmul.
        let cols = axis_matrix(b.left, b.width, w, sw, flip);
        for j in 0..w {
            for o in 0..sw {
                cols_t.push(cols[o * w + j]);
            }
        }
    }
    plain(images, |x| {
        let device = x.device();
        let a = Tensor::<4>::from_data(TensorData::new(rows, [n, 1, sh, h]), &device);
        let bt = Tensor::<4>::from_data(TensorData::new(cols_t, [n, 1, w, sw]), &device);
        // Pick the cheaper association: rows first or columns first.
        let rows_first = sh * h * w + sh * w * sw;
        let cols_first = h * w * sw + sh * h * sw;
        Ok(if rows_first <= cols_first {
            a.matmul(x).matmul(bt)
        } else {
            a.matmul(x.matmul(bt))
        })
    })
}

/// Flips the flagged samples horizontally (torchvision's `hflip`); `[N, C, H, W]` in and out.
pub fn hflip(images: Tensor<4>, flags: &[bool]) -> Result<Tensor<4>> {
    let [n, ..] = dims(&images, "hflip")?;
    check_len("hflip", "flip flags", flags.len(), n)?;
    map_flagged(images, flags, |x| Ok(x.flip([3])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let m = resize_weights(5, 5);
        for o in 0..5 {
            for j in 0..5 {
                assert_eq!(m[o * 5 + j], if o == j { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (i, o) in [(12, 5), (5, 12), (7, 3), (3, 7), (1, 4), (4, 1)] {
            let m = resize_weights(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-6, "{i}->{o} row {r}: {s}");
            }
        }
    }
}
