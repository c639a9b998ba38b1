//! A network as scripts hold it: a shared handle to a ResNet, an MLP, a linear layer or a
//! sequence of other networks.
//!
//! Handles are shared: `sequential([backbone, head])` keeps `backbone` itself, so training the
//! sequence trains the backbone the script evaluates later. `deep_copy` gives a network that
//! shares nothing (the target of momentum methods).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use burn::module::Flag;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Gradients, Tensor};

use super::architecture::Architecture;
use super::flat::{self, FlatLayout};
use super::layers::{Linear, LinearConfig};
use super::mlp::{Mlp, MlpConfig};
use super::params::{MapFn, is_buffer, map_named, visit_named};
use super::resnet::{ResNet, ResNetConfig};
use crate::error::{Error, Result};
use crate::kernels::views::{DeviceScalar, replace, write_into};
use crate::tensor::{DynTensor, HostRng};

/// One Burn module at the bottom of a network: what optimisers update and checkpoints save.
/// Its parameters are named as inside the module (`conv1.weight`, not `ResNet.conv1.weight`:
/// [`ParamPath`](super::params::ParamPath) leaves the variant out).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // held boxed in `Net`
pub enum Leaf {
    /// A ResNet backbone, images in, features out.
    ResNet(ResNet),
    /// A multi-layer perceptron.
    Mlp(Mlp),
    /// One linear layer.
    Linear(Linear),
}

impl Leaf {
    /// What the module is, without its weights.
    fn architecture(&self) -> Architecture {
        match self {
            Leaf::ResNet(r) => Architecture::Resnet(r.config()),
            Leaf::Mlp(m) => Architecture::Mlp(m.config()),
            Leaf::Linear(l) => Architecture::Linear(l.config()),
        }
    }

    /// A short description, e.g. `resnet(features 512)`.
    fn describe(&self) -> String {
        match self {
            Leaf::ResNet(r) => format!("resnet(features {})", r.features()),
            Leaf::Mlp(m) => format!("mlp({} -> {})", m.d_input(), m.d_output()),
            Leaf::Linear(l) => {
                let [o, i] = l.weight.dims();
                format!("linear({i} -> {o})")
            }
        }
    }
}

/// What a network is made of.
#[derive(Debug, Clone)]
enum Net {
    /// One module.
    Leaf(Box<Leaf>),
    /// Networks applied one after another.
    Sequential(Vec<SharedNet>),
}

#[derive(Debug)]
struct Node {
    net: Net,
    training: bool,
    /// A leaf's trainable parameters as one vector, while its parameters are views of it
    /// (see [`super::flat`]); dropped whenever anything else replaces them.
    flat: Option<(FlatLayout, Tensor<1>)>,
    /// The online network whose parameters this one (a momentum target) was checked to
    /// match by name and shape, so that check runs once, not every step.
    momentum_source: Option<std::rc::Weak<RefCell<Node>>>,
    /// Left as it is by optimisers (see [`SharedNet::set_frozen`]).
    frozen: bool,
    /// A momentum target's EMA rate for its next update.
    momentum_rate: MomentumRate,
}

/// A momentum target's rate `m`: staged on the host by [`SharedNet::stage_momentum`], and
/// `m` and `1 − m` on the device once an update has run, where the next staging writes them.
#[derive(Debug, Clone, Default)]
struct MomentumRate {
    staged: Option<f64>,
    on_device: Option<(DeviceScalar, DeviceScalar)>,
}

impl Node {
    /// The module, for a leaf.
    fn leaf(&self) -> Option<&Leaf> {
        match &self.net {
            Net::Leaf(leaf) => Some(leaf),
            Net::Sequential(_) => None,
        }
    }

    /// Replaces a leaf's module with `f(module)`; a sequence stays as it is. `f` gets a copy
    /// (tensor handles, not values), so a panic inside it (turned into an error by
    /// [`crate::guard`]) leaves the network whole for the checkpoint written after the error.
    fn map_leaf(&mut self, f: impl FnOnce(Leaf) -> Leaf) {
        if let Net::Leaf(leaf) = &mut self.net {
            **leaf = f((**leaf).clone());
        }
    }
}

/// A shared, mutable network handle.
#[derive(Debug, Clone)]
pub struct SharedNet(Rc<RefCell<Node>>);

struct TrainingFlags(bool);

impl ModuleMapper for TrainingFlags {
    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        flag.with_value(self.0)
    }
}

impl SharedNet {
    fn new(net: Net) -> Self {
        SharedNet(Rc::new(RefCell::new(Node {
            net,
            training: true,
            flat: None,
            momentum_source: None,
            frozen: false,
            momentum_rate: MomentumRate::default(),
        })))
    }

    /// The leaves (ResNets, MLPs, linear layers) this network is made of, in visit order, each
    /// with the prefix its parameters' names take here (`""` for a leaf itself, `"0"`, `"1"`
    /// for the parts of a sequence).
    pub fn leaves(&self) -> Vec<(String, SharedNet)> {
        let mut out = Vec::new();
        self.collect_leaves("", &mut out);
        out
    }

    fn collect_leaves(&self, prefix: &str, out: &mut Vec<(String, SharedNet)>) {
        let parts = self.children();
        if parts.is_empty() && !matches!(self.0.borrow().net, Net::Sequential(_)) {
            out.push((prefix.to_string(), self.clone()));
        }
        for (i, p) in parts.iter().enumerate() {
            p.collect_leaves(&join(prefix, &i.to_string()), out);
        }
    }

    /// A leaf's trainable parameters as one vector, and where each sits in it: the vector its
    /// parameters are views of since the last [`set_flat`](Self::set_flat), else gathered now
    /// (a copy of each) and kept. Empty for a sequence.
    pub fn flat(&self) -> (FlatLayout, Tensor<1>) {
        let mut node = self.0.borrow_mut();
        if let Some(cached) = &node.flat {
            return cached.clone();
        }
        let gathered = node.leaf().and_then(|m| {
            let layout = FlatLayout::of(m);
            let values = flat::values(m, false);
            let device = values.first().map(|t| t.device());
            device.map(|d| (layout.gather(values, &d), layout))
        });
        match gathered {
            Some((values, layout)) => {
                node.flat = Some((layout.clone(), values.clone()));
                (layout, values)
            }
            None => (
                FlatLayout::default(),
                Tensor::empty([0], &crate::device::cpu()),
            ),
        }
    }

    /// Makes the trainable parameters of a leaf that `layout` names (all of them, as
    /// [`flat`](Self::flat) lays them out, or a part) views of `values`; for all of them,
    /// `values` is kept as their vector.
    pub fn set_flat(&self, layout: &FlatLayout, values: Tensor<1>) {
        let mut node = self.0.borrow_mut();
        let Some(whole) = node.leaf().map(|m| FlatLayout::of(m) == *layout) else {
            return;
        };
        node.map_leaf(|m| flat::write(m, layout, &values));
        node.flat = whole.then(|| (layout.clone(), values));
    }

    /// The gradients of a leaf's trainable parameters in `grads`, in its layout's order; `None`
    /// for one that took none. Empty for a sequence.
    pub fn flat_gradients(&self, grads: &Gradients) -> Vec<Option<Tensor<1>>> {
        let node = self.0.borrow();
        node.leaf()
            .map(|m| flat::gradients(m, grads))
            .unwrap_or_default()
    }

    /// The parts of a sequence (empty for a leaf).
    fn children(&self) -> Vec<SharedNet> {
        match &self.0.borrow().net {
            Net::Sequential(parts) => parts.clone(),
            _ => vec![],
        }
    }

    /// A network of one module.
    fn leaf(module: Leaf) -> Self {
        Self::new(Net::Leaf(Box::new(module)))
    }

    /// A ResNet backbone.
    pub fn resnet(config: &ResNetConfig, rng: &mut HostRng, device: &Device) -> Result<Self> {
        Ok(Self::leaf(Leaf::ResNet(config.init(rng, device)?)))
    }

    /// An MLP.
    pub fn mlp(config: &MlpConfig, rng: &mut HostRng, device: &Device) -> Result<Self> {
        Ok(Self::leaf(Leaf::Mlp(config.init(rng, device)?)))
    }

    /// A linear layer.
    pub fn linear(config: &LinearConfig, rng: &mut HostRng, device: &Device) -> Result<Self> {
        if config.d_input == 0 || config.d_output == 0 {
            return Err(Error::Invalid(format!(
                "linear needs positive sizes, got {} -> {}",
                config.d_input, config.d_output
            )));
        }
        Ok(Self::leaf(Leaf::Linear(config.init(rng, device))))
    }

    /// A sequence of networks (shared, not copied).
    pub fn sequential(parts: Vec<SharedNet>) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::Invalid(
                "sequential needs at least one network".into(),
            ));
        }
        Ok(Self::new(Net::Sequential(parts)))
    }

    /// True if both handles point at the same network.
    pub fn same(&self, other: &SharedNet) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// What this network is, without its weights.
    pub fn architecture(&self) -> Architecture {
        let node = self.0.borrow();
        match &node.net {
            Net::Leaf(leaf) => leaf.architecture(),
            Net::Sequential(parts) => {
                Architecture::Sequential(parts.iter().map(|p| p.architecture()).collect())
            }
        }
    }

    /// A short description, e.g. `resnet(features 512)`.
    pub fn describe(&self) -> String {
        let node = self.0.borrow();
        match &node.net {
            Net::Leaf(leaf) => leaf.describe(),
            Net::Sequential(parts) => format!("sequential({} parts)", parts.len()),
        }
    }

    /// Runs the network. Images `[N, C, H, W]` for ResNets, features `[N, D]` otherwise.
    pub fn forward(&self, x: &DynTensor) -> Result<DynTensor> {
        let mut node = self
            .0
            .try_borrow_mut()
            .map_err(|_| Error::Invalid("a network cannot contain itself".into()))?;
        let leaf = match &mut node.net {
            Net::Leaf(leaf) => leaf,
            Net::Sequential(parts) => {
                let parts = parts.clone();
                drop(node);
                let mut x = x.clone();
                for p in &parts {
                    x = p.forward(&x)?;
                }
                return Ok(x);
            }
        };
        match &mut **leaf {
            Leaf::ResNet(r) => {
                let s = x.shape();
                if s.len() != 4 || s[1] != r.in_channels() {
                    return Err(Error::Shape(format!(
                        "resnet expects images [N, {}, H, W], got shape {s:?}",
                        r.in_channels()
                    )));
                }
                let min = 8;
                if s[2] < min || s[3] < min {
                    return Err(Error::Shape(format!(
                        "resnet needs images of at least {min}x{min}, got {}x{}",
                        s[2], s[3]
                    )));
                }
                Ok(DynTensor::from_float(
                    r.forward(x.float_rank::<4>("resnet")?),
                ))
            }
            Leaf::Mlp(m) => {
                let d = m.d_input();
                let x = features(x, d, "mlp")?;
                Ok(DynTensor::from_float(m.forward(x)))
            }
            Leaf::Linear(l) => {
                let d = l.weight.dims()[1];
                let x = features(x, d, "linear")?;
                Ok(DynTensor::from_float(l.forward(x)))
            }
        }
    }

    /// Training mode (batch statistics) or evaluation mode (running statistics), recursively.
    pub fn set_training(&self, training: bool) {
        for p in self.children() {
            p.set_training(training);
        }
        let mut node = self.0.borrow_mut();
        node.training = training;
        node.map_leaf(|m| m.map(&mut TrainingFlags(training)));
    }

    /// A number that tells this network apart from every other one alive (its handle's
    /// address), for comparing the calls two steps make.
    pub fn id(&self) -> u64 {
        Rc::as_ptr(&self.0) as u64
    }

    /// Whether the network is in training mode.
    pub fn is_training(&self) -> bool {
        self.0.borrow().training
    }

    /// Calls `f(name, value)` for every parameter and buffer, with dotted names.
    pub fn visit(&self, f: &mut dyn FnMut(&str, DynTensor)) {
        self.visit_prefixed("", f);
    }

    fn visit_prefixed(&self, prefix: &str, f: &mut dyn FnMut(&str, DynTensor)) {
        let node = self.0.borrow();
        match &node.net {
            Net::Leaf(m) => visit_named(&**m, prefix, f),
            Net::Sequential(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    p.visit_prefixed(&join(prefix, &i.to_string()), f);
                }
            }
        }
    }

    /// Replaces the parameters and buffers for which `f(name, value)` returns a new value.
    fn replace(&self, prefix: &str, f: &mut MapFn<'_>) {
        for (i, p) in self.children().iter().enumerate() {
            p.replace(&join(prefix, &i.to_string()), f);
        }
        let mut node = self.0.borrow_mut();
        let mut replaced = false;
        let mut watched = |name: &str, value| {
            let new = f(name, value);
            replaced |= new.is_some() && !is_buffer(name);
            new
        };
        node.map_leaf(|m| map_named(m, prefix, &mut watched));
        // A replaced parameter is no longer a view of the vector: gathered again when needed.
        if replaced {
            node.flat = None;
        }
    }

    /// All parameters and buffers by name.
    pub fn parameters(&self) -> Vec<(String, DynTensor)> {
        let mut out = Vec::new();
        self.visit(&mut |name, t| out.push((name.to_string(), t)));
        out
    }

    /// Replaces every parameter and buffer with the value of the same name in `values`.
    /// Every name must be present with the same shape; nothing changes otherwise.
    pub fn load(&self, values: &HashMap<String, DynTensor>) -> Result<()> {
        let mut problem = None;
        self.visit(&mut |name, t| match values.get(name) {
            Some(v) if v.shape() == t.shape() => {}
            Some(v) => {
                problem.get_or_insert(format!(
                    "{name} has shape {:?} in the network but {:?} in the saved values",
                    t.shape(),
                    v.shape()
                ));
            }
            None => {
                problem.get_or_insert(format!("{name} is missing from the saved values"));
            }
        });
        if let Some(p) = problem {
            return Err(Error::Shape(format!("cannot load the network: {p}")));
        }
        self.replace("", &mut |name, _| values.get(name).map(|v| v.detach()));
        Ok(())
    }

    /// The number of trainable values (buffers excluded), as torchvision counts.
    pub fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit(&mut |name, t| {
            if !is_buffer(name) {
                n += t.numel();
            }
        });
        n
    }

    /// An independent copy: new handles all the way down, and buffers of its own for its
    /// parameters and batch-norm statistics (an update written into a buffer, as a recorded
    /// step's are, must not reach the other network).
    pub fn deep_copy(&self) -> SharedNet {
        let node = self.0.borrow();
        let net = match &node.net {
            Net::Sequential(parts) => {
                Net::Sequential(parts.iter().map(|p| p.deep_copy()).collect())
            }
            Net::Leaf(m) => {
                let mut fresh = |name: &str, t: DynTensor| {
                    is_buffer(name)
                        .then(|| {
                            t.binary_scalar(1.0, crate::tensor::BinaryOp::Mul, false)
                                .ok()
                        })
                        .flatten()
                };
                Net::Leaf(Box::new(map_named((**m).clone(), "", &mut fresh)))
            }
        };
        let copy = SharedNet(Rc::new(RefCell::new(Node {
            net,
            training: node.training,
            flat: None,
            momentum_source: None,
            frozen: node.frozen,
            momentum_rate: MomentumRate::default(),
        })));
        if let Some((layout, values)) = &node.flat {
            copy.set_flat(layout, values.clone().mul_scalar(1.0));
        }
        copy
    }

    /// A copy for evaluation: evaluation mode, and no autodiff at all, so forwards build no
    /// graph (Burn keeps an autodiff graph until a backward pass consumes it). Feed it
    /// tensors without autodiff ([`DynTensor::without_autodiff`]).
    pub fn evaluation_copy(&self) -> SharedNet {
        let node = self.0.borrow();
        let net = match &node.net {
            Net::Sequential(parts) => {
                Net::Sequential(parts.iter().map(|p| p.evaluation_copy()).collect())
            }
            Net::Leaf(m) => Net::Leaf(Box::new(m.valid())),
        };
        SharedNet(Rc::new(RefCell::new(Node {
            net,
            training: false,
            flat: None,
            momentum_source: None,
            frozen: node.frozen,
            momentum_rate: MomentumRate::default(),
        })))
    }

    /// A copy that takes no gradients: the target network of BYOL and MoCo.
    pub fn momentum_copy(&self) -> SharedNet {
        let copy = self.deep_copy();
        copy.stop_gradients();
        copy
    }

    /// Freezes or thaws the network, all its parts: optimisers leave a frozen part's
    /// parameters and state as they are (no update, no weight decay), while gradients still
    /// flow through it to the parts before it. DINO's last layer and SwAV's prototypes are
    /// frozen for their first steps.
    pub fn set_frozen(&self, frozen: bool) {
        for p in self.children() {
            p.set_frozen(frozen);
        }
        self.0.borrow_mut().frozen = frozen;
    }

    /// Whether every part of the network is frozen.
    pub fn is_frozen(&self) -> bool {
        self.0.borrow().frozen && self.children().iter().all(|p| p.is_frozen())
    }

    fn stop_gradients(&self) {
        for p in self.children() {
            p.stop_gradients();
        }
        let mut node = self.0.borrow_mut();
        node.map_leaf(|m| m.no_grad());
    }

    /// `target = m * target + (1 - m) * online` for every parameter and buffer.
    pub fn update_momentum(online: &SharedNet, target: &SharedNet, m: f64) -> Result<()> {
        Self::stage_momentum(target, m)?;
        Self::mix_momentum(online, target)
    }

    /// Sets the rate `m` of `target`'s next [`mix_momentum`](Self::mix_momentum), in the
    /// device buffers that update reads once it has run (what a recorded step reads when it
    /// is replayed).
    pub fn stage_momentum(target: &SharedNet, m: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&m) {
            return Err(Error::Invalid(format!(
                "update_momentum: m must be in [0, 1], got {m}"
            )));
        }
        let rate = &mut target.0.borrow_mut().momentum_rate;
        rate.staged = Some(m);
        if let Some((kept, taken)) = &mut rate.on_device {
            kept.set(m);
            taken.set(1.0 - m);
        }
        Ok(())
    }

    /// [`update_momentum`](Self::update_momentum) at the rate
    /// [`stage_momentum`](Self::stage_momentum) set.
    pub fn mix_momentum(online: &SharedNet, target: &SharedNet) -> Result<()> {
        let Some(m) = target.0.borrow_mut().momentum_rate.staged.take() else {
            return Err(Error::Invalid(
                "update_momentum: no rate was staged for this update".into(),
            ));
        };
        let checked = target
            .0
            .borrow()
            .momentum_source
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Rc::as_ptr(&online.0)));
        if !checked {
            Self::check_same_parameters(online, target)?;
            target.0.borrow_mut().momentum_source = Some(Rc::downgrade(&online.0));
        }
        // The trainable parameters leaf by leaf, each as one vector: one op a leaf, and the
        // online leaf's vector is the one its optimiser just wrote.
        for ((_, o), (_, t)) in online.leaves().iter().zip(target.leaves()) {
            let (layout, o_flat) = o.flat();
            let (target_layout, t_flat) = t.flat();
            if layout != target_layout || layout.is_empty() {
                continue;
            }
            let device = o_flat.device();
            let (kept, taken) = target.rates_on(&device, m);
            let old = t_flat.clone();
            let mixed = if crate::kernels::cpu_takes(t_flat.dtype(), &device) {
                // One pass on the CPU (`cpu_kernels::update`).
                use crate::kernels::cpu_kernels::UpdateKernels;
                let (t, o) = (t_flat.into_dispatch(), o_flat.into_dispatch());
                Tensor::from_dispatch(<burn::backend::Dispatch as UpdateKernels>::fused_mix(
                    t, o, m,
                ))
            } else {
                t_flat.mul(kept).add(o_flat.mul(taken))
            };
            t.set_flat(&layout, replace(&old, mixed));
        }
        let in_place = crate::kernels::current().capture;
        // The batch norms' running statistics, which change every forward: gathered afresh
        // leaf by leaf into one vector each side, mixed, and written back as views.
        for ((_, o), (_, t)) in online.leaves().iter().zip(target.leaves()) {
            if o.same(&t) {
                continue;
            }
            let (layout, o_values) = {
                let o_node = o.0.borrow();
                let Some(o_leaf) = o_node.leaf() else {
                    continue;
                };
                (FlatLayout::buffers_of(o_leaf), flat::values(o_leaf, true))
            };
            let Some(device) = o_values.first().map(|v| v.device()) else {
                continue;
            };
            // Before the target's node is borrowed: the target may be this leaf.
            let (kept, taken) = target.rates_on(&device, m);
            let mut t_node = t.0.borrow_mut();
            let Some(t_leaf) = t_node.leaf() else {
                continue;
            };
            let t_values = flat::values(t_leaf, true);
            if in_place {
                // Tensor by tensor into the target's own buffers: launches cost nothing in a
                // replay, and the buffers stay the ones it reads.
                let mut written = t_values.into_iter().zip(o_values).map(|(t, o)| {
                    write_into(&t, t.clone().mul(kept.clone()).add(o.mul(taken.clone())))
                });
                // The tensors to keep (where the backend cannot write in place, new ones).
                let mut put = |name: &str, _: DynTensor| {
                    if is_buffer(name) {
                        written.next().map(DynTensor::from_float)
                    } else {
                        None
                    }
                };
                t_node.map_leaf(|leaf| map_named(leaf, "", &mut put));
                continue;
            }
            let t_flat = layout.gather(t_values, &device);
            let o_flat = layout.gather(o_values, &device);
            let mixed = t_flat.mul(kept).add(o_flat.mul(taken));
            t_node.map_leaf(|leaf| flat::write(leaf, &layout, &mixed));
        }
        Ok(())
    }
}

impl SharedNet {
    /// This momentum target's `m` and `1 − m` on `device` (written there at rate `m` on its
    /// first update; staged since).
    fn rates_on(&self, device: &Device, m: f64) -> (Tensor<1>, Tensor<1>) {
        let mut node = self.0.borrow_mut();
        let (kept, taken) = node.momentum_rate.on_device.get_or_insert_with(|| {
            (
                DeviceScalar::new(m, device),
                DeviceScalar::new(1.0 - m, device),
            )
        });
        (kept.tensor(), taken.tensor())
    }

    /// Checks that `target` has the parameters and buffers of `online`, by name and shape.
    fn check_same_parameters(online: &SharedNet, target: &SharedNet) -> Result<()> {
        let mut source: HashMap<String, Vec<usize>> = HashMap::new();
        online.visit(&mut |name, t| {
            source.insert(name.to_string(), t.shape());
        });
        let mut problem = None;
        let mut seen = 0;
        target.visit(&mut |name, t| match source.get(name) {
            Some(shape) if *shape == t.shape() => seen += 1,
            Some(shape) => {
                problem.get_or_insert(format!(
                    "{name} has shape {:?} in the target but {shape:?} online",
                    t.shape(),
                ));
            }
            None => {
                problem.get_or_insert(format!("{name} is in the target but not online"));
            }
        });
        match problem.or_else(|| {
            (seen != source.len()).then(|| "the networks have different parameters".into())
        }) {
            Some(p) => Err(Error::Shape(format!(
                "update_momentum: target and online differ: {p}"
            ))),
            None => Ok(()),
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks that `x` is `[N, d]` and returns it at rank 2.
fn features(x: &DynTensor, d: usize, what: &str) -> Result<burn::tensor::Tensor<2>> {
    let s = x.shape();
    if s.len() != 2 || s[1] != d {
        return Err(Error::Shape(format!(
            "{what} expects features [N, {d}], got shape {s:?}"
        )));
    }
    x.float_rank::<2>(what)
}
