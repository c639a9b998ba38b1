//! `Optimizer` in scripts: SGD, LARS, AdamW and `opt.step(loss, lr)`.

use std::cell::RefCell;
use std::rc::Rc;

use rhai::plugin::*;
use rhai::{Array, Dynamic};

use crate::api::models::net_list;
use crate::error::{Error, Result};
use crate::models::SharedNet;
use crate::optim::{Optimizer as HostOptimizer, Rule};

/// An optimiser handle with its default learning rate (shared: copies step the same state).
#[derive(Clone)]
pub struct OptimizerHandle {
    inner: Rc<RefCell<HostOptimizer>>,
    lr: f64,
}

impl OptimizerHandle {
    /// The shared optimiser (for checkpoints).
    pub fn shared(&self) -> Rc<RefCell<HostOptimizer>> {
        self.inner.clone()
    }
}

/// Optimisers over one or several networks.
#[export_module]
pub mod optim_api {
    use rhai::{Dynamic, Map};

    use crate::api::args::{self, Options, RhaiResult, run};
    use crate::error::Error;
    use crate::optim::{AdamWConfig, LarsConfig, Rule, SgdConfig};
    use crate::tensor::DynTensor;

    use super::{OptimizerHandle, handle};

    /// An optimiser over networks; `opt.step(loss, lr)` trains them.
    pub type Optimizer = OptimizerHandle;

    /// SGD (PyTorch semantics). Options: `lr` (default for `step(loss)`, 0.1), `momentum` (0),
    /// `dampening` (0), `nesterov` (false), `weight_decay` (0), `exclude_bias_and_norm` (false).
    ///
    /// ```rhai
    /// let opt = sgd([net], #{ lr: 0.1, momentum: 0.9, weight_decay: 5e-4 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn sgd(nets: Dynamic, options: Map) -> RhaiResult<Optimizer> {
        run(|| {
            let keys = [
                "lr",
                "momentum",
                "dampening",
                "nesterov",
                "weight_decay",
                "exclude_bias_and_norm",
            ];
            let o = Options::new(&options, "sgd", &keys)?;
            let d = SgdConfig::default();
            let config = SgdConfig {
                momentum: o.number("momentum", d.momentum)?,
                dampening: o.number("dampening", d.dampening)?,
                nesterov: o.bool("nesterov", d.nesterov)?,
                weight_decay: o.number("weight_decay", d.weight_decay)?,
                exclude_bias_and_norm: o.bool("exclude_bias_and_norm", d.exclude_bias_and_norm)?,
            };
            if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
                return Err(Error::Invalid(
                    "sgd: nesterov needs momentum > 0 and dampening 0".into(),
                ));
            }
            handle(Rule::Sgd(config), &nets, o.number("lr", 0.1)?)
        })
    }

    /// LARS as in BYOL. Options: `lr` (0.1), `momentum` (0.9), `weight_decay` (0), `eta`
    /// (0.001), `exclude_bias_and_norm` (true: biases and norms get no decay, no adaptation).
    ///
    /// ```rhai
    /// let opt = lars([online, predictor], #{ momentum: 0.9, weight_decay: 1.5e-6 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn lars(nets: Dynamic, options: Map) -> RhaiResult<Optimizer> {
        run(|| {
            let keys = [
                "lr",
                "momentum",
                "weight_decay",
                "eta",
                "exclude_bias_and_norm",
            ];
            let o = Options::new(&options, "lars", &keys)?;
            let d = LarsConfig::default();
            let config = LarsConfig {
                momentum: o.number("momentum", d.momentum)?,
                weight_decay: o.number("weight_decay", d.weight_decay)?,
                eta: o.number("eta", d.eta)?,
                exclude_bias_and_norm: o.bool("exclude_bias_and_norm", d.exclude_bias_and_norm)?,
            };
            handle(Rule::Lars(config), &nets, o.number("lr", 0.1)?)
        })
    }

    /// AdamW (PyTorch semantics). Options: `lr` (0.001), `beta1` (0.9), `beta2` (0.999),
    /// `eps` (1e-8), `weight_decay` (0.01), `exclude_bias_and_norm` (false).
    ///
    /// ```rhai
    /// let opt = adamw([net], #{ lr: 1e-3, weight_decay: 0.05 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn adamw(nets: Dynamic, options: Map) -> RhaiResult<Optimizer> {
        run(|| {
            let keys = [
                "lr",
                "beta1",
                "beta2",
                "eps",
                "weight_decay",
                "exclude_bias_and_norm",
            ];
            let o = Options::new(&options, "adamw", &keys)?;
            let d = AdamWConfig::default();
            let config = AdamWConfig {
                beta1: o.number("beta1", d.beta1)?,
                beta2: o.number("beta2", d.beta2)?,
                epsilon: o.number("eps", d.epsilon)?,
                weight_decay: o.number("weight_decay", d.weight_decay)?,
                exclude_bias_and_norm: o.bool("exclude_bias_and_norm", d.exclude_bias_and_norm)?,
            };
            handle(Rule::AdamW(config), &nets, o.number("lr", 0.001)?)
        })
    }

    /// SGD with default options.
    ///
    /// ```rhai
    /// let opt = sgd([net]);
    /// ```
    #[rhai_fn(name = "sgd", return_raw)]
    pub fn sgd_default(nets: Dynamic) -> RhaiResult<Optimizer> {
        sgd(nets, Map::new())
    }

    /// LARS with default options.
    ///
    /// ```rhai
    /// let opt = lars([net]);
    /// ```
    #[rhai_fn(name = "lars", return_raw)]
    pub fn lars_default(nets: Dynamic) -> RhaiResult<Optimizer> {
        lars(nets, Map::new())
    }

    /// AdamW with default options.
    ///
    /// ```rhai
    /// let opt = adamw([net]);
    /// ```
    #[rhai_fn(name = "adamw", return_raw)]
    pub fn adamw_default(nets: Dynamic) -> RhaiResult<Optimizer> {
        adamw(nets, Map::new())
    }

    /// Backward from `loss`, then one update at learning rate `lr`. A loss that is NaN or
    /// infinite is an error and changes nothing.
    ///
    /// ```rhai
    /// opt.step(loss, live("lr", step, total));
    /// ```
    #[rhai_fn(return_raw)]
    pub fn step(opt: &mut Optimizer, loss: DynTensor, lr: Dynamic) -> RhaiResult<()> {
        run(|| {
            let lr = args::number(&lr, "learning rate")?;
            let step = crate::session::with(|s| s.step);
            crate::live::note_use(lr, crate::live::Role::LearningRate, step);
            crate::session::note_update();
            super::taped_step(opt, &loss, step, lr)
        })
    }

    /// One update at the optimiser's own `lr` option.
    ///
    /// ```rhai
    /// opt.step(loss);
    /// ```
    #[rhai_fn(name = "step", return_raw)]
    pub fn step_default(opt: &mut Optimizer, loss: DynTensor) -> RhaiResult<()> {
        let lr = opt.lr;
        let step = crate::session::with(|s| s.step);
        crate::session::note_update();
        run(|| super::taped_step(opt, &loss, step, lr))
    }

    /// `Optimizer(lars, 2 steps)`.
    ///
    /// ```rhai
    /// print(opt);
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn to_string(opt: &mut Optimizer) -> String {
        let o = opt.inner.borrow();
        format!("Optimizer({}, {} steps)", o.rule().name(), o.steps())
    }
}

/// `opt.step(loss, lr)` through the step's tape (`tensor::tape::effect`). The learning rate
/// is not part of the call's key: a replay takes it from a device scalar the host writes
/// before the step's work runs (`Optimizer::stage`).
fn taped_step(
    opt: &OptimizerHandle,
    loss: &crate::tensor::DynTensor,
    step: Option<u64>,
    lr: f64,
) -> Result<()> {
    let id = Rc::as_ptr(&opt.inner) as u64;
    crate::tensor::tape::effect(
        "opt.step",
        &[loss],
        &[id],
        |x| opt.inner.borrow_mut().at_step(step).step(&x[0], lr),
        || staged_step(&opt.inner, step, lr),
    )
}

/// An optimiser step split for a replay (`tensor::tape::effect`): the learning rate staged on
/// the device now, and the backward and update as the device part, which reads it.
fn staged_step(
    inner: &Rc<RefCell<HostOptimizer>>,
    step: Option<u64>,
    lr: f64,
) -> Result<crate::tensor::tape::EffectPart> {
    inner.borrow_mut().at_step(step).stage(lr)?;
    let inner = inner.clone();
    Ok(Rc::new(move |x: &[crate::tensor::DynTensor]| {
        inner.borrow_mut().step_staged(&x[0])
    }))
}

pub fn handle(rule: Rule, nets: &Dynamic, lr: f64) -> Result<OptimizerHandle> {
    let nets = if let Some(arr) = nets.read_lock::<Array>() {
        net_list(&arr, rule.name())?
    } else if let Some(net) = nets.clone().try_cast::<SharedNet>() {
        vec![net]
    } else {
        return Err(Error::Invalid(format!(
            "{} takes a network or an array of networks, got {}",
            rule.name(),
            nets.type_name()
        )));
    };
    if !lr.is_finite() || lr < 0.0 {
        return Err(Error::Invalid(format!(
            "{}: lr must be >= 0, got {lr}",
            rule.name()
        )));
    }
    Ok(OptimizerHandle {
        inner: Rc::new(RefCell::new(HostOptimizer::new(rule, nets)?)),
        lr,
    })
}
