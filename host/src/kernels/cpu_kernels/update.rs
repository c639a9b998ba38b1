//! Optimiser and EMA updates over a network's parameter vector (`models::flat`) in one pass,
//! in parallel over its rows.
//!
//! Written as tensor ops, an update is about ten passes over the vector, each a separate op;
//! on the CPU a vector of millions of values leaves the cache between them, so the per-tensor
//! updates they replace (each op on a small tensor still in cache) were faster. Here each row
//! of [`CHUNK`] values is read once and written once per pass: LARS takes two (the rows'
//! squared norms, then the update), the rest one. Arithmetic is the ops' own, in the same
//! order, so the results match them but for the order of LARS's sums.

use rayon::prelude::*;

use crate::kernels::FLAT_ROW as CHUNK;

/// One row's values and what goes with them: the row's decay factor (1 or 0) and, for LARS,
/// its trust ratio.
#[derive(Clone, Copy)]
pub struct RowFactors {
    /// 1 where the row's parameter takes weight decay, else 0.
    pub decay: f32,
    /// LARS's ratio for the row's parameter (1 where it is not adapted).
    pub trust: f32,
}

/// SGD's settings, as the `f32` factors the ops multiply by (differences such as `1 − τ`
/// taken in f64 first, as the ops take them).
#[derive(Clone, Copy)]
pub struct Sgd {
    pub momentum: f32,
    /// `1 − dampening`.
    pub undamped: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}

/// AdamW's settings and this step's bias corrections, as [`Sgd`]'s.
#[derive(Clone, Copy)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    /// `1 − β1`.
    pub rest1: f32,
    /// `1 − β2`.
    pub rest2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// `1 − β1ᵗ`.
    pub c1: f32,
    /// `1 − β2ᵗ`.
    pub c2: f32,
}

/// Runs `f(row, its slices)` over the rows of `CHUNK` values of each output in parallel.
fn rows_mut<const N: usize>(
    outputs: [&mut [f32]; N],
    f: impl Fn(usize, [&mut [f32]; N]) + Sync + Send,
) {
    let len = outputs[0].len();
    let rows = len.div_ceil(CHUNK);
    let mut chunks: Vec<Vec<&mut [f32]>> = (0..rows).map(|_| Vec::with_capacity(N)).collect();
    for out in outputs {
        for (r, chunk) in out.chunks_mut(CHUNK).enumerate() {
            chunks[r].push(chunk);
        }
    }
    chunks.into_par_iter().enumerate().for_each(|(r, row)| {
        let row: [&mut [f32]; N] = match row.try_into() {
            Ok(row) => row,
            Err(_) => unreachable!("every output has the same rows"),
        };
        f(r, row)
    });
}

/// The range of row `r`.
fn span(r: usize, len: usize) -> std::ops::Range<usize> {
    r * CHUNK..((r + 1) * CHUNK).min(len)
}

/// Each row's sums of `p²` and of `d²` with `d = g + wd·decay·p`.
pub fn lars_row_norms(
    p: &[f32],
    g: &[f32],
    decay: &[f32],
    weight_decay: f32,
) -> (Vec<f32>, Vec<f32>) {
    (0..p.len().div_ceil(CHUNK))
        .into_par_iter()
        .map(|r| {
            let s = span(r, p.len());
            let wd = decay[r] * weight_decay;
            let (mut pp, mut dd) = (0.0f32, 0.0f32);
            for (&pv, &gv) in p[s.clone()].iter().zip(&g[s]) {
                let d = gv + pv * wd;
                pp += pv * pv;
                dd += d * d;
            }
            (pp, dd)
        })
        .unzip()
}

/// SGD: `(p', buf')`; `buf` is `None` on the first step (then `buf' = d`), and `buf'` is
/// empty without momentum.
pub fn sgd(
    p: &[f32],
    g: &[f32],
    buf: Option<&[f32]>,
    decay: &[f32],
    lr: f32,
    c: Sgd,
) -> (Vec<f32>, Vec<f32>) {
    let len = p.len();
    let mut new_p = vec![0.0f32; len];
    let mut new_buf = vec![0.0f32; if c.momentum != 0.0 { len } else { 0 }];
    let keep = c.momentum != 0.0;
    let step = |r: usize, out_p: &mut [f32], out_buf: &mut [f32]| {
        let s = span(r, len);
        let wd = decay[r] * c.weight_decay;
        for (k, i) in s.enumerate() {
            let mut d = g[i];
            if c.weight_decay != 0.0 {
                d += p[i] * wd;
            }
            if keep {
                let b = match buf {
                    None => d,
                    Some(b) => b[i] * c.momentum + d * c.undamped,
                };
                out_buf[k] = b;
                d = if c.nesterov { d + b * c.momentum } else { b };
            }
            out_p[k] = p[i] - d * lr;
        }
    };
    if keep {
        rows_mut([&mut new_p, &mut new_buf], |r, [out_p, out_buf]| {
            step(r, out_p, out_buf)
        });
    } else {
        rows_mut([&mut new_p], |r, [out_p]| step(r, out_p, &mut []));
    }
    (new_p, new_buf)
}

/// LARS's update given each row's factors: `d = (g + wd·decay·p)·trust`,
/// `buf = μ·buf + d` (first: `d`), `p' = p − lr·buf`.
pub fn lars(
    p: &[f32],
    g: &[f32],
    buf: Option<&[f32]>,
    rows: &[RowFactors],
    weight_decay: f32,
    momentum: f32,
    lr: f32,
) -> (Vec<f32>, Vec<f32>) {
    let len = p.len();
    let mut new_p = vec![0.0f32; len];
    let mut new_buf = vec![0.0f32; len];
    rows_mut([&mut new_p, &mut new_buf], |r, [out_p, out_buf]| {
        let f = rows[r];
        let wd = f.decay * weight_decay;
        for (k, i) in span(r, len).enumerate() {
            let mut d = g[i];
            if weight_decay != 0.0 {
                d += p[i] * wd;
            }
            let d = d * f.trust;
            let b = match buf {
                None => d,
                Some(b) => b[i] * momentum + d,
            };
            out_buf[k] = b;
            out_p[k] = p[i] - b * lr;
        }
    });
    (new_p, new_buf)
}

/// AdamW: `(p', m', v')`; `m` and `v` are `None` on the first step.
pub fn adamw(
    p: &[f32],
    g: &[f32],
    moments: Option<(&[f32], &[f32])>,
    decay: &[f32],
    lr: f32,
    c: AdamW,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let len = p.len();
    let (mut new_p, mut new_m, mut new_v) =
        (vec![0.0f32; len], vec![0.0f32; len], vec![0.0f32; len]);
    rows_mut(
        [&mut new_p, &mut new_m, &mut new_v],
        |r, [out_p, out_m, out_v]| {
            let shrink = decay[r] * lr * -c.weight_decay;
            for (k, i) in span(r, len).enumerate() {
                let mut pv = p[i];
                if c.weight_decay != 0.0 {
                    pv += pv * shrink;
                }
                let gv = g[i];
                let (m, v) = match moments {
                    None => (gv * c.rest1, gv * gv * c.rest2),
                    Some((m, v)) => (
                        m[i] * c.beta1 + gv * c.rest1,
                        v[i] * c.beta2 + gv * gv * c.rest2,
                    ),
                };
                let denom = (v / c.c2).sqrt() + c.epsilon;
                out_m[k] = m;
                out_v[k] = v;
                out_p[k] = pv - m / c.c1 / denom * lr;
            }
        },
    );
    (new_p, new_m, new_v)
}

/// The EMA `t' = m·t + rest·o`, `rest = 1 − m` (taken in f64).
pub fn mix(t: &[f32], o: &[f32], m: f32, rest: f32) -> Vec<f32> {
    let len = t.len();
    let mut out = vec![0.0f32; len];
    rows_mut([&mut out], |r, [out]| {
        for (k, i) in span(r, len).enumerate() {
            out[k] = t[i] * m + o[i] * rest;
        }
    });
    out
}
