//! Optimisers over the named parameters of one or several networks: SGD, LARS and AdamW.
//!
//! `step(loss, lr)` is one backward pass and one update of every parameter that received a
//! gradient. Updates are computed on plain tensors (no autodiff graph) and written back as
//! fresh leaves. With `exclude_bias_and_norm`, rank-1 parameters (biases and batch-norm
//! scales and shifts) get no weight decay and, for LARS, no trust-ratio adaptation.

mod adamw;
mod lars;
mod sgd;

use std::collections::HashMap;

use burn::tensor::Tensor;

pub use adamw::AdamWConfig;
pub use lars::LarsConfig;
pub use sgd::SgdConfig;

use crate::error::{Error, Result};
use crate::models::SharedNet;
use crate::models::params::is_buffer;
use crate::tensor::DynTensor;

/// Per-parameter optimiser state.
#[derive(Clone, Debug, Default)]
pub struct ParamState {
    /// Momentum buffer (SGD, LARS) or first moment (AdamW).
    pub first: Option<Tensor<4>>,
    /// Second moment (AdamW).
    pub second: Option<Tensor<4>>,
    /// Updates applied to this parameter.
    pub steps: u64,
}

/// One parameter's update, given its gradient.
pub struct Update<'a> {
    /// The current value (plain tensor).
    pub param: Tensor<4>,
    /// Its gradient (plain tensor).
    pub grad: Tensor<4>,
    /// The learning rate of this step.
    pub lr: f64,
    /// True for rank-1 parameters when the optimiser excludes biases and norms.
    pub excluded: bool,
    /// The parameter's state, updated in place.
    pub state: &'a mut ParamState,
}

/// The update rules.
#[derive(Clone, Debug)]
pub enum Rule {
    /// Stochastic gradient descent with momentum, PyTorch semantics.
    Sgd(SgdConfig),
    /// Layer-wise adaptive rate scaling (You et al. 2017), as used by BYOL and SimCLR.
    Lars(LarsConfig),
    /// Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch semantics.
    AdamW(AdamWConfig),
}

impl Rule {
    fn apply(&self, u: Update<'_>) -> Tensor<4> {
        match self {
            Rule::Sgd(c) => c.update(u),
            Rule::Lars(c) => c.update(u),
            Rule::AdamW(c) => c.update(u),
        }
    }

    fn excludes_bias_and_norm(&self) -> bool {
        match self {
            Rule::Sgd(c) => c.exclude_bias_and_norm,
            Rule::Lars(c) => c.exclude_bias_and_norm,
            Rule::AdamW(c) => c.exclude_bias_and_norm,
        }
    }

    /// The rule's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Sgd(_) => "sgd",
            Rule::Lars(_) => "lars",
            Rule::AdamW(_) => "adamw",
        }
    }
}

/// An optimiser bound to a list of networks.
#[derive(Clone, Debug)]
pub struct Optimizer {
    rule: Rule,
    nets: Vec<SharedNet>,
    state: HashMap<String, ParamState>,
    steps: u64,
}

/// The global norm of a tensor as a `[1, 1, 1, 1]` tensor (stays on the device).
pub(crate) fn norm4(t: &Tensor<4>) -> Tensor<4> {
    t.clone()
        .powf_scalar(2.0)
        .sum()
        .sqrt()
        .reshape([1, 1, 1, 1])
}

impl Optimizer {
    /// An optimiser over `nets`; a network listed twice is updated once.
    pub fn new(rule: Rule, nets: Vec<SharedNet>) -> Result<Self> {
        if nets.is_empty() {
            return Err(Error::Invalid(format!(
                "{} needs at least one network",
                rule.name()
            )));
        }
        let mut unique: Vec<SharedNet> = Vec::new();
        for n in nets {
            if !unique.iter().any(|u| u.same(&n)) {
                unique.push(n);
            }
        }
        Ok(Optimizer {
            rule,
            nets: unique,
            state: HashMap::new(),
            steps: 0,
        })
    }

    /// The update rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The networks this optimiser updates, in order (state names start with their index).
    pub fn nets(&self) -> &[SharedNet] {
        &self.nets
    }

    /// Per-parameter state by `net_index.param_name`, and the step count, for checkpoints.
    pub fn state(&self) -> (&HashMap<String, ParamState>, u64) {
        (&self.state, self.steps)
    }

    /// Restores state saved by [`state`](Self::state).
    pub fn set_state(&mut self, state: HashMap<String, ParamState>, steps: u64) {
        self.state = state;
        self.steps = steps;
    }

    /// Backward from `loss`, then one update of every parameter with a gradient.
    ///
    /// Errors (and changes nothing) if the loss is not a finite one-element tensor.
    pub fn step(&mut self, loss: &DynTensor, lr: f64) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Invalid(format!(
                "learning rate must be a finite number >= 0, got {lr}"
            )));
        }
        if loss.numel() != 1 {
            return Err(Error::Shape(format!(
                "the loss must have one element, got shape {:?} (reduce it with .mean())",
                loss.shape()
            )));
        }
        let loss4 = loss.float4("opt.step")?;
        if !loss4.is_tracked() {
            return Err(Error::Invalid(
                "the loss does not depend on any trainable parameter (was it detached?)".into(),
            ));
        }
        let grads = loss4.backward();
        // The loss is read after the backward is issued, not before: on CUDA the read is a sync,
        // and this way the GPU is busy with the backward while the host waits, instead of idle.
        // Nothing has been updated yet, so a non-finite loss still changes nothing.
        let value = loss.item()?;
        if !value.is_finite() {
            return Err(Error::NonFinite(format!(
                "the loss is {value}; no update was made"
            )));
        }
        let excl = self.rule.excludes_bias_and_norm();
        let rule = &self.rule;
        let state = &mut self.state;
        for (i, net) in self.nets.iter().enumerate() {
            net.map(Some(&grads), &mut |name, value, grad| {
                let grad = grad?;
                if is_buffer(name) {
                    return None;
                }
                let rank = value.rank();
                let st = state.entry(format!("{i}.{name}")).or_default();
                let new = rule.apply(Update {
                    param: value.promoted4(),
                    grad: grad.promoted4(),
                    lr,
                    excluded: excl && rank == 1,
                    state: st,
                });
                st.steps += 1;
                Some(DynTensor::from_float4(new, rank))
            });
        }
        self.steps += 1;
        Ok(())
    }
}
