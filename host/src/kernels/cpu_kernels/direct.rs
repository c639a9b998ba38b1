//! Direct 3x3 convolution (stride 1, padding 1) for narrow layers: no column matrix, no GEMM
//! packing, each output written once.
//!
//! im2col + GEMM pays for its generality on narrow layers: the column matrix is 9x the
//! input, written by im2col, read and written again by the GEMM's packing, then read by its
//! microkernel, and with 16–32 channels that traffic costs as much as the multiply-adds. Here
//! a tile of [`CO_BLOCK`] output channels by [`VECS`] vectors of output pixels stays in
//! registers while the loop walks the input channels and the nine taps: per tap it loads
//! `VECS` vectors of the (zero-padded) input row, shifted by the tap, and adds each times one
//! broadcast weight into every accumulator. That is oneDNN's plan for these layers, in NCHW.
//!
//! - forward: `out[co] = Σ_ci Σ_tap w[co, ci, tap] · shift_tap(x[ci])`
//! - input gradient: the same convolution of `dy`, with the kernels turned 180° and the
//!   channel axes swapped (stride 1 and padding 1 keep the map's size)
//! - weight gradient: `dw[co, ci, tap] = Σ_pixels dy[co] · shift_tap(x[ci])`, a dot product
//!   per weight, with [`WG_CO`] output channels by the nine taps of one input channel in
//!   registers; each thread sums a fixed run of images and the runs are added in order (the
//!   same bits on every call)
//!
//! The vectors are the CPU's, chosen at run time: 16 lanes with AVX-512, 8 with AVX2 and FMA
//! (smaller tiles for 16 registers; timed only by forcing them on this AVX-512 CPU, where
//! their forward matches AVX-512's and their weight gradient takes 1.6x as long). A row
//! that is not a whole number of vectors ends in a part-vector, loaded and stored under a
//! mask; maps whose rows would leave more than a quarter of the lanes idle (8x8 and smaller
//! with AVX-512) go to im2col or Winograd. Without either instruction set, or with
//! `SSLHOST_CPU_KERNELS` set to `no-direct` (or `im2col`, which also turns Winograd off), the
//! other paths run instead.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::conv::ConvShape;

/// AVX-512's forward tile: output channels by vectors of output pixels (consecutive in
/// row-major order), 16 of its 32 registers.
const CO_BLOCK: usize = 8;
const VECS: usize = 2;
/// AVX2's: 8 accumulators of its 16 registers. Forced on this Zen 4 (ms, 16 channels at 32x32,
/// batch 128): 4x2 runs the forward in 2.9–3.3, as fast as AVX-512's tile; 8x1 took 4.4–5.3,
/// 4x3 and 6x2 (12 accumulators, spilling) 5.5–7.1.
const AVX2_CO: usize = 4;
const AVX2_VECS: usize = 2;
/// Output channels per register tile of the weight gradient (by nine taps).
const WG_CO: usize = 2;
/// Taps of a 3x3 kernel.
pub(super) const TAPS: usize = 9;
/// Zeros after the last padded input plane: a row's last vector, when the row is not a whole
/// number of vectors, loads (and then drops) up to a vector's worth of values past the row.
const SLACK: usize = 16;

/// The instruction set and vector width the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// 16 lanes, 32 registers.
    Avx512,
    /// 8 lanes, 16 registers: smaller tiles.
    Avx2,
}

impl Isa {
    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }

    /// Output channels per forward tile (see [`x86`]'s kernels for the tiles' shapes).
    fn co_block(self) -> usize {
        match self {
            Isa::Avx512 => CO_BLOCK,
            Isa::Avx2 => AVX2_CO,
        }
    }
}

/// What this CPU offers the kernels: (AVX-512F, AVX2 and FMA); neither where the kernel
/// policy leaves the direct kernels out (`SSLHOST_CPU_KERNELS=im2col|no-direct`).
pub(super) fn features() -> (bool, bool) {
    use super::CpuKernelSet;
    static FEATURES: OnceLock<(bool, bool)> = OnceLock::new();
    if matches!(
        super::kernel_set(),
        CpuKernelSet::Im2col | CpuKernelSet::NoDirect
    ) {
        return (false, false);
    }
    *FEATURES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            (has!("avx512f"), has!("avx2") && has!("fma"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        (false, false)
    })
}

/// The vectors for rows of `w` values on this CPU, if they leave at most a quarter of the
/// lanes idle. (AVX-512's 32 registers with 8-lane vectors, for 7x7 and 8x8 maps, measured no
/// faster than im2col and Winograd: 64 channels at 8x8, 3.24 / 3.51 / 3.22 ms forward.)
fn isa_for(w: usize) -> Option<Isa> {
    let isa = match features() {
        (true, _) => Isa::Avx512,
        (false, true) => Isa::Avx2,
        (false, false) => return None,
    };
    let padded = w.div_ceil(isa.lanes()) * isa.lanes();
    (w > 0 && 4 * (padded - w) <= padded).then_some(isa)
}

/// The instruction set for `s`, which [`fits`].
fn isa_of(s: &ConvShape) -> Isa {
    isa_for(s.w).expect("direct convolution without SIMD: `pays` checks this")
}

/// Whether the direct kernels can compute `s` at all: 3x3, stride 1, padding 1, on a CPU with
/// the instructions, and rows that fill at least three quarters of the vectors' lanes.
fn fits(s: &ConvShape) -> bool {
    s.k == 3 && s.stride == 1 && s.pad == 1 && s.h > 0 && isa_for(s.w).is_some()
}

/// Whether the direct kernels beat im2col + GEMM and Winograd on `s`, for all three passes:
/// narrow layers (up to 32 channels in and out) and the stems (fewer than 8 input channels),
/// where im2col's traffic weighs most. Measured per layer of a batch of 128 (2 cores, ms,
/// direct / im2col / Winograd; forward, input gradient, weight gradient; `timing` below):
/// 16 channels at 32x32 3.0 / 4.1 / 5.4, 3.0 / 5.1 / 5.5, 3.2 / 4.6 / 5.5; 32 at 16x16
/// 3.0 / 3.7 / 3.8, 2.9 / 4.6 / 3.8, 3.2 / 4.2 / 4.3. From 64 channels Winograd's 2.25x
/// fewer products win or tie (64 at 16x16: 11.1 / 13.7 / 10.4 forward; 128 at 8x8: 13.1 /
/// 13.2 / 9.4).
pub fn pays(s: &ConvShape) -> bool {
    fits(s) && (s.c_in.max(s.c_out) <= 32 || s.c_in < 8)
}

/// Forward: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, 3, 3]` → `[batch, c_out, h, w]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    forward_on(isa_of(s), s, x, weight)
}

fn forward_on(isa: Isa, s: &ConvShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let packed = pack_forward(s, weight, isa.co_block());
    convolve(isa, s.batch, s.c_in, s.c_out, s.h, s.w, x, &packed)
}

/// The input gradient of [`forward`] for `dy` `[batch, c_out, h, w]` → `[batch, c_in, h, w]`.
pub fn input_gradient(s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    input_gradient_on(isa_of(s), s, weight, dy)
}

fn input_gradient_on(isa: Isa, s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let packed = pack_input_gradient(s, weight, isa.co_block());
    convolve(isa, s.batch, s.c_out, s.c_in, s.h, s.w, dy, &packed)
}

/// `s`'s kernels packed (see [`pack`]) for its forward pass, in tiles of `co` outputs.
pub(super) fn pack_forward(s: &ConvShape, weight: &[f32], co: usize) -> Vec<f32> {
    pack(weight, s.c_out, s.c_in, co, |o, i, t| {
        (o * s.c_in + i) * TAPS + t
    })
}

/// `s`'s kernels packed for its input gradient: `dx[ci] = Σ_co Σ_t w[co, ci, 8 − t] ·
/// shift_t(dy[co])`, a convolution from `c_out` channels to `c_in` with each kernel turned
/// 180°.
pub(super) fn pack_input_gradient(s: &ConvShape, weight: &[f32], co: usize) -> Vec<f32> {
    pack(weight, s.c_in, s.c_out, co, |ci, co, t| {
        (co * s.c_in + ci) * TAPS + TAPS - 1 - t
    })
}

/// Kernels laid out for tiles of `co` output channels: `[blocks of co outputs][inputs][tap][co]`,
/// the outputs past the last zero. `source(o, i, t)` is the index in `weight` of the value that
/// output `o`, input `i` and tap `t` use.
pub(super) fn pack(
    weight: &[f32],
    outputs: usize,
    inputs: usize,
    co: usize,
    source: impl Fn(usize, usize, usize) -> usize,
) -> Vec<f32> {
    let mut packed = vec![0.0f32; outputs.div_ceil(co) * inputs * TAPS * co];
    for o in 0..outputs {
        let (block, lane) = (o / co, o % co);
        for i in 0..inputs {
            for t in 0..TAPS {
                packed[((block * inputs + i) * TAPS + t) * co + lane] = weight[source(o, i, t)];
            }
        }
    }
    packed
}

/// The geometry of one image's convolution with a zero border of one pixel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plane {
    pub(super) h: usize,
    pub(super) w: usize,
}

impl Plane {
    /// The map of `s` (input and output: stride 1, padding 1).
    pub(super) fn of(s: &ConvShape) -> Plane {
        Plane { h: s.h, w: s.w }
    }

    /// Width of the padded rows.
    pub(super) fn wp(self) -> usize {
        self.w + 2
    }

    /// Values in one padded plane.
    pub(super) fn padded(self) -> usize {
        (self.h + 2) * self.wp()
    }

    /// Vectors of `lanes` per output row, and the outputs in the last of them.
    fn vectors(self, lanes: usize) -> (usize, usize) {
        let per_row = self.w.div_ceil(lanes);
        (per_row, self.w - (per_row - 1) * lanes)
    }

    /// Copies `src` `[channels, h, w]` into the interior of `dst` `[channels, h+2, w+2]`,
    /// whose border is zero and stays so.
    pub(super) fn pad_into(self, src: &[f32], dst: &mut [f32]) {
        for (plane, padded) in src
            .chunks_exact(self.h * self.w)
            .zip(dst.chunks_exact_mut(self.padded()))
        {
            for (row, out) in plane
                .chunks_exact(self.w)
                .zip(padded[self.wp() + 1..].chunks_mut(self.wp()))
            {
                out[..self.w].copy_from_slice(row);
            }
        }
    }
}

/// `x` `[batch, inputs, h, w]` convolved with `packed` (see [`pack`]) → `[batch, outputs, h, w]`.
#[allow(clippy::too_many_arguments)]
fn convolve(
    isa: Isa,
    batch: usize,
    inputs: usize,
    outputs: usize,
    h: usize,
    w: usize,
    x: &[f32],
    packed: &[f32],
) -> Vec<f32> {
    let p = Plane { h, w };
    // SAFETY: `image` writes every output of its image (each channel's whole plane).
    unsafe {
        per_image(batch, inputs, outputs, p, h * w, x, |padded, out| {
            image(isa, p, inputs, outputs, padded, packed, out)
        })
    }
}

/// `[batch, outputs, out_plane]` from `x` `[batch, inputs, h, w]` (the map of `p`), one image
/// a task: each image padded into the task's scratch (`inputs` padded planes, then [`SLACK`]
/// zeros), and `image(padded, out)` writing that image's outputs.
///
/// # Safety
/// `image` must write every value of `out`.
pub(super) unsafe fn per_image(
    batch: usize,
    inputs: usize,
    outputs: usize,
    p: Plane,
    out_plane: usize,
    x: &[f32],
    image: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let (in_image, out_image) = (inputs * p.h * p.w, outputs * out_plane);
    // SAFETY: passed on to the caller: `image` writes all of its image's outputs.
    unsafe {
        super::par_new_written(
            batch * out_image,
            out_image,
            || vec![0.0f32; inputs * p.padded() + SLACK],
            |padded, n, out| {
                p.pad_into(&x[n * in_image..][..in_image], padded);
                image(padded, out);
            },
        )
    }
}

/// One image: `padded` `[inputs, h+2, w+2]` → `out` `[outputs, h, w]`, every value written.
fn image(
    isa: Isa,
    p: Plane,
    inputs: usize,
    outputs: usize,
    padded: &[f32],
    packed: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    assert!(padded.len() >= inputs * p.padded() + SLACK);
    let co = isa.co_block();
    assert!(packed.len() >= outputs.div_ceil(co) * inputs * TAPS * co);
    assert!(out.len() >= outputs * p.h * p.w);
    let out_ptr = out.as_mut_ptr().cast::<f32>();
    // SAFETY: the instruction set was detected at run time (`isa`), and the asserts above
    // bound every read and write the kernels make (see `image_with`).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::image_avx512(p, inputs, outputs, padded, packed, out_ptr),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::image_avx2(p, inputs, outputs, padded, packed, out_ptr),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("no direct kernels off x86-64"),
        }
    }
}

/// The weight gradient of [`forward`] for `dy` `[batch, c_out, h, w]` → `[c_out, c_in, 3, 3]`.
pub fn weight_gradient(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    weight_gradient_on(isa_of(s), s, x, dy)
}

fn weight_gradient_on(isa: Isa, s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (p, lanes) = (Plane::of(s), isa.lanes());
    let (in_image, out_image) = (s.c_in * s.h * s.w, s.c_out * s.h * s.w);
    let len = s.c_out * s.c_in * TAPS;
    // Images per pass: their padded inputs and output gradients stay in the L2 cache while
    // every (output, input) channel pair walks them.
    let per_pass = (PASS_VALUES / (s.c_in * p.padded() + out_image)).max(1);
    let partials: Vec<Vec<f32>> = super::split_batch(s.batch)
        .into_par_iter()
        .map(|(first, end)| {
            // Lane-wise sums `[c_out][c_in][tap][lanes]`: each pass adds to them in registers,
            // and the lanes are added once, at the end of the run.
            let mut sums = vec![0.0f32; len * lanes];
            let mut padded = vec![0.0f32; per_pass.min(end - first) * s.c_in * p.padded() + SLACK];
            for lo in (first..end).step_by(per_pass) {
                let images = per_pass.min(end - lo);
                p.pad_into(&x[lo * in_image..][..images * in_image], &mut padded);
                let dy = &dy[lo * out_image..][..images * out_image];
                let g = Grads {
                    p,
                    c_in: s.c_in,
                    c_out: s.c_out,
                    images,
                };
                assert!(padded.len() >= images * s.c_in * p.padded() + SLACK);
                assert!(sums.len() >= len * lanes);
                // SAFETY: as in `image`: detected instructions, and the asserts above (with
                // `dy` sliced to `images` images) bound every access.
                unsafe {
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512 => x86::weight_avx512(g, &padded, dy, &mut sums),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 => x86::weight_avx2(g, &padded, dy, &mut sums),
                        #[cfg(not(target_arch = "x86_64"))]
                        _ => unreachable!("no direct kernels off x86-64"),
                    }
                }
            }
            sums.chunks_exact(lanes).map(|l| l.iter().sum()).collect()
        })
        .collect();
    super::sum_in_order(&partials, len)
}

/// Values (inputs, padded, and output gradients) a pass of the weight gradient walks: 512
/// KiB, half of a Zen 4 core's L2.
const PASS_VALUES: usize = 128 << 10;

/// What one pass of the weight gradient covers.
#[derive(Debug, Clone, Copy)]
struct Grads {
    p: Plane,
    c_in: usize,
    c_out: usize,
    images: usize,
}

/// The SIMD vector the kernels are written over.
pub(super) trait Vector: Copy {
    const LANES: usize;
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// `LANES` values from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self;
    /// `acc + w · x` in every lane.
    unsafe fn fma(acc: Self, w: f32, x: Self) -> Self;
    /// `acc + a · b` lane by lane.
    unsafe fn fma_v(acc: Self, a: Self, b: Self) -> Self;
    /// Stores the lanes at `p` (unaligned).
    unsafe fn store(self, p: *mut f32);
    /// The first `n` lanes (`1..=LANES`) of `p`, the others zero; lanes past `n` are not read.
    unsafe fn load_first(p: *const f32, n: usize) -> Self;
    /// Stores the first `n` lanes (`1..=LANES`) at `p`; nothing past them is written.
    unsafe fn store_first(self, p: *mut f32, n: usize);
}

/// One image's forward over every tile of `CO` output channels by `VS` vectors, generic over
/// the vector.
///
/// # Safety
/// The CPU has `V`'s instructions; `padded` holds `inputs` padded planes of `p` and
/// [`SLACK`] values more, `packed` `ceil(outputs / CO) · inputs · 9 · CO` values (see [`pack`]),
/// and `out` points to `outputs · h · w` writable values (which need not be initialised).
#[inline(always)]
unsafe fn image_with<V: Vector, const CO: usize, const VS: usize>(
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
        let (per_row, tail) = p.vectors(V::LANES);
        let vectors = p.h * per_row;
        // The top-left input of output vector `v` (its tap (0, 0)), its first output, and how
        // many of its lanes are outputs (the last vector of a row may hold fewer).
        let start = |v: usize| (v / per_row) * wp + (v % per_row) * V::LANES;
        let first = |v: usize| (v / per_row) * p.w + (v % per_row) * V::LANES;
        let width = |v: usize| {
            if v % per_row == per_row - 1 {
                tail
            } else {
                V::LANES
            }
        };
        for block in 0..outputs.div_ceil(CO) {
            let weights = packed.as_ptr().add(block * inputs * TAPS * CO);
            let live = (outputs - block * CO).min(CO);
            let mut v = 0;
            while v < vectors {
                let n = (vectors - v).min(VS);
                let mut acc = [[V::zero(); VS]; CO];
                let starts: [usize; VS] = std::array::from_fn(|i| start(v + i.min(n - 1)));
                for ci in 0..inputs {
                    let src = padded.as_ptr().add(ci * plane_p);
                    let w = weights.add(ci * TAPS * CO);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let t = ky * 3 + kx;
                            let xs: [V; VS] =
                                std::array::from_fn(|i| V::load(src.add(starts[i] + ky * wp + kx)));
                            for (c, acc) in acc.iter_mut().enumerate() {
                                let wv = *w.add(t * CO + c);
                                for (a, &x) in acc.iter_mut().zip(&xs) {
                                    *a = V::fma(*a, wv, x);
                                }
                            }
                        }
                    }
                }
                for (c, acc) in acc.iter().enumerate().take(live) {
                    let dst = out.add((block * CO + c) * plane);
                    for (i, a) in acc.iter().enumerate().take(n) {
                        match width(v + i) {
                            w if w == V::LANES => a.store(dst.add(first(v + i))),
                            w => a.store_first(dst.add(first(v + i)), w),
                        }
                    }
                }
                v += n;
            }
        }
    }
}

/// One pass's share of the weight gradient, added into the lane-wise sums `[c_out][c_in][9]
/// [V::LANES]`, with `W` output channels by the nine taps in registers.
///
/// # Safety
/// The CPU has `V`'s instructions; `padded` holds `images · c_in` padded planes and
/// [`SLACK`] values more, `dy` `images · c_out · h · w` values, and `sums`
/// `c_out · c_in · 9 · V::LANES`.
#[inline(always)]
unsafe fn weight_with<V: Vector, const W: usize>(
    g: Grads,
    padded: &[f32],
    dy: &[f32],
    sums: &mut [f32],
) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        let p = g.p;
        let (wp, plane_p, plane) = (p.wp(), p.padded(), p.h * p.w);
        let (per_row, tail) = p.vectors(V::LANES);
        let vectors = p.h * per_row;
        let mut co = 0;
        while co < g.c_out {
            // The last group may be short: its spare rows repeat its last channel, unstored.
            let n = (g.c_out - co).min(W);
            let row = |j: usize| co + j.min(n - 1);
            for ci in 0..g.c_in {
                let at = |j: usize, t: usize| ((row(j) * g.c_in + ci) * TAPS + t) * V::LANES;
                let mut acc: [[V; TAPS]; W] = std::array::from_fn(|j| {
                    std::array::from_fn(|t| V::load(sums.as_ptr().add(at(j, t))))
                });
                for img in 0..g.images {
                    let src = padded.as_ptr().add((img * g.c_in + ci) * plane_p);
                    let grad = dy.as_ptr().add(img * g.c_out * plane);
                    for v in 0..vectors {
                        let (y, x0) = (v / per_row, (v % per_row) * V::LANES);
                        // A row's last vector reads only its outputs' gradients: its other
                        // lanes are zero, so the inputs they meet add nothing.
                        let lanes = if v % per_row == per_row - 1 {
                            tail
                        } else {
                            V::LANES
                        };
                        let d: [V; W] = std::array::from_fn(|j| {
                            let at = grad.add(row(j) * plane + y * p.w + x0);
                            if lanes == V::LANES {
                                V::load(at)
                            } else {
                                V::load_first(at, lanes)
                            }
                        });
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let x = V::load(src.add((y + ky) * wp + x0 + kx));
                                for (acc, &d) in acc.iter_mut().zip(&d) {
                                    acc[ky * 3 + kx] = V::fma_v(acc[ky * 3 + kx], d, x);
                                }
                            }
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(n) {
                    for (t, a) in acc.iter().enumerate() {
                        a.store(sums.as_mut_ptr().add(at(j, t)));
                    }
                }
            }
            co += n;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::{
        AVX2_CO, AVX2_VECS, CO_BLOCK, Grads, Plane, VECS, Vector, WG_CO, image_with, weight_with,
    };

    /// The mask of the first `n` of 16 lanes.
    #[inline(always)]
    fn first_lanes16(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// The mask of the first `n` of 8 lanes (a lane's sign bit set when it is on).
    #[inline(always)]
    unsafe fn first_lanes8(n: usize) -> __m256i {
        const ON: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        // SAFETY: `8 - n.min(8)` is in 0..=8, so the 8 values read lie inside `ON`.
        unsafe { _mm256_loadu_si256(ON.as_ptr().add(8 - n.min(8)).cast()) }
    }

    impl Vector for __m512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn fma(acc: Self, w: f32, x: Self) -> Self {
            unsafe { _mm512_fmadd_ps(_mm512_set1_ps(w), x, acc) }
        }
        #[inline(always)]
        unsafe fn fma_v(acc: Self, a: Self, b: Self) -> Self {
            unsafe { _mm512_fmadd_ps(a, b, acc) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            unsafe { _mm512_maskz_loadu_ps(first_lanes16(n), p) }
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, first_lanes16(n), self) }
        }
    }

    impl Vector for __m256 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn fma(acc: Self, w: f32, x: Self) -> Self {
            unsafe { _mm256_fmadd_ps(_mm256_set1_ps(w), x, acc) }
        }
        #[inline(always)]
        unsafe fn fma_v(acc: Self, a: Self, b: Self) -> Self {
            unsafe { _mm256_fmadd_ps(a, b, acc) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            unsafe { _mm256_maskload_ps(p, first_lanes8(n)) }
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            unsafe { _mm256_maskstore_ps(p, first_lanes8(n), self) }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn image_avx512(
        p: Plane,
        inputs: usize,
        outputs: usize,
        padded: &[f32],
        packed: &[f32],
        out: *mut f32,
    ) {
        unsafe { image_with::<__m512, CO_BLOCK, VECS>(p, inputs, outputs, padded, packed, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn image_avx2(
        p: Plane,
        inputs: usize,
        outputs: usize,
        padded: &[f32],
        packed: &[f32],
        out: *mut f32,
    ) {
        unsafe { image_with::<__m256, AVX2_CO, AVX2_VECS>(p, inputs, outputs, padded, packed, out) }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_avx512(g: Grads, padded: &[f32], dy: &[f32], sums: &mut [f32]) {
        unsafe { weight_with::<__m512, WG_CO>(g, padded, dy, sums) }
    }

    /// One output channel at a time: nine accumulators of AVX2's sixteen registers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_avx2(g: Grads, padded: &[f32], dy: &[f32], sums: &mut [f32]) {
        unsafe { weight_with::<__m256, 1>(g, padded, dy, sums) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu_kernels::{assert_close, conv, same_3x3, test_values};

    /// Every pass against im2col + GEMM: channel counts that fill no block, one block, and a
    /// block and a part; one and several vectors a row; a tile split across rows; an odd
    /// number of vectors (the last tile half full); one image and several per thread.
    #[test]
    fn matches_im2col() {
        let (avx512, avx2) = features();
        let isas = [(Isa::Avx512, avx512), (Isa::Avx2, avx2)];
        let isas: Vec<Isa> = isas
            .iter()
            .filter(|(_, has)| *has)
            .map(|(i, _)| *i)
            .collect();
        if isas.is_empty() {
            eprintln!("no AVX-512 or AVX2 here: the direct kernels are not taken");
        }
        for isa in isas {
            let l = isa.lanes();
            for &(batch, c_in, c_out, h, w) in &[
                (2, 3, 16, 4, 2 * l),
                (3, 16, 16, 3, l),
                (1, 5, 12, 5, l),
                (5, 8, 3, 2, 3 * l),
                (4, 32, 20, l, l),
                (2, 6, 9, 3, l + 3),
                (3, 4, 8, 7, l - 1),
                (2, 4, 8, 2, 1),
            ] {
                let s = same_3x3(batch, c_in, c_out, h, w);
                let x = test_values(batch * c_in * h * w, 1, -1.0, 1.0);
                let wt = test_values(c_out * c_in * 9, 2, -0.5, 0.5);
                let dy = test_values(batch * c_out * h * w, 3, -1.0, 1.0);
                let what = format!("{isa:?} {s:?}");
                assert_close(
                    &forward_on(isa, &s, &x, &wt),
                    &conv::forward(&s, &x, &wt),
                    &format!("forward {what}"),
                );
                let (dw, dx) = conv::backward(&s, &x, &wt, &dy, true);
                assert_close(
                    &input_gradient_on(isa, &s, &wt, &dy),
                    &dx.unwrap(),
                    &format!("input gradient {what}"),
                );
                assert_close(
                    &weight_gradient_on(isa, &s, &x, &dy),
                    &dw,
                    &format!("weight gradient {what}"),
                );
            }
        }
    }

    /// The shapes a narrow ResNet's blocks have take the direct path; wide layers, strided
    /// ones and rows of a part-vector do not.
    #[test]
    fn takes_the_narrow_blocks() {
        if features() == (false, false) {
            return;
        }
        assert!(pays(&same_3x3(128, 16, 16, 32, 32)));
        assert!(pays(&same_3x3(128, 32, 32, 16, 16)));
        assert!(pays(&same_3x3(128, 3, 64, 32, 32)));
        assert!(!pays(&same_3x3(128, 64, 64, 32, 32)));
        assert!(pays(&same_3x3(128, 16, 16, 14, 14)));
        assert!(!pays(&same_3x3(128, 16, 16, 4, 4)));
        assert!(!pays(&ConvShape {
            stride: 2,
            ..same_3x3(128, 16, 32, 32, 32)
        }));
    }
}

#[cfg(test)]
/// A measurement, not a check: each 3x3 kernel (direct, im2col, Winograd) on the block
/// convolutions of ResNets, batch 128, best of 5 in ms, printed side by side. This is what
/// [`pays`] was set from:
///
///     RAYON_NUM_THREADS=2 cargo test --release --lib direct::timing -- --ignored --nocapture
mod timing {
    use super::*;
    use crate::kernels::cpu_kernels::{best_ms as best, conv, test_values, winograd};

    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn kernels() {
        crate::allocator::keep_freed_memory();
        for &(c, side) in &[
            (16, 32),
            (32, 16),
            (32, 7),
            (64, 7),
            (64, 8),
            (128, 2),
            (128, 4),
            (128, 8),
            (256, 4),
            (256, 8),
            (512, 4),
        ] {
            let s = ConvShape {
                batch: 128,
                c_in: c,
                h: side,
                w: side,
                c_out: c,
                k: 3,
                stride: 1,
                pad: 1,
            };
            let x = test_values(128 * c * side * side, 1, -1.0, 1.0);
            let wt = test_values(c * c * 9, 2, -0.5, 0.5);
            let dy = test_values(128 * c * side * side, 3, -1.0, 1.0);
            if fits(&s) {
                let f = best(|| drop(forward(&s, &x, &wt)));
                let dx = best(|| drop(input_gradient(&s, &wt, &dy)));
                let dw = best(|| drop(weight_gradient(&s, &x, &dy)));
                eprintln!("   direct: f {f:.2} dx {dx:.2} dw {dw:.2}");
            }
            let cf = best(|| drop(conv::forward(&s, &x, &wt)));
            let cb = best(|| drop(conv::backward(&s, &x, &wt, &dy, true)));
            let cbw = best(|| drop(conv::backward(&s, &x, &wt, &dy, false)));
            if crate::kernels::cpu_kernels::direct_wide::pays_forward(&s) {
                use crate::kernels::cpu_kernels::direct_wide;
                let vf = best(|| drop(direct_wide::forward(&s, &x, &wt)));
                let vdx = best(|| drop(direct_wide::input_gradient(&s, &wt, &dy)));
                let vdw = best(|| drop(direct_wide::weight_gradient(&s, &x, &dy)));
                eprintln!("   wide direct: f {vf:.2} dx {vdx:.2} dw {vdw:.2}");
            }
            if features().1 && fits(&s) {
                // AVX2's tiles forced on this CPU: what a CPU without AVX-512 would run.
                let af = best(|| drop(forward_on(Isa::Avx2, &s, &x, &wt)));
                let adw = best(|| drop(weight_gradient_on(Isa::Avx2, &s, &x, &dy)));
                eprintln!("   AVX2 tiles: f {af:.2} dw {adw:.2}");
            }
            let wf = best(|| drop(winograd::forward(&s, &x, &wt)));
            let wdx = best(|| drop(winograd::input_gradient(&s, &wt, &dy)));
            let wdw = best(|| drop(winograd::weight_gradient(&s, &x, &dy)));
            eprintln!(
                "{c}ch {side}px: im2col f {cf:.2} dw+dx {cb:.2} dw {cbw:.2} | winograd f {wf:.2} dx {wdx:.2} dw {wdw:.2}"
            );
        }
    }
}
