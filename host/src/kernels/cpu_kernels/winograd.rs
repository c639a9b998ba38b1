//! Winograd's F(2x2, 3x3) for the stride-1 3x3 "same" convolutions of the ResNet blocks.
//!
//! A 2x2 block of outputs of a 3x3 kernel is computed from the 4x4 input patch under it as
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: 16 products per (input, output) channel pair where the direct
//! form takes 36, so the multiply-adds drop 2.25x. Over channels the products are 16 GEMMs,
//! one per position ξ of the 4x4 transformed tile:
//!
//! `M_ξ[co, t] = Σ_ci U_ξ[co, ci] · V_ξ[ci, t]`, with `U = G g Gᵀ` (weights, once per call)
//! and `V = Bᵀ d B` (input patches; tile `t` of the group).
//!
//! Against im2col + GEMM the transformed input is 4x the input instead of 9x. The transforms'
//! coefficients are 0, ±1 and ±1/2, so the result differs from the direct sum by rounding
//! only (about 1e-6 relative in f32).
//!
//! The input gradient of the same convolution is this convolution of the output gradient with
//! the kernel flipped and its channel axes swapped, so [`input_gradient`] reuses the forward.
//! The weight gradient ([`weight_gradient`]) follows from the same algebra: the gradient of
//! `U_ξ` is `Σ_t Ŷ_ξ[co, t] · V_ξ[ci, t]` with `Ŷ = A dY Aᵀ` per tile (16 GEMMs over the
//! tiles), and the kernel's is `Gᵀ dU G`.
//!
//! The backend takes this path where [`pays`] (forward, input gradient) and [`pays_weight`]
//! say so; elsewhere the convolution is im2col + GEMM (`conv.rs`).

use super::conv::ConvShape;
use super::matmul::gemm;
use super::resize;

/// Tiles per group (one GEMM column each), so that a group's `V` and `M` stay in cache: with
/// 256 the 8x8 layers ran up to 30% slower; 32 and 64 measured the same as 128 within noise.
const TILES_PER_GROUP: usize = 128;

/// The shapes this path takes: 3x3, stride 1, padding 1 (output as large as the input).
pub fn applies(s: &ConvShape) -> bool {
    s.k == 3 && s.stride == 1 && s.pad == 1
}

/// Whether Winograd beats im2col + GEMM for the forward pass and the input gradient of `s`:
/// at least 64 channels in and out, so each of the 16 GEMMs has a useful depth, on maps of
/// 8x8 or more, or 4x4 with 256 channels or more (where the GEMMs outweigh the per-plane
/// overhead of four tiles). Measured per layer of a batch of 128 (2 cores; ms, im2col →
/// Winograd, forward / input gradient): 64 channels at 32x32 75 → 57 / 72 → 61; 128 at 16x16
/// 54 → 36 / 58 → 38; 256 at 8x8 49 → 30 / 53 → 30; 512 at 4x4 63 → 48 / 48 → 44 and 56 → 44
/// / 55 → 52. No faster: 16 channels at 32x32, 32 at 16x16, 64 at 8x8; slower: 128 at 4x4.
/// `SSLHOST_CPU_KERNELS=im2col` turns Winograd off, for comparisons.
pub fn pays(s: &ConvShape) -> bool {
    let side = s.h.min(s.w);
    enabled() && channels(s) >= 64 && (side >= 8 || (side >= 4 && channels(s) >= 256))
}

/// The same for the weight gradient, whose Winograd form pays on larger maps only: 16x16 or
/// more, or 8x8 with 128 channels or more. Measured (ms, as above): 64 channels at 32x32
/// 67 → 53, 128 at 16x16 57 → 39, 256 at 8x8 51 → 44 and 57 → 52; slower: 64 at 8x8 (3.6 →
/// 4.1), 256 at 4x4 (15 → 19), and 512 at 4x4 went both ways (65 → 56, 65 → 74).
pub fn pays_weight(s: &ConvShape) -> bool {
    let side = s.h.min(s.w);
    enabled() && channels(s) >= 64 && (side >= 16 || (side >= 8 && channels(s) >= 128))
}

/// The narrower of the two channel counts of a shape Winograd takes (0 for others).
fn channels(s: &ConvShape) -> usize {
    if applies(s) { s.c_in.min(s.c_out) } else { 0 }
}

/// Winograd is on unless the kernel policy says `SSLHOST_CPU_KERNELS=im2col`.
fn enabled() -> bool {
    super::kernel_set() != super::CpuKernelSet::Im2col
}

/// Tiles along each axis.
fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.h.div_ceil(2), s.w.div_ceil(2))
}

/// `U_ξ = G g Gᵀ` of every kernel, laid out `[c_in][16][c_out]`: the GEMM reads `U_ξ` down
/// its output channels (stride 1) and across input channels (stride `16·c_out`). `kernel(co,
/// ci)` gives the 3x3 kernel `[kh][kw]`.
///
/// Input channels in parallel, each writing its 16 rows of output channels in order: written
/// one kernel at a time with a stride of `c_out` between writes, the 512-channel layers took
/// 19 ms on one thread, a third of the layer's forward pass.
fn transform_kernels(
    c_out: usize,
    c_in: usize,
    kernel: impl Fn(usize, usize) -> [f32; 9] + Sync,
) -> Vec<f32> {
    super::par_new(
        16 * c_in * c_out,
        16 * c_out,
        || (),
        |_, ci, rows| {
            for co in 0..c_out {
                let g = kernel(co, ci);
                // G g: 4x3, G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
                let mut t = [[0.0f32; 3]; 4];
                for j in 0..3 {
                    let (a, b, c) = (g[j], g[3 + j], g[6 + j]);
                    t[0][j] = a;
                    t[1][j] = 0.5 * (a + b + c);
                    t[2][j] = 0.5 * (a - b + c);
                    t[3][j] = c;
                }
                // … times Gᵀ.
                for (i, r) in t.iter().enumerate() {
                    let row = [
                        r[0],
                        0.5 * (r[0] + r[1] + r[2]),
                        0.5 * (r[0] - r[1] + r[2]),
                        r[2],
                    ];
                    for (j, v) in row.into_iter().enumerate() {
                        rows[(i * 4 + j) * c_out + co] = v;
                    }
                }
            }
        },
    )
}

/// Scratch space one thread reuses across its groups.
#[derive(Default)]
struct Scratch {
    /// `V`: `[16][c_in][tiles]`.
    v: Vec<f32>,
    /// `M` (or the output gradient's `Ŷ`): `[16][c_out][tiles]`.
    m: Vec<f32>,
    /// One input plane, zero-padded and split into its even and odd columns.
    plane: Vec<f32>,
    /// `d B` of one plane (four `[ph, tw]` parts), or the rows one row of tiles passes
    /// through in the output and gradient transforms.
    rows: Vec<f32>,
}

/// The four runs of `len` values at `first`, `first + stride`, `first + 2·stride` and
/// `first + 3·stride` of `buf` (four streams of `V` or `M`, or four rows).
fn four_runs(buf: &mut [f32], first: usize, stride: usize, len: usize) -> [&mut [f32]; 4] {
    let (r0, rest) = buf[first..].split_at_mut(stride);
    let (r1, rest) = rest.split_at_mut(stride);
    let (r2, r3) = rest.split_at_mut(stride);
    [
        &mut r0[..len],
        &mut r1[..len],
        &mut r2[..len],
        &mut r3[..len],
    ]
}

// The vector loops of the transforms, each over a row of tiles. Each is a function of its own
// with one slice per argument, never inlined: the compiler then knows that the outputs alias
// nothing and vectorises the loop. Written inside the callers, on pieces of one buffer, they
// stayed scalar (the input transform took 0.22 ms for 64 planes of 32x32, now 0.11). An AVX2
// build of them measured the same as the baseline's SSE: they wait on memory, not on lanes.

/// `Bᵀ` along vectors: `o = [d0 − d2, d1 + d2, d2 − d1, d1 − d3]`.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn b_step(
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
    o3: &mut [f32],
    d0: &[f32],
    d1: &[f32],
    d2: &[f32],
    d3: &[f32],
) {
    let n = o0.len();
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    let (d0, d1, d2, d3) = (&d0[..n], &d1[..n], &d2[..n], &d3[..n]);
    for i in 0..n {
        o0[i] = d0[i] - d2[i];
        o1[i] = d1[i] + d2[i];
        o2[i] = d2[i] - d1[i];
        o3[i] = d1[i] - d3[i];
    }
}

/// `A` along vectors: `o = [a, a + b, a − b, −b]`.
#[inline(never)]
fn g_step(o0: &mut [f32], o1: &mut [f32], o2: &mut [f32], o3: &mut [f32], a: &[f32], b: &[f32]) {
    let n = o0.len();
    let (o1, o2, o3, a, b) = (&mut o1[..n], &mut o2[..n], &mut o3[..n], &a[..n], &b[..n]);
    for i in 0..n {
        o0[i] = a[i];
        o1[i] = a[i] + b[i];
        o2[i] = a[i] - b[i];
        o3[i] = -b[i];
    }
}

/// `Aᵀ` along vectors: `o = [m0 + m1 + m2, m1 − m2 − m3]`.
#[inline(never)]
fn a_step(o0: &mut [f32], o1: &mut [f32], m0: &[f32], m1: &[f32], m2: &[f32], m3: &[f32]) {
    let n = o0.len();
    let (o1, m0, m1, m2, m3) = (&mut o1[..n], &m0[..n], &m1[..n], &m2[..n], &m3[..n]);
    for i in 0..n {
        o0[i] = m0[i] + m1[i] + m2[i];
        o1[i] = m1[i] - m2[i] - m3[i];
    }
}

/// `row[2i]` into `even[i]`, `row[2i + 1]` into `odd[i]` (for an odd length, the last value goes
/// to `even[len / 2]`).
#[inline(never)]
fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.chunks_exact(2);
    if let [last] = pairs.remainder() {
        even[row.len() / 2] = *last;
    }
    for ((pair, e), o) in pairs.zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// `out[2i] = even[i]`, `out[2i + 1] = odd[i]`.
#[inline(never)]
fn interleave(out: &mut [f32], even: &[f32], odd: &[f32]) {
    for ((pair, &e), &o) in out.chunks_exact_mut(2).zip(even).zip(odd) {
        pair[0] = e;
        pair[1] = o;
    }
}

/// `V = Bᵀ d B` for every tile of `nb` images `x` `[nb, c_in, h, w]`, into `v`
/// `[16][c_in][nb·th·tw]`, `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
///
/// Per plane: the zero-padded plane is laid out as its even and odd columns, so that `d B`
/// along each row is four contiguous vector ops over the tiles (tile `tx` reads padded
/// columns `2tx .. 2tx + 3`: even `tx`, odd `tx`, even `tx + 1`, odd `tx + 1`); `Bᵀ (d B)`
/// then combines four rows of those into the 16 streams of `V`, again contiguous.
fn transform_input(s: &ConvShape, x: &[f32], nb: usize, scratch: &mut Scratch) {
    let (th, tw) = tiles(s);
    let (ph, half) = (2 * th + 2, tw + 1);
    let tiles_per_image = th * tw;
    let group_tiles = nb * tiles_per_image;
    let stride = s.c_in * group_tiles;
    let v = resize(&mut scratch.v, 16 * stride);
    // `[ph][even | odd]`, each half `tw + 1` wide. The padding (top and bottom rows, the first
    // even column, the columns past the image) stays zero: only image pixels are written.
    let padded = resize(&mut scratch.plane, ph * 2 * half);
    padded.fill(0.0);
    let db = resize(&mut scratch.rows, 4 * ph * tw);
    let plane = s.h * s.w;
    for img in 0..nb {
        for ci in 0..s.c_in {
            let src = &x[(img * s.c_in + ci) * plane..][..plane];
            // Pixel (y, x) sits at padded (y + 1, x + 1): odd x + 1 (x even) → odd half at x / 2,
            // even x + 1 (x odd) → even half at (x + 1) / 2.
            for (y, row) in src.chunks_exact(s.w).enumerate() {
                let (even, odd) = padded[(y + 1) * 2 * half..][..2 * half].split_at_mut(half);
                deinterleave(row, &mut odd[..s.w.div_ceil(2)], &mut even[1..=s.w / 2]);
            }
            // d B: [ph][tw] for each of its four columns.
            let [db0, db1, db2, db3] = four_runs(db, 0, ph * tw, ph * tw);
            let rows = padded
                .chunks_exact(2 * half)
                .zip(db0.chunks_exact_mut(tw))
                .zip(db1.chunks_exact_mut(tw))
                .zip(db2.chunks_exact_mut(tw))
                .zip(db3.chunks_exact_mut(tw));
            for ((((p, q0), q1), q2), q3) in rows {
                let (even, odd) = p.split_at(half);
                // Tile tx reads columns e[tx], o[tx], e[tx + 1], o[tx + 1].
                b_step(
                    q0,
                    q1,
                    q2,
                    q3,
                    &even[..tw],
                    &odd[..tw],
                    &even[1..],
                    &odd[1..],
                );
            }
            // Bᵀ (d B): rows 2ty .. 2ty + 3 of each column j give V[4i + j] for i = 0..3.
            for ty in 0..th {
                let t0 = img * tiles_per_image + ty * tw;
                for (j, part) in [&*db0, &*db1, &*db2, &*db3].into_iter().enumerate() {
                    let band = &part[2 * ty * tw..][..4 * tw];
                    let (r0, rest) = band.split_at(tw);
                    let (r1, rest) = rest.split_at(tw);
                    let (r2, r3) = rest.split_at(tw);
                    let first = (j * s.c_in + ci) * group_tiles + t0;
                    let [v0, v1, v2, v3] = four_runs(v, first, 4 * stride, tw);
                    b_step(v0, v1, v2, v3, r0, r1, r2, r3);
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for every tile, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`: from `m` `[16][c_out][tiles]` into
/// `out` `[nb, c_out, h, w]` (the parts of edge tiles past an odd side are dropped).
fn transform_output(s: &ConvShape, m: &[f32], nb: usize, out: &mut [f32], rows: &mut Vec<f32>) {
    let (th, tw) = tiles(s);
    let tiles_per_image = th * tw;
    let group_tiles = nb * tiles_per_image;
    let plane = s.h * s.w;
    let stride = s.c_out * group_tiles;
    // Aᵀ M for one row of tiles (eight rows of tw), two output rows of 2·tw, and the even and
    // odd columns of one output row.
    let rows = resize(rows, 8 * tw + 4 * tw + 2 * tw);
    let (am, rest) = rows.split_at_mut(8 * tw);
    let (y, pair) = rest.split_at_mut(4 * tw);
    for img in 0..nb {
        for co in 0..s.c_out {
            let dst = &mut out[(img * s.c_out + co) * plane..][..plane];
            for ty in 0..th {
                let t0 = co * group_tiles + img * tiles_per_image + ty * tw;
                let e: [&[f32]; 16] = std::array::from_fn(|xi| &m[xi * stride + t0..][..tw]);
                // Aᵀ M: rows M0 + M1 + M2 and M1 − M2 − M3 of the 4x4 M, for each column j …
                let (top, bottom) = am.split_at_mut(4 * tw);
                for (j, (t, b)) in top
                    .chunks_exact_mut(tw)
                    .zip(bottom.chunks_exact_mut(tw))
                    .enumerate()
                {
                    a_step(t, b, e[j], e[4 + j], e[8 + j], e[12 + j]);
                }
                // … times A: the same along each row, each tile's two columns interleaved.
                let (y0, y1) = y.split_at_mut(2 * tw);
                let (even, odd) = pair.split_at_mut(tw);
                for (row, out) in [(&*top, &mut *y0), (&*bottom, &mut *y1)] {
                    let (c0, rest) = row.split_at(tw);
                    let (c1, rest) = rest.split_at(tw);
                    let (c2, c3) = rest.split_at(tw);
                    a_step(even, odd, c0, c1, c2, c3);
                    interleave(out, even, odd);
                }
                let yy = 2 * ty;
                dst[yy * s.w..][..s.w].copy_from_slice(&y0[..s.w]);
                if yy + 1 < s.h {
                    dst[(yy + 1) * s.w..][..s.w].copy_from_slice(&y1[..s.w]);
                }
            }
        }
    }
}

/// Images per group: about [`TILES_PER_GROUP`] tiles, at least one group per thread.
fn images_per_group(s: &ConvShape) -> usize {
    let (th, tw) = tiles(s);
    let threads = rayon::current_num_threads().max(1);
    let per_thread = s.batch.div_ceil(threads).max(1);
    (TILES_PER_GROUP / (th * tw)).clamp(1, per_thread)
}

/// `Ŷ = A dY Aᵀ` for every 2x2 tile of the output gradient `dy` `[nb, c_out, h, w]`, into `m`
/// `[16][c_out][nb·th·tw]` (`A = [1 0; 1 1; 1 -1; 0 -1]`; outputs past an odd side were
/// dropped by the forward, so their gradient is zero). Each 4x4 is the gradient of the
/// products `U ⊙ V` of that tile.
fn transform_gradient(s: &ConvShape, dy: &[f32], nb: usize, m: &mut Vec<f32>, rows: &mut Vec<f32>) {
    let (th, tw) = tiles(s);
    let tiles_per_image = th * tw;
    let group_tiles = nb * tiles_per_image;
    let stride = s.c_out * group_tiles;
    let m = resize(m, 16 * stride);
    // Two output rows split into even and odd columns (zero past an odd side), then `A dY`
    // as four rows, each split the same way.
    let rows = resize(rows, 12 * tw);
    rows.fill(0.0);
    let (split, p) = rows.split_at_mut(4 * tw);
    let (top, bottom) = split.split_at_mut(2 * tw);
    let (pe, po) = p.split_at_mut(4 * tw);
    let plane = s.h * s.w;
    for img in 0..nb {
        for co in 0..s.c_out {
            let src = &dy[(img * s.c_out + co) * plane..][..plane];
            for ty in 0..th {
                let (e0, o0) = top.split_at_mut(tw);
                let (e1, o1) = bottom.split_at_mut(tw);
                deinterleave(&src[2 * ty * s.w..][..s.w], e0, o0);
                if 2 * ty + 1 < s.h {
                    deinterleave(&src[(2 * ty + 1) * s.w..][..s.w], e1, o1);
                } else {
                    bottom.fill(0.0);
                }
                // A dY down the columns (even and odd apart) …
                let (e0, o0) = top.split_at(tw);
                let (e1, o1) = bottom.split_at(tw);
                let [p0, p1, p2, p3] = four_runs(pe, 0, tw, tw);
                g_step(p0, p1, p2, p3, e0, e1);
                let [p0, p1, p2, p3] = four_runs(po, 0, tw, tw);
                g_step(p0, p1, p2, p3, o0, o1);
                // … then Aᵀ across each tile's two columns, into the 16 streams.
                let t0 = co * group_tiles + img * tiles_per_image + ty * tw;
                for i in 0..4 {
                    let (even, odd) = (&pe[i * tw..][..tw], &po[i * tw..][..tw]);
                    let [m0, m1, m2, m3] = four_runs(m, 4 * i * stride + t0, stride, tw);
                    g_step(m0, m1, m2, m3, even, odd);
                }
            }
        }
    }
}

/// The convolution of `x` `[batch, c_in, h, w]` with the transformed kernels `u`
/// `[c_in][16][c_out]`, into `[batch, c_out, h, w]`: groups of images in parallel, each thread
/// transforming its group's input, running the 16 GEMMs and transforming their output.
fn convolve(s: &ConvShape, x: &[f32], u: &[f32]) -> Vec<f32> {
    let (th, tw) = tiles(s);
    let tiles_per_image = th * tw;
    let group = images_per_group(s);
    let (in_image, out_image) = (s.c_in * s.h * s.w, s.c_out * s.h * s.w);
    super::par_new(
        s.batch * out_image,
        group * out_image,
        Scratch::default,
        |scratch, g, out| {
            let nb = out.len() / out_image;
            let x = &x[g * group * in_image..][..nb * in_image];
            transform_input(s, x, nb, scratch);
            let cols = nb * tiles_per_image;
            let m = resize(&mut scratch.m, 16 * s.c_out * cols);
            for xi in 0..16 {
                gemm(
                    s.c_out,
                    cols,
                    s.c_in,
                    (&mut m[xi * s.c_out * cols..][..s.c_out * cols], (cols, 1)),
                    &u[xi * s.c_out..],
                    (1, 16 * s.c_out),
                    &scratch.v[xi * s.c_in * cols..][..s.c_in * cols],
                    (cols, 1),
                    false,
                    false,
                );
            }
            transform_output(s, &scratch.m, nb, out, &mut scratch.rows);
        },
    )
}

/// Forward: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, 3, 3]` → `[batch, c_out, h, w]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    debug_assert!(applies(s));
    let u = transform_kernels(s.c_out, s.c_in, |co, ci| {
        weight[(co * s.c_in + ci) * 9..][..9].try_into().unwrap()
    });
    convolve(s, x, &u)
}

/// The input gradient `[batch, c_in, h, w]` for the output gradient `dy` `[batch, c_out, h, w]`:
/// the same convolution of `dy` with each kernel turned 180° and the channel axes swapped.
pub fn input_gradient(s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    debug_assert!(applies(s));
    let swapped = ConvShape {
        c_in: s.c_out,
        c_out: s.c_in,
        ..*s
    };
    let u = transform_kernels(s.c_in, s.c_out, |ci, co| {
        let g = &weight[(co * s.c_in + ci) * 9..][..9];
        std::array::from_fn(|i| g[8 - i])
    });
    convolve(&swapped, dy, &u)
}

/// The weight gradient `[c_out, c_in, 3, 3]` for the input `x` `[batch, c_in, h, w]` and the
/// output gradient `dy` `[batch, c_out, h, w]`: `dU_ξ = Σ_tiles Ŷ_ξ · V_ξᵀ` (16 GEMMs over the
/// tiles, `Ŷ = A dY Aᵀ`, `V = Bᵀ d B`), then `dW = Gᵀ dU G`.
///
/// Each thread sums its fixed run of images, and the runs are added in order, so the result
/// is the same bits on every call.
pub fn weight_gradient(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;

    debug_assert!(applies(s));
    let (th, tw) = tiles(s);
    let tiles_per_image = th * tw;
    let group = images_per_group(s);
    let (in_image, out_image) = (s.c_in * s.h * s.w, s.c_out * s.h * s.w);
    let pairs = s.c_out * s.c_in;
    let partials: Vec<Vec<f32>> = super::split_batch(s.batch)
        .into_par_iter()
        .map(|(first, end)| {
            let mut du = vec![0.0f32; 16 * pairs];
            let mut scratch = Scratch::default();
            for lo in (first..end).step_by(group) {
                let nb = group.min(end - lo);
                let cols = nb * tiles_per_image;
                transform_input(s, &x[lo * in_image..][..nb * in_image], nb, &mut scratch);
                let dy = &dy[lo * out_image..][..nb * out_image];
                transform_gradient(s, dy, nb, &mut scratch.m, &mut scratch.rows);
                for xi in 0..16 {
                    // dU_ξ[co, ci] += Σ_t Ŷ_ξ[co, t] · V_ξ[ci, t]
                    gemm(
                        s.c_out,
                        s.c_in,
                        cols,
                        (&mut du[xi * pairs..][..pairs], (s.c_in, 1)),
                        &scratch.m[xi * s.c_out * cols..][..s.c_out * cols],
                        (cols, 1),
                        &scratch.v[xi * s.c_in * cols..][..s.c_in * cols],
                        (1, cols),
                        true,
                        false,
                    );
                }
            }
            du
        })
        .collect();
    let du = super::sum_in_order(&partials, 16 * pairs);
    // dW = Gᵀ dU G, Gᵀ = [1 ½ ½ 0; 0 ½ -½ 0; 0 ½ ½ 1].
    let mut dw = vec![0.0f32; pairs * 9];
    let g_t = |r: [f32; 4]| {
        [
            r[0] + 0.5 * (r[1] + r[2]),
            0.5 * (r[1] - r[2]),
            0.5 * (r[1] + r[2]) + r[3],
        ]
    };
    for (pair, out) in dw.chunks_exact_mut(9).enumerate() {
        let at = |i: usize, j: usize| du[(i * 4 + j) * pairs + pair];
        // Gᵀ dU: 3x4, one column j at a time …
        let cols: [[f32; 3]; 4] =
            std::array::from_fn(|j| g_t([at(0, j), at(1, j), at(2, j), at(3, j)]));
        // … times G: each row of it, 4 → 3.
        for r in 0..3 {
            let row = g_t([cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
            out[r * 3..][..3].copy_from_slice(&row);
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu_kernels::{assert_close, conv, same_3x3, test_values};

    #[test]
    fn matches_the_direct_convolution() {
        // Even and odd sides, one tile, tiny and several-image groups.
        for &(batch, c_in, c_out, h, w) in &[
            (2, 3, 4, 4, 4),
            (3, 5, 2, 7, 5),
            (1, 1, 1, 1, 1),
            (2, 2, 3, 2, 3),
            (4, 8, 6, 16, 16),
            (5, 4, 4, 9, 12),
        ] {
            let s = same_3x3(batch, c_in, c_out, h, w);
            let x = test_values(batch * c_in * h * w, 1, -1.0, 1.0);
            let wt = test_values(c_out * c_in * 9, 2, -0.5, 0.5);
            let dy = test_values(batch * c_out * h * w, 3, -1.0, 1.0);
            let what = format!("{s:?}");
            assert_close(&forward(&s, &x, &wt), &conv::forward(&s, &x, &wt), &what);
            let (dw, dx) = conv::backward(&s, &x, &wt, &dy, true);
            assert_close(&input_gradient(&s, &wt, &dy), &dx.unwrap(), &what);
            assert_close(&weight_gradient(&s, &x, &dy), &dw, &what);
        }
    }
}
