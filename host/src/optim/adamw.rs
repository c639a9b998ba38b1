//! AdamW, exactly as `torch.optim.AdamW` (bias-corrected moments, decoupled decay).

use burn::backend::Dispatch;
use burn::tensor::Tensor;

use super::{FlatOutcome, FlatUpdate};
use crate::kernels::cpu_kernels::UpdateKernels;

/// Settings of [`AdamW`](super::Rule::AdamW); PyTorch's defaults.
#[derive(Clone, Debug)]
pub struct AdamWConfig {
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub epsilon: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// No weight decay for rank-1 parameters.
    pub exclude_bias_and_norm: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
            exclude_bias_and_norm: false,
        }
    }
}

impl AdamWConfig {
    /// `p = p·(1 − lr·wd)` (decayed parameters); `m = β1·m + (1−β1)·g`;
    /// `v = β2·v + (1−β2)·g²`; `p = p − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + ε)`. Over
    /// every parameter of a network at once.
    pub fn update(&self, u: FlatUpdate<'_>) -> FlatOutcome {
        if u.on_cpu() {
            return self.update_on_cpu(u);
        }
        let mut p = u.param;
        if self.weight_decay != 0.0 {
            let shrink = u
                .decay
                .clone()
                .mul(u.lr.clone())
                .mul_scalar(-self.weight_decay);
            p = p.clone().add(p.mul(shrink));
        }
        let g = u.grad;
        let m = match u.first {
            None => g.clone().mul_scalar(1.0 - self.beta1),
            Some(m) => m
                .mul_scalar(self.beta1)
                .add(g.clone().mul_scalar(1.0 - self.beta1)),
        };
        let g2 = g.clone().mul(g.clone());
        let v = match u.second {
            None => g2.mul_scalar(1.0 - self.beta2),
            Some(v) => v
                .mul_scalar(self.beta2)
                .add(g2.mul_scalar(1.0 - self.beta2)),
        };
        let (m_hat, v_hat) = match u.corrections {
            Some((c1, c2)) => (m.clone().div(c1), v.clone().div(c2)),
            None => {
                let (c1, c2) = self.corrections(u.steps);
                (m.clone().div_scalar(c1), v.clone().div_scalar(c2))
            }
        };
        let step = m_hat.div(v_hat.sqrt().add_scalar(self.epsilon)).mul(u.lr);
        FlatOutcome {
            param: p.sub(step),
            first: Some(m),
            second: Some(v),
        }
    }

    /// The bias corrections `(1 − β1ᵗ, 1 − β2ᵗ)` of the update after `steps` others.
    pub(super) fn corrections(&self, steps: u64) -> (f64, f64) {
        let t = (steps + 1) as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }

    /// The same update in one pass (`cpu_kernels::update`).
    fn update_on_cpu(&self, u: FlatUpdate<'_>) -> FlatOutcome {
        let first = u.first.is_none() || u.second.is_none();
        let m = u.first.unwrap_or_else(|| u.grad.clone());
        let v = u.second.unwrap_or_else(|| u.grad.clone());
        let (param, m, v) = <Dispatch as UpdateKernels>::fused_adamw(
            u.param.into_dispatch(),
            u.grad.into_dispatch(),
            m.into_dispatch(),
            v.into_dispatch(),
            u.decay.clone().into_dispatch(),
            u.lr_value,
            (self.beta1, self.beta2),
            self.epsilon,
            self.weight_decay,
            self.corrections(u.steps),
            first,
        );
        FlatOutcome {
            param: Tensor::from_dispatch(param),
            first: Some(Tensor::from_dispatch(m)),
            second: Some(Tensor::from_dispatch(v)),
        }
    }
}
