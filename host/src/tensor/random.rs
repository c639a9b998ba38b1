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

/// A generator's exact position, for checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RngState {
    /// The 32-byte seed.
    pub seed: [u8; 32],
    /// The stream number.
    pub stream: u64,
    /// Words consumed so far.
    pub word_pos: u128,
}

impl RngState {
    /// `seed-hex:stream:word_pos`, for checkpoint metadata.
    pub fn encode(&self) -> String {
        let hex: String = self.seed.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}:{}:{}", self.stream, self.word_pos)
    }

    /// The inverse of [`encode`](Self::encode).
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let hex = parts.next()?;
        let stream = parts.next()?.parse().ok()?;
        let word_pos = parts.next()?.parse().ok()?;
        if hex.len() != 64 || parts.next().is_some() {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(RngState {
            seed,
            stream,
            word_pos,
        })
    }
}

impl HostRng {
    /// The generator's exact position.
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// A generator at a saved position.
    pub fn from_state(state: &RngState) -> Self {
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        HostRng { rng }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_generator_continues_the_same_sequence() {
        let mut a = HostRng::new(9);
        a.normal_vec(7, 1.0);
        let saved = RngState::decode(&a.state().encode()).unwrap();
        let mut b = HostRng::from_state(&saved);
        assert_eq!(a.uniform_vec(5, 0.0, 1.0), b.uniform_vec(5, 0.0, 1.0));
    }
}
