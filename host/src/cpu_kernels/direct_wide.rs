//! Direct 3x3 convolution (stride 1, padding 1) for small maps with many channels: the output
//! channels in the vector lanes.
//!
//! On 8x8 and 4x4 maps a row is too short to fill a vector of pixels (`direct.rs`), and
//! im2col + GEMM pays its column matrix again: built, packed, then read. Here a tile holds
//! [`CO_VECS`] vectors of output channels for [`PIXELS`] output pixels in registers. For each
//! input channel and tap the kernel loads the tile's weights (one vector per channel block),
//! broadcasts each pixel's input value read straight from the zero-padded plane, and adds.
//! That is a GEMM microkernel whose B operand is read in place. The tile is then written to the
//! NCHW output through a small transpose.
//!
//! - forward: `out[co, p] = Σ_ci Σ_tap w[co, ci, tap] · x[ci, p + shift_tap]`
//! - input gradient: the same convolution of `dy`, with the kernels turned 180° and the channel
//!   axes swapped
//! - weight gradient: `dw[co, ci, tap] = Σ_p dy[co, p] · x[ci, p + shift_tap]`, a GEMM over the
//!   pixels with the output channels in the lanes (`dy` transposed to pixel-major first)
//!
//! AVX-512 only. `SSLHOST_CPU_KERNELS` set to `no-direct` or `im2col` turns it off with the
//! other direct kernels.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::ConvShape;
use super::direct::{Plane, TAPS, Vector, features, pack_forward, pack_input_gradient, per_image};

/// Vectors of output channels per tile (16 lanes each).
const CO_VECS: usize = 4;
/// Output pixels per tile: `CO_VECS · PIXELS` = 16 accumulators of AVX-512's 32 registers.
/// Measured against 2x8, 2x12, 4x3, 4x5, 4x6 and 8x2 (128 channels at 4x4: 3.0 ms against
/// 3.3–9.6); the 24-accumulator tiles were slower, from their spills.
const PIXELS: usize = 4;
/// Output channels per tile.
const CO_TILE: usize = CO_VECS * 16;

/// Whether this kernel beats im2col + GEMM and Winograd on `s`, for the forward pass and the
/// input gradient: at least a tile's 64 channels in and out, on 8x8 maps and smaller with up
/// to 64 channels, or 4x4 and smaller with up to 256. Measured per layer of a batch of 128 (2
/// cores, ms, forward, this / im2col / Winograd; `direct::timing`): 64 channels at 7x7 2.4–2.5
/// / 3.0–3.5 / 3.2–3.4, at 8x8 2.9–3.1 / 3.6–3.7 / 3.2–3.8; 128 at 4x4 3.1 / 4.0–4.3 / 4.0–4.8,
/// at 2x2 1.0 / 1.7 / 2.2; 256 at 4x4 12.1 / 13.7 / 14.1. Winograd's 2.25x fewer products win
/// from 128 channels at 8x8 (11.8 / 13.4 / 10.5) and 512 at 4x4 (48.9 / 56.6 / 41.7); with 32
/// channels half of each tile idles and im2col wins (7x7: 1.3 / 1.0).
pub fn pays(s: &ConvShape) -> bool {
    let (narrow, wide, plane) = (s.c_in.min(s.c_out), s.c_in.max(s.c_out), s.h * s.w);
    s.k == 3
        && s.stride == 1
        && s.pad == 1
        && features().0
        && narrow >= CO_TILE
        && ((plane <= 64 && wide <= 64) || (plane <= 16 && wide <= 256))
}

/// The same for the weight gradient, up to 128 channels (ms, this / im2col / Winograd): 64
/// channels at 7x7 2.3 / 2.6 / 3.5, at 8x8 2.9 / 3.3 / 3.8; 128 at 4x4 3.2 / 3.3 / 4.6, at 2x2
/// 1.0 / 1.2 / 2.1; with 256 at 4x4 im2col wins (13.4 / 12.8 / 14.9).
pub fn pays_weight(s: &ConvShape) -> bool {
    pays(s) && s.c_in.max(s.c_out) <= 128
}

/// Forward: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, 3, 3]` → `[batch, c_out, h, w]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let packed = pack_forward(s, weight, CO_TILE);
    convolve(s.batch, s.c_in, s.c_out, Plane::of(s), x, &packed)
}

/// The input gradient of [`forward`] for `dy` `[batch, c_out, h, w]` → `[batch, c_in, h, w]`.
pub fn input_gradient(s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let packed = pack_input_gradient(s, weight, CO_TILE);
    convolve(s.batch, s.c_out, s.c_in, Plane::of(s), dy, &packed)
}

/// `x` `[batch, inputs, h, w]` convolved with `packed` (`direct::pack`'s layout in tiles of
/// `CO_TILE`) → `[batch, outputs, h, w]`.
fn convolve(
    batch: usize,
    inputs: usize,
    outputs: usize,
    p: Plane,
    x: &[f32],
    packed: &[f32],
) -> Vec<f32> {
    assert!(packed.len() >= outputs.div_ceil(CO_TILE) * inputs * TAPS * CO_TILE);
    assert!(
        features().0,
        "the wide direct kernel needs AVX-512: `pays` checks this"
    );
    // SAFETY: `image` writes every output of its image (each channel's whole plane).
    unsafe {
        per_image(batch, inputs, outputs, p, x, |padded, out| {
            image(p, inputs, outputs, padded, packed, out)
        })
    }
}

/// One image: `padded` `[inputs, h+2, w+2]` → `out` `[outputs, h, w]`, every value written.
fn image(
    p: Plane,
    inputs: usize,
    outputs: usize,
    padded: &[f32],
    packed: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    assert!(padded.len() >= inputs * p.padded());
    assert!(out.len() >= outputs * p.h * p.w);
    let out = out.as_mut_ptr().cast::<f32>();
    // SAFETY: AVX-512 was detected at run time (asserted in `convolve`), and the asserts here
    // and there bound every read and write of `image_with`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::image_avx512(p, inputs, outputs, padded, packed, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no direct kernels off x86-64")
}

/// One image's forward over every tile.
///
/// # Safety
/// The CPU has `V`'s instructions; `padded` holds `inputs` padded planes of `p`, `packed`
/// `ceil(outputs / CO_TILE) · inputs · 9 · CO_TILE` values, and `out` points to
/// `outputs · h · w` writable values (which need not be initialised). `CO_VECS · V::LANES`
/// is `CO_TILE`.
#[inline(always)]
unsafe fn image_with<V: Vector>(
    p: Plane,
    inputs: usize,
    outputs: usize,
    padded: &[f32],
    packed: &[f32],
    out: *mut f32,
) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        let (wp, plane_p, plane) = (p.wp(), p.padded(), p.h * p.w);
        for block in 0..outputs.div_ceil(CO_TILE) {
            let weights = packed.as_ptr().add(block * inputs * TAPS * CO_TILE);
            let live = (outputs - block * CO_TILE).min(CO_TILE);
            let mut first = 0;
            while first < plane {
                let n = (plane - first).min(PIXELS);
                // Each pixel's tap (0, 0) in the padded plane (a short last tile repeats its
                // last pixel, unstored).
                let at: [usize; PIXELS] = std::array::from_fn(|i| {
                    let q = first + i.min(n - 1);
                    (q / p.w) * wp + q % p.w
                });
                let mut acc = [[V::zero(); CO_VECS]; PIXELS];
                for ci in 0..inputs {
                    let src = padded.as_ptr().add(ci * plane_p);
                    let w = weights.add(ci * TAPS * CO_TILE);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let t = ky * 3 + kx;
                            let wv: [V; CO_VECS] =
                                std::array::from_fn(|h| V::load(w.add(t * CO_TILE + h * V::LANES)));
                            let shift = ky * wp + kx;
                            for (acc, &a) in acc.iter_mut().zip(&at) {
                                let x = *src.add(a + shift);
                                for (a, &wv) in acc.iter_mut().zip(&wv) {
                                    *a = V::fma(*a, x, wv);
                                }
                            }
                        }
                    }
                }
                // Pixel-major in registers, channel-major in NCHW: through a small buffer.
                let mut tile = [[0.0f32; CO_TILE]; PIXELS];
                for (row, acc) in tile.iter_mut().zip(&acc) {
                    for (h, a) in acc.iter().enumerate() {
                        a.store(row.as_mut_ptr().add(h * V::LANES));
                    }
                }
                for c in 0..live {
                    let dst = out.add((block * CO_TILE + c) * plane + first);
                    for (i, row) in tile.iter().enumerate().take(n) {
                        *dst.add(i) = row[c];
                    }
                }
                first += n;
            }
        }
    }
}

/// The weight gradient of [`forward`] for `dy` `[batch, c_out, h, w]` → `[c_out, c_in, 3, 3]`:
/// `dw[co, ci, tap] = Σ_pixels dy[co, p] · x[ci, p + shift_tap]`, a GEMM over the pixels with
/// the output channels in the lanes. Each thread sums a fixed run of images, in passes that fit
/// in L2, and the runs are added in order (the same bits on every call).
pub fn weight_gradient(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        features().0,
        "the wide direct kernel needs AVX-512: `pays` checks this"
    );
    let p = Plane::of(s);
    let (plane, blocks) = (s.h * s.w, s.c_out.div_ceil(CO_TILE));
    let (in_image, out_image) = (s.c_in * plane, s.c_out * plane);
    let per_pass = (PASS_VALUES / (s.c_in * p.padded() + blocks * CO_TILE * plane)).max(1);
    let len = blocks * s.c_in * TAPS * CO_TILE;
    let partials: Vec<Vec<f32>> = super::split_batch(s.batch)
        .into_par_iter()
        .map(|(first, end)| {
            // Sums in the packed layout `[block][ci][tap][CO_TILE]`.
            let mut sums = vec![0.0f32; len];
            let images = per_pass.min(end - first);
            let mut padded = vec![0.0f32; images * s.c_in * p.padded()];
            let mut dy_t = vec![0.0f32; images * plane * blocks * CO_TILE];
            for lo in (first..end).step_by(per_pass) {
                let images = per_pass.min(end - lo);
                p.pad_into(&x[lo * in_image..][..images * in_image], &mut padded);
                // dy as `[image][pixel][channel]`, the channels past c_out zero.
                for (img, dy) in dy[lo * out_image..][..images * out_image]
                    .chunks_exact(out_image)
                    .enumerate()
                {
                    let rows = &mut dy_t[img * plane * blocks * CO_TILE..];
                    for (co, plane_dy) in dy.chunks_exact(plane).enumerate() {
                        for (q, &v) in plane_dy.iter().enumerate() {
                            rows[q * blocks * CO_TILE + co] = v;
                        }
                    }
                }
                let g = Pass {
                    p,
                    c_in: s.c_in,
                    blocks,
                    images,
                };
                assert!(padded.len() >= images * s.c_in * p.padded());
                assert!(dy_t.len() >= images * plane * blocks * CO_TILE);
                assert!(sums.len() >= len);
                // SAFETY: AVX-512 was checked above, and the asserts bound every access.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::weight_avx512(g, &padded, &dy_t, &mut sums)
                }
            }
            sums
        })
        .collect();
    // Added in order, then laid out `[c_out][c_in][tap]`.
    let total = super::sum_in_order(&partials, len);
    let mut dw = vec![0.0f32; s.c_out * s.c_in * TAPS];
    for co in 0..s.c_out {
        let (block, lane) = (co / CO_TILE, co % CO_TILE);
        for ci in 0..s.c_in {
            for t in 0..TAPS {
                dw[(co * s.c_in + ci) * TAPS + t] =
                    total[((block * s.c_in + ci) * TAPS + t) * CO_TILE + lane];
            }
        }
    }
    dw
}

/// Values (padded inputs and transposed output gradients) one pass walks: 512 KiB.
const PASS_VALUES: usize = 128 << 10;

/// What one pass of the weight gradient covers.
#[derive(Debug, Clone, Copy)]
struct Pass {
    p: Plane,
    c_in: usize,
    blocks: usize,
    images: usize,
}

/// One pass's share of the weight gradient, added into `sums` `[block][ci][tap][CO_TILE]`:
/// for each block of output channels, input channel and kernel row, 3 taps by `CO_VECS`
/// vectors of channels in registers while the pixels of every image of the pass go by.
///
/// # Safety
/// The CPU has `V`'s instructions; `padded` holds `images · c_in` padded planes, `dy_t`
/// `images · h · w · blocks · CO_TILE` values, `sums` `blocks · c_in · 9 · CO_TILE`, and
/// `CO_VECS · V::LANES` is `CO_TILE`.
#[inline(always)]
unsafe fn weight_with<V: Vector>(g: Pass, padded: &[f32], dy_t: &[f32], sums: &mut [f32]) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        let p = g.p;
        let (wp, plane_p, plane) = (p.wp(), p.padded(), p.h * p.w);
        let row = g.blocks * CO_TILE;
        for block in 0..g.blocks {
            for ci in 0..g.c_in {
                for ky in 0..3 {
                    let at = |kx: usize, h: usize| {
                        ((block * g.c_in + ci) * TAPS + ky * 3 + kx) * CO_TILE + h * V::LANES
                    };
                    let mut acc: [[V; CO_VECS]; 3] = std::array::from_fn(|kx| {
                        std::array::from_fn(|h| V::load(sums.as_ptr().add(at(kx, h))))
                    });
                    for img in 0..g.images {
                        let src = padded.as_ptr().add((img * g.c_in + ci) * plane_p + ky * wp);
                        let grads = dy_t.as_ptr().add(img * plane * row + block * CO_TILE);
                        for q in 0..plane {
                            let d: [V; CO_VECS] =
                                std::array::from_fn(|h| V::load(grads.add(q * row + h * V::LANES)));
                            let base = (q / p.w) * wp + q % p.w;
                            for (kx, acc) in acc.iter_mut().enumerate() {
                                let x = *src.add(base + kx);
                                for (a, &d) in acc.iter_mut().zip(&d) {
                                    *a = V::fma(*a, x, d);
                                }
                            }
                        }
                    }
                    for (kx, acc) in acc.iter().enumerate() {
                        for (h, a) in acc.iter().enumerate() {
                            a.store(sums.as_mut_ptr().add(at(kx, h)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::__m512;

    use super::{Pass, Plane, image_with, weight_with};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn image_avx512(
        p: Plane,
        inputs: usize,
        outputs: usize,
        padded: &[f32],
        packed: &[f32],
        out: *mut f32,
    ) {
        unsafe { image_with::<__m512>(p, inputs, outputs, padded, packed, out) }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_avx512(g: Pass, padded: &[f32], dy_t: &[f32], sums: &mut [f32]) {
        unsafe { weight_with::<__m512>(g, padded, dy_t, sums) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_kernels::{assert_close, conv, same_3x3, test_values};

    /// Both passes against im2col + GEMM: channel counts that fill one tile, a tile and a part,
    /// and less than a tile; maps whose pixels fill whole tiles, a tile and a part, and less
    /// than one.
    #[test]
    fn matches_im2col() {
        if !features().0 {
            eprintln!("no AVX-512 here: the wide direct kernel is not taken");
            return;
        }
        for &(batch, c_in, c_out, h, w) in &[
            (2, 32, 32, 4, 4),
            (3, 40, 48, 8, 8),
            (2, 64, 20, 7, 7),
            (3, 5, 33, 2, 2),
            (1, 16, 64, 1, 3),
        ] {
            let s = same_3x3(batch, c_in, c_out, h, w);
            let x = test_values(batch * c_in * h * w, 1, -1.0, 1.0);
            let wt = test_values(c_out * c_in * 9, 2, -0.5, 0.5);
            let dy = test_values(batch * c_out * h * w, 3, -1.0, 1.0);
            let what = format!("{s:?}");
            assert_close(
                &forward(&s, &x, &wt),
                &conv::forward(&s, &x, &wt),
                &format!("forward {what}"),
            );
            let (dw, dx) = conv::backward(&s, &x, &wt, &dy, true);
            assert_close(
                &input_gradient(&s, &wt, &dy),
                &dx.unwrap(),
                &format!("input gradient {what}"),
            );
            assert_close(
                &weight_gradient(&s, &x, &dy),
                &dw,
                &format!("weight gradient {what}"),
            );
        }
    }
}
