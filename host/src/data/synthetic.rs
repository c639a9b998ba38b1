//! `"synthetic"`: deterministic random images whose class can be learnt.
//!
//! Each class has a prototype: an oriented stripe pattern (orientation, spatial frequency)
//! with its own colour. A sample is its class's prototype with a random phase (a shift of the
//! stripes), a random contrast and brightness, and uniform pixel noise. Classes differ in structure
//! that survives crops, flips and colour jitter, so a self-supervised method learns something
//! measurable in seconds, and no files are needed.
//!
//! Everything is a pure function of `(seed, split, index)`: the same options give the same
//! images on every machine, and `limit` keeps the first samples unchanged. The prototypes
//! depend only on `seed`, so the train and test splits share classes.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Dataset, numbered_classes};
use crate::error::{Error, Result};

/// Options of the synthetic dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Number of samples.
    pub samples: usize,
    /// Number of classes; label of sample `i` is `i % classes`.
    pub classes: usize,
    /// Image side in pixels.
    pub size: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Seed of the prototypes and samples.
    pub seed: u64,
    /// `false` for the test split (other samples of the same classes).
    pub train: bool,
}

impl SyntheticConfig {
    /// Default sizes: 4096 train or 1024 test samples of 10 classes, 3 x 32 x 32.
    pub fn new(train: bool) -> Self {
        SyntheticConfig {
            samples: if train { 4096 } else { 1024 },
            classes: 10,
            size: 32,
            channels: 3,
            seed: 0,
            train,
        }
    }
}

struct Prototype {
    /// Stripe direction (unit vector).
    dir: (f32, f32),
    /// Cycles across the image.
    freq: f32,
    /// Per-channel weight of the stripes.
    colour: [f32; 3],
}

fn prototype(seed: u64, class: usize, classes: usize) -> Prototype {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1_000_000 + class as u64);
    // Orientations spread evenly over half a turn, frequencies cycle through four values,
    // so neighbouring classes differ in at least one of them.
    let angle = std::f32::consts::PI * (class as f32 + 0.25 * rng.random::<f32>()) / classes as f32;
    let freq = 1.5 + (class % 4) as f32 + 0.5 * rng.random::<f32>();
    let colour = std::array::from_fn(|_| 0.3 + 0.7 * rng.random::<f32>());
    Prototype {
        dir: (angle.cos(), angle.sin()),
        freq,
        colour,
    }
}

/// Uniform noise in `[-amplitude, amplitude)` from 32 random bits.
fn noise(rng: &mut ChaCha8Rng, amplitude: f32) -> f32 {
    amplitude * ((rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
}

/// One sample `[channels, size, size]` as bytes.
fn sample(config: &SyntheticConfig, protos: &[Prototype], index: usize, out: &mut Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(u64::from(!config.train) << 40 | index as u64);
    let p = &protos[index % config.classes];
    let phase = std::f32::consts::TAU * rng.random::<f32>();
    let contrast = 0.25 + 0.15 * rng.random::<f32>();
    let brightness = 0.4 + 0.2 * rng.random::<f32>();
    let s = config.size as f32;
    let plane = config.size * config.size;
    let start = out.len();
    out.resize(start + config.channels * plane, 0);
    for y in 0..config.size {
        for x in 0..config.size {
            let t = (x as f32 * p.dir.0 + y as f32 * p.dir.1) / s;
            let wave = (std::f32::consts::TAU * p.freq * t + phase).cos();
            for c in 0..config.channels {
                let colour = if config.channels == 3 {
                    p.colour[c]
                } else {
                    1.0
                };
                let v = brightness + contrast * colour * wave + noise(&mut rng, 0.08);
                out[start + c * plane + y * config.size + x] =
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

/// Generates the dataset described by `config`.
pub fn generate(config: &SyntheticConfig) -> Result<Dataset> {
    if config.channels != 1 && config.channels != 3 {
        return Err(Error::Invalid(format!(
            "synthetic: channels must be 1 or 3, got {}",
            config.channels
        )));
    }
    if config.classes == 0 || config.samples == 0 || config.size == 0 {
        return Err(Error::Invalid(format!(
            "synthetic: samples, classes and size must be >= 1, got {config:?}"
        )));
    }
    let bytes = config
        .samples
        .checked_mul(config.channels * config.size * config.size)
        .filter(|b| *b <= 1 << 32)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "synthetic: {} samples of {}x{} are too many bytes to hold",
                config.samples, config.size, config.size
            ))
        })?;
    let protos: Vec<Prototype> = (0..config.classes)
        .map(|k| prototype(config.seed, k, config.classes))
        .collect();
    let mut pixels = Vec::with_capacity(bytes);
    for i in 0..config.samples {
        sample(config, &protos, i, &mut pixels);
    }
    let labels = (0..config.samples)
        .map(|i| (i % config.classes) as i64)
        .collect();
    Dataset::from_memory(
        "synthetic",
        format!(
            "generated (seed {}, {} split)",
            config.seed,
            if config.train { "train" } else { "test" }
        ),
        pixels,
        [config.channels, config.size, config.size],
        labels,
        numbered_classes(config.classes),
    )
}
