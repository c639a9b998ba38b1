//! SGD with momentum, dampening, Nesterov and weight decay, exactly as `torch.optim.SGD`.

use burn::backend::Dispatch;
use burn::tensor::Tensor;

use super::{FlatOutcome, FlatUpdate};
use crate::kernels::cpu_kernels::UpdateKernels;

/// Settings of [`SGD`](super::Rule::Sgd). Burn's own SGD defaults dampening to 0.1;
/// this one follows PyTorch (0).
#[derive(Clone, Debug)]
pub struct SgdConfig {
    /// Momentum factor (0 disables the buffer).
    pub momentum: f64,
    /// Dampening of the gradient in the momentum buffer.
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// No weight decay for rank-1 parameters.
    pub exclude_bias_and_norm: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            exclude_bias_and_norm: false,
        }
    }
}

impl SgdConfig {
    /// `d = g + wd·p` (decayed parameters); `buf = μ·buf + (1−τ)·d` (the first buffer is
    /// `d`); `d = d + μ·buf` (Nesterov) or `buf`; `p = p − lr·d`. Over every parameter of a
    /// network at once.
    pub fn update(&self, u: FlatUpdate<'_>) -> FlatOutcome {
        if u.on_cpu() {
            return self.update_on_cpu(u);
        }
        let mut d = u.grad;
        if self.weight_decay != 0.0 {
            d = d.add(
                u.param
                    .clone()
                    .mul(u.decay.clone().mul_scalar(self.weight_decay)),
            );
        }
        let mut first = None;
        if self.momentum != 0.0 {
            let buf = match u.first {
                None => d.clone(),
                Some(b) => b
                    .mul_scalar(self.momentum)
                    .add(d.clone().mul_scalar(1.0 - self.dampening)),
            };
            d = if self.nesterov {
                d.add(buf.clone().mul_scalar(self.momentum))
            } else {
                buf.clone()
            };
            first = Some(buf);
        }
        FlatOutcome {
            param: u.param.sub(d.mul(u.lr)),
            first,
            second: None,
        }
    }

    /// The same update in one pass (`cpu_kernels::update`).
    fn update_on_cpu(&self, u: FlatUpdate<'_>) -> FlatOutcome {
        let first = u.first.is_none();
        let buf = u.first.unwrap_or_else(|| u.grad.clone());
        let (param, buf) = <Dispatch as UpdateKernels>::fused_sgd(
            u.param.into_dispatch(),
            u.grad.into_dispatch(),
            buf.into_dispatch(),
            u.decay.clone().into_dispatch(),
            u.lr_value,
            self.momentum,
            self.dampening,
            self.nesterov,
            self.weight_decay,
            first,
        );
        FlatOutcome {
            param: Tensor::from_dispatch(param),
            first: (self.momentum != 0.0).then(|| Tensor::from_dispatch(buf)),
            second: None,
        }
    }
}
