//! Convolution on plain `f32` slices in NCHW order: im2col + one GEMM per group of images.
//!
//! The forward pass and both gradients share one layout. For a group of `nb` images the
//! column matrix is `[c_in·k·k, nb·oh·ow]` (one row per input channel and kernel tap, one
//! column per output pixel), built straight from NCHW rows, so no tensor is ever transposed
//! to NHWC and back. Groups are sized so that each GEMM has about [`COLS_PER_GROUP`] columns
//! (wide enough for the GEMM kernels to run near their peak, even in the late 2x2 and 4x4
//! stages) and the groups run in parallel, one single-threaded GEMM per thread.
//!
//! - forward: `out[co, cols] = W[co, K] · col[K, cols]`
//! - weight gradient: `dW[co, K] += dY[co, cols] · col[K, cols]ᵀ` (summed over groups)
//! - input gradient: `dcol[K, cols] = Wᵀ[K, co] · dY[co, cols]`, then col2im adds `dcol`
//!   back onto the input pixels each column read.

use rayon::prelude::*;

/// Output pixels per GEMM we aim for: large enough to amortise packing, small enough that
/// the column matrix of one group stays in L2/L3 and every thread gets groups.
const COLS_PER_GROUP: usize = 1024;

/// Geometry of one 2-D convolution: square kernel, same stride and padding on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvShape {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Whether the kernel fits inside the padded input (so the output has at least one pixel).
    pub fn is_valid(&self) -> bool {
        self.stride > 0
            && self.k > 0
            && self.h + 2 * self.pad >= self.k
            && self.w + 2 * self.pad >= self.k
    }

    /// Rows of the column matrix: `c_in·k·k`.
    fn taps(&self) -> usize {
        self.c_in * self.k * self.k
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh() * self.ow()
    }

    /// Images per group: about [`COLS_PER_GROUP`] output pixels, at least one group per thread.
    fn images_per_group(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        let per_thread = self.batch.div_ceil(threads).max(1);
        (COLS_PER_GROUP / self.out_plane().max(1)).clamp(1, per_thread)
    }

    /// The output columns `[lo, hi)` of one row whose input column `ow·stride + kw − pad` lies
    /// inside the image; the others read padding.
    fn valid_cols(&self, kw: usize) -> (usize, usize) {
        let (s, ow) = (self.stride, self.ow());
        let lo = if self.pad > kw {
            (self.pad - kw).div_ceil(s)
        } else {
            0
        };
        let hi = if self.w + self.pad > kw {
            (self.w + self.pad - kw).div_ceil(s).min(ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// `C[m, n] (+)= A · B` on strided row-major views; `accumulate` adds to what `C` holds.
///
/// Strides are in elements: `(row, col)` for each matrix.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Every element the strides can reach must lie inside the slices: this is what makes
    // the raw-pointer call below sound.
    assert!(c.len() > (m - 1) * c_rs + (n - 1));
    if k > 0 {
        assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
        assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    } else if !accumulate {
        for row in 0..m {
            c[row * c_rs..row * c_rs + n].fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above bound every index gemm forms from these strides, and `c`
    // is borrowed mutably, so it aliases neither `a` nor `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Fills `col` (`[taps, nb·oh·ow]`) from the `nb` images of `x` (`[nb, c_in, h, w]`).
fn im2col(s: &ConvShape, x: &[f32], nb: usize, col: &mut [f32]) {
    let (k, stride, pad) = (s.k, s.stride, s.pad);
    let (ow, plane, cols) = (s.ow(), s.out_plane(), nb * s.out_plane());
    for c in 0..s.c_in {
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut col[((c * k + kh) * k + kw) * cols..][..cols];
                let (lo, hi) = s.valid_cols(kw);
                for img in 0..nb {
                    let src = &x[(img * s.c_in + c) * s.in_plane()..][..s.in_plane()];
                    let dst = &mut row[img * plane..][..plane];
                    for (oy, drow) in dst.chunks_exact_mut(ow).enumerate() {
                        let iy = (oy * stride + kh).wrapping_sub(pad);
                        if iy >= s.h {
                            drow.fill(0.0);
                            continue;
                        }
                        let srow = &src[iy * s.w..][..s.w];
                        drow[..lo].fill(0.0);
                        drow[hi..].fill(0.0);
                        if stride == 1 {
                            drow[lo..hi].copy_from_slice(&srow[lo + kw - pad..hi + kw - pad]);
                        } else {
                            for (ox, d) in (lo..hi).zip(&mut drow[lo..hi]) {
                                *d = srow[ox * stride + kw - pad];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds each column of `col` (`[taps, nb·oh·ow]`) back onto the input pixel it was read from,
/// into `dx` (`[nb, c_in, h, w]`).
fn col2im(s: &ConvShape, col: &[f32], nb: usize, dx: &mut [f32]) {
    let (k, stride, pad) = (s.k, s.stride, s.pad);
    let (ow, plane, cols) = (s.ow(), s.out_plane(), nb * s.out_plane());
    for c in 0..s.c_in {
        for kh in 0..k {
            for kw in 0..k {
                let row = &col[((c * k + kh) * k + kw) * cols..][..cols];
                let (lo, hi) = s.valid_cols(kw);
                for img in 0..nb {
                    let dst = &mut dx[(img * s.c_in + c) * s.in_plane()..][..s.in_plane()];
                    let src = &row[img * plane..][..plane];
                    for (oy, srow) in src.chunks_exact(ow).enumerate() {
                        let iy = (oy * stride + kh).wrapping_sub(pad);
                        if iy >= s.h {
                            continue;
                        }
                        let drow = &mut dst[iy * s.w..][..s.w];
                        if stride == 1 {
                            let d = &mut drow[lo + kw - pad..hi + kw - pad];
                            for (d, v) in d.iter_mut().zip(&srow[lo..hi]) {
                                *d += v;
                            }
                        } else {
                            for ox in lo..hi {
                                drow[ox * stride + kw - pad] += srow[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Reorders `nb` images of `[nb, c, plane]` into `[c, nb·plane]`.
fn images_to_rows(src: &[f32], nb: usize, c: usize, plane: usize, dst: &mut [f32]) {
    for ch in 0..c {
        for img in 0..nb {
            dst[(ch * nb + img) * plane..][..plane]
                .copy_from_slice(&src[(img * c + ch) * plane..][..plane]);
        }
    }
}

/// The inverse of [`images_to_rows`]: `[c, nb·plane]` back to `[nb, c, plane]`.
fn rows_to_images(src: &[f32], nb: usize, c: usize, plane: usize, dst: &mut [f32]) {
    for ch in 0..c {
        for img in 0..nb {
            dst[(img * c + ch) * plane..][..plane]
                .copy_from_slice(&src[(ch * nb + img) * plane..][..plane]);
        }
    }
}

/// Scratch space one thread reuses across its groups.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    rows: Vec<f32>,
}

fn resize(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// Forward: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, k, k]` → `[batch, c_out, oh, ow]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let (taps, plane, c_out) = (s.taps(), s.out_plane(), s.c_out);
    let nb = s.images_per_group();
    let mut out = vec![0.0f32; s.batch * c_out * plane];
    out.par_chunks_mut(nb * c_out * plane)
        .zip(x.par_chunks(nb * s.c_in * s.in_plane()))
        .for_each_init(Scratch::default, |scratch, (out, x)| {
            let nb = out.len() / (c_out * plane);
            let cols = nb * plane;
            let col = resize(&mut scratch.col, taps * cols);
            im2col(s, x, nb, col);
            if nb == 1 {
                gemm(
                    c_out,
                    cols,
                    taps,
                    out,
                    cols,
                    weight,
                    (taps, 1),
                    col,
                    (cols, 1),
                    false,
                );
            } else {
                let rows = resize(&mut scratch.rows, c_out * cols);
                gemm(
                    c_out,
                    cols,
                    taps,
                    rows,
                    cols,
                    weight,
                    (taps, 1),
                    col,
                    (cols, 1),
                    false,
                );
                rows_to_images(rows, nb, c_out, plane, out);
            }
        });
    out
}

/// Both gradients of [`forward`] for the output gradient `dy` `[batch, c_out, oh, ow]`:
/// the weight's `[c_out, c_in, k, k]` and, when `want_dx`, the input's `[batch, c_in, h, w]`.
///
/// The batch is cut into one fixed run of images per thread, and the weight gradients of the
/// runs are added in order, so the result is the same bits on every call (a resumed run
/// repeats the uninterrupted one exactly).
pub fn backward(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (taps, plane, c_out) = (s.taps(), s.out_plane(), s.c_out);
    let (in_image, out_image) = (s.c_in * s.in_plane(), c_out * plane);
    let nb = s.images_per_group();
    let runs = split_batch(s.batch);
    let mut dx = want_dx.then(|| vec![0.0f32; s.batch * in_image]);
    let dx_runs: Vec<Option<&mut [f32]>> = match dx.as_mut() {
        Some(dx) => split_at_images(dx, in_image, &runs)
            .into_iter()
            .map(Some)
            .collect(),
        None => runs.iter().map(|_| None).collect(),
    };
    let partials: Vec<Vec<f32>> = dx_runs
        .into_par_iter()
        .zip(runs.par_iter())
        .map(|(mut dx, &(first, end))| {
            let mut dw = vec![0.0f32; c_out * taps];
            let mut scratch = Scratch::default();
            for lo in (first..end).step_by(nb) {
                let nb = nb.min(end - lo);
                let cols = nb * plane;
                let x = &x[lo * in_image..][..nb * in_image];
                let dy = &dy[lo * out_image..][..nb * out_image];
                let dy_rows: &[f32] = if nb == 1 {
                    dy
                } else {
                    let rows = resize(&mut scratch.rows, c_out * cols);
                    images_to_rows(dy, nb, c_out, plane, rows);
                    rows
                };
                let col = resize(&mut scratch.col, taps * cols);
                im2col(s, x, nb, col);
                // dW[co, t] += Σ_cols dY[co, col] · col[t, col]
                gemm(
                    c_out,
                    taps,
                    cols,
                    &mut dw,
                    taps,
                    dy_rows,
                    (cols, 1),
                    col,
                    (1, cols),
                    true,
                );
                if let Some(dx) = dx.as_deref_mut() {
                    // dcol[t, col] = Σ_co W[co, t] · dY[co, col], written over the column matrix.
                    gemm(
                        taps,
                        cols,
                        c_out,
                        col,
                        cols,
                        weight,
                        (1, taps),
                        dy_rows,
                        (cols, 1),
                        false,
                    );
                    col2im(
                        s,
                        col,
                        nb,
                        &mut dx[(lo - first) * in_image..][..nb * in_image],
                    );
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0.0f32; c_out * taps];
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    (dw, dx)
}

/// The batch as one run of consecutive images `[first, end)` per thread (fewer when the batch
/// is smaller than the pool).
pub(crate) fn split_batch(batch: usize) -> Vec<(usize, usize)> {
    let runs = rayon::current_num_threads().clamp(1, batch.max(1));
    (0..runs)
        .map(|r| (r * batch / runs, (r + 1) * batch / runs))
        .collect()
}

/// `data` (`image` values per image) cut into one mutable slice per run.
fn split_at_images<'a>(
    mut data: &'a mut [f32],
    image: usize,
    runs: &[(usize, usize)],
) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(runs.len());
    for &(first, end) in runs {
        let (run, rest) = data.split_at_mut((end - first) * image);
        out.push(run);
        data = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one multiply-add at a time.
    fn naive_forward(s: &ConvShape, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (oh, ow) = (s.oh(), s.ow());
        let mut out = vec![0.0; s.batch * s.c_out * oh * ow];
        for b in 0..s.batch {
            for co in 0..s.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for ci in 0..s.c_in {
                            for kh in 0..s.k {
                                for kw in 0..s.k {
                                    let iy = (oy * s.stride + kh) as isize - s.pad as isize;
                                    let ix = (ox * s.stride + kw) as isize - s.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * s.c_in + ci) * s.h + iy as usize) * s.w
                                        + ix as usize];
                                    acc += xv * w[((co * s.c_in + ci) * s.k + kh) * s.k + kw];
                                }
                            }
                        }
                        out[((b * s.c_out + co) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    fn shapes() -> Vec<ConvShape> {
        let mut all = Vec::new();
        for (k, stride, pad) in [
            (3, 1, 1),
            (3, 2, 1),
            (1, 1, 0),
            (1, 2, 0),
            (7, 2, 3),
            (3, 1, 0),
            (2, 2, 1),
        ] {
            for (batch, h, w) in [(1, 5, 5), (3, 6, 7), (5, 2, 2)] {
                let s = ConvShape {
                    batch,
                    c_in: 3,
                    h,
                    w,
                    c_out: 4,
                    k,
                    stride,
                    pad,
                };
                if s.is_valid() {
                    all.push(s);
                }
            }
        }
        all
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "element {i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        for s in shapes() {
            let x = values(s.batch * s.c_in * s.h * s.w, 1);
            let w = values(s.c_out * s.c_in * s.k * s.k, 2);
            close(&forward(&s, &x, &w), &naive_forward(&s, &x, &w));
        }
    }

    /// The gradients are the adjoint of the forward map: `<dy, conv(x, w)>` is linear in
    /// both, so `<dy, conv(e_i, w)> = dx_i` and `<dy, conv(x, e_j)> = dw_j`.
    #[test]
    fn gradients_are_the_adjoint_of_the_forward() {
        for s in shapes() {
            let x = values(s.batch * s.c_in * s.h * s.w, 3);
            let w = values(s.c_out * s.c_in * s.k * s.k, 4);
            let dy = values(s.batch * s.c_out * s.oh() * s.ow(), 5);
            let (dw, dx) = backward(&s, &x, &w, &dy, true);
            let dot = |v: &[f32]| v.iter().zip(&dy).map(|(a, b)| a * b).sum::<f32>();
            let dx = dx.unwrap();
            for i in 0..x.len() {
                let mut e = vec![0.0; x.len()];
                e[i] = 1.0;
                let expect = dot(&naive_forward(&s, &e, &w));
                assert!(
                    (dx[i] - expect).abs() < 1e-3,
                    "{s:?} dx[{i}]: {} vs {expect}",
                    dx[i]
                );
            }
            for j in 0..w.len() {
                let mut e = vec![0.0; w.len()];
                e[j] = 1.0;
                let expect = dot(&naive_forward(&s, &x, &e));
                assert!(
                    (dw[j] - expect).abs() < 1e-3,
                    "{s:?} dw[{j}]: {} vs {expect}",
                    dw[j]
                );
            }
            let (dw_only, none) = backward(&s, &x, &w, &dy, false);
            assert!(none.is_none());
            assert_eq!(dw_only, dw);
        }
    }
}
