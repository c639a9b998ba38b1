//! A network's trainable parameters end to end in one vector, so that an optimiser step or an
//! EMA update is a few whole-vector ops instead of several ops per parameter tensor (on a GPU,
//! a few kernel launches instead of hundreds).
//!
//! Each parameter starts at a multiple of [`CHUNK`] values and the gaps are zeros, so the
//! vector is also a `[chunks, CHUNK]` matrix in which every row belongs to one parameter: a
//! per-parameter reduction (LARS's norms) is a row sum and a sum of rows by parameter, and a
//! per-parameter factor is a `[chunks, 1]` column broadcast over the rows. Zeros stay zeros
//! under every update rule here (no gradient, no decay, no moment), so the gaps never leak.
//!
//! After a [`write`], the module's parameters are views (slices) of the vector, and the vector
//! itself can be kept and reused as the parameters' value until something else replaces them.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};

use super::params::{ParamPath, is_buffer};

/// Values per row of the `[chunks, CHUNK]` view; each parameter starts on a row.
pub const CHUNK: usize = crate::kernels::FLAT_ROW;

/// One trainable parameter's place in the vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatEntry {
    /// Its dotted name within the module.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Where it starts (a multiple of [`CHUNK`]).
    pub offset: usize,
}

impl FlatEntry {
    /// Where its values lie in the vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }

    /// Its number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rank-1 parameters (biases, batch-norm scales and shifts), which optimisers may exclude
    /// from weight decay and adaptation.
    pub fn is_vector(&self) -> bool {
        self.shape.len() == 1
    }

    /// Its rows of the `[chunks, CHUNK]` view.
    fn rows(&self) -> usize {
        self.len().div_ceil(CHUNK)
    }
}

/// Where each trainable parameter of a module sits, in the module's visit order (buffers
/// excluded); or, for [`FlatLayout::buffers_of`], each buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlatLayout {
    /// The parameters, in order.
    pub entries: Vec<FlatEntry>,
    /// Rows of the `[chunks, CHUNK]` view.
    pub chunks: usize,
    /// Whether the entries are buffers (batch-norm running statistics) rather than trainable
    /// parameters.
    pub buffers: bool,
}

struct LayoutVisitor {
    path: ParamPath,
    layout: FlatLayout,
}

impl ModuleVisitor for LayoutVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.path.name();
        if is_buffer(&name) != self.layout.buffers {
            return;
        }
        let entry = FlatEntry {
            name,
            shape: param.val().dims().to_vec(),
            offset: self.layout.chunks * CHUNK,
        };
        self.layout.chunks += entry.rows();
        self.layout.entries.push(entry);
    }
}

impl FlatLayout {
    /// The layout of `module`'s trainable parameters.
    pub fn of<M: Module>(module: &M) -> Self {
        Self::walk(module, false)
    }

    /// The layout of `module`'s buffers (batch-norm running statistics).
    pub fn buffers_of<M: Module>(module: &M) -> Self {
        Self::walk(module, true)
    }

    fn walk<M: Module>(module: &M, buffers: bool) -> Self {
        let mut visitor = LayoutVisitor {
            path: ParamPath::default(),
            layout: FlatLayout {
                buffers,
                ..FlatLayout::default()
            },
        };
        module.visit(&mut visitor);
        visitor.layout
    }

    /// Values in the vector, gaps included.
    pub fn len(&self) -> usize {
        self.chunks * CHUNK
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// For each row of the `[chunks, CHUNK]` view, the index of its parameter.
    pub fn row_owners(&self, device: &Device) -> Tensor<1, Int> {
        let owners: Vec<i64> = self
            .entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| std::iter::repeat_n(i as i64, e.rows()))
            .collect();
        Tensor::from_data(TensorData::new(owners, [self.chunks]), device)
    }

    /// A `[chunks, 1]` column: `on` on the rows of parameters where `pick` holds, else `off`.
    pub fn row_column(
        &self,
        pick: impl Fn(&FlatEntry) -> bool,
        on: f32,
        off: f32,
        device: &Device,
    ) -> Tensor<2> {
        let values: Vec<f32> = self
            .entries
            .iter()
            .flat_map(|e| std::iter::repeat_n(if pick(e) { on } else { off }, e.rows()))
            .collect();
        Tensor::from_data(TensorData::new(values, [self.chunks, 1]), device)
    }

    /// One value per parameter: `on` where `pick` holds, else `off` (`[entries]`).
    pub fn per_entry(
        &self,
        pick: impl Fn(&FlatEntry) -> bool,
        on: f32,
        off: f32,
        device: &Device,
    ) -> Tensor<1> {
        let values: Vec<f32> = self
            .entries
            .iter()
            .map(|e| if pick(e) { on } else { off })
            .collect();
        Tensor::from_data(TensorData::new(values, [self.entries.len()]), device)
    }

    /// Per-row values (`[chunks]`, e.g. the rows' sums) added up by parameter (`[entries]`).
    pub fn entry_sums(&self, rows: Tensor<1>, owners: &Tensor<1, Int>) -> Tensor<1> {
        Tensor::<1>::zeros([self.entries.len()], &rows.device()).select_assign(
            0,
            owners.clone(),
            rows,
            burn::tensor::IndexingUpdateOp::Add,
        )
    }

    /// `tensors` (one per parameter, in order, any shape of the right size) laid into a new
    /// vector, gaps zero, without autodiff.
    pub fn gather(&self, tensors: Vec<Tensor<1>>, device: &Device) -> Tensor<1> {
        self.gather_present(tensors.into_iter().map(Some).collect(), device)
    }

    /// As [`FlatLayout::gather`], a parameter whose tensor is `None` left zero.
    pub fn gather_present(&self, tensors: Vec<Option<Tensor<1>>>, device: &Device) -> Tensor<1> {
        // Without autodiff, whatever `device` says: updates build no graph.
        let mut flat = Tensor::<1>::zeros([self.len()], device).without_autodiff();
        for (e, t) in self.entries.iter().zip(tensors) {
            if let Some(t) = t {
                flat = flat.slice_assign([e.range()], t);
            }
        }
        flat
    }

    /// The layout of the parameters `taken` (indices into this one), laid out afresh.
    pub fn subset(&self, taken: &[usize]) -> Self {
        let mut part = FlatLayout {
            buffers: self.buffers,
            ..FlatLayout::default()
        };
        for &j in taken {
            let e = &self.entries[j];
            part.entries.push(FlatEntry {
                offset: part.chunks * CHUNK,
                ..e.clone()
            });
            part.chunks += e.rows();
        }
        part
    }

    /// Parameter `i`'s values in `flat`, in its shape, padded on the left to rank 4 (a view).
    pub fn slice4(&self, flat: &Tensor<1>, i: usize) -> Tensor<4> {
        let e = &self.entries[i];
        crate::kernels::views::flat_view(flat, e.offset, crate::tensor::padded(&e.shape))
    }
}

struct ValueVisitor<'a> {
    path: ParamPath,
    buffers: bool,
    grads: Option<&'a Gradients>,
    out: Vec<Option<Tensor<1>>>,
}

impl ModuleVisitor for ValueVisitor<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if is_buffer(&self.path.name()) != self.buffers {
            return;
        }
        let value = param.val();
        let t = match self.grads {
            Some(g) => value.grad(g),
            None => Some(value.inner()),
        };
        self.out.push(t.map(|t| t.reshape([-1])));
    }
}

/// `module`'s trainable parameters (or, with `buffers`, its buffers), in layout order,
/// flattened, without autodiff.
pub fn values<M: Module>(module: &M, buffers: bool) -> Vec<Tensor<1>> {
    let mut visitor = ValueVisitor {
        path: ParamPath::default(),
        buffers,
        grads: None,
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out.into_iter().flatten().collect()
}

/// The gradients of `module`'s trainable parameters in `grads`, in layout order, flattened;
/// `None` for a parameter that took none.
pub fn gradients<M: Module>(module: &M, grads: &Gradients) -> Vec<Option<Tensor<1>>> {
    let mut visitor = ValueVisitor {
        path: ParamPath::default(),
        buffers: false,
        grads: Some(grads),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

struct Writer<'a> {
    path: ParamPath,
    layout: &'a FlatLayout,
    flat: &'a Tensor<1>,
    next: usize,
}

impl ModuleMapper for Writer<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.name();
        if is_buffer(&name) != self.layout.buffers {
            return param;
        }
        // In visit order, so the next entry is this parameter's unless the layout is a part.
        let Some(e) = self.layout.entries[self.next.min(self.layout.entries.len())..]
            .iter()
            .find(|e| e.name == name)
        else {
            return param;
        };
        self.next += 1;
        let old = param.val();
        let mut new: Tensor<D> = crate::kernels::views::flat_view(self.flat, e.offset, old.dims());
        // A fresh leaf with the old one's autodiff context and gradient setting.
        if old.is_autodiff() {
            new = new.autodiff();
        }
        let tracked = old.is_require_grad();
        param.map(|_| new.set_require_grad(tracked))
    }
}

/// `module` with each parameter or buffer `layout` names (all of `module`'s, or a part, in
/// visit order) replaced by its view of `flat`; ids and gradient settings are kept.
pub fn write<M: Module>(module: M, layout: &FlatLayout, flat: &Tensor<1>) -> M {
    let mut writer = Writer {
        path: ParamPath::default(),
        layout,
        flat,
        next: 0,
    };
    module.map(&mut writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::layers::LinearConfig;
    use crate::tensor::HostRng;

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn parameters_start_on_rows_and_the_gaps_are_zero() {
        let device = Device::flex();
        let layer = LinearConfig::new(1500, 2).init(&mut HostRng::new(0), &device);
        let layout = FlatLayout::of(&layer);
        let names: Vec<_> = layout.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["weight", "bias"]);
        // 3000 weights take three rows; the bias starts on the fourth.
        assert_eq!(layout.entries[1].offset, 3 * CHUNK);
        assert_eq!(layout.chunks, 4);
        let flat = values(layout.gather(super::values(&layer, false), &device));
        assert_eq!(flat.len(), 4 * CHUNK);
        assert!(flat[3000..3 * CHUNK].iter().all(|&v| v == 0.0));
        assert!(flat[3 * CHUNK + 2..].iter().all(|&v| v == 0.0));
        let bias = values(layer.bias.as_ref().unwrap().val());
        assert_eq!(&flat[3 * CHUNK..3 * CHUNK + 2], &bias[..]);
        let owners = layout.row_owners(&device).into_data().convert::<i64>();
        let owners = owners.try_to_vec::<i64>().unwrap();
        assert_eq!(owners, [0, 0, 0, 1]);
    }

    #[test]
    fn a_leaf_lays_out_its_parameters_and_buffers_apart_named_as_in_the_module() {
        use crate::models::mlp::MlpConfig;
        use crate::models::net::Leaf;
        let device = Device::flex();
        let mlp = MlpConfig::new(vec![3, 4, 2])
            .init(&mut HostRng::new(0), &device)
            .unwrap();
        // The enum's variant is not part of the names (`layers.0..`, not `Mlp.layers.0..`).
        let leaf = Leaf::Mlp(mlp);
        let names =
            |l: &FlatLayout| -> Vec<String> { l.entries.iter().map(|e| e.name.clone()).collect() };
        let params = FlatLayout::of(&leaf);
        let buffers = FlatLayout::buffers_of(&leaf);
        assert!(!params.buffers && buffers.buffers);
        assert!(params.entries.iter().all(|e| !is_buffer(&e.name)));
        assert!(names(&params).iter().all(|n| n.starts_with("layers.")));
        assert_eq!(
            names(&buffers),
            ["layers.0.bn.running_mean", "layers.0.bn.running_var"]
        );
        // Writing the buffers' vector changes the buffers and nothing else.
        let twos = Tensor::<1>::full([buffers.len()], 2.0, &device);
        let before = values_of(&leaf, false);
        let leaf = write(leaf, &buffers, &twos);
        assert_eq!(values_of(&leaf, false), before);
        assert!(values_of(&leaf, true).iter().all(|&v| v == 2.0));
    }

    fn values_of(leaf: &crate::models::net::Leaf, buffers: bool) -> Vec<f32> {
        super::values(leaf, buffers)
            .into_iter()
            .flat_map(values)
            .collect()
    }

    #[test]
    fn a_part_of_the_layout_writes_only_its_parameters() {
        let device = Device::flex();
        let layer = LinearConfig::new(3, 2).init(&mut HostRng::new(0), &device);
        let weight = values(layer.weight.val().reshape([-1]));
        let layout = FlatLayout::of(&layer);
        let part = layout.subset(&[1]);
        assert_eq!(part.entries[0].offset, 0);
        let new_bias = Tensor::<1>::from_floats([7.0, 8.0], &device);
        let layer = write(layer, &part, &part.gather(vec![new_bias], &device));
        assert_eq!(values(layer.bias.as_ref().unwrap().val()), [7.0, 8.0]);
        assert_eq!(values(layer.weight.val().reshape([-1])), weight);
    }
}
