//! LARS: SGD with momentum whose step is scaled per layer by a trust ratio.

use burn::backend::Dispatch;
use burn::tensor::Tensor;

use super::{FlatOutcome, FlatUpdate};
use crate::kernels::cpu_kernels::UpdateKernels;

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

/// What LARS needs of an update to turn per-row sums into per-row ratios.
#[derive(Clone, Copy)]
struct Rows<'a> {
    layout: &'a crate::models::flat::FlatLayout,
    owners: &'a Tensor<1, burn::tensor::Int>,
    adapted: &'a Tensor<1>,
}

impl<'a> Rows<'a> {
    fn of(u: &FlatUpdate<'a>) -> Self {
        Rows {
            layout: u.layout,
            owners: u.owners,
            adapted: u.adapted,
        }
    }
}

impl LarsConfig {
    /// For adapted parameters `d = g + wd·p`, `d = d · η‖p‖/‖d‖` (ratio 1 when either norm
    /// is 0); excluded parameters use `d = g`. Then `buf = μ·buf + d` (first: `d`) and
    /// `p = p − lr·buf`. Over every parameter of a network at once: each parameter's norms
    /// are sums of its rows, and its ratio a factor on its rows.
    pub fn update(&self, u: FlatUpdate<'_>) -> FlatOutcome {
        if u.on_cpu() {
            return self.update_on_cpu(u);
        }
        let rows_of = Rows::of(&u);
        let mut d = u.grad;
        if self.weight_decay != 0.0 {
            // `decay` is 0 on the excluded parameters' rows, which are not adapted either.
            let decay = u.decay.clone().mul_scalar(self.weight_decay);
            d = d.add(u.param.clone().mul(decay));
        }
        let squares = |t: &Tensor<2>| t.clone().mul(t.clone()).sum_dim(1).reshape([-1]);
        let rows = self.trust_rows(rows_of, squares(&u.param), squares(&d));
        let d = d.mul(rows);
        let buf = match u.first {
            None => d,
            Some(b) => b.mul_scalar(self.momentum).add(d),
        };
        FlatOutcome {
            param: u.param.sub(buf.clone().mul(u.lr)),
            first: Some(buf),
            second: None,
        }
    }

    /// Each row's trust ratio `[chunks, 1]` from each row's `Σ p²` and `Σ d²` (`[chunks]`):
    /// `η‖p‖/‖d‖` for adapted parameters with both norms positive, else 1.
    fn trust_rows(&self, u: Rows<'_>, p_rows: Tensor<1>, d_rows: Tensor<1>) -> Tensor<2> {
        let (pn, dn) = (
            u.layout.entry_sums(p_rows, u.owners).sqrt(),
            u.layout.entry_sums(d_rows, u.owners).sqrt(),
        );
        // Both norms positive <=> their product is; the ratios stay on the device.
        let ok = pn.clone().mul(dn.clone()).greater_elem(0.0);
        let ratio = pn.mul_scalar(self.eta).div(dn.clamp_min(1e-30));
        let trust = ratio.ones_like().mask_where(ok, ratio);
        // Excluded parameters keep a ratio of 1.
        let trust = trust.sub_scalar(1.0).mul(u.adapted.clone()).add_scalar(1.0);
        trust.select(0, u.owners.clone()).unsqueeze_dim(1)
    }

    /// The same update in two passes (`cpu_kernels::update`): the rows' squared norms, then
    /// the update.
    fn update_on_cpu(&self, u: FlatUpdate<'_>) -> FlatOutcome {
        let (p_rows, d_rows) = <Dispatch as UpdateKernels>::fused_lars_norms(
            u.param.clone().into_dispatch(),
            u.grad.clone().into_dispatch(),
            u.decay.clone().into_dispatch(),
            self.weight_decay,
        );
        let (p_rows, d_rows) = (Tensor::from_dispatch(p_rows), Tensor::from_dispatch(d_rows));
        let rows = self.trust_rows(Rows::of(&u), p_rows, d_rows);
        let first = u.first.is_none();
        let buf = u.first.unwrap_or_else(|| u.grad.clone());
        let (param, buf) = <Dispatch as UpdateKernels>::fused_lars(
            u.param.into_dispatch(),
            u.grad.into_dispatch(),
            buf.into_dispatch(),
            u.decay.clone().into_dispatch(),
            rows.into_dispatch(),
            self.weight_decay,
            self.momentum,
            u.lr_value,
            first,
        );
        FlatOutcome {
            param: Tensor::from_dispatch(param),
            first: Some(Tensor::from_dispatch(buf)),
            second: None,
        }
    }
}
