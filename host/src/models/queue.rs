//! MoCo's queue of past keys: the negatives of its contrastive loss.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::tensor::{DynTensor, HostRng};

/// A first-in, first-out queue of `size` embeddings of `dim` values, newest first.
/// Initialised with random unit vectors, as MoCo does; holds no gradients.
#[derive(Clone, Debug)]
pub struct Queue {
    keys: Tensor<2>,
}

impl Queue {
    /// A queue of `size` random unit vectors of `dim` values.
    pub fn new(size: usize, dim: usize, rng: &mut HostRng, device: &Device) -> Result<Self> {
        if size == 0 || dim == 0 {
            return Err(Error::Invalid(format!(
                "queue needs a positive size and dim, got {size} x {dim}"
            )));
        }
        let values = rng.normal_vec(size * dim, 1.0);
        let keys = Tensor::<2>::from_data(TensorData::new(values, [size, dim]), device).inner();
        Ok(Queue {
            keys: crate::tensor::unit_rows(keys),
        })
    }

    /// `[size, dim]`.
    pub fn dims(&self) -> [usize; 2] {
        self.keys.dims()
    }

    /// The keys `[size, dim]`, newest first (on the autodiff device, untracked).
    pub fn tensor(&self) -> DynTensor {
        DynTensor::from_float(self.keys.clone().autodiff())
    }

    /// Puts `keys` `[n, dim]` at the front and drops the `n` oldest.
    pub fn enqueue(&mut self, keys: &DynTensor) -> Result<()> {
        let [size, dim] = self.dims();
        let s = keys.shape();
        if s.len() != 2 || s[1] != dim || s[0] > size {
            return Err(Error::Shape(format!(
                "enqueue: keys must be [n <= {size}, {dim}], got {s:?}"
            )));
        }
        let new = keys.float_rank::<2>("enqueue")?.inner().detach();
        let kept = self.keys.clone().narrow(0, 0, size - s[0]);
        // Into its own buffer while a step is recorded, so a backward that reads the queue
        // must come before (the recipes enqueue after `opt.step`).
        self.keys = crate::kernels::views::replace(&self.keys, Tensor::cat(vec![new, kept], 0));
        Ok(())
    }

    /// Replaces the contents (restoring a checkpoint).
    pub fn set(&mut self, keys: Tensor<2>) -> Result<()> {
        if keys.dims() != self.dims() {
            return Err(Error::Shape(format!(
                "queue: saved keys {:?} do not fit a queue of {:?}",
                keys.dims(),
                self.dims()
            )));
        }
        self.keys = keys.inner();
        Ok(())
    }

    /// The keys as a plain tensor (for checkpoints).
    pub fn keys(&self) -> &Tensor<2> {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_puts_new_keys_first_and_drops_the_oldest() {
        let device = crate::device::cpu();
        let mut q = Queue::new(4, 2, &mut HostRng::new(0), &device).unwrap();
        let before = DynTensor::from_float(q.keys().clone())
            .to_f64_vec()
            .unwrap();
        let k = DynTensor::from_vec(vec![1.0, 0.0, 0.0, 1.0], &[2, 2], &device).unwrap();
        q.enqueue(&k).unwrap();
        let after = q.tensor().to_f64_vec().unwrap();
        assert_eq!(&after[..4], &[1.0, 0.0, 0.0, 1.0]);
        assert_eq!(&after[4..], &before[..4]);
        let wrong = DynTensor::from_vec(vec![1.0; 3], &[1, 3], &device).unwrap();
        assert!(q.enqueue(&wrong).is_err());
    }

    #[test]
    fn a_recorded_enqueue_gives_the_same_queue() {
        let device = crate::device::cpu();
        let k = DynTensor::from_vec(vec![1.0, 0.0, 0.0, 1.0], &[2, 2], &device).unwrap();
        let mut plain = Queue::new(4, 2, &mut HostRng::new(0), &device).unwrap();
        let mut recorded = plain.clone();
        plain.enqueue(&k).unwrap();
        let before = crate::kernels::installed();
        crate::kernels::install(crate::kernels::current().with_capture(true));
        recorded.enqueue(&k).unwrap();
        crate::kernels::restore(before);
        assert_eq!(
            recorded.tensor().to_f64_vec().unwrap(),
            plain.tensor().to_f64_vec().unwrap()
        );
        assert_eq!(recorded.dims(), [4, 2]);
    }
}
