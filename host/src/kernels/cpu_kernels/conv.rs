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
//! - weight gradient: `dW[co, K] += dY[co, cols] · col[K, cols]ᵀ`, accumulated as `dWᵀ` per
//!   thread over a fixed run of images, the runs added in order (the same bits every time)
//! - input gradient: `dcol[K, cols] = Wᵀ[K, co] · dY[co, cols]`, then col2im adds `dcol`
//!   back onto the input pixels each column read.
//!
//! Stride-1 convolutions that keep the map's size (the 3x3 blocks) build and scatter their
//! column rows as one shifted copy per plane ([`Shift`]); the others (strided, stems) by index
//! gathers from a zero-padded plane ([`Gather`]).

use rayon::prelude::*;

use super::matmul::gemm;
use super::resize;

/// Output pixels per GEMM we aim for: enough to amortise packing in the late 4x4 and 2x2
/// stages, few enough that the column matrix stays in cache and that 16x16 and larger maps
/// take one image per GEMM, written straight into the output with no reordering. Measured
/// on the small-ResNet bench (2 cores): 1024 → 256 columns cut the SimCLR step 640 → 550 ms;
/// 128 was no better than 256.
const COLS_PER_GROUP: usize = 256;

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
}

/// A stride-1 "same" convolution (output as large as the input): each kernel tap reads the
/// whole input plane shifted by a fixed offset. One contiguous copy (or add) per plane and
/// tap, then the entries that read padding are zeroed from a list made once per call (rows
/// above or below the image, and the columns a plain shift wraps onto the neighbouring row),
/// instead of one short copy per output row (4 to 32 values in these networks) or a `memset`
/// call per row edge.
#[derive(Debug)]
struct Shift {
    /// Per tap `(kh, kw)`, row-major: the output range `[lo, hi)` that reads the plane at
    /// `i + offset`, and the range of [`Shift::zeros`] holding the tap's padding entries.
    taps: Vec<ShiftTap>,
    /// Output indices that read padding, tap after tap.
    zeros: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct ShiftTap {
    lo: usize,
    hi: usize,
    offset: isize,
    zeros: (usize, usize),
}

impl Shift {
    fn same_size(s: &ConvShape) -> Option<Shift> {
        if !(s.stride == 1 && s.oh() == s.h && s.ow() == s.w) {
            return None;
        }
        let (h, w, pad) = (s.h as isize, s.w as isize, s.pad as isize);
        let (mut taps, mut zeros) = (Vec::new(), Vec::new());
        for kh in 0..s.k as isize {
            for kw in 0..s.k as isize {
                let (dy, dx) = (kh - pad, kw - pad);
                let offset = dy * w + dx;
                // Output rows whose source row lies in the image, then the index range whose
                // source `i + offset` lies in those rows.
                let first = (-dy).clamp(0, h);
                let end = (h - dy).clamp(first, h);
                let lo = (first * w).max(-offset).clamp(0, h * w);
                let hi = (end * w).min(h * w - offset).max(lo);
                let start = zeros.len();
                for y in 0..h {
                    for x in 0..w {
                        let (sy, sx) = (y + dy, x + dx);
                        if !(0..h).contains(&sy) || !(0..w).contains(&sx) {
                            zeros.push((y * w + x) as u32);
                        }
                    }
                }
                taps.push(ShiftTap {
                    lo: lo as usize,
                    hi: hi as usize,
                    offset,
                    zeros: (start, zeros.len()),
                });
            }
        }
        Some(Shift { taps, zeros })
    }

    /// Zeroes the output entries of `tap` that read padding.
    fn clear_padding(&self, tap: &ShiftTap, plane: &mut [f32]) {
        for &i in &self.zeros[tap.zeros.0..tap.zeros.1] {
            plane[i as usize] = 0.0;
        }
    }

    /// `dst[i] = src[i + offset]` for kernel tap `tap` (`kh·k + kw`), zero where that reads
    /// padding.
    fn copy(&self, tap: usize, src: &[f32], dst: &mut [f32]) {
        let t = &self.taps[tap];
        if t.lo < t.hi {
            let from = (t.lo as isize + t.offset) as usize;
            dst[t.lo..t.hi].copy_from_slice(&src[from..from + (t.hi - t.lo)]);
        }
        // Outside [lo, hi) everything reads padding; the list covers those entries too.
        self.clear_padding(t, dst);
    }

    /// `dst[i + offset] += src[i]` for kernel tap `tap`, skipping entries that read padding
    /// (they are zeroed in `src` first).
    fn add(&self, tap: usize, src: &mut [f32], dst: &mut [f32]) {
        let t = &self.taps[tap];
        self.clear_padding(t, src);
        if t.lo < t.hi {
            let from = (t.lo as isize + t.offset) as usize;
            for (d, v) in dst[from..from + (t.hi - t.lo)]
                .iter_mut()
                .zip(&src[t.lo..t.hi])
            {
                *d += v;
            }
        }
    }
}

/// Strided and other size-changing convolutions: for every kernel tap, the index each output
/// pixel reads in the zero-padded input plane. A plane is padded once (in a per-thread
/// buffer) and then each of its `k·k` column rows is one gather, with no per-row bounds
/// logic (the row-by-row copies it replaced ran a scalar loop with bounds checks and a
/// `memset` call per row edge for stride 2).
#[derive(Debug)]
struct Gather {
    /// `[k·k, oh·ow]`: the padded-plane index each output pixel reads, tap by tap.
    index: Vec<u32>,
    /// Side lengths of the padded plane.
    padded_h: usize,
    padded_w: usize,
    pad: usize,
}

impl Gather {
    fn new(s: &ConvShape) -> Gather {
        let (padded_h, padded_w) = (s.h + 2 * s.pad, s.w + 2 * s.pad);
        let mut index = Vec::with_capacity(s.k * s.k * s.out_plane());
        for kh in 0..s.k {
            for kw in 0..s.k {
                for oy in 0..s.oh() {
                    for ox in 0..s.ow() {
                        let at = (oy * s.stride + kh) * padded_w + ox * s.stride + kw;
                        index.push(at as u32);
                    }
                }
            }
        }
        // What makes the unchecked reads in im2col and col2im sound: the last tap's last
        // pixel reads row `(oh−1)·stride + k−1 < h + 2·pad` and likewise for columns.
        assert!(index.iter().all(|&i| (i as usize) < padded_h * padded_w));
        Gather {
            index,
            padded_h,
            padded_w,
            pad: s.pad,
        }
    }

    fn padded_plane(&self) -> usize {
        self.padded_h * self.padded_w
    }

    /// The length of the plane the indices read: the padded plane, or without padding the
    /// input plane itself. Every index is below it.
    fn source_len(&self, s: &ConvShape) -> usize {
        if self.pad == 0 {
            s.in_plane()
        } else {
            self.padded_plane()
        }
    }

    /// The index rows of each tap, `oh·ow` entries each.
    fn taps(&self, plane: usize) -> std::slice::ChunksExact<'_, u32> {
        self.index.chunks_exact(plane)
    }

    /// Copies `src` (one `h × w` plane) into the interior of `padded`, whose border is zero.
    fn pad_into(&self, src: &[f32], w: usize, padded: &mut [f32]) {
        for (y, row) in src.chunks_exact(w).enumerate() {
            let at = (y + self.pad) * self.padded_w + self.pad;
            padded[at..at + w].copy_from_slice(row);
        }
    }

    /// Adds the interior of `padded` onto `dst` (one `h × w` plane).
    fn add_interior(&self, padded: &[f32], w: usize, dst: &mut [f32]) {
        for (y, row) in dst.chunks_exact_mut(w).enumerate() {
            let at = (y + self.pad) * self.padded_w + self.pad;
            for (d, v) in row.iter_mut().zip(&padded[at..at + w]) {
                *d += v;
            }
        }
    }
}

/// How column rows are read from the input: [`Shift`]'s plane copies for stride-1 "same"
/// convolutions, [`Gather`] for the rest.
#[derive(Debug)]
enum TapReader {
    Shift(Shift),
    Gather(Gather),
}

impl TapReader {
    fn new(s: &ConvShape) -> TapReader {
        match Shift::same_size(s) {
            Some(shift) => TapReader::Shift(shift),
            None => TapReader::Gather(Gather::new(s)),
        }
    }
}

/// Fills `col` (`[taps, nb·oh·ow]`) from the `nb` images of `x` (`[nb, c_in, h, w]`).
/// `padded` is scratch for [`Gather`].
fn im2col(
    s: &ConvShape,
    reader: &TapReader,
    x: &[f32],
    nb: usize,
    col: &mut [f32],
    padded: &mut Vec<f32>,
) {
    let (k, plane, cols) = (s.k, s.out_plane(), nb * s.out_plane());
    match reader {
        TapReader::Shift(shift) => {
            for (tap, row) in col.chunks_exact_mut(cols).enumerate() {
                let c = tap / (k * k);
                for (img, dst) in row.chunks_exact_mut(plane).enumerate() {
                    let src = &x[(img * s.c_in + c) * s.in_plane()..][..s.in_plane()];
                    shift.copy(tap % (k * k), src, dst);
                }
            }
        }
        TapReader::Gather(gather) => {
            // Zeroed once: each plane then overwrites only the interior.
            padded.clear();
            padded.resize(gather.padded_plane(), 0.0);
            for img in 0..nb {
                for c in 0..s.c_in {
                    let src = &x[(img * s.c_in + c) * s.in_plane()..][..s.in_plane()];
                    let source: &[f32] = if gather.pad == 0 {
                        src
                    } else {
                        gather.pad_into(src, s.w, padded);
                        padded
                    };
                    // Every index is below the padded plane's size, and the source holds at
                    // least that many values: checked once here, not per value.
                    assert!(source.len() >= gather.source_len(s));
                    for (tap, index) in gather.taps(plane).enumerate() {
                        let row = &mut col[(c * k * k + tap) * cols + img * plane..][..plane];
                        for (d, &i) in row.iter_mut().zip(index) {
                            // SAFETY: `i < gather.source_len(s) <= source.len()` (Gather::new
                            // and the assert above).
                            *d = unsafe { *source.get_unchecked(i as usize) };
                        }
                    }
                }
            }
        }
    }
}

/// Adds each column of `col` (`[taps, nb·oh·ow]`) back onto the input pixel it was read from,
/// into `dx` (`[nb, c_in, h, w]`). `padded` is scratch for [`Gather`].
///
/// `col` is scratch: the stride-1 path zeroes the entries that read padding before adding.
fn col2im(
    s: &ConvShape,
    reader: &TapReader,
    col: &mut [f32],
    nb: usize,
    dx: &mut [f32],
    padded: &mut Vec<f32>,
) {
    let (k, plane, cols) = (s.k, s.out_plane(), nb * s.out_plane());
    match reader {
        TapReader::Shift(shift) => {
            for (tap, row) in col.chunks_exact_mut(cols).enumerate() {
                let c = tap / (k * k);
                for (img, src) in row.chunks_exact_mut(plane).enumerate() {
                    let dst = &mut dx[(img * s.c_in + c) * s.in_plane()..][..s.in_plane()];
                    shift.add(tap % (k * k), src, dst);
                }
            }
        }
        TapReader::Gather(gather) => {
            padded.resize(gather.padded_plane(), 0.0);
            for img in 0..nb {
                for c in 0..s.c_in {
                    let dst = &mut dx[(img * s.c_in + c) * s.in_plane()..][..s.in_plane()];
                    // Without padding the indices are the input plane's own: add in place.
                    let sink: &mut [f32] = if gather.pad == 0 {
                        dst
                    } else {
                        padded.fill(0.0);
                        padded
                    };
                    // For one tap no two output pixels read the same input pixel, so these
                    // adds never collide; the taps are added one after another.
                    assert!(sink.len() >= gather.source_len(s));
                    for (tap, index) in gather.taps(plane).enumerate() {
                        let row = &col[(c * k * k + tap) * cols + img * plane..][..plane];
                        for (v, &i) in row.iter().zip(index) {
                            // SAFETY: `i < gather.source_len(s) <= sink.len()` (Gather::new
                            // and the assert above).
                            unsafe { *sink.get_unchecked_mut(i as usize) += v };
                        }
                    }
                    if gather.pad != 0 {
                        gather.add_interior(padded, s.w, dst);
                    }
                }
            }
        }
    }
}

/// Columns per block of [`transpose_into`].
const TILE: usize = 16;

/// `src` `[rows, cols]` → `dst` `[cols, rows]`, by blocks of [`TILE`] columns (rows of
/// `dst`, which stay in cache while they fill); large matrices (the weights of the late
/// stages) split those blocks over the pool's threads.
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const PARALLEL_FROM: usize = 1 << 15;
    let block = |c0: usize, dst: &mut [f32]| {
        let c1 = (c0 + TILE).min(cols);
        for r in 0..rows {
            let row = &src[r * cols + c0..r * cols + c1];
            for (c, &v) in row.iter().enumerate() {
                dst[c * rows + r] = v;
            }
        }
    };
    let dst = &mut dst[..rows * cols];
    if rows * cols >= PARALLEL_FROM {
        dst.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(i, d)| block(i * TILE, d));
    } else {
        dst.chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(i, d)| block(i * TILE, d));
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
    dy_t: Vec<f32>,
    /// One zero-padded input plane ([`Gather`]).
    padded: Vec<f32>,
}

/// Forward: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, k, k]` → `[batch, c_out, oh, ow]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let (taps, plane, c_out) = (s.taps(), s.out_plane(), s.c_out);
    let nb = s.images_per_group();
    let reader = TapReader::new(s);
    // The GEMM reads the weight along output channels; laid out `[taps, c_out]` once here,
    // that read is contiguous, instead of every group's GEMM gathering it at stride `taps`.
    let mut weight_t = vec![0.0f32; taps * c_out];
    transpose_into(weight, c_out, taps, &mut weight_t);
    let group_in = nb * s.c_in * s.in_plane();
    super::par_new(
        s.batch * c_out * plane,
        nb * c_out * plane,
        Scratch::default,
        |scratch, group, out| {
            let nb = out.len() / (c_out * plane);
            let x = &x[group * group_in..][..nb * s.c_in * s.in_plane()];
            let cols = nb * plane;
            let col = resize(&mut scratch.col, taps * cols);
            im2col(s, &reader, x, nb, col, &mut scratch.padded);
            // One image: the GEMM writes the output directly. Several: it writes
            // `[c_out, nb·plane]` rows, reordered into images after.
            let dst = if nb == 1 {
                &mut *out
            } else {
                resize(&mut scratch.rows, c_out * cols)
            };
            gemm(
                c_out,
                cols,
                taps,
                (dst, (cols, 1)),
                &weight_t,
                (1, c_out),
                col,
                (cols, 1),
                false,
                false,
            );
            if nb > 1 {
                rows_to_images(&scratch.rows, nb, c_out, plane, out);
            }
        },
    )
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
    let (dw, dx) = gradients(s, Some(x), weight, dy, want_dx);
    (dw.expect("asked with the input"), dx)
}

/// The input gradient of [`forward`] alone (for a layer whose weight gradient another kernel
/// computes): [`backward`]'s column GEMM and col2im, without the weight gradient's im2col.
pub fn input_gradient(s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    gradients(s, None, weight, dy, true)
        .1
        .expect("asked for the input gradient")
}

/// [`backward`], with the weight gradient computed only when the input `x` is given.
fn gradients(
    s: &ConvShape,
    x: Option<&[f32]>,
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (taps, plane, c_out) = (s.taps(), s.out_plane(), s.c_out);
    let (in_image, out_image) = (s.c_in * s.in_plane(), c_out * plane);
    let nb = s.images_per_group();
    let reader = TapReader::new(s);
    let runs = super::split_batch(s.batch);
    // Zeroed in parallel, image by image: col2im adds into it.
    let mut dx = want_dx.then(|| super::par_new(s.batch * in_image, in_image, || (), |_, _, _| {}));
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
            let mut dw_t = vec![0.0f32; taps * c_out];
            let mut scratch = Scratch::default();
            for lo in (first..end).step_by(nb) {
                let nb = nb.min(end - lo);
                let cols = nb * plane;
                let dy = &dy[lo * out_image..][..nb * out_image];
                let col = resize(&mut scratch.col, taps * cols);
                if let Some(x) = x {
                    let x = &x[lo * in_image..][..nb * in_image];
                    im2col(s, &reader, x, nb, col, &mut scratch.padded);
                    // dW[co, t] += Σ_cols dY[co, col] · col[t, col]. Both operands hold the
                    // summed axis contiguously, so one must be read across it: with dY
                    // transposed to [cols, co] (small) and the result kept as dWᵀ [t, co],
                    // that one is the column matrix, which the GEMM packs six rows at a time.
                    let dy_t = resize(&mut scratch.dy_t, cols * c_out);
                    for (img, dy) in dy.chunks_exact(out_image).enumerate() {
                        transpose_into(
                            dy,
                            c_out,
                            plane,
                            &mut dy_t[img * plane * c_out..][..plane * c_out],
                        );
                    }
                    gemm(
                        c_out,
                        taps,
                        cols,
                        (&mut dw_t, (1, c_out)),
                        dy_t,
                        (1, c_out),
                        col,
                        (1, cols),
                        true,
                        false,
                    );
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let dy_rows: &[f32] = if nb == 1 {
                        dy
                    } else {
                        let rows = resize(&mut scratch.rows, c_out * cols);
                        images_to_rows(dy, nb, c_out, plane, rows);
                        rows
                    };
                    // dcol[t, col] = Σ_co W[co, t] · dY[co, col], written over the column matrix.
                    gemm(
                        taps,
                        cols,
                        c_out,
                        (col, (cols, 1)),
                        weight,
                        (1, taps),
                        dy_rows,
                        (cols, 1),
                        false,
                        false,
                    );
                    col2im(
                        s,
                        &reader,
                        col,
                        nb,
                        &mut dx[(lo - first) * in_image..][..nb * in_image],
                        &mut scratch.padded,
                    );
                }
            }
            dw_t
        })
        .collect();
    let dw = x.map(|_| {
        let dw_t = super::sum_in_order(&partials, taps * c_out);
        let mut dw = vec![0.0f32; c_out * taps];
        transpose_into(&dw_t, taps, c_out, &mut dw);
        dw
    });
    (dw, dx)
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
        super::super::test_values(n, seed, -1.0, 1.0)
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
            (5, 1, 2),
        ] {
            // Planes of one row, of a few pixels, and larger ones (16x16, 17x20).
            for (batch, h, w) in [
                (1, 5, 5),
                (3, 6, 7),
                (5, 2, 2),
                (2, 1, 3),
                (2, 16, 16),
                (1, 17, 20),
            ] {
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

    #[test]
    fn forward_matches_the_definition() {
        for s in shapes() {
            let x = values(s.batch * s.c_in * s.h * s.w, 1);
            let w = values(s.c_out * s.c_in * s.k * s.k, 2);
            let expected = naive_forward(&s, &x, &w);
            let out = forward(&s, &x, &w);
            assert_eq!(out.len(), expected.len());
            check_entries(&s, "out", &out, |i| expected[i]);
        }
    }

    /// Each entry of `grad` against `expected(i)`.
    fn check_entries(s: &ConvShape, name: &str, grad: &[f32], expected: impl Fn(usize) -> f32) {
        for (i, &g) in grad.iter().enumerate() {
            let expect = expected(i);
            assert!(
                (g - expect).abs() < 1e-3,
                "{s:?} {name}[{i}]: {g} vs {expect}"
            );
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
            let unit = |n: usize, i: usize| {
                let mut e = vec![0.0; n];
                e[i] = 1.0;
                e
            };
            let dx = dx.unwrap();
            check_entries(&s, "dx", &dx, |i| {
                dot(&naive_forward(&s, &unit(x.len(), i), &w))
            });
            check_entries(&s, "dw", &dw, |j| {
                dot(&naive_forward(&s, &x, &unit(w.len(), j)))
            });
            let (dw_only, none) = backward(&s, &x, &w, &dy, false);
            assert!(none.is_none());
            assert_eq!(dw_only, dw);
            assert_eq!(input_gradient(&s, &w, &dy), dx, "dx alone");
        }
    }
}
