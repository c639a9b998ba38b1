//! AdamW, exactly as `torch.optim.AdamW` (bias-corrected moments, decoupled decay).

use burn::tensor::Tensor;

use super::Update;

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
    /// `p = p·(1 − lr·wd)`; `m = β1·m + (1−β1)·g`; `v = β2·v + (1−β2)·g²`;
    /// `p = p − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + ε)`.
    pub fn update(&self, u: Update<'_>) -> Tensor<4> {
        let mut p = u.param;
        if self.weight_decay != 0.0 && !u.excluded {
            p = p.mul_scalar(1.0 - u.lr * self.weight_decay);
        }
        let g = u.grad;
        let m = match u.state.first.take() {
            None => g.clone().mul_scalar(1.0 - self.beta1),
            Some(m) => m
                .mul_scalar(self.beta1)
                .add(g.clone().mul_scalar(1.0 - self.beta1)),
        };
        let g2 = g.powf_scalar(2.0);
        let v = match u.state.second.take() {
            None => g2.mul_scalar(1.0 - self.beta2),
            Some(v) => v
                .mul_scalar(self.beta2)
                .add(g2.mul_scalar(1.0 - self.beta2)),
        };
        let t = (u.state.steps + 1) as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = 1.0 - self.beta2.powi(t);
        let denom = v.clone().div_scalar(c2).sqrt().add_scalar(self.epsilon);
        let step = m.clone().div_scalar(c1).div(denom).mul_scalar(u.lr);
        u.state.first = Some(m);
        u.state.second = Some(v);
        p.sub(step)
    }
}
