//! The one GEMM call every kernel goes through: the `gemm` crate (AVX-512 microkernels
//! chosen at run time) on strided slices.

use rayon::prelude::*;

/// `C[m, n] (+)= A · B` on strided views; `accumulate` adds to what `C` holds. With
/// `parallel` the columns of C are split over the pool's threads (each output value is still
/// summed by one thread in a fixed order, so the same inputs give the same bits); without, it
/// runs on the calling thread.
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
    // Column blocks of C are disjoint when no two (row, col) pairs share an element: C laid
    // out by rows or by columns without overlap.
    let disjoint_columns = (c_cs >= 1 && c_rs >= n * c_cs) || (c_rs >= 1 && c_cs >= m * c_rs);
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 && disjoint_columns && n >= 2 * COLUMN_ALIGN {
        // Each thread multiplies its own block of C's columns with a single-threaded GEMM,
        // packing its own operands: the `gemm` crate's own parallel mode packs A on one thread
        // first, 2-3% of a BYOL step with the other core idle.
        let block = n.div_ceil(threads).next_multiple_of(COLUMN_ALIGN);
        let (c_addr, a_addr, b_addr) = (
            c.as_mut_ptr() as usize,
            a.as_ptr() as usize,
            b.as_ptr() as usize,
        );
        (0..n.div_ceil(block)).into_par_iter().for_each(|i| {
            let (first, cols) = (i * block, block.min(n - i * block));
            // SAFETY: as below, for the columns `first..first + cols` of B and C; the blocks
            // of C are disjoint (checked above), so no two threads write the same element,
            // and `c` stays mutably borrowed (by this function) while they run.
            unsafe {
                call(
                    m,
                    cols,
                    k,
                    (c_addr as *mut f32).add(first * c_cs),
                    (c_rs, c_cs),
                    a_addr as *const f32,
                    (a_rs, a_cs),
                    (b_addr as *const f32).add(first * b_cs),
                    (b_rs, b_cs),
                    accumulate,
                );
            }
        });
        return;
    }
    // SAFETY: the asserts above bound every index gemm forms from these strides, and `c`
    // is borrowed mutably, so it aliases neither `a` nor `b`.
    unsafe {
        call(
            m,
            n,
            k,
            c.as_mut_ptr(),
            (c_rs, c_cs),
            a.as_ptr(),
            (a_rs, a_cs),
            b.as_ptr(),
            (b_rs, b_cs),
            accumulate,
        );
    }
}

/// Column blocks of a parallel GEMM start at multiples of this (whole microkernel tiles).
const COLUMN_ALIGN: usize = 16;

/// One single-threaded `gemm` crate call.
///
/// # Safety
/// Every element `(row, col)` the strides reach for `row < m` and `col < n` (`k` for the
/// inner axis) must lie in live allocations, and `c`'s must not alias `a`'s or `b`'s or be
/// written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn call(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    (c_rs, c_cs): (usize, usize),
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
