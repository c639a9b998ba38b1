//! Mixed precision: the dtype convolutions and linear layers multiply in, as `torch.autocast`.
//!
//! Weights, gradients, optimiser state, batch norm and losses stay f32. Under
//! [`Precision::Bf16`] a convolution or linear layer casts its input and weight to bf16, runs in
//! bf16 (tensor cores on CUDA) and casts its output back to f32; the casts are differentiable,
//! so the gradients arrive in f32 too. Like autocast, the setting belongs to the thread that
//! runs the model: each run (and each test thread) sets its own.

use std::cell::Cell;

use burn::tensor::{FloatDType, Tensor};

/// What matrix ops compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Convolutions and linear layers in bf16 with f32 weights kept as the master copy.
    Bf16,
}

impl Precision {
    /// `"f32"` or `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Makes `precision` this thread's matrix-op precision.
pub fn set(precision: Precision) {
    CURRENT.with(|c| c.set(precision));
}

/// This thread's matrix-op precision.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// `op(x, weight)` in this thread's precision, with an f32 result.
pub fn matrix_op<const D: usize, const E: usize, const F: usize>(
    x: Tensor<D>,
    weight: Tensor<E>,
    op: impl FnOnce(Tensor<D>, Tensor<E>) -> Tensor<F>,
) -> Tensor<F> {
    match current() {
        Precision::F32 => op(x, weight),
        Precision::Bf16 => {
            op(x.cast(FloatDType::BF16), weight.cast(FloatDType::BF16)).cast(FloatDType::F32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, TensorData};

    #[test]
    fn bf16_rounds_the_operands_and_returns_f32() {
        let device = Device::flex();
        // 1 + 2^-10 is not a bf16 value (8 bits of mantissa): it rounds to 1.
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0 + 1.0 / 1024.0], [1, 1]), &device);
        let w = Tensor::<2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device);
        let exact = matrix_op(x.clone(), w.clone(), |x, w| x.matmul(w));
        set(Precision::Bf16);
        let rounded = matrix_op(x, w, |x, w| x.matmul(w));
        set(Precision::F32);
        assert_eq!(rounded.dtype(), DType::F32);
        assert_eq!(exact.into_scalar::<f32>(), 1.0 + 1.0 / 1024.0);
        assert_eq!(rounded.into_scalar::<f32>(), 1.0);
    }
}
