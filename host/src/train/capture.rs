//! A ResNet training step recorded once as a device graph and replayed: whether the replay
//! computes what running the step computes, and how much faster it goes.
//!
//! The step is forward, loss, backward and an SGD update of the network's parameter vector
//! (`models::flat`), written in Rust rather than Rhai: a replay skips the host entirely, so it
//! can only stand in for host code that does the same thing every step. This is what `sslhost
//! gpu-selftest` measures before a recipe's step is captured (see docs/PERFORMANCE.md).
//!
//! burn-autodiff cannot capture (its graph type is `GraphUnsupported`), so the capture is
//! taken on the device without autodiff: the autodiff layer's kernels run on that device's
//! stream, and the recording sees them. A replay reads and writes the buffers the recording
//! used, so the step keeps everything it carries over in place: the input and target are
//! fixed, and the update is written over the parameter vector's own buffer
//! ([`crate::kernels::views::write_into`]), which the parameters are views of. The batch-norm
//! running statistics are not carried over (each replay updates the ones the recording read;
//! the loss does not depend on them). Where the backend has no graphs (burn-flex, cubecl's CPU
//! runtime), or refuses the capture (a host wait inside the step, such as cuDNN's `sync`
//! ordering), the step runs eagerly instead, and the report says why.

use std::time::Instant;

use burn::backend::{Backend, Dispatch};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::models::flat::{self, FlatLayout};
use crate::models::resnet::{ResNet, ResNetConfig};
use crate::tensor::HostRng;

/// Runs of the step before the recording, as burn's own `capture` does: the first builds and
/// tunes fused kernels, the later ones fill the memory pool with the buffers the recording must
/// reuse (nothing may be allocated while it records).
pub const WARMUP: usize = 3;

/// What the probe trains and how long it checks and times.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Images a step.
    pub batch: usize,
    /// The square images' side (3 channels).
    pub side: usize,
    /// The ResNet-18's stage widths (CIFAR stem).
    pub widths: [usize; 4],
    /// Steps whose losses are compared, replayed against eager.
    pub checked: usize,
    /// Steps timed each way.
    pub timed: usize,
    /// The SGD step size.
    pub lr: f64,
    /// Seeds the network, input and target.
    pub seed: u64,
}

impl ProbeConfig {
    /// ResNet-18 with the CIFAR stem at `batch` on 32x32 images, as `sslhost bench` times it.
    pub fn resnet18(batch: usize) -> Self {
        ProbeConfig {
            batch,
            side: 32,
            widths: [64, 128, 256, 512],
            checked: 8,
            timed: 20,
            lr: 0.01,
            seed: 0,
        }
    }
}

/// What the probe found.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Whether the step was recorded as a device graph (else it ran eagerly throughout).
    pub captured: bool,
    /// Why it was not, when it was not.
    pub refused: Option<String>,
    /// The losses of running the step, from the first run on.
    pub eager: Vec<f32>,
    /// The losses of the replays (or, without a graph, of the runs that stand in for them),
    /// which continue the eager sequence at [`ProbeReport::offset`].
    pub replayed: Vec<f32>,
    /// How many runs of the step precede the first replay: the warm-up runs, and the
    /// recording when it ran eagerly.
    pub offset: usize,
    /// Seconds the warm-up and the recording took.
    pub capture_seconds: f64,
    /// Milliseconds a step, eager.
    pub eager_ms: f64,
    /// Milliseconds a step, replayed.
    pub replay_ms: f64,
}

impl ProbeReport {
    /// The largest difference between a replayed loss and the eager loss of the same step,
    /// relative to the eager loss.
    pub fn max_relative_difference(&self) -> f32 {
        self.replayed
            .iter()
            .zip(&self.eager[self.offset..])
            .map(|(r, e)| (r - e).abs() / e.abs().max(f32::MIN_POSITIVE))
            .fold(0.0, f32::max)
    }

    /// Whether the replayed losses are the eager ones: to the bit without a graph (the same
    /// kernels run), within `tolerance` of each other with one.
    pub fn matches(&self, tolerance: f32) -> bool {
        let d = self.max_relative_difference();
        if self.captured {
            d <= tolerance
        } else {
            d == 0.0
        }
    }
}

/// The step's state: everything a replay reads and writes stays where the recording saw it.
struct Step {
    net: ResNet,
    layout: FlatLayout,
    /// The parameters as one vector, without autodiff; the network's parameters are its views.
    params: Tensor<1>,
    x: Tensor<4>,
    target: Tensor<2>,
    lr: f64,
}

impl Step {
    fn new(config: &ProbeConfig, device: &Device) -> Result<Self> {
        let mut rng = HostRng::new(config.seed);
        let mut resnet = ResNetConfig::new(18);
        resnet.cifar_stem = true;
        resnet.widths = config.widths;
        let net = resnet.init(&mut rng, device)?;
        let layout = FlatLayout::of(&net);
        let params = layout.gather(flat::values(&net, false), device);
        let net = flat::write(net, &layout, &params);
        let (n, side, features) = (config.batch, config.side, net.features());
        let x = rng.normal_vec(n * 3 * side * side, 1.0);
        let x = Tensor::<4>::from_data(TensorData::new(x, [n, 3, side, side]), device);
        let target = rng.normal_vec(n * features, 1.0);
        let target = Tensor::<2>::from_data(TensorData::new(target, [n, features]), device);
        Ok(Step {
            net,
            layout,
            params,
            x,
            target,
            lr: config.lr,
        })
    }

    /// One step; its loss `[1]`, without autodiff.
    fn run(&mut self) -> Tensor<1> {
        let y = self.net.forward(self.x.clone());
        let loss = (y - self.target.clone()).powi_scalar(2).mean();
        let grads = loss.backward();
        let g = self
            .layout
            .gather_present(flat::gradients(&self.net, &grads), &self.params.device());
        let updated = self.params.clone() - g.mul_scalar(self.lr);
        self.params = crate::kernels::views::write_into(&self.params, updated);
        // Views of the vector as it now is: the same buffer on the GPU path, where this
        // launches nothing.
        self.net = flat::write(self.net.clone(), &self.layout, &self.params);
        loss.inner()
    }
}

fn read(loss: Tensor<1>) -> Result<f32> {
    loss.into_data()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| Error::Other("capture probe: the loss did not read back".into()))
}

/// `what` failed: `e`, on one line.
fn graph_error(what: &str, e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    format!(
        "{what}: {}",
        e.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// Runs the probe on `device` (with autodiff): `checked` + [`WARMUP`] + 1 eager steps for the
/// reference, `timed` more timed, then the same network afresh recorded and replayed.
pub fn probe(config: &ProbeConfig, device: &Device) -> Result<ProbeReport> {
    if config.batch < 2 || config.side < 8 || config.widths.contains(&0) {
        return Err(Error::Invalid(format!(
            "capture probe needs a batch of 2 or more, images of 8 px or more and positive \
             widths, got batch {}, side {}, widths {:?}",
            config.batch, config.side, config.widths
        )));
    }
    let sync = |device: &Device| {
        device
            .sync()
            .map_err(|e| Error::Other(format!("capture probe: {e:?}")))
    };

    let mut eager = Vec::new();
    let mut step = Step::new(config, device)?;
    for _ in 0..WARMUP + 1 + config.checked {
        eager.push(read(step.run())?);
    }
    let start = Instant::now();
    for _ in 0..config.timed {
        drop(step.run());
    }
    sync(device)?;
    let eager_ms = start.elapsed().as_secs_f64() * 1e3 / config.timed.max(1) as f64;
    drop(step);

    // The same device's stream, without autodiff's refusal of graphs.
    let inner_device = device.clone().without_autodiff();
    let inner = inner_device.as_dispatch();
    let mut step = Step::new(config, device)?;
    let start = Instant::now();
    let mut refused = Dispatch::graph_prepare(inner)
        .err()
        .map(|e| graph_error("preparing the capture", e));
    for _ in 0..WARMUP {
        let loss = step.run();
        sync(device)?;
        drop(loss);
    }
    let mut loss: Option<Tensor<1>> = None;
    let mut graph = None;
    // The network as the recording finds it: each run replaces the batch-norm running
    // statistics with new tensors, and the replays read the ones the recording read.
    let recorded_from = step.net.clone();
    if refused.is_none() {
        match Dispatch::graph_start_capture(inner) {
            Ok(()) => {
                loss = Some(step.run());
                match Dispatch::graph_stop_capture(inner) {
                    Ok(g) => graph = Some(g),
                    // The recorded launches never run, and the buffers they were to write
                    // stay marked as failed: the step cannot go on from here.
                    Err(e) => {
                        return Err(Error::Other(format!(
                            "capture probe: {}",
                            graph_error("recording the step", e)
                        )));
                    }
                }
            }
            Err(e) => {
                refused = Some(graph_error("starting the capture", e));
                // Leaves the prepared state, where there was one.
                let _ = Dispatch::graph_stop_capture(inner);
            }
        }
    }
    // A recording runs nothing; without one, the step runs once in its place, so that the
    // replays below continue the eager sequence at the same step either way.
    let offset = match graph {
        Some(_) => WARMUP,
        None => {
            read(step.run())?;
            WARMUP + 1
        }
    };
    let capture_seconds = start.elapsed().as_secs_f64();

    let replay = |step: &mut Step| -> Result<Tensor<1>> {
        match (&graph, &loss) {
            (Some(g), Some(loss)) => {
                // SAFETY: every buffer the recording read or wrote outlives the replays:
                // the parameter vector, input and target (held by `step`), the running
                // statistics it read (`recorded_from`) and wrote (`step`), the loss, and the
                // step's intermediates (the memory pool the capture pinned). Nothing else runs
                // on this device meanwhile, and every read of `loss` goes through the same
                // client.
                unsafe { Dispatch::graph_replay(inner, g) }
                    .map_err(|e| Error::Other(format!("capture probe: replay: {e:?}")))?;
                Ok(loss.clone())
            }
            _ => Ok(step.run()),
        }
    };
    let mut replayed = Vec::new();
    for _ in 0..config.checked {
        replayed.push(read(replay(&mut step)?)?);
    }
    let start = Instant::now();
    for _ in 0..config.timed {
        drop(replay(&mut step)?);
    }
    sync(device)?;
    let replay_ms = start.elapsed().as_secs_f64() * 1e3 / config.timed.max(1) as f64;
    drop(recorded_from);
    Ok(ProbeReport {
        captured: graph.is_some(),
        refused,
        eager,
        replayed,
        offset,
        capture_seconds,
        eager_ms,
        replay_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ProbeConfig {
        ProbeConfig {
            batch: 8,
            side: 16,
            widths: [4, 4, 8, 8],
            checked: 3,
            timed: 1,
            lr: 0.01,
            seed: 3,
        }
    }

    #[test]
    fn without_graphs_the_probe_runs_the_step_eagerly_and_its_losses_continue_the_eager_ones() {
        let report = probe(&small(), &crate::device::cpu()).unwrap();
        assert!(!report.captured);
        let why = report.refused.as_deref().unwrap();
        assert!(why.starts_with("starting the capture"), "{why}");
        assert_eq!(report.offset, WARMUP + 1);
        assert_eq!(report.eager.len(), WARMUP + 1 + 3);
        assert_eq!(report.replayed, report.eager[report.offset..]);
        assert_eq!(report.max_relative_difference(), 0.0);
        assert!(report.matches(0.0));
        // The update lands: the loss falls at every step.
        let losses = &report.eager;
        assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
        assert!(report.eager_ms > 0.0 && report.replay_ms > 0.0);
    }

    #[test]
    fn a_replay_that_differs_from_the_eager_step_is_told() {
        let mut report = probe(&small(), &crate::device::cpu()).unwrap();
        report.replayed[1] *= 1.001;
        assert!(
            !report.matches(1e-2),
            "without a graph only the same bits match"
        );
        report.captured = true;
        assert!(report.matches(1e-2));
        assert!(!report.matches(1e-4));
        assert!((report.max_relative_difference() - 1e-3).abs() < 1e-5);
    }

    #[test]
    fn the_probe_refuses_a_batch_too_small_for_batch_norm() {
        let config = ProbeConfig {
            batch: 1,
            ..small()
        };
        let err = probe(&config, &crate::device::cpu())
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch of 2 or more"), "{err}");
    }
}
