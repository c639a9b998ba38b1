//! Tensors whose rank (1–4) is known only at run time, as scripts need them.
//!
//! Every value is stored as a Burn `Tensor<4>` whose shape is the logical shape padded on the
//! left with ones: a `[N, D]` matrix is stored as `[1, 1, N, D]`. Left padding is exactly
//! NumPy's broadcasting rule, so elementwise ops between different ranks broadcast the way a
//! PyTorch user expects, and one code path serves every rank. Shapes are checked here, before
//! Burn sees them, so a mismatch is an error message rather than a panic.

mod ops;
mod random;
mod state;
pub mod tape;

pub use ops::{BinaryOp, broadcast_shape};
pub use random::{HostRng, RngState};
pub use state::StateTensor;

use std::cell::Cell;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Result};

/// The largest rank a script tensor can have.
pub const MAX_RANK: usize = 4;

/// Element storage: float (the default, differentiable) or integer (labels, indices).
#[derive(Clone, Debug)]
pub enum Values {
    /// 32-bit floats; autodiff flows through these.
    Float(Tensor<4>),
    /// Integers, for labels and indices.
    Int(Tensor<4, Int>),
}

/// A tensor of rank 1–4, stored left-padded to rank 4.
#[derive(Clone, Debug)]
pub struct DynTensor {
    values: Values,
    rank: usize,
    /// The values as the host made them, for small vectors (labels, `arange`, `zeros`): ops
    /// that need a vector on the host (class labels) read this instead of the device, which
    /// on a GPU would wait for every op queued before it.
    host: Option<Arc<[f64]>>,
    /// The taped call that made it, while a step is taped (`tape`).
    origin: Option<tape::Origin>,
    /// For integers known to lie in `0..bound` by how they were made (an `argmax` over a
    /// dimension of that size): what `select` checks its indices against without reading
    /// them from the device.
    bound: Option<usize>,
}

/// The longest vector whose values a [`DynTensor`] keeps on the host as well.
const HOST_COPY_LIMIT: usize = 1 << 16;

thread_local! {
    /// Device reads so far (values copied back to the host) on this thread.
    static DEVICE_READS: Cell<u64> = const { Cell::new(0) };
}

/// How many times this thread has read values back from a device: on a GPU each read waits
/// for the work queued before it, so a training step should read once (its loss).
pub fn device_reads() -> u64 {
    DEVICE_READS.with(Cell::get)
}

fn note_device_read() {
    DEVICE_READS.with(|c| c.set(c.get() + 1));
    tape::note_read();
}

/// Rows `[N, D]` scaled to unit length (`x / max(‖x‖, 1e-12)`, as `F.normalize(x, dim=1)`).
pub fn unit_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x.div(norm)
}

/// Row-major values of a float tensor of any rank, as `f32` (reads the device).
pub fn float_values<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>> {
    note_device_read();
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("{e:?}")))
}

/// Row-major values of an integer tensor of any rank, as `i64` (reads the device).
pub fn int_values<const D: usize>(x: Tensor<D, Int>) -> Result<Vec<i64>> {
    note_device_read();
    x.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| Error::Backend(format!("{e:?}")))
}

/// `values()` kept on the host for a vector of at most [`HOST_COPY_LIMIT`] values.
fn host_copy(shape: &[usize], values: impl FnOnce() -> Vec<f64>) -> Option<Arc<[f64]>> {
    (shape.len() == 1 && shape[0] <= HOST_COPY_LIMIT).then(|| values().into())
}

/// Pads a logical shape on the left with ones up to rank 4.
pub fn padded(shape: &[usize]) -> [usize; 4] {
    let mut out = [1; 4];
    out[4 - shape.len()..].copy_from_slice(shape);
    out
}

/// Checks that a shape has rank 1–4, no zero-sized dimension, and fits the memory budget.
pub fn check_shape(shape: &[usize]) -> Result<()> {
    if shape.is_empty() || shape.len() > MAX_RANK {
        return Err(Error::Shape(format!(
            "tensors have rank 1 to 4, got shape {shape:?} (rank {})",
            shape.len()
        )));
    }
    if shape.contains(&0) {
        return Err(Error::Shape(format!(
            "every dimension must be at least 1, got {shape:?}"
        )));
    }
    crate::budget::elements(shape, "tensor").map(|_| ())
}

impl DynTensor {
    /// Wraps a float tensor stored at rank 4 with the given logical rank.
    pub fn from_float4(t: Tensor<4>, rank: usize) -> Self {
        DynTensor {
            values: Values::Float(t),
            rank,
            host: None,
            origin: None,
            bound: None,
        }
    }

    /// Wraps an integer tensor stored at rank 4 with the given logical rank.
    pub fn from_int4(t: Tensor<4, Int>, rank: usize) -> Self {
        DynTensor {
            values: Values::Int(t),
            rank,
            host: None,
            origin: None,
            bound: None,
        }
    }

    /// A float tensor of any static rank `D <= 4`.
    pub fn from_float<const D: usize>(t: Tensor<D>) -> Self {
        let dims = t.dims();
        Self::from_float4(t.reshape(padded(&dims)), D)
    }

    /// An integer tensor of any static rank `D <= 4`.
    pub fn from_int<const D: usize>(t: Tensor<D, Int>) -> Self {
        let dims = t.dims();
        Self::from_int4(t.reshape(padded(&dims)), D)
    }

    /// A float tensor from row-major values and a shape.
    pub fn from_vec(values: Vec<f32>, shape: &[usize], device: &Device) -> Result<Self> {
        check_shape(shape)?;
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(Error::Shape(format!(
                "{} values do not fill shape {shape:?} ({n} elements)",
                values.len()
            )));
        }
        let host = host_copy(shape, || values.iter().map(|&v| v as f64).collect());
        let data = TensorData::new(values, padded(shape));
        Ok(Self::from_float4(Tensor::from_data(data, device), shape.len()).with_host(host))
    }

    /// An integer tensor from row-major values and a shape.
    pub fn from_int_vec(values: Vec<i64>, shape: &[usize], device: &Device) -> Result<Self> {
        check_shape(shape)?;
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(Error::Shape(format!(
                "{} values do not fill shape {shape:?} ({n} elements)",
                values.len()
            )));
        }
        let host = host_copy(shape, || values.iter().map(|&v| v as f64).collect());
        let data = TensorData::new(values, padded(shape));
        Ok(Self::from_int4(Tensor::from_data(data, device), shape.len()).with_host(host))
    }

    /// The same tensor, with `host` as its values on the host (see [`HOST_COPY_LIMIT`]).
    fn with_host(mut self, host: Option<Arc<[f64]>>) -> Self {
        self.host = host;
        self
    }

    /// The values of a small vector the host made, without reading the device.
    pub fn host_values(&self) -> Option<&[f64]> {
        self.host.as_deref()
    }

    /// The logical rank (1–4).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The logical shape.
    pub fn shape(&self) -> Vec<usize> {
        self.dims4()[4 - self.rank..].to_vec()
    }

    /// The stored (padded) shape.
    pub fn dims4(&self) -> [usize; 4] {
        match &self.values {
            Values::Float(t) => t.dims(),
            Values::Int(t) => t.dims(),
        }
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.dims4().iter().product()
    }

    /// True for integer tensors.
    pub fn is_int(&self) -> bool {
        matches!(self.values, Values::Int(_))
    }

    /// "float" or "int".
    pub fn dtype_name(&self) -> &'static str {
        if self.is_int() { "int" } else { "float" }
    }

    /// The device the tensor lives on.
    pub fn device(&self) -> Device {
        match &self.values {
            Values::Float(t) => t.device(),
            Values::Int(t) => t.device(),
        }
    }

    /// The stored float tensor, or a dtype error naming `op`.
    pub fn float4(&self, op: &str) -> Result<Tensor<4>> {
        match &self.values {
            Values::Float(t) => Ok(t.clone()),
            Values::Int(_) => Err(Error::Dtype(format!(
                "{op} needs a float tensor, got an int tensor (convert with .float())"
            ))),
        }
    }

    /// The stored integer tensor, or a dtype error naming `op`.
    pub fn int4(&self, op: &str) -> Result<Tensor<4, Int>> {
        match &self.values {
            Values::Int(t) => Ok(t.clone()),
            Values::Float(_) => Err(Error::Dtype(format!(
                "{op} needs an int tensor, got a float tensor (convert with .int())"
            ))),
        }
    }

    /// The values as floats, converting integers (used where ints promote, as in PyTorch).
    pub fn promoted4(&self) -> Tensor<4> {
        match &self.values {
            Values::Float(t) => t.clone(),
            Values::Int(t) => t.clone().float(),
        }
    }

    /// The float tensor at its logical rank `D`, or an error if the rank differs.
    pub fn float_rank<const D: usize>(&self, op: &str) -> Result<Tensor<D>> {
        if self.rank != D {
            return Err(Error::Shape(format!(
                "{op} expects a rank-{D} tensor, got shape {:?}",
                self.shape()
            )));
        }
        let shape: [usize; D] = self.shape().try_into().expect("rank checked above");
        Ok(self.float4(op)?.reshape(shape))
    }

    /// The integer tensor at its logical rank `D`, or an error if the rank differs.
    pub fn int_rank<const D: usize>(&self, op: &str) -> Result<Tensor<D, Int>> {
        if self.rank != D {
            return Err(Error::Shape(format!(
                "{op} expects a rank-{D} tensor, got shape {:?}",
                self.shape()
            )));
        }
        let shape: [usize; D] = self.shape().try_into().expect("rank checked above");
        Ok(self.int4(op)?.reshape(shape))
    }

    /// Row-major values as `f64` (converting integers). Reads the device.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        if let Some(v) = &self.host {
            return Ok(v.to_vec());
        }
        note_device_read();
        let data = self.promoted4().into_data();
        data.convert::<f64>()
            .try_into_vec::<f64>()
            .map_err(|e| Error::Backend(format!("{e:?}")))
    }

    /// The single value of a one-element tensor. Reads the device (a sync on GPUs).
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::Shape(format!(
                "item() needs a one-element tensor, got shape {:?}",
                self.shape()
            )));
        }
        Ok(self.to_f64_vec()?[0])
    }
}
