//! Cross-entropy of logits against class indices on plain `f32` slices, row by row.
//!
//! Written as tensor ops (log-softmax, a one-hot mask, a product and a sum) the loss makes
//! about ten passes over the `[N, C]` logits between forward and backward, and builds the
//! one-hot mask as large as the logits. MoCo's logits are `[N, 1 + 32768]`, so those passes
//! are a visible part of its CPU step. Here the forward reads each row twice (its maximum,
//! then the sum of exponentials) and keeps one log-sum-exp per row; the backward is one pass,
//! `softmax − one-hot`, recomputed from the logits.
//!
//! Rows are independent, so any split over threads gives the same bits.

use rayon::prelude::*;

/// Rows per parallel task: enough work per task on `[N, 32769]` logits, and still a few
/// tasks for `[2N, 2N]` SimCLR logits.
const ROWS_PER_TASK: usize = 8;

/// `log Σ_j exp(row[j])`, from the row's maximum so no exponential overflows.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        // All −∞ (or a +∞): the sum is that value; NaN rows fall through to NaN below.
        return if row.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            max
        };
    }
    let mut lanes = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - max).exp()).sum();
    for chunk in chunks {
        for i in 0..16 {
            lanes[i] += (chunk[i] - max).exp();
        }
    }
    max + (lanes.iter().sum::<f32>() + tail).ln()
}

/// Per-row losses `lse(row) − row[target]` of `logits` `[rows, classes]`, and the per-row
/// log-sum-exp the backward needs. Every target must be below `classes`.
pub fn forward(logits: &[f32], classes: usize, targets: &[usize]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        logits.len(),
        targets.len() * classes,
        "logits are [rows, classes]"
    );
    let lse: Vec<f32> = logits
        .par_chunks(classes)
        .with_min_len(ROWS_PER_TASK)
        .map(log_sum_exp)
        .collect();
    let losses = lse
        .iter()
        .zip(logits.chunks(classes))
        .zip(targets)
        .map(|((lse, row), &t)| lse - row[t])
        .collect();
    (losses, lse)
}

/// The logits' gradient for the per-row loss gradients `dloss` `[rows]`:
/// `dloss[i] · (softmax(row i) − one_hot(target i))`.
pub fn backward(
    logits: &[f32],
    classes: usize,
    targets: &[usize],
    lse: &[f32],
    dloss: &[f32],
) -> Vec<f32> {
    let task = ROWS_PER_TASK * classes;
    super::par_new(
        logits.len(),
        task,
        || (),
        |_, i, grad| {
            let first = i * ROWS_PER_TASK;
            for (r, grad) in grad.chunks_exact_mut(classes).enumerate() {
                let (row, d) = (
                    &logits[(first + r) * classes..][..classes],
                    dloss[first + r],
                );
                let lse = lse[first + r];
                for (g, &x) in grad.iter_mut().zip(row) {
                    *g = d * (x - lse).exp();
                }
                grad[targets[first + r]] -= d;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss of one row in f64, straight from the definition.
    fn row_loss(row: &[f64], target: usize) -> f64 {
        let sum: f64 = row.iter().map(|x| x.exp()).sum();
        sum.ln() - row[target]
    }

    #[test]
    fn forward_is_the_definition_and_survives_large_logits() {
        let classes = 37;
        let targets = [0, 5, 36];
        let mut logits = super::super::test_values(3 * classes, 4, -3.0, 3.0);
        // A row far from zero: exp() of it would overflow without the max shift.
        for v in &mut logits[classes..2 * classes] {
            *v += 500.0;
        }
        let (losses, _) = forward(&logits, classes, &targets);
        for (i, &t) in targets.iter().enumerate() {
            let row: Vec<f64> = logits[i * classes..][..classes]
                .iter()
                .map(|&v| v as f64 - if i == 1 { 500.0 } else { 0.0 })
                .collect();
            let want = row_loss(&row, t);
            assert!(
                (losses[i] as f64 - want).abs() < 1e-4,
                "row {i}: {} vs {want}",
                losses[i]
            );
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (classes, targets) = (19, [3usize, 0, 18, 7]);
        let logits = super::super::test_values(targets.len() * classes, 9, -2.0, 2.0);
        let dloss = [0.5f32, -1.0, 2.0, 0.25];
        let (_, lse) = forward(&logits, classes, &targets);
        let grad = backward(&logits, classes, &targets, &lse, &dloss);
        let as64: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let total = |x: &[f64]| -> f64 {
            targets
                .iter()
                .enumerate()
                .map(|(i, &t)| dloss[i] as f64 * row_loss(&x[i * classes..][..classes], t))
                .sum()
        };
        let h = 1e-6;
        for i in 0..logits.len() {
            let (mut p, mut m) = (as64.clone(), as64.clone());
            p[i] += h;
            m[i] -= h;
            let numeric = (total(&p) - total(&m)) / (2.0 * h);
            assert!(
                (grad[i] as f64 - numeric).abs() < 1e-4,
                "grad[{i}]: {} vs {numeric}",
                grad[i]
            );
        }
    }

    #[test]
    fn nan_logits_give_a_nan_loss() {
        let mut logits = vec![0.0f32; 8];
        logits[2] = f32::NAN;
        let (losses, _) = forward(&logits, 4, &[0, 1]);
        assert!(losses[0].is_nan());
        assert!(losses[1].is_finite());
    }
}
