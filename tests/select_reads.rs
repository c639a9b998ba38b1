//! `select` checks its indices without reading the device where it can: indices an `argmax`
//! made are in range by construction (NNCLR's nearest neighbours), a small vector the host
//! made is checked on the host; other indices are read back, once. A step replayed as a
//! device graph cannot read, so the first two cases are what lets NNCLR's step be captured.

use sslhost::tensor::{DynTensor, device_reads};

fn matrix(rows: usize) -> DynTensor {
    let values = (0..rows * 3).map(|v| v as f32).collect();
    DynTensor::from_vec(values, &[rows, 3], &sslhost::device::cpu()).unwrap()
}

#[test]
fn indices_from_an_argmax_or_the_host_are_checked_without_a_read() {
    let support = matrix(4);
    let queries = matrix(2);
    let nearest = queries
        .matmul(&support.t().unwrap())
        .unwrap()
        .argmax(1)
        .unwrap();
    let before = device_reads();
    let picked = support.select(0, &nearest).unwrap();
    assert_eq!(device_reads(), before, "an argmax's indices need no read");
    assert_eq!(picked.shape(), vec![2, 3]);
    assert_eq!(
        picked.to_f64_vec().unwrap(),
        vec![9.0, 10.0, 11.0, 9.0, 10.0, 11.0]
    );

    let host = DynTensor::from_int_vec(vec![3, 0], &[2], &sslhost::device::cpu()).unwrap();
    let before = device_reads();
    let picked = support.select(0, &host).unwrap();
    assert_eq!(device_reads(), before, "the host's copy is checked");
    assert_eq!(picked.to_f64_vec().unwrap()[..3], [9.0, 10.0, 11.0]);
}

#[test]
fn an_argmax_over_a_larger_dimension_is_still_checked() {
    // argmax over 6 candidates, used to select among 4 rows: the bound does not hold, so the
    // indices are read and an out-of-range one is an error.
    let support = matrix(4);
    let scores = DynTensor::from_vec(
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        &[1, 6],
        &sslhost::device::cpu(),
    )
    .unwrap()
    .binary_scalar(1.0, sslhost::tensor::BinaryOp::Mul, false)
    .unwrap();
    let index = scores.argmax(1).unwrap();
    let before = device_reads();
    let err = support.select(0, &index).unwrap_err().to_string();
    assert_eq!(device_reads(), before + 1);
    assert!(
        err.contains("index 5 is out of range for dim 0 of size 4"),
        "{err}"
    );
}
