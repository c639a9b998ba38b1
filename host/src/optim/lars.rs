//! LARS: SGD with momentum whose step is scaled per layer by a trust ratio.

use burn::tensor::Tensor;

use super::{Update, norm4};

/// Settings of [`LARS`](super::Rule::Lars), following BYOL's reference implementation.
#[derive(Clone, Debug)]
pub struct LarsConfig {
    /// Momentum factor.
    pub momentum: f64,
    /// L2 penalty added to the gradient before the trust ratio.
    pub weight_decay: f64,
    /// Trust coefficient η.
    pub eta: f64,
    /// No weight decay and no adaptation for rank-1 parameters (BYOL: biases and BN).
    pub exclude_bias_and_norm: bool,
}

impl Default for LarsConfig {
    fn default() -> Self {
        LarsConfig {
            momentum: 0.9,
            weight_decay: 0.0,
            eta: 0.001,
            exclude_bias_and_norm: true,
        }
    }
}

impl LarsConfig {
    /// For adapted parameters `d = g + wd·p`, `d = d · η‖p‖/‖d‖` (ratio 1 when either norm
    /// is 0); excluded parameters use `d = g`. Then `buf = μ·buf + d` (first: `d`) and
    /// `p = p − lr·buf`.
    pub fn update(&self, u: Update<'_>) -> Tensor<4> {
        let mut d = u.grad;
        if !u.excluded {
            if self.weight_decay != 0.0 {
                d = d.add(u.param.clone().mul_scalar(self.weight_decay));
            }
            let (pn, dn) = (norm4(&u.param), norm4(&d));
            // Both norms positive <=> their product is; the ratio stays on the device.
            let ok = pn.clone().mul(dn.clone()).greater_elem(0.0);
            let ratio = pn.mul_scalar(self.eta).div(dn.clamp_min(1e-30));
            let trust = ratio.ones_like().mask_where(ok, ratio);
            d = d.mul(trust);
        }
        let buf = match u.state.first.take() {
            None => d,
            Some(b) => b.mul_scalar(self.momentum).add(d),
        };
        u.state.first = Some(buf.clone());
        u.param.sub(buf.mul_scalar(u.lr))
    }
}
