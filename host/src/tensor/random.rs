//! Seeded random numbers drawn on the host, so a seed gives the same values on every device.

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::DynTensor;
use crate::error::Result;

/// A seeded generator for initialisation and `randn`; its state can be saved and restored.
#[derive(Clone, Debug)]
pub struct HostRng {
    rng: ChaCha8Rng,
}

impl HostRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        HostRng {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A uniform number in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// `n` uniform numbers in `[low, high)`.
    pub fn uniform_vec(&mut self, n: usize, low: f64, high: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (low + (high - low) * self.uniform()) as f32)
            .collect()
    }

    /// `n` standard normal numbers times `std` (Box–Muller).
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = 1.0 - self.uniform(); // in (0, 1]
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A tensor of standard normal values.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<DynTensor> {
        super::check_shape(shape)?;
        let n = shape.iter().product();
        DynTensor::from_vec(self.normal_vec(n, 1.0), shape, device)
    }

    /// A tensor of uniform values in `[0, 1)`.
    pub fn rand(&mut self, shape: &[usize], device: &Device) -> Result<DynTensor> {
        super::check_shape(shape)?;
        let n = shape.iter().product();
        DynTensor::from_vec(self.uniform_vec(n, 0.0, 1.0), shape, device)
    }
}
