//! A linear layer's product `y = x · Wᵀ` with the weight kept in PyTorch's `[out, in]` layout,
//! and both gradients written contiguously.
//!
//! As burn ops the layer is `x.matmul(w.transpose())`: the transpose's backward hands the
//! weight a transposed (strided) gradient, and when the layer runs twice in a step (BYOL's and
//! SimCLR's two views) burn adds the two strided `[out, in]` gradients element by element on
//! one thread. Here the GEMMs read the weight through strides instead, and `dW = dYᵀ · x`
//! comes out `[out, in]`, contiguous, so the second gradient is added in place.

use super::matmul::gemm;

/// Products from this many multiply-adds on split their output over the pool's threads
/// (burn-flex uses the same bound for its matmuls).
const PARALLEL_FROM: usize = 192 * 192 * 192;

/// Sizes of `x` `[rows, d_in]` and `W` `[d_out, d_in]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
}

impl LinearShape {
    fn parallel(&self) -> bool {
        self.rows * self.d_in * self.d_out >= PARALLEL_FROM
    }
}

/// `y[r, o] = Σ_i x[r, i] · W[o, i]`, `[rows, d_out]`.
pub fn forward(s: &LinearShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; s.rows * s.d_out];
    gemm(
        s.rows,
        s.d_out,
        s.d_in,
        (&mut y, (s.d_out, 1)),
        x,
        (s.d_in, 1),
        // Wᵀ `[d_in, d_out]` read in place.
        weight,
        (1, s.d_in),
        false,
        s.parallel(),
    );
    y
}

/// The weight's gradient `dW = dYᵀ · x` `[d_out, d_in]` and, when `want_dx`, the input's
/// `dx = dY · W` `[rows, d_in]`, for the output gradient `dy` `[rows, d_out]`.
pub fn backward(
    s: &LinearShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut dw = vec![0.0f32; s.d_out * s.d_in];
    gemm(
        s.d_out,
        s.d_in,
        s.rows,
        (&mut dw, (s.d_in, 1)),
        // dYᵀ `[d_out, rows]` read in place.
        dy,
        (1, s.d_out),
        x,
        (s.d_in, 1),
        false,
        s.parallel(),
    );
    let dx = want_dx.then(|| {
        let mut dx = vec![0.0f32; s.rows * s.d_in];
        gemm(
            s.rows,
            s.d_in,
            s.d_out,
            (&mut dx, (s.d_in, 1)),
            dy,
            (s.d_out, 1),
            weight,
            (s.d_in, 1),
            false,
            s.parallel(),
        );
        dx
    });
    (dw, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_gradients_are_the_definition() {
        for s in [
            LinearShape {
                rows: 3,
                d_in: 5,
                d_out: 4,
            },
            // Large enough to take the parallel GEMM.
            LinearShape {
                rows: 64,
                d_in: 400,
                d_out: 300,
            },
        ] {
            let x = super::super::test_values(s.rows * s.d_in, 1, -1.0, 1.0);
            let w = super::super::test_values(s.d_out * s.d_in, 2, -1.0, 1.0);
            let dy = super::super::test_values(s.rows * s.d_out, 3, -1.0, 1.0);
            let y = forward(&s, &x, &w);
            let (dw, dx) = backward(&s, &x, &w, &dy, true);
            let dx = dx.expect("asked for dx");
            let close = |what: &str, got: f32, want: f64| {
                assert!(
                    (got as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "{s:?} {what}: {got} vs {want}"
                );
            };
            for r in 0..s.rows {
                for o in 0..s.d_out {
                    let want: f64 = (0..s.d_in)
                        .map(|i| x[r * s.d_in + i] as f64 * w[o * s.d_in + i] as f64)
                        .sum();
                    close("y", y[r * s.d_out + o], want);
                }
                for i in 0..s.d_in {
                    let want: f64 = (0..s.d_out)
                        .map(|o| dy[r * s.d_out + o] as f64 * w[o * s.d_in + i] as f64)
                        .sum();
                    close("dx", dx[r * s.d_in + i], want);
                }
            }
            for o in 0..s.d_out {
                for i in 0..s.d_in {
                    let want: f64 = (0..s.rows)
                        .map(|r| dy[r * s.d_out + o] as f64 * x[r * s.d_in + i] as f64)
                        .sum();
                    close("dw", dw[o * s.d_in + i], want);
                }
            }
            assert!(backward(&s, &x, &w, &dy, false).1.is_none());
        }
    }
}
