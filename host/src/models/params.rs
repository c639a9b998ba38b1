//! Parameters by dotted name (`layer1.0.conv1.weight`), for checkpoints, loading and the
//! script's view of a network; [`ParamPath`] names parameters for every walk over a module.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::tensor::DynTensor;

/// Names of non-trainable buffers (batch-norm running statistics), as in PyTorch.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// The dotted name of the parameter a Burn visitor or mapper is at, as PyTorch names it:
/// struct fields and list indices, but not the variant of an enum module (a network leaf is
/// `conv1.weight`, not `ResNet.conv1.weight`).
#[derive(Debug, Default)]
pub struct ParamPath(Vec<String>);

impl ParamPath {
    /// A path under `prefix` (`""` for none).
    pub fn under(prefix: &str) -> Self {
        ParamPath(if prefix.is_empty() {
            vec![]
        } else {
            vec![prefix.to_string()]
        })
    }

    /// Entering a module or field, as `enter_module` reports it.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }

    /// Leaving it, as `exit_module` reports it.
    pub fn exit(&mut self, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.pop();
        }
    }

    /// The current dotted name.
    pub fn name(&self) -> String {
        self.0.join(".")
    }
}

struct Visitor<'a> {
    path: ParamPath,
    f: &'a mut dyn FnMut(&str, DynTensor),
}

impl ModuleVisitor for Visitor<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        (self.f)(
            &self.path.name(),
            DynTensor::from_float(param.val().detach()),
        );
    }
}

/// The function a [`map_named`] applies: `(name, value) -> new value`, `value` without
/// autodiff.
pub type MapFn<'a> = dyn FnMut(&str, DynTensor) -> Option<DynTensor> + 'a;

struct Mapper<'a> {
    path: ParamPath,
    f: &'a mut MapFn<'a>,
}

impl ModuleMapper for Mapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let old = param.val();
        let value = DynTensor::from_float(old.clone().inner());
        let Some(new) = (self.f)(&self.path.name(), value) else {
            return param;
        };
        let mut new: Tensor<D> = new
            .float_rank::<D>("parameter update")
            .expect("a parameter keeps its rank");
        // The new value is a fresh leaf with the old one's autodiff context and gradient setting.
        if old.is_autodiff() {
            new = new.autodiff();
        }
        let tracked = old.is_require_grad();
        param.map(|_| new.detach().set_require_grad(tracked))
    }
}

/// Calls `f(name, value)` for every float parameter and buffer of `module`, in order.
pub fn visit_named<M: Module>(module: &M, prefix: &str, f: &mut dyn FnMut(&str, DynTensor)) {
    let mut visitor = Visitor {
        path: ParamPath::under(prefix),
        f,
    };
    module.visit(&mut visitor);
}

/// Replaces each parameter for which `f(name, value)` returns a new value of the same shape.
/// The replacement keeps the parameter's id and whether it requires gradients.
pub fn map_named<'a, M: Module>(module: M, prefix: &str, f: &'a mut MapFn<'a>) -> M {
    let mut mapper = Mapper {
        path: ParamPath::under(prefix),
        f,
    };
    module.map(&mut mapper)
}
