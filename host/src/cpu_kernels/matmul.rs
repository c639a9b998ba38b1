//! The one GEMM call every kernel goes through: the `gemm` crate (AVX-512 microkernels
//! chosen at run time) on strided slices.

/// `C[m, n] (+)= A · B` on strided views; `accumulate` adds to what `C` holds. With
/// `parallel` the GEMM splits its output over the pool's threads (each output value is still
/// summed by one thread, in one order); without, it runs on the calling thread.
///
/// Strides are in elements: `(row, col)` for each matrix.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    (c, (c_rs, c_cs)): (&mut [f32], (usize, usize)),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Every element the strides can reach must lie inside the slices: this is what makes
    // the raw-pointer call below sound.
    assert!(c.len() > (m - 1) * c_rs + (n - 1) * c_cs);
    if k > 0 {
        assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
        assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    } else if !accumulate {
        for row in 0..m {
            for col in 0..n {
                c[row * c_rs + col * c_cs] = 0.0;
            }
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
            c_cs as isize,
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
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}
