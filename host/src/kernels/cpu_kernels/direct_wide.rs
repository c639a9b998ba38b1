//! Direct 3x3 convolution (padding 1, stride 1 or 2) for small maps: the output channels in
//! the vector lanes.
//!
//! On 8x8 and 4x4 maps a row is too short to fill a vector of pixels (`direct.rs`), and
//! im2col + GEMM pays its column matrix again: built, packed, then read. Here a [`Tile`] holds
//! vectors of output channels for a few output pixels in registers. For each input channel
//! and tap the kernel loads the tile's weights (one vector per 16 channels), broadcasts each
//! pixel's input value read straight from the zero-padded plane, and adds. That is a GEMM
//! microkernel whose B operand is read in place, so a stride only changes where each pixel
//! reads. The tile is then written to the NCHW output through a small transpose.
//!
//! - forward: `out[co, p] = Σ_ci Σ_tap w[co, ci, tap] · x[ci, corner(p) + shift_tap]`
//! - input gradient (stride 1): the same convolution of `dy`, with the kernels turned 180° and
//!   the channel axes swapped
//! - weight gradient: `dw[co, ci, tap] = Σ_p dy[co, p] · x[ci, corner(p) + shift_tap]`, a GEMM
//!   over the pixels with the output channels in the lanes (`dy` transposed to pixel-major
//!   first)
//!
//! AVX-512 only. `SSLHOST_CPU_KERNELS` set to `no-direct` or `im2col` turns it off with the
//! other direct kernels.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::ConvShape;
use super::direct::{Plane, TAPS, Vector, features, pack_forward, pack_input_gradient, per_image};

/// A register tile: vectors of 16 output channels by output pixels, 16 accumulators of
/// AVX-512's 32 registers either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tile {
    /// 4 vectors (64 channels) by 4 pixels, for 64 output channels and more. Measured against
    /// 2x8, 2x12, 4x3, 4x5, 4x6 and 8x2 (128 channels at 4x4: 3.0 ms against 3.3–9.6); the
    /// 24-accumulator tiles were slower, from their spills.
    Wide,
    /// 2 vectors (32 channels) by 8 pixels, for 17 to 63 output channels, which would leave
    /// half of a wide tile's lanes idle.
    Narrow,
}

impl Tile {
    /// The tile for `channels` outputs, if one fills at least half of its lanes.
    fn for_outputs(channels: usize) -> Option<Tile> {
        match channels {
            64.. => Some(Tile::Wide),
            17..=63 => Some(Tile::Narrow),
            _ => None,
        }
    }

    /// Output channels per tile.
    fn channels(self) -> usize {
        match self {
            Tile::Wide => 64,
            Tile::Narrow => 32,
        }
    }
}

/// Where a pass reads and writes: its input map `p` (zero-padded by one pixel), its output
/// map, and the stride between them.
#[derive(Debug, Clone, Copy)]
struct Map {
    p: Plane,
    oh: usize,
    ow: usize,
    stride: usize,
}

impl Map {
    /// The forward pass of `s`.
    fn forward(s: &ConvShape) -> Map {
        Map {
            p: Plane::of(s),
            oh: s.oh(),
            ow: s.ow(),
            stride: s.stride,
        }
    }

    /// The input gradient of `s` (stride 1: the same map in and out).
    fn input_gradient(s: &ConvShape) -> Map {
        Map {
            stride: 1,
            ..Map::forward(s)
        }
    }

    /// Output pixels.
    fn plane(self) -> usize {
        self.oh * self.ow
    }

    /// Where output pixel `q` reads its tap (0, 0) in the padded input plane.
    fn corner(self, q: usize) -> usize {
        (q / self.ow) * self.stride * self.p.wp() + (q % self.ow) * self.stride
    }
}

/// Whether the shape is one these kernels compute: 3x3, padding 1, stride 1 or 2, AVX-512.
fn fits(s: &ConvShape) -> bool {
    s.k == 3 && s.pad == 1 && matches!(s.stride, 1 | 2) && s.h > 0 && s.w > 0 && features().0
}

/// Whether a stride-1 layer of `s`'s channels and map beats im2col + GEMM
/// and Winograd with these kernels (forward and input gradient alike: the two swap the
/// channel counts). Measured per layer of a batch of 128 (2 cores, ms, forward, this / im2col
/// / Winograd; `direct::timing` and `timing` below):
/// - wide tile: 64 channels at 7x7 2.4–2.5 / 3.0–3.5 / 3.2–3.4, at 8x8 2.9–3.1 / 3.6–3.7 /
///   3.2–3.8; 128 at 4x4 3.1 / 4.0–4.3 / 4.0–4.8, at 2x2 1.0 / 1.7 / 2.2; 256 at 4x4 12.1 /
///   13.7 / 14.1. Winograd's 2.25x fewer products win from 128 channels at 8x8 (11.8 / 13.4 /
///   10.5) and 512 at 4x4 (48.9 / 56.6 / 41.7).
/// - narrow tile (fewer than 64 channels): only 4x4 and smaller maps (32 channels at 4x4:
///   0.28–0.35 / 0.33–0.43; at 7x7 1.00–1.14 / 1.02–1.13 and at 8x8 1.05–1.26 / 1.00–1.14,
///   where im2col keeps them).
fn pays_stride_1(s: &ConvShape) -> bool {
    let (narrow, wide, plane) = (s.c_in.min(s.c_out), s.c_in.max(s.c_out), s.h * s.w);
    narrow >= 17
        && (narrow >= 64 || plane <= 16)
        && ((plane <= 64 && wide <= 64) || (plane <= 16 && wide <= 256))
}

/// Whether the forward pass of `s` takes this kernel: at stride 1 see [`pays_stride_1`]; at
/// stride 2 it ran faster than im2col on every shape measured, from 16 → 32 channels at 32x32
/// to 256 → 512 at 8x8 (the timings are in docs/PERFORMANCE.md).
pub fn pays_forward(s: &ConvShape) -> bool {
    fits(s)
        && Tile::for_outputs(s.c_out).is_some()
        && s.c_in >= 16
        && (s.stride == 2 || pays_stride_1(s))
}

/// Whether the input gradient of `s` takes this kernel (stride 1 only: a strided layer's
/// input gradient scatters, which im2col's col2im does).
pub fn pays_input_gradient(s: &ConvShape) -> bool {
    fits(s) && s.stride == 1 && pays_stride_1(s)
}

/// Whether the weight gradient of `s` takes this kernel. At stride 1 up to 128 channels (ms,
/// this / im2col / Winograd): 64 channels at 7x7 2.3 / 2.6 / 3.5, at 8x8 2.9 / 3.3 / 3.8; 128
/// at 4x4 3.2 / 3.3 / 4.6, at 2x2 1.0 / 1.2 / 2.1; with 256 at 4x4 im2col wins (13.4 / 12.8 /
/// 14.9). At stride 2 up to 64 output channels (this / im2col): 16 → 32 at 32x32 3.1–3.5 /
/// 5.4–6.4, 32 → 64 at 16x16 1.8–2.8 / 2.4–3.1, at 7x7 0.55–0.60 / 0.65–0.80; from 128 im2col
/// wins or ties (64 → 128 at 8x8 2.2–2.6 / 2.1–2.7, 256 → 512 at 8x8 32–44 / 29–39).
pub fn pays_weight(s: &ConvShape) -> bool {
    pays_forward(s)
        && match s.stride {
            1 => s.c_in.max(s.c_out) <= 128,
            _ => s.c_out <= 64,
        }
}

/// Forward: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, 3, 3]` → `[batch, c_out, oh, ow]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let tile = Tile::for_outputs(s.c_out).expect("`pays_forward` checks the tile");
    let packed = pack_forward(s, weight, tile.channels());
    convolve(tile, s.batch, s.c_in, s.c_out, Map::forward(s), x, &packed)
}

/// The input gradient of [`forward`] (stride 1) for `dy` `[batch, c_out, h, w]` →
/// `[batch, c_in, h, w]`.
pub fn input_gradient(s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(s.stride, 1, "`pays_input_gradient` takes stride 1 only");
    let tile = Tile::for_outputs(s.c_in).expect("`pays_input_gradient` checks the tile");
    let packed = pack_input_gradient(s, weight, tile.channels());
    convolve(
        tile,
        s.batch,
        s.c_out,
        s.c_in,
        Map::input_gradient(s),
        dy,
        &packed,
    )
}

/// `x` `[batch, inputs, h, w]` convolved with `packed` (`direct::pack`'s layout in tiles of
/// `tile.channels()`) → `[batch, outputs, oh, ow]`.
fn convolve(
    tile: Tile,
    batch: usize,
    inputs: usize,
    outputs: usize,
    m: Map,
    x: &[f32],
    packed: &[f32],
) -> Vec<f32> {
    let co = tile.channels();
    assert!(packed.len() >= outputs.div_ceil(co) * inputs * TAPS * co);
    assert!(
        features().0,
        "the wide direct kernel needs AVX-512: `pays` checks this"
    );
    // SAFETY: `image` writes every output of its image (each channel's whole plane).
    unsafe {
        per_image(batch, inputs, outputs, m.p, m.plane(), x, |padded, out| {
            image(tile, m, inputs, outputs, padded, packed, out)
        })
    }
}

/// One image: `padded` `[inputs, h+2, w+2]` → `out` `[outputs, oh, ow]`, every value written.
fn image(
    tile: Tile,
    m: Map,
    inputs: usize,
    outputs: usize,
    padded: &[f32],
    packed: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    assert!(padded.len() >= inputs * m.p.padded());
    assert!(out.len() >= outputs * m.plane());
    // The last pixel's last tap stays inside its plane.
    assert!(m.corner(m.plane() - 1) + 2 * m.p.wp() + 2 < m.p.padded());
    let out = out.as_mut_ptr().cast::<f32>();
    // SAFETY: AVX-512 was detected at run time (asserted in `convolve`), and the asserts here
    // and there bound every read and write of `image_with`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::image_avx512(tile, m, inputs, outputs, padded, packed, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no direct kernels off x86-64")
}

/// One image's forward over every tile of `CV` vectors of channels by `PX` pixels.
///
/// # Safety
/// The CPU has `V`'s instructions; `padded` holds `inputs` padded planes of `m.p`, `packed`
/// `ceil(outputs / (CV · V::LANES)) · inputs · 9 · CV · V::LANES` values, `out` points to
/// `outputs · oh · ow` writable values (which need not be initialised), every pixel's taps
/// lie in its plane, and `CV · V::LANES ≤ 64`, `PX ≤ 8`.
#[inline(always)]
unsafe fn image_with<V: Vector, const CV: usize, const PX: usize>(
    m: Map,
    inputs: usize,
    outputs: usize,
    padded: &[f32],
    packed: &[f32],
    out: *mut f32,
) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        let (co_tile, wp, plane_p, plane) = (CV * V::LANES, m.p.wp(), m.p.padded(), m.plane());
        for block in 0..outputs.div_ceil(co_tile) {
            let weights = packed.as_ptr().add(block * inputs * TAPS * co_tile);
            let live = (outputs - block * co_tile).min(co_tile);
            let mut first = 0;
            while first < plane {
                let n = (plane - first).min(PX);
                // Each pixel's tap (0, 0) in the padded plane (a short last tile repeats its
                // last pixel, unstored).
                let at: [usize; PX] = std::array::from_fn(|i| m.corner(first + i.min(n - 1)));
                let mut acc = [[V::zero(); CV]; PX];
                for ci in 0..inputs {
                    let src = padded.as_ptr().add(ci * plane_p);
                    let w = weights.add(ci * TAPS * co_tile);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let t = ky * 3 + kx;
                            let wv: [V; CV] =
                                std::array::from_fn(|h| V::load(w.add(t * co_tile + h * V::LANES)));
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
                let mut tile = [[0.0f32; 64]; 8];
                for (row, acc) in tile.iter_mut().zip(&acc) {
                    for (h, a) in acc.iter().enumerate() {
                        a.store(row.as_mut_ptr().add(h * V::LANES));
                    }
                }
                for c in 0..live {
                    let dst = out.add((block * co_tile + c) * plane + first);
                    for (i, row) in tile.iter().enumerate().take(n) {
                        *dst.add(i) = row[c];
                    }
                }
                first += n;
            }
        }
    }
}

/// The weight gradient of [`forward`] for `dy` `[batch, c_out, oh, ow]` → `[c_out, c_in, 3, 3]`:
/// `dw[co, ci, tap] = Σ_pixels dy[co, p] · x[ci, corner(p) + shift_tap]`, a GEMM over the
/// pixels with the output channels in the lanes. Each thread sums a fixed run of images, in
/// passes that fit in L2, and the runs are added in order (the same bits on every call).
pub fn weight_gradient(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        features().0,
        "the wide direct kernel needs AVX-512: `pays` checks this"
    );
    let tile = Tile::for_outputs(s.c_out).expect("`pays_weight` checks the tile");
    let (m, co_tile) = (Map::forward(s), tile.channels());
    let (plane, blocks) = (m.plane(), s.c_out.div_ceil(co_tile));
    let (in_image, out_image) = (s.c_in * s.h * s.w, s.c_out * plane);
    let per_pass = (PASS_VALUES / (s.c_in * m.p.padded() + blocks * co_tile * plane)).max(1);
    let len = blocks * s.c_in * TAPS * co_tile;
    let partials: Vec<Vec<f32>> = super::split_batch(s.batch)
        .into_par_iter()
        .map(|(first, end)| {
            // Sums in the packed layout `[block][ci][tap][co_tile]`.
            let mut sums = vec![0.0f32; len];
            let images = per_pass.min(end - first);
            let mut padded = vec![0.0f32; images * s.c_in * m.p.padded()];
            let mut dy_t = vec![0.0f32; images * plane * blocks * co_tile];
            for lo in (first..end).step_by(per_pass) {
                let images = per_pass.min(end - lo);
                m.p.pad_into(&x[lo * in_image..][..images * in_image], &mut padded);
                // dy as `[image][pixel][channel]`, the channels past c_out zero.
                for (img, dy) in dy[lo * out_image..][..images * out_image]
                    .chunks_exact(out_image)
                    .enumerate()
                {
                    let rows = &mut dy_t[img * plane * blocks * co_tile..];
                    for (co, plane_dy) in dy.chunks_exact(plane).enumerate() {
                        for (q, &v) in plane_dy.iter().enumerate() {
                            rows[q * blocks * co_tile + co] = v;
                        }
                    }
                }
                let g = Pass {
                    m,
                    c_in: s.c_in,
                    blocks,
                    images,
                };
                assert!(padded.len() >= images * s.c_in * m.p.padded());
                assert!(dy_t.len() >= images * plane * blocks * co_tile);
                assert!(sums.len() >= len);
                assert!(m.corner(plane - 1) + 2 * m.p.wp() + 2 < m.p.padded());
                // SAFETY: AVX-512 was checked above, and the asserts bound every access.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::weight_avx512(tile, g, &padded, &dy_t, &mut sums)
                }
            }
            sums
        })
        .collect();
    // Added in order, then laid out `[c_out][c_in][tap]`.
    let total = super::sum_in_order(&partials, len);
    let mut dw = vec![0.0f32; s.c_out * s.c_in * TAPS];
    for co in 0..s.c_out {
        let (block, lane) = (co / co_tile, co % co_tile);
        for ci in 0..s.c_in {
            for t in 0..TAPS {
                dw[(co * s.c_in + ci) * TAPS + t] =
                    total[((block * s.c_in + ci) * TAPS + t) * co_tile + lane];
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
    m: Map,
    c_in: usize,
    blocks: usize,
    images: usize,
}

/// One pass's share of the weight gradient, added into `sums` `[block][ci][tap][co_tile]`:
/// for each block of output channels, input channel and kernel row, 3 taps by `CV` vectors
/// of channels in registers while the pixels of every image of the pass go by.
///
/// # Safety
/// The CPU has `V`'s instructions; `padded` holds `images · c_in` padded planes, `dy_t`
/// `images · oh · ow · blocks · CV · V::LANES` values, `sums` `blocks · c_in · 9 · CV ·
/// V::LANES`, and every pixel's taps lie in its plane.
#[inline(always)]
unsafe fn weight_with<V: Vector, const CV: usize>(
    g: Pass,
    padded: &[f32],
    dy_t: &[f32],
    sums: &mut [f32],
) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        let m = g.m;
        let (co_tile, wp, plane_p, plane) = (CV * V::LANES, m.p.wp(), m.p.padded(), m.plane());
        let row = g.blocks * co_tile;
        for block in 0..g.blocks {
            for ci in 0..g.c_in {
                for ky in 0..3 {
                    let at = |kx: usize, h: usize| {
                        ((block * g.c_in + ci) * TAPS + ky * 3 + kx) * co_tile + h * V::LANES
                    };
                    let mut acc: [[V; CV]; 3] = std::array::from_fn(|kx| {
                        std::array::from_fn(|h| V::load(sums.as_ptr().add(at(kx, h))))
                    });
                    for img in 0..g.images {
                        let src = padded.as_ptr().add((img * g.c_in + ci) * plane_p + ky * wp);
                        let grads = dy_t.as_ptr().add(img * plane * row + block * co_tile);
                        for q in 0..plane {
                            let d: [V; CV] =
                                std::array::from_fn(|h| V::load(grads.add(q * row + h * V::LANES)));
                            let base = m.corner(q);
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

    use super::{Map, Pass, Tile, image_with, weight_with};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn image_avx512(
        tile: Tile,
        m: Map,
        inputs: usize,
        outputs: usize,
        padded: &[f32],
        packed: &[f32],
        out: *mut f32,
    ) {
        unsafe {
            match tile {
                Tile::Wide => image_with::<__m512, 4, 4>(m, inputs, outputs, padded, packed, out),
                Tile::Narrow => image_with::<__m512, 2, 8>(m, inputs, outputs, padded, packed, out),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_avx512(
        tile: Tile,
        g: Pass,
        padded: &[f32],
        dy_t: &[f32],
        sums: &mut [f32],
    ) {
        unsafe {
            match tile {
                Tile::Wide => weight_with::<__m512, 4>(g, padded, dy_t, sums),
                Tile::Narrow => weight_with::<__m512, 2>(g, padded, dy_t, sums),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu_kernels::{assert_close, conv, same_3x3, test_values};

    /// Which passes of a ResNet's layers this kernel takes: the strided 3x3s' forward (and
    /// their weight gradient up to 64 outputs), the narrow tile on 4x4 maps only, never a
    /// strided input gradient or a stem.
    #[test]
    fn takes_the_small_maps_and_the_strided_forward() {
        if !features().0 {
            return;
        }
        let strided = |c_in, c_out, side| ConvShape {
            stride: 2,
            ..same_3x3(128, c_in, c_out, side, side)
        };
        for s in [
            strided(16, 32, 14),
            strided(32, 64, 16),
            strided(256, 512, 8),
        ] {
            assert!(pays_forward(&s), "{s:?}");
            assert!(!pays_input_gradient(&s), "{s:?}");
        }
        assert!(pays_weight(&strided(32, 64, 16)));
        assert!(!pays_weight(&strided(64, 128, 8)));
        assert!(!pays_forward(&strided(3, 32, 28)));
        assert!(!pays_forward(&strided(16, 16, 28)));
        let same = |c, side| same_3x3(128, c, c, side, side);
        assert!(pays_forward(&same(64, 8)) && pays_input_gradient(&same(64, 8)));
        assert!(pays_forward(&same(32, 4)) && pays_input_gradient(&same(32, 4)));
        assert!(!pays_forward(&same(32, 7)) && !pays_input_gradient(&same(32, 7)));
        assert!(!pays_forward(&same(128, 8)));
        assert!(!pays_weight(&same(256, 4)));
    }

    /// The tile follows the output channels: wide from 64, narrow from 17, none below.
    #[test]
    fn tiles_follow_the_outputs() {
        assert_eq!(Tile::for_outputs(16), None);
        assert_eq!(Tile::for_outputs(17), Some(Tile::Narrow));
        assert_eq!(Tile::for_outputs(32), Some(Tile::Narrow));
        assert_eq!(Tile::for_outputs(64), Some(Tile::Wide));
        assert_eq!(Tile::for_outputs(512), Some(Tile::Wide));
    }

    /// Every pass against im2col + GEMM, with both tiles and both strides: channel counts
    /// that fill one tile, a tile and a part, and less than a tile; maps whose pixels fill
    /// whole tiles, a tile and a part, and less than one; odd and even sides at stride 2.
    #[test]
    fn matches_im2col() {
        if !features().0 {
            eprintln!("no AVX-512 here: the wide direct kernel is not taken");
            return;
        }
        for &(batch, c_in, c_out, h, w, stride) in &[
            (2, 32, 32, 4, 4, 1),
            (3, 40, 48, 8, 8, 1),
            (2, 64, 20, 7, 7, 1),
            (3, 5, 33, 2, 2, 1),
            (1, 16, 64, 1, 3, 1),
            (2, 70, 130, 5, 5, 1),
            (2, 24, 64, 8, 8, 2),
            (3, 32, 32, 7, 7, 2),
            (2, 16, 80, 14, 14, 2),
            (1, 64, 128, 3, 5, 2),
            (2, 8, 20, 2, 2, 2),
        ] {
            let s = ConvShape {
                stride,
                ..same_3x3(batch, c_in, c_out, h, w)
            };
            let (oh, ow) = (s.oh(), s.ow());
            let x = test_values(batch * c_in * h * w, 1, -1.0, 1.0);
            let wt = test_values(c_out * c_in * 9, 2, -0.5, 0.5);
            let dy = test_values(batch * c_out * oh * ow, 3, -1.0, 1.0);
            let what = format!("{s:?}");
            assert_close(
                &forward(&s, &x, &wt),
                &conv::forward(&s, &x, &wt),
                &format!("forward {what}"),
            );
            let (dw, dx) = conv::backward(&s, &x, &wt, &dy, true);
            if stride == 1 && c_in > 16 {
                assert_close(
                    &input_gradient(&s, &wt, &dy),
                    &dx.unwrap(),
                    &format!("input gradient {what}"),
                );
            }
            assert_close(
                &weight_gradient(&s, &x, &dy),
                &dw,
                &format!("weight gradient {what}"),
            );
        }
    }
}

#[cfg(test)]
/// A measurement, not a check: this kernel against im2col on the strided 3x3 convolutions that
/// open a ResNet stage, and on narrow layers (the narrow tile), batch 128, best of 5 in ms.
/// This is what [`pays_forward`] and [`pays_weight`] were set from:
///
///     RAYON_NUM_THREADS=2 cargo test --release --lib direct_wide::timing -- --ignored --nocapture
mod timing {
    use super::*;
    use crate::kernels::cpu_kernels::{best_ms as best, conv, test_values, winograd};

    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn kernels() {
        crate::allocator::keep_freed_memory();
        if !features().0 {
            return;
        }
        for &(c_in, c_out, side, stride) in &[
            (16, 32, 14, 2),
            (32, 64, 7, 2),
            (64, 128, 4, 2),
            (16, 32, 32, 2),
            (32, 64, 16, 2),
            (64, 128, 8, 2),
            (64, 128, 32, 2),
            (128, 256, 16, 2),
            (256, 512, 8, 2),
            (32, 32, 7, 1),
            (32, 32, 8, 1),
            (32, 32, 4, 1),
            (64, 64, 4, 1),
        ] {
            let s = ConvShape {
                batch: 128,
                c_in,
                h: side,
                w: side,
                c_out,
                k: 3,
                stride,
                pad: 1,
            };
            let x = test_values(128 * c_in * side * side, 1, -1.0, 1.0);
            let wt = test_values(c_out * c_in * 9, 2, -0.5, 0.5);
            let dy = test_values(128 * c_out * s.oh() * s.ow(), 3, -1.0, 1.0);
            let f = best(|| drop(forward(&s, &x, &wt)));
            let dw = best(|| drop(weight_gradient(&s, &x, &dy)));
            let dx = if stride == 1 {
                format!("{:.2}", best(|| drop(input_gradient(&s, &wt, &dy))))
            } else {
                "-".into()
            };
            let cf = best(|| drop(conv::forward(&s, &x, &wt)));
            let cdw = best(|| drop(conv::backward(&s, &x, &wt, &dy, false)));
            let cdx = best(|| drop(conv::input_gradient(&s, &wt, &dy)));
            let wino = if winograd::pays(&s) {
                " (Winograd takes it)"
            } else {
                ""
            };
            eprintln!(
                "{c_in}→{c_out} {side}px stride {stride}: this f {f:.2} dx {dx} dw {dw:.2} | im2col f {cf:.2} dx {cdx:.2} dw {cdw:.2}{wino}"
            );
        }
    }
}
