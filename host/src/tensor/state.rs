//! State tensors: values a method carries from step to step outside any network (UniGrad's
//! moving correlation F, DINO's centre, a running statistic), saved by checkpoints and
//! restored by `--resume` like networks and queues.

use crate::error::{Error, Result};
use crate::tensor::DynTensor;

/// A float tensor of fixed shape, held without gradients; `set` replaces its value.
#[derive(Clone, Debug)]
pub struct StateTensor {
    value: DynTensor,
}

impl StateTensor {
    /// A state holding `init` (detached: a state never carries a graph from one step into
    /// the next).
    pub fn new(init: &DynTensor) -> Result<Self> {
        if init.is_int() {
            return Err(Error::Dtype(
                "state_tensor holds float values; convert with .float()".into(),
            ));
        }
        Ok(StateTensor {
            value: init.detach(),
        })
    }

    /// The current value.
    pub fn value(&self) -> DynTensor {
        self.value.clone()
    }

    /// The shape, fixed at creation.
    pub fn shape(&self) -> Vec<usize> {
        self.value.shape()
    }

    /// Replaces the value with `next` (detached), which must have the same shape.
    pub fn set(&mut self, next: &DynTensor) -> Result<()> {
        if next.shape() != self.shape() {
            return Err(Error::Shape(format!(
                "state tensor of shape {:?} set to a value of shape {:?}",
                self.shape(),
                next.shape()
            )));
        }
        if next.is_int() {
            return Err(Error::Dtype(
                "state tensor set to an int tensor; convert with .float()".into(),
            ));
        }
        let next = next.detach();
        // While a step is recorded as a device graph, the new value goes into the buffer the
        // old one is in, which the replays read and write again (`views::replace`).
        let (old, new) = (self.value.float4("state.set")?, next.float4("state.set")?);
        let autodiff = new.is_autodiff();
        let value = crate::kernels::views::replace(&old, new);
        let value = if autodiff && !value.is_autodiff() {
            value.autodiff()
        } else {
            value
        };
        self.value = DynTensor::from_float4(value, next.rank());
        Ok(())
    }
}
