//! SGD with momentum, dampening, Nesterov and weight decay, exactly as `torch.optim.SGD`.

use burn::tensor::Tensor;

use super::Update;

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
    /// `d = g + wd·p`; `buf = μ·buf + (1−τ)·d` (the first buffer is `d`);
    /// `d = d + μ·buf` (Nesterov) or `buf`; `p = p − lr·d`.
    pub fn update(&self, u: Update<'_>) -> Tensor<4> {
        let mut d = u.grad;
        if self.weight_decay != 0.0 && !u.excluded {
            d = d.add(u.param.clone().mul_scalar(self.weight_decay));
        }
        if self.momentum != 0.0 {
            let buf = match u.state.first.take() {
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
            u.state.first = Some(buf);
        }
        u.param.sub(d.mul_scalar(u.lr))
    }
}
