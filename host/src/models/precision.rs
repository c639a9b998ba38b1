//! Mixed precision: the dtype convolutions and linear layers multiply in, as `torch.autocast`.
//!
//! Weights, gradients, optimiser state, batch norm and losses stay f32. Under
//! [`Precision::Bf16`] a convolution or linear layer casts its input and weight to bf16, runs in
//! bf16 (tensor cores on CUDA) and casts its output back to f32; the casts are differentiable,
//! so the gradients arrive in f32 too. Like autocast, the setting belongs to the thread that
//! runs the model: each run (and each test thread) sets its own.
//!
//! **Half activations** ([`half_activations`], `SSLHOST_HALF_ACTIVATIONS=1`) go one step
//! further, as autocast does: inside a ResNet a convolution's output stays in the half type,
//! batch norm computes its statistics and normalises in f32 but hands on the half type, and
//! the ResNet's pooled features come out in f32. The activations between layers, and their
//! gradients, then take half the memory traffic. Off by default until a GPU run has measured
//! it (`scripts/gpu_session.sh ab`).

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
    /// As [`Precision::Bf16`] in f16, without loss scaling: for devices without bf16 (the
    /// cubecl CPU runtime, where tests check the GPU code path), not for long training.
    F16,
}

impl Precision {
    /// `"f32"` or `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The half type products run in, if any.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
    static HALF_ACTIVATIONS: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Makes `precision` this thread's matrix-op precision.
pub fn set(precision: Precision) {
    CURRENT.with(|c| c.set(precision));
}

/// This thread's matrix-op precision.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Whether this thread's ResNets keep their activations in the half type of a half
/// precision: set by [`set_half_activations`], else `SSLHOST_HALF_ACTIVATIONS=1` in the
/// environment. No effect under [`Precision::F32`].
pub fn half_activations() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    HALF_ACTIVATIONS.with(Cell::get).unwrap_or_else(|| {
        *FROM_ENV.get_or_init(|| {
            let value = std::env::var("SSLHOST_HALF_ACTIVATIONS").unwrap_or_default();
            if !matches!(value.as_str(), "" | "0" | "1") {
                tracing::warn!("SSLHOST_HALF_ACTIVATIONS={value}: not 0 or 1; f32 activations");
            }
            value == "1"
        })
    })
}

/// Sets [`half_activations`] for this thread (`None`: back to the environment's choice).
pub fn set_half_activations(on: Option<bool>) {
    HALF_ACTIVATIONS.with(|c| c.set(on));
}

/// What a ResNet's activations are stored in: `"f32"`, or the half type's name under
/// [`half_activations`].
pub fn activations_name() -> &'static str {
    match activation_dtype() {
        None => "f32",
        Some(FloatDType::BF16) => "bf16",
        Some(_) => "f16",
    }
}

/// The half type a ResNet's activations stay in, if they do.
fn activation_dtype() -> Option<FloatDType> {
    current().half().filter(|_| half_activations())
}

/// `op(x, weight)` in this thread's precision, with an f32 result.
pub fn matrix_op<const D: usize, const E: usize, const F: usize>(
    x: Tensor<D>,
    weight: Tensor<E>,
    op: impl FnOnce(Tensor<D>, Tensor<E>) -> Tensor<F>,
) -> Tensor<F> {
    match current().half() {
        None => op(x, weight),
        Some(half) => op(x.cast(half), weight.cast(half)).cast(FloatDType::F32),
    }
}

/// `op(x, weight)` in this thread's precision, its result left in the half type under
/// [`half_activations`] (a ResNet's convolutions), else in f32 as [`matrix_op`].
pub fn activation_op<const D: usize, const E: usize, const F: usize>(
    x: Tensor<D>,
    weight: Tensor<E>,
    op: impl FnOnce(Tensor<D>, Tensor<E>) -> Tensor<F>,
) -> Tensor<F> {
    match activation_dtype() {
        None => matrix_op(x, weight, op),
        Some(half) => op(x.cast(half), weight.cast(half)),
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
