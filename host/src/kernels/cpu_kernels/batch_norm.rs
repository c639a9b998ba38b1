//! Training-mode batch norm on plain `f32` slices laid out `[batch, channels, plane]`.
//!
//! Burn's generic batch norm swaps the batch and channel axes (a full copy) for each of its
//! statistics and runs about a dozen separate elementwise passes between forward and backward.
//! Here every pass walks the NCHW data in place, one contiguous `plane` at a time (vectors
//! `[N, C]` row by row), in parallel over images: two passes forward (both moments, then the
//! output with its epilogue), two backward (two sums, then the input gradient in one fused
//! expression).
//!
//! Statistics are accumulated per plane in f32 and across planes in f64, so a large batch
//! does not lose precision in the running sum.

use rayon::prelude::*;

/// Sizes of a `[batch, channels, plane]` tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    /// Samples (images).
    pub batch: usize,
    /// Channels: one mean and variance each.
    pub channels: usize,
    /// Elements per sample and channel (height × width for images, 1 for vectors).
    pub plane: usize,
}

impl NormShape {
    /// Values each statistic is taken over.
    fn count(&self) -> f64 {
        (self.batch * self.plane) as f64
    }
}

/// `[Σ f(a[i], b[i])[0], Σ f(a[i], b[i])[1]]` in 16 independent lanes each (vectorises,
/// unlike a sequential f32 sum).
fn lane_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; 2]) -> [f32; 2] {
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let mut tail = [0.0f32; 2];
    for (&x, &y) in a16.remainder().iter().zip(b16.remainder()) {
        let [u, v] = f(x, y);
        tail[0] += u;
        tail[1] += v;
    }
    let (mut lanes0, mut lanes1) = ([0.0f32; 16], [0.0f32; 16]);
    for (a, b) in a16.zip(b16) {
        for i in 0..16 {
            let [u, v] = f(a[i], b[i]);
            lanes0[i] += u;
            lanes1[i] += v;
        }
    }
    [
        lanes0.iter().sum::<f32>() + tail[0],
        lanes1.iter().sum::<f32>() + tail[1],
    ]
}

/// Per-channel sums over the batch of `f(channel, a[i], b[i])` (two values each) for two
/// tensors of the same `[batch, channels, plane]` shape.
///
/// Image planes are summed in f32 lanes, then added across images in f64; vectors (`plane`
/// 1, the heads' `[N, C]` activations) row by row straight into f64, along the channels
/// (one closure call per value and plane cost 16 ns a value there). Each thread sums one
/// fixed run of images and the runs are added in order, so the result is the same bits on
/// every call.
fn channel_sums<G: Fn(f32, f32) -> [f32; 2]>(
    s: &NormShape,
    a: &[f32],
    b: &[f32],
    f: impl Fn(usize) -> G + Sync,
) -> Vec<[f64; 2]> {
    let image = s.channels * s.plane;
    let partials: Vec<Vec<[f64; 2]>> = super::split_batch(s.batch)
        .into_par_iter()
        .map(|(first, end)| {
            let mut acc = vec![[0.0f64; 2]; s.channels];
            for img in first..end {
                let (a, b) = (&a[img * image..][..image], &b[img * image..][..image]);
                if s.plane == 1 {
                    for (c, (acc, (&x, &y))) in acc.iter_mut().zip(a.iter().zip(b)).enumerate() {
                        let [u, v] = f(c)(x, y);
                        acc[0] += u as f64;
                        acc[1] += v as f64;
                    }
                } else {
                    let planes = a.chunks_exact(s.plane).zip(b.chunks_exact(s.plane));
                    for (c, (acc, (xs, ys))) in acc.iter_mut().zip(planes).enumerate() {
                        let [u, v] = lane_sums(xs, ys, f(c));
                        acc[0] += u as f64;
                        acc[1] += v as f64;
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![[0.0f64; 2]; s.channels];
    for part in &partials {
        for (t, p) in total.iter_mut().zip(part) {
            t[0] += p[0];
            t[1] += p[1];
        }
    }
    total
}

/// A new `[batch, channels, plane]` buffer with `out[i] = f(channel, a[i], b[i])`, image by
/// image in parallel (vectors row by row along the channels).
fn map_channels<G: Fn(f32, f32) -> f32>(
    s: &NormShape,
    a: &[f32],
    b: &[f32],
    f: impl Fn(usize) -> G + Sync + Send,
) -> Vec<f32> {
    let image = s.channels * s.plane;
    // SAFETY: every piece is one image, and the loops below zip it with that image's values
    // of `a` and `b` (the same length), writing each element once.
    unsafe {
        super::par_new_written(
            s.batch * image,
            image,
            || (),
            |_, img, out| {
                let (a, b) = (&a[img * image..][..image], &b[img * image..][..image]);
                if s.plane == 1 {
                    for (c, (o, (&x, &y))) in out.iter_mut().zip(a.iter().zip(b)).enumerate() {
                        o.write(f(c)(x, y));
                    }
                } else {
                    let planes = out
                        .chunks_exact_mut(s.plane)
                        .zip(a.chunks_exact(s.plane).zip(b.chunks_exact(s.plane)));
                    for (c, (out, (xs, ys))) in planes.enumerate() {
                        let g = f(c);
                        for (o, (&x, &y)) in out.iter_mut().zip(xs.iter().zip(ys)) {
                            o.write(g(x, y));
                        }
                    }
                }
            },
        )
    }
}

/// What is applied after the normalisation, in the same pass: a residual added, then ReLU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to the normalised output, same shape as `x` (a ResNet block's shortcut).
    pub residual: Option<&'a [f32]>,
    /// `max(·, 0)` last.
    pub relu: bool,
}

/// Normalises `x` with its own batch statistics, applies `gamma`, `beta` and then the
/// epilogue: `out = relu?(γ·x̂ + β (+ residual))`.
///
/// Returns the output, the per-channel mean and the biased variance (what the running
/// statistics are updated from).
pub fn forward(
    s: &NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epilogue: Epilogue,
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = s.count();
    // Mean and variance in one pass, from sums of `x − p` and its square, `p` a value of
    // the channel itself (the first image's first): shifted that close to the mean, the
    // difference of the two moments loses no precision worth having, and the pass over the
    // activations that a separate centred sum took is saved.
    let pivot: Vec<f32> = (0..s.channels).map(|c| x[c * s.plane]).collect();
    let sums = channel_sums(s, x, x, |c| {
        let p = pivot[c];
        move |x, _| {
            let d = x - p;
            [d, d * d]
        }
    });
    let (mut mean, mut var) = (
        Vec::with_capacity(s.channels),
        Vec::with_capacity(s.channels),
    );
    for (&[sum, sq], &p) in sums.iter().zip(&pivot) {
        let shift = sum / n;
        mean.push(p as f64 + shift);
        var.push((sq / n - shift * shift).max(0.0));
    }
    let coef: Vec<[f32; 2]> = (0..s.channels)
        .map(|c| {
            let scale = gamma[c] as f64 / (var[c] + eps).sqrt();
            [scale as f32, (beta[c] as f64 - mean[c] * scale) as f32]
        })
        .collect();
    // As burn's ReLU: values ≤ 0 become 0 and NaN passes through (the step's NaN guard
    // must still see it).
    let relu = epilogue.relu;
    let act = move |v: f32| if relu && v <= 0.0 { 0.0 } else { v };
    let out = match epilogue.residual {
        Some(r) => map_channels(s, x, r, |c| {
            let [a, b] = coef[c];
            move |x, r| act(x * a + b + r)
        }),
        None => map_channels(s, x, x, |c| {
            let [a, b] = coef[c];
            move |x, _| act(x * a + b)
        }),
    };
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (out, to_f32(mean), to_f32(var))
}

/// The gradient through a ReLU whose output was `y`: `dy` where `y > 0`, else 0.
pub fn relu_backward(dy: &[f32], y: &[f32]) -> Vec<f32> {
    assert_eq!(
        dy.len(),
        y.len(),
        "relu_backward: dy and y differ in length"
    );
    const CHUNK: usize = 1 << 14;
    // SAFETY: piece `i` is `dy[i·CHUNK..]` for its own length, and `dy` and `y` are as long
    // as the output, so the zip writes every element of the piece.
    unsafe {
        super::par_new_written(
            dy.len(),
            CHUNK,
            || (),
            |_, i, out| {
                let (dy, y) = (&dy[i * CHUNK..], &y[i * CHUNK..]);
                for ((o, &d), &y) in out.iter_mut().zip(dy).zip(y) {
                    o.write(if y > 0.0 { d } else { 0.0 });
                }
            },
        )
    }
}

/// Gradients of [`forward`] for the output gradient `dy`: input, `gamma` and `beta`.
pub fn backward(
    s: &NormShape,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = s.count();
    // Σ dy and Σ dy·(x − mean), per channel.
    let sums = channel_sums(s, x, dy, |c| {
        let m = mean[c];
        move |x, d| [d, (x - m) * d]
    });
    let mut dgamma = Vec::with_capacity(s.channels);
    let mut dbeta = Vec::with_capacity(s.channels);
    // dx = γ·σ⁻¹·(dy − mean(dy) − x̂·mean(dy·x̂)), written as dy·a + x·b' + d with x̂ = (x−μ)σ⁻¹.
    let coef: Vec<[f32; 3]> = (0..s.channels)
        .map(|c| {
            let inv_std = 1.0 / (var[c] as f64 + eps).sqrt();
            let [sum_dy, sum_dy_xc] = sums[c];
            dgamma.push((sum_dy_xc * inv_std) as f32);
            dbeta.push(sum_dy as f32);
            let a = gamma[c] as f64 * inv_std;
            let b = -a * inv_std * inv_std * sum_dy_xc / n;
            let d = -a * sum_dy / n - b * mean[c] as f64;
            [a as f32, b as f32, d as f32]
        })
        .collect();
    let dx = map_channels(s, dy, x, |c| {
        let [a, b, d] = coef[c];
        move |dy, x| dy * a + d + x * b
    });
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        super::super::test_values(n, seed, -1.5, 2.5)
    }

    /// The loss `Σ w · bn(x)` in f64, straight from the definition.
    fn loss(s: &NormShape, x: &[f64], gamma: &[f64], beta: &[f64], w: &[f64], eps: f64) -> f64 {
        let n = s.count();
        let mut total = 0.0;
        for c in 0..s.channels {
            let idx = |img: usize, p: usize| (img * s.channels + c) * s.plane + p;
            let all = || (0..s.batch).flat_map(move |i| (0..s.plane).map(move |p| idx(i, p)));
            let mean = all().map(|i| x[i]).sum::<f64>() / n;
            let var = all().map(|i| (x[i] - mean).powi(2)).sum::<f64>() / n;
            for i in all() {
                total += w[i] * ((x[i] - mean) / (var + eps).sqrt() * gamma[c] + beta[c]);
            }
        }
        total
    }

    #[test]
    fn forward_normalises_each_channel() {
        let s = NormShape {
            batch: 5,
            channels: 3,
            plane: 7,
        };
        let x = values(105, 1);
        let (out, mean, var) = forward(
            &s,
            &x,
            &[1.0, 2.0, 0.5],
            &[0.0, 1.0, -1.0],
            Epilogue::default(),
            1e-5,
        );
        for c in 0..3 {
            let xs: Vec<f64> = (0..5)
                .flat_map(|i| (0..7).map(move |p| (i * 3 + c) * 7 + p))
                .map(|i| x[i] as f64)
                .collect();
            let m = xs.iter().sum::<f64>() / 35.0;
            let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 35.0;
            assert!((mean[c] as f64 - m).abs() < 1e-5 && (var[c] as f64 - v).abs() < 1e-5);
            let ys: Vec<f64> = (0..5)
                .flat_map(|i| (0..7).map(move |p| (i * 3 + c) * 7 + p))
                .map(|i| out[i] as f64)
                .collect();
            let ym = ys.iter().sum::<f64>() / 35.0;
            assert!(
                (ym - [0.0, 1.0, -1.0][c]).abs() < 1e-4,
                "channel {c} mean {ym}"
            );
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for s in [
            NormShape {
                batch: 4,
                channels: 3,
                plane: 5,
            },
            NormShape {
                batch: 6,
                channels: 4,
                plane: 1,
            },
        ] {
            let len = s.batch * s.channels * s.plane;
            let (x, w) = (values(len, 2), values(len, 3));
            let gamma: Vec<f32> = (0..s.channels).map(|c| 0.5 + c as f32).collect();
            let beta: Vec<f32> = (0..s.channels).map(|c| c as f32 - 1.0).collect();
            let eps = 1e-5;
            let (_, mean, var) = forward(&s, &x, &gamma, &beta, Epilogue::default(), eps);
            let (dx, dgamma, dbeta) = backward(&s, &x, &gamma, &mean, &var, eps, &w);
            let f64s = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
            let (xd, gd, bd, wd) = (f64s(&x), f64s(&gamma), f64s(&beta), f64s(&w));
            let h = 1e-5;
            let numeric = |which: usize, i: usize| {
                let mut p = [xd.clone(), gd.clone(), bd.clone()];
                let mut m = p.clone();
                p[which][i] += h;
                m[which][i] -= h;
                (loss(&s, &p[0], &p[1], &p[2], &wd, eps) - loss(&s, &m[0], &m[1], &m[2], &wd, eps))
                    / (2.0 * h)
            };
            for (which, analytic) in [(0, &dx), (1, &dgamma), (2, &dbeta)] {
                for (i, &a) in analytic.iter().enumerate() {
                    let n = numeric(which, i);
                    assert!(
                        (a as f64 - n).abs() < 2e-3 * (1.0 + n.abs()),
                        "{s:?} grad {which}[{i}]: {a} vs {n}"
                    );
                }
            }
        }
    }
}
