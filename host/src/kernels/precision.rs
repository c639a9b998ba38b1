//! Mixed precision: the dtype convolutions and linear layers multiply in, as `torch.autocast`.
//!
//! Weights, gradients, optimiser state, batch norm and losses stay f32. Under a half
//! [`Precision`](super::Precision) a convolution or linear layer casts its input and weight to
//! the half type, runs in it (tensor cores on CUDA) and casts its output back to f32; the casts
//! are differentiable, so the gradients arrive in f32 too.
//!
//! **Half activations** (the policy's `half_activations`, `SSLHOST_HALF_ACTIVATIONS=1`) go one
//! step further, as autocast does: inside a ResNet a convolution's output stays in the half
//! type, batch norm computes its statistics and normalises in f32 but hands on the half type,
//! and the ResNet's pooled features come out in f32. The activations between layers, and their
//! gradients, then take half the memory traffic.

use burn::tensor::{FloatDType, Tensor};

use super::current;

/// `op(x, weight)` in this thread's precision, with an f32 result.
pub fn matrix_op<const D: usize, const E: usize, const F: usize>(
    x: Tensor<D>,
    weight: Tensor<E>,
    op: impl FnOnce(Tensor<D>, Tensor<E>) -> Tensor<F>,
) -> Tensor<F> {
    match current().precision.half() {
        None => op(x, weight),
        Some(half) => op(x.cast(half), weight.cast(half)).cast(FloatDType::F32),
    }
}

/// `op(x, weight)` in this thread's precision, its result left in the half type under half
/// activations (a ResNet's convolutions), else in f32 as [`matrix_op`].
pub fn activation_op<const D: usize, const E: usize, const F: usize>(
    x: Tensor<D>,
    weight: Tensor<E>,
    op: impl FnOnce(Tensor<D>, Tensor<E>) -> Tensor<F>,
) -> Tensor<F> {
    match current().activation_dtype() {
        None => matrix_op(x, weight, op),
        Some(half) => op(x.cast(half), weight.cast(half)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{KernelPolicy, Precision, install};
    use burn::tensor::{DType, Device, TensorData};

    #[test]
    fn bf16_rounds_the_operands_and_returns_f32() {
        let device = Device::flex();
        // 1 + 2^-10 is not a bf16 value (8 bits of mantissa): it rounds to 1.
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0 + 1.0 / 1024.0], [1, 1]), &device);
        let w = Tensor::<2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device);
        install(KernelPolicy::default());
        let exact = matrix_op(x.clone(), w.clone(), |x, w| x.matmul(w));
        install(KernelPolicy::default().with_precision(Precision::Bf16));
        let rounded = matrix_op(x, w, |x, w| x.matmul(w));
        install(KernelPolicy::default());
        assert_eq!(rounded.dtype(), DType::F32);
        assert_eq!(exact.into_scalar::<f32>(), 1.0 + 1.0 / 1024.0);
        assert_eq!(rounded.into_scalar::<f32>(), 1.0);
    }
}
