//! Optimisers over the named parameters of one or several networks: SGD, LARS and AdamW.
//!
//! `step(loss, lr)` is one backward pass and one update of every parameter that received a
//! gradient. Each network leaf (ResNet, MLP, linear layer) is updated as one vector of all its
//! parameters (`crate::models::flat`): its gradients gathered into such a vector, the rule
//! applied to the whole vector in a few ops (one-pass kernels on the CPU), and the
//! parameters left as views of the result, without autodiff, as fresh leaves. With
//! `exclude_bias_and_norm`, rank-1 parameters (biases and batch-norm scales and shifts) get no
//! weight decay and, for LARS, no trust-ratio adaptation.
//!
//! Every value a step takes from the host reaches the device in a buffer written before the
//! step ([`DeviceScalar`]: the learning rate, AdamW's bias corrections, the step's number), so
//! no step's value is part of a kernel. [`Optimizer::stage`] writes them and
//! [`Optimizer::step_staged`] runs the step; `step(loss, lr)` is both. While a step is
//! recorded as a device graph (the kernel policy's `capture`), the new parameters and state
//! are written into the vectors' own buffers, which a replay reads again.
//!
//! A loss that is not finite changes nothing. On the CPU the step reads the loss before the
//! update (a read costs nothing there) and refuses at once. On a GPU a read would make the
//! host wait for the backward before it could issue the update, leaving the GPU idle while it
//! does; so there the step waits for nothing: the check runs on the device ([`FiniteGuard`]),
//! each new parameter and state vector is chosen between the updated and the old one by it,
//! and a count of skipped updates is copied back asynchronously, looked at by the next steps
//! once it has arrived, and read before the optimiser is checkpointed; a skip is an error
//! naming the first skipped step.

mod adamw;
mod lars;
mod sgd;

use std::collections::HashMap;

use burn::tensor::{Bool, Int, Tensor};

pub use adamw::AdamWConfig;
pub use lars::LarsConfig;
pub use sgd::SgdConfig;

use crate::error::{Error, Result};
use crate::kernels::views::{DeviceScalar, replace};
use crate::models::SharedNet;
use crate::models::flat::{CHUNK, FlatEntry, FlatLayout};
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
    /// The parameter's shape (the state tensors are held padded to rank 4).
    pub shape: Vec<usize>,
}

/// One update of a network's parameters laid end to end (see [`crate::models::flat`]): every
/// tensor is the `[chunks, CHUNK]` view of such a vector, without autodiff.
pub struct FlatUpdate<'a> {
    /// The current values.
    pub param: Tensor<2>,
    /// Their gradients.
    pub grad: Tensor<2>,
    /// The learning rate, `[1, 1]` on the device (so no step's value is part of a kernel).
    pub lr: Tensor<2>,
    /// The same learning rate on the host, for the CPU's update kernels.
    pub lr_value: f64,
    /// `[chunks, 1]`: 1 on the rows of parameters that take weight decay, else 0.
    pub decay: &'a Tensor<2>,
    /// `[parameters]`: 1 for parameters LARS adapts, else 0.
    pub adapted: &'a Tensor<1>,
    /// Where each parameter sits.
    pub layout: &'a FlatLayout,
    /// Each row's parameter ([`FlatLayout::row_owners`]).
    pub owners: &'a Tensor<1, Int>,
    /// Momentum buffer (SGD, LARS) or first moment (AdamW), if there is one yet.
    pub first: Option<Tensor<2>>,
    /// Second moment (AdamW), if there is one yet.
    pub second: Option<Tensor<2>>,
    /// Updates applied before this one.
    pub steps: u64,
    /// AdamW's bias corrections of this update, `(1 − β1ᵗ, 1 − β2ᵗ)` as `[1, 1]` tensors on
    /// the device; without them the rule computes them from `steps` on the host (then they
    /// are part of the kernels).
    pub corrections: Option<(Tensor<2>, Tensor<2>)>,
}

impl FlatUpdate<'_> {
    /// Whether the CPU's one-pass update kernels take this update (f32 on burn-flex).
    fn on_cpu(&self) -> bool {
        crate::kernels::cpu_takes(self.param.dtype(), &self.param.device())
    }
}

/// What an update gives: the new values and state.
pub struct FlatOutcome {
    /// The new values.
    pub param: Tensor<2>,
    /// The new first state, if the rule keeps one.
    pub first: Option<Tensor<2>>,
    /// The new second state, if the rule keeps one.
    pub second: Option<Tensor<2>>,
}

/// What one network leaf's update needs besides values and gradients, kept between steps
/// while its layout stays the same: the masks, and the state as vectors. While a leaf has
/// one, it holds the leaf's state; [`Optimizer::state`] cuts it into per-parameter views
/// only when asked (a checkpoint), so a step makes none.
#[derive(Clone, Debug)]
struct LeafState {
    layout: FlatLayout,
    owners: Tensor<1, Int>,
    decay: Tensor<2>,
    adapted: Tensor<1>,
    first: Option<Tensor<1>>,
    second: Option<Tensor<1>>,
    /// Updates applied to the leaf's parameters.
    steps: u64,
    /// AdamW's bias corrections of the leaf's next update on the device (off the CPU).
    corrections: Option<(DeviceScalar, DeviceScalar)>,
}

impl LeafState {
    /// The per-parameter state of the leaf whose parameters' names take `prefix`: views of
    /// the vectors.
    fn per_parameter(&self, prefix: &str) -> impl Iterator<Item = (String, ParamState)> + '_ {
        let prefix = prefix.to_string();
        self.layout.entries.iter().enumerate().map(move |(j, e)| {
            let state = ParamState {
                first: self.first.as_ref().map(|f| self.layout.slice4(f, j)),
                second: self.second.as_ref().map(|v| self.layout.slice4(v, j)),
                steps: self.steps,
                shape: e.shape.clone(),
            };
            (param_key(&prefix, &e.name), state)
        })
    }
}

/// The state's name of parameter `name` of the leaf whose parameters' names take `prefix`
/// (`net_index.param_name`, as checkpoints store it).
fn param_key(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
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
    /// One update of a network's parameter vector by this rule.
    pub fn apply(&self, u: FlatUpdate<'_>) -> FlatOutcome {
        match self {
            Rule::Sgd(c) => c.update(u),
            Rule::Lars(c) => c.update(u),
            Rule::AdamW(c) => c.update(u),
        }
    }

    /// The bias corrections of the update after `steps` others, for the rules that have them.
    fn corrections(&self, steps: u64) -> Option<(f64, f64)> {
        match self {
            Rule::AdamW(c) => Some(c.corrections(steps)),
            _ => None,
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
    /// Per network leaf (by the name prefix of its parameters), while valid.
    leaves: HashMap<String, LeafState>,
    steps: u64,
    /// The training loop's step of the next update (set by the caller), to name the step of
    /// a skipped update; the update count stands in without one.
    run_step: Option<u64>,
    /// On a GPU: updates skipped on the device for a non-finite loss, not yet read.
    skips: Option<Skips>,
    /// The learning rate [`stage`](Self::stage) set for the next step, on the host.
    staged_lr: Option<f64>,
    /// The learning rate on the device, once a step has run.
    lr: Option<DeviceScalar>,
    /// On a GPU, once a step has run: the staged step's number + 1, for the count of skips.
    step_number: Option<DeviceScalar>,
}

/// Updates skipped on the device, as `[1]` f32 tensors (exact up to 2^24).
#[derive(Clone, Debug)]
struct Skips {
    /// How many.
    count: Tensor<1>,
    /// The first one's step + 1 (0: none yet).
    first: Tensor<1>,
    /// How many a read has already reported.
    reported: u64,
    /// The copy of `[count, first]` on its way back, if one is.
    arriving: Arriving,
}

/// A device-to-host copy started and not yet looked at: polled, never waited for.
#[derive(Default)]
struct Arriving(Option<std::pin::Pin<Box<dyn Future<Output = ReadResult> + Send>>>);

type ReadResult = std::result::Result<burn::tensor::TensorData, burn::tensor::ExecutionError>;

impl Clone for Arriving {
    /// A copy of an optimiser starts with nothing on its way.
    fn clone(&self) -> Self {
        Arriving(None)
    }
}

impl std::fmt::Debug for Arriving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Arriving(..)"
        } else {
            "Arriving(none)"
        })
    }
}

impl Arriving {
    /// Starts copying `t` back (the first poll issues the copy) unless a copy is on its way.
    fn start(&mut self, t: Tensor<1>) {
        if self.0.is_none() {
            let mut read: std::pin::Pin<Box<dyn Future<Output = ReadResult> + Send>> =
                Box::pin(t.into_data_async());
            match poll_once(&mut read) {
                Some(done) => self.0 = Some(Box::pin(std::future::ready(done))),
                None => self.0 = Some(read),
            }
        }
    }

    /// The copy's values if it has arrived (without waiting), and nothing on its way then.
    fn arrived(&mut self) -> Option<Result<Vec<f32>>> {
        let done = poll_once(self.0.as_mut()?)?;
        self.0 = None;
        Some(
            done.map_err(|e| Error::Backend(format!("{e:?}")))
                .and_then(|data| {
                    data.convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| Error::Backend(format!("{e:?}")))
                }),
        )
    }
}

/// An error unless `lr` is a learning rate.
fn check_lr(lr: f64) -> Result<()> {
    if !lr.is_finite() || lr < 0.0 {
        return Err(Error::Invalid(format!(
            "learning rate must be a finite number >= 0, got {lr}"
        )));
    }
    Ok(())
}

/// Polls `fut` once with a waker that does nothing: its output if it is ready.
fn poll_once<T>(fut: &mut std::pin::Pin<Box<dyn Future<Output = T> + Send>>) -> Option<T> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

impl Skips {
    /// An error when `values` (`[count, first + 1]`, as read back) shows skips not yet
    /// reported.
    fn report(&mut self, values: &[f32]) -> Result<()> {
        let (count, first) = (values[0] as u64, values[1] as u64);
        if count <= self.reported {
            return Ok(());
        }
        let new = count - self.reported;
        self.reported = count;
        Err(Error::NonFinite(format!(
            "the loss was not finite at step {}: its update was skipped on the device \
             (parameters and optimiser state unchanged), and {} more since the last report",
            first.saturating_sub(1),
            new - 1
        )))
    }
}

/// Whether this step's update goes ahead: decided on the host before it (the CPU), or on
/// the device (a GPU), where `on_device` is `[1, 1, 1, 1]`, true where the loss is finite,
/// and the update is selected by it.
struct FiniteGuard {
    on_device: Option<Tensor<4, Bool>>,
}

impl FiniteGuard {
    /// `new` where the loss was finite, else `old`.
    fn select(&self, new: Tensor<1>, old: Tensor<1>) -> Tensor<1> {
        match &self.on_device {
            None => new,
            Some(ok) => old.mask_where(ok.clone().reshape([1]).expand(new.dims()), new),
        }
    }

    /// `new` state where the loss was finite, else `old` (zeros where there was none: only a
    /// non-finite first step leaves a zero momentum rather than none).
    fn select_state(&self, new: Option<Tensor<1>>, old: Option<Tensor<1>>) -> Option<Tensor<1>> {
        match (&self.on_device, new) {
            (None, new) => new,
            (_, None) => old,
            (Some(_), Some(new)) => {
                let old = old.unwrap_or_else(|| new.zeros_like());
                Some(self.select(new, old))
            }
        }
    }
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
            leaves: HashMap::new(),
            steps: 0,
            run_step: None,
            skips: None,
            staged_lr: None,
            lr: None,
            step_number: None,
        })
    }

    /// Tells the optimiser the training loop's step of its next update (for messages).
    pub fn at_step(&mut self, step: Option<u64>) -> &mut Self {
        self.run_step = step;
        self
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

    /// Per-parameter state by `net_index.param_name`, and the step count, for checkpoints
    /// (the leaves' vectors cut into views).
    pub fn state(&self) -> (HashMap<String, ParamState>, u64) {
        let mut state = self.state.clone();
        for (prefix, leaf) in &self.leaves {
            state.extend(leaf.per_parameter(prefix));
        }
        (state, self.steps)
    }

    /// Restores state saved by [`state`](Self::state).
    pub fn set_state(&mut self, state: HashMap<String, ParamState>, steps: u64) {
        self.state = state;
        self.leaves.clear();
        self.steps = steps;
    }

    /// Backward from `loss`, then one update of every parameter with a gradient, at learning
    /// rate `lr`.
    ///
    /// Errors (and changes nothing) if the loss is not a finite one-element tensor.
    pub fn step(&mut self, loss: &DynTensor, lr: f64) -> Result<()> {
        check_lr(lr)?;
        self.write_step_values(lr);
        self.step_staged(loss)?;
        self.look_at_skips()
    }

    /// Writes what the next [`step_staged`](Self::step_staged) takes from the host into its
    /// device buffers: the learning rate `lr`, the step's number and AdamW's bias corrections.
    /// First looks at the count of skipped updates on its way back (an error if it shows new
    /// ones), and starts the next copy: nothing is read inside a recorded step.
    pub fn stage(&mut self, lr: f64) -> Result<()> {
        check_lr(lr)?;
        self.look_at_skips()?;
        self.write_step_values(lr);
        Ok(())
    }

    fn write_step_values(&mut self, lr: f64) {
        self.staged_lr = Some(lr);
        if let Some(s) = &mut self.lr {
            s.set(lr);
        }
        let number = self.step_number();
        if let Some(s) = &mut self.step_number {
            s.set(number as f64);
        }
        for st in self.leaves.values_mut() {
            if let (Some((c1, c2)), Some((v1, v2))) =
                (&mut st.corrections, self.rule.corrections(st.steps))
            {
                c1.set(v1);
                c2.set(v2);
            }
        }
    }

    /// The training loop's step of the next update + 1 (the update count stands in without
    /// one), as the count of skipped updates records it.
    fn step_number(&self) -> u64 {
        self.run_step.unwrap_or(self.steps) + 1
    }

    /// [`step`](Self::step) at the learning rate [`stage`](Self::stage) set, without reading
    /// anything back on a GPU: what a recorded step runs.
    pub fn step_staged(&mut self, loss: &DynTensor) -> Result<()> {
        let Some(lr_value) = self.staged_lr.take() else {
            return Err(Error::Invalid(
                "opt.step_staged: no learning rate was staged for this step".into(),
            ));
        };
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
        let guard = if crate::device::gpu_path(&loss4.device()) {
            FiniteGuard {
                on_device: Some(loss4.clone().detach().is_finite()),
            }
        } else {
            // Nothing has been updated yet, so a non-finite loss still changes nothing.
            let value = loss.item()?;
            if !value.is_finite() {
                return Err(Error::NonFinite(format!(
                    "the loss is {value}; no update was made"
                )));
            }
            FiniteGuard { on_device: None }
        };
        // Updates run without autodiff, as the parameters' vectors do.
        let device = loss4.clone().without_autodiff().device();
        let lr = self
            .lr
            .get_or_insert_with(|| DeviceScalar::new(lr_value, &device))
            .column();
        if guard.on_device.is_some() && self.step_number.is_none() {
            let number = self.step_number();
            self.step_number = Some(DeviceScalar::new(number as f64, &device));
        }
        let mut seen: Vec<SharedNet> = Vec::new();
        for (i, net) in self.nets.clone().iter().enumerate() {
            for (prefix, leaf) in net.leaves() {
                // A leaf shared by two of the networks is updated once; a frozen one not at all.
                if leaf.is_frozen() || seen.iter().any(|s| s.same(&leaf)) {
                    continue;
                }
                seen.push(leaf.clone());
                let prefix = if prefix.is_empty() {
                    i.to_string()
                } else {
                    format!("{i}.{prefix}")
                };
                self.step_leaf(&leaf, &prefix, &grads, (&lr, lr_value), &guard);
            }
        }
        self.steps += 1;
        if let Some(ok) = guard.on_device {
            self.count_skip(ok);
        }
        Ok(())
    }

    /// One update of `leaf`'s parameters that have gradients in `grads`, as one vector: all of
    /// them (then the vectors are kept for the next step), or the part that has gradients (a
    /// frozen or unused part keeps its values and state).
    fn step_leaf(
        &mut self,
        leaf: &SharedNet,
        prefix: &str,
        grads: &burn::tensor::Gradients,
        (lr, lr_value): (&Tensor<2>, f64),
        guard: &FiniteGuard,
    ) {
        let gradients = leaf.flat_gradients(grads);
        if gradients.iter().all(Option::is_none) {
            return;
        }
        let (full, values) = leaf.flat();
        let device = values.device();
        let complete = gradients.iter().all(Option::is_some);
        let (layout, param) = if complete {
            (full.clone(), values)
        } else {
            let taken: Vec<usize> = (0..gradients.len())
                .filter(|&j| gradients[j].is_some())
                .collect();
            let part = full.subset(&taken);
            let parts = taken
                .iter()
                .map(|&j| full.slice4(&values, j).reshape([-1]))
                .collect();
            let gathered = part.gather(parts, &device);
            (part, gathered)
        };
        let grad = layout.gather(gradients.into_iter().flatten().collect(), &device);
        let key = |name: &str| param_key(prefix, name);
        let mut st = match self.leaves.remove(prefix) {
            Some(st) if complete && st.layout == layout => st,
            Some(st) => {
                // The leaf's state moves back to its parameters, for the part that updates.
                self.state.extend(st.per_parameter(prefix));
                self.leaf_state(&layout, &key, &device)
            }
            None => self.leaf_state(&layout, &key, &device),
        };
        let steps = st.steps;
        let on_cpu = crate::kernels::cpu_takes(param.dtype(), &device);
        if st.corrections.is_none()
            && !on_cpu
            && let Some((c1, c2)) = self.rule.corrections(steps)
        {
            st.corrections = Some((
                DeviceScalar::new(c1, &device),
                DeviceScalar::new(c2, &device),
            ));
        }
        let rows = |t: &Tensor<1>| t.clone().reshape([layout.chunks, CHUNK]);
        let out = self.rule.apply(FlatUpdate {
            param: rows(&param),
            grad: rows(&grad),
            lr: lr.clone(),
            lr_value,
            decay: &st.decay,
            adapted: &st.adapted,
            layout: &layout,
            owners: &st.owners,
            first: st.first.as_ref().map(rows),
            second: st.second.as_ref().map(rows),
            steps,
            corrections: st
                .corrections
                .as_ref()
                .map(|(c1, c2)| (c1.column(), c2.column())),
        });
        let flat = |t: Tensor<2>| t.reshape([layout.len()]);
        // Into the buffers read while a step is recorded (only a whole leaf's vectors are
        // kept between steps).
        let keep = |old: Option<Tensor<1>>, new: Option<Tensor<1>>| match (old, new) {
            (Some(old), Some(new)) if complete => Some(replace(&old, new)),
            (_, new) => new,
        };
        let selected = guard.select(flat(out.param), param.clone());
        let new = if complete {
            replace(&param, selected)
        } else {
            selected
        };
        let first = st.first.take();
        st.first = keep(
            first.clone(),
            guard.select_state(out.first.map(flat), first),
        );
        let second = st.second.take();
        st.second = keep(
            second.clone(),
            guard.select_state(out.second.map(flat), second),
        );
        st.steps += 1;
        leaf.set_flat(&layout, new);
        if complete {
            for e in &layout.entries {
                self.state.remove(&key(&e.name));
            }
            self.leaves.insert(prefix.to_string(), st);
        } else {
            self.state.extend(st.per_parameter(prefix));
        }
    }

    /// A leaf's masks, and its state gathered from the per-parameter state (zeros where a
    /// parameter has none; none at all when no parameter has any).
    fn leaf_state(
        &self,
        layout: &FlatLayout,
        key: &dyn Fn(&str) -> String,
        device: &burn::tensor::Device,
    ) -> LeafState {
        let excluded = |e: &FlatEntry| self.rule.excludes_bias_and_norm() && e.is_vector();
        let gather = |pick: fn(&ParamState) -> Option<&Tensor<4>>| {
            let parts: Vec<Option<Tensor<1>>> = layout
                .entries
                .iter()
                .map(|e| {
                    self.state
                        .get(&key(&e.name))
                        .and_then(pick)
                        .map(|t| t.clone().without_autodiff().reshape([-1]))
                })
                .collect();
            if parts.iter().all(Option::is_none) {
                return None;
            }
            Some(layout.gather_present(parts, device))
        };
        let steps = layout
            .entries
            .first()
            .and_then(|e| self.state.get(&key(&e.name)))
            .map_or(0, |s| s.steps);
        LeafState {
            steps,
            owners: layout.row_owners(device),
            decay: layout.row_column(|e| !excluded(e), 1.0, 0.0, device),
            adapted: layout.per_entry(|e| !excluded(e), 1.0, 0.0, device),
            first: gather(|s| s.first.as_ref()),
            second: gather(|s| s.second.as_ref()),
            layout: layout.clone(),
            corrections: None,
        }
    }

    /// Looks at the last copy of the skip count if it has arrived (waiting for nothing), and
    /// starts the next one: an error when it shows new skips.
    fn look_at_skips(&mut self) -> Result<()> {
        let Some(skips) = &mut self.skips else {
            return Ok(());
        };
        let arrived = skips.arriving.arrived();
        let both = Tensor::cat(vec![skips.count.clone(), skips.first.clone()], 0);
        skips.arriving.start(both);
        match arrived {
            Some(values) => skips.report(&values?),
            None => Ok(()),
        }
    }

    /// Adds this step's outcome to the device's count of skipped updates.
    fn count_skip(&mut self, ok: Tensor<4, Bool>) {
        let skipped = ok.bool_not().float().reshape([1]);
        let Some(number) = self.step_number.as_ref().map(DeviceScalar::tensor) else {
            return;
        };
        let skips = self.skips.get_or_insert_with(|| Skips {
            count: skipped.zeros_like(),
            first: skipped.zeros_like(),
            reported: 0,
            arriving: Arriving::default(),
        });
        let none_yet = skips.first.clone().equal_elem(0.0).float();
        let first = skips
            .first
            .clone()
            .add(skipped.clone().mul(none_yet).mul(number));
        let count = skips.count.clone().add(skipped);
        skips.first = replace(&skips.first, first);
        skips.count = replace(&skips.count, count);
    }

    /// Reads the device's count of skipped updates (a sync on a GPU): an error naming the
    /// first skipped step when there are new ones. Nothing to read on the CPU.
    pub fn check_skips(&mut self) -> Result<()> {
        let Some(skips) = &mut self.skips else {
            return Ok(());
        };
        skips.arriving = Arriving::default();
        let both = Tensor::cat(vec![skips.count.clone(), skips.first.clone()], 0);
        skips.report(&crate::tensor::float_values(both)?)
    }
}
