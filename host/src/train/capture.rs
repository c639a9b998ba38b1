//! A ResNet training step recorded once as a device graph and replayed: whether the replay
//! computes what running the step computes, and how much faster it goes.
//!
//! The step is a recipe's step without the script: a ResNet (the online network) and its EMA
//! copy (the target) both see the step's batch (four batches in turn); the loss pulls the
//! online output towards a fixed target and towards the target network's output; then the
//! recipes' own update path runs, LARS over the network's parameter vector ([`Optimizer`])
//! and the EMA of the target ([`SharedNet::update_momentum`]). Written in Rust rather than
//! Rhai, since a replay skips the host entirely: it stands in for host code that does the same
//! thing every step. This is what `sslhost gpu-selftest` measures before a recipe's step is
//! captured (docs/PERFORMANCE.md).
//!
//! burn-autodiff cannot capture (its graph type is `GraphUnsupported`), so the capture is
//! taken on the device without autodiff: the autodiff layer's kernels run on that device's
//! stream, and the recording sees them. A replay reads and writes the buffers the recording
//! used, so the probe runs under the kernel policy's `capture` (its eager runs too, so that
//! both run the same kernels). There the optimiser, the EMA and batch norm write into the
//! buffers they read ([`crate::kernels::views::write_into`]), and the batch, the learning rate
//! and the EMA rate, which change every step here as under a schedule, are written into
//! theirs before each run ([`crate::kernels::views::DeviceInput`]). After the replays the
//! running statistics are compared with those of as many eager runs, as evaluation reads them.
//! Where the backend has no graphs (burn-flex, cubecl's CPU runtime), or refuses the capture
//! (a host wait inside the step, such as cuDNN's `sync` ordering), the step runs eagerly
//! instead, and the report says why.

use std::time::Instant;

use burn::backend::{Backend, Dispatch};
use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};
use crate::kernels::views::DeviceInput;
use crate::models::SharedNet;
use crate::models::resnet::ResNetConfig;
use crate::optim::{LarsConfig, Optimizer, Rule};
use crate::tensor::{BinaryOp, DynTensor, HostRng};

/// Runs of the step before the recording, as burn's own `capture` does: the first builds and
/// tunes fused kernels, the later ones fill the memory pool with the buffers the recording must
/// reuse (nothing may be allocated while it records).
pub const WARMUP: usize = 3;

/// Batches the step takes in turn, one a run.
pub const BATCHES: usize = 4;

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
    /// The learning rate at the first step; it falls by a hundredth of itself a step.
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
            lr: 0.05,
            seed: 0,
        }
    }

    /// The learning rate of run `k` of the step (a schedule, so a replay that kept the
    /// recording's rate would differ).
    fn lr_at(&self, k: usize) -> f64 {
        self.lr * (1.0 - 0.01 * k as f64).max(0.01)
    }

    /// The EMA rate of run `k`.
    fn momentum_at(k: usize) -> f64 {
        (0.9 + 0.002 * k as f64).min(0.999)
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
    /// Launches inside the recording that bind the buffers of cuDNN's calls, so that the graph
    /// keeps them (`gpu_kernels::hold`): one a cuDNN call, none without cuDNN.
    pub bound: u64,
    /// The largest difference between both networks' batch-norm running statistics after the
    /// checked replays and after as many runs of the step, relative to the largest statistic.
    pub statistics_difference: f32,
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

    /// Whether the replayed losses and running statistics are the eager ones: to the bit
    /// without a graph (the same kernels run), within `tolerance` of each other with one.
    pub fn matches(&self, tolerance: f32) -> bool {
        let d = self
            .max_relative_difference()
            .max(self.statistics_difference);
        if self.captured {
            d <= tolerance
        } else {
            d == 0.0
        }
    }
}

/// The step's state: everything a replay reads and writes stays where the recording saw it.
struct Step {
    config: ProbeConfig,
    online: SharedNet,
    target: SharedNet,
    opt: Optimizer,
    /// The batches, in turn.
    batches: Vec<Vec<f32>>,
    /// This run's batch, where the step reads it.
    x: DeviceInput<4>,
    y: DynTensor,
    /// Runs of the step so far (the schedules' step).
    k: usize,
}

impl Step {
    fn new(config: &ProbeConfig, device: &Device) -> Result<Self> {
        let mut rng = HostRng::new(config.seed);
        let mut resnet = ResNetConfig::new(18);
        resnet.cifar_stem = true;
        resnet.widths = config.widths;
        let online = SharedNet::resnet(&resnet, &mut rng, device)?;
        let target = online.momentum_copy();
        let lars = LarsConfig {
            weight_decay: 1e-5,
            exclude_bias_and_norm: true,
            ..LarsConfig::default()
        };
        let opt = Optimizer::new(Rule::Lars(lars), vec![online.clone()])?;
        let (n, side) = (config.batch, config.side);
        let batches: Vec<Vec<f32>> = (0..BATCHES)
            .map(|_| rng.normal_vec(n * 3 * side * side, 1.0))
            .collect();
        let x = DeviceInput::new(batches[0].clone(), [n, 3, side, side], device)?;
        let features = config.widths[3];
        let y = DynTensor::from_vec(rng.normal_vec(n * features, 1.0), &[n, features], device)?;
        Ok(Step {
            config: config.clone(),
            online,
            target,
            opt,
            batches,
            x,
            y,
            k: 0,
        })
    }

    /// Writes the next run's batch, learning rate and EMA rate where the step reads them.
    fn stage(&mut self) -> Result<()> {
        self.x.set(self.batches[self.k % BATCHES].clone())?;
        self.opt.stage(self.config.lr_at(self.k))?;
        SharedNet::stage_momentum(&self.target, ProbeConfig::momentum_at(self.k))
    }

    /// The step at the staged rates, reading nothing back: its loss `[1]`, without autodiff.
    fn body(&mut self) -> Result<Tensor<1>> {
        let x = DynTensor::from_float(self.x.tensor().autodiff());
        let h = self.online.forward(&x)?;
        let z = self.target.forward(&x)?.detach();
        let squared = |a: &DynTensor, b: &DynTensor| a.binary(b, BinaryOp::Sub)?.pow(2.0)?.mean();
        let loss = squared(&h, &self.y)?.binary(&squared(&h, &z)?, BinaryOp::Add)?;
        self.opt.step_staged(&loss)?;
        SharedNet::mix_momentum(&self.online, &self.target)?;
        self.k += 1;
        Ok(loss.float4("capture probe")?.inner().reshape([1]))
    }

    fn run(&mut self) -> Result<Tensor<1>> {
        self.stage()?;
        self.body()
    }

    /// Both networks' batch-norm running statistics, end to end (reads the device).
    fn statistics(&self) -> Result<Vec<f32>> {
        let mut values = Vec::new();
        for t in self.tensors(crate::models::params::is_buffer) {
            values.extend(t.to_f64_vec()?.into_iter().map(|v| v as f32));
        }
        Ok(values)
    }

    /// Handles to both networks' parameters and buffers whose names `pick` takes, as they
    /// are now.
    fn tensors(&self, pick: fn(&str) -> bool) -> Vec<DynTensor> {
        let mut kept = Vec::new();
        for net in [&self.online, &self.target] {
            net.visit(&mut |name, t| {
                if pick(name) {
                    kept.push(t);
                }
            });
        }
        kept
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

    // The policy a recording needs, for the eager runs too: the writes in place change how
    // fusion groups the ops around them (the last bits of a result), and the runs that stand
    // in for replays without a graph must match the eager ones to the bit.
    let _recording = RecordingPolicy::install();
    let mut eager = Vec::new();
    // The statistics after the last two runs: after as many runs as precede the end of the
    // replays with a graph, and without one.
    let mut eager_statistics = Vec::new();
    let mut step = Step::new(config, device)?;
    let runs = WARMUP + 1 + config.checked;
    for i in 0..runs {
        eager.push(read(step.run()?)?);
        if i + 2 >= runs {
            eager_statistics.push(step.statistics()?);
        }
    }
    let start = Instant::now();
    for _ in 0..config.timed {
        drop(step.run()?);
    }
    sync(device)?;
    let eager_ms = start.elapsed().as_secs_f64() * 1e3 / config.timed.max(1) as f64;
    drop(step);

    // The same device's stream, without autodiff's refusal of graphs.
    let inner_device = device.clone().without_autodiff();
    let inner = inner_device.as_dispatch();
    let mut step = Step::new(config, device)?;
    let start = Instant::now();
    // cuDNN's ordering is known by now: the eager runs above called it.
    let mut refused = match crate::kernels::gpu_kernels::graph_refusal(device) {
        Some(why) => Some(graph_error("preparing the capture", why)),
        None => Dispatch::graph_prepare(inner)
            .err()
            .map(|e| graph_error("preparing the capture", e)),
    };
    for _ in 0..WARMUP {
        let loss = step.run()?;
        sync(device)?;
        drop(loss);
    }
    let mut loss: Option<Tensor<1>> = None;
    let mut graph = None;
    let mut bound = 0;
    // The tensors as the recording finds them, held through the replays, which read their
    // buffers: under `capture` the networks keep writing into the same ones, and these
    // handles keep them should a network let go of one.
    let recorded_from = step.tensors(|_| true);
    if refused.is_none() {
        step.stage()?;
        match Dispatch::graph_start_capture(inner) {
            Ok(()) => {
                let ((recorded, stopped), held) = crate::kernels::gpu_kernels::recorded(|| {
                    let recorded = step.body();
                    (recorded, Dispatch::graph_stop_capture(inner))
                });
                bound = held;
                match (recorded, stopped) {
                    (Ok(l), Ok(g)) => (loss, graph) = (Some(l), Some(g)),
                    // The recorded launches never run, and the buffers they were to write
                    // stay marked as failed: the step cannot go on from here.
                    (Err(e), _) => {
                        return Err(Error::Other(format!(
                            "capture probe: recording the step: {e}"
                        )));
                    }
                    (_, Err(e)) => {
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
                // The staged rates go to the run below that stands in for the recording.
                step.body()?;
            }
        }
    } else {
        step.run()?;
    }
    // A recording runs nothing; without one, the step ran once in its place (above), so that
    // the replays below continue the eager sequence at the same step either way.
    let offset = if graph.is_some() { WARMUP } else { WARMUP + 1 };
    let capture_seconds = start.elapsed().as_secs_f64();

    let replay = |step: &mut Step| -> Result<Tensor<1>> {
        match (&graph, &loss) {
            (Some(g), Some(loss)) => {
                // This replay's rates, written where the recording read them.
                step.stage()?;
                // SAFETY: every buffer the recording read or wrote outlives the replays:
                // the parameter, state, statistics and rate buffers, input and target (held by
                // `step`, and the networks' tensors by `recorded_from` too), the loss, and the
                // step's intermediates (the memory pool the capture pinned).
                // Nothing else runs on this device meanwhile, and every read of `loss` goes
                // through the same client.
                unsafe { Dispatch::graph_replay(inner, g) }
                    .map_err(|e| Error::Other(format!("capture probe: replay: {e:?}")))?;
                step.k += 1;
                Ok(loss.clone())
            }
            _ => step.run(),
        }
    };
    let mut replayed = Vec::new();
    for _ in 0..config.checked {
        replayed.push(read(replay(&mut step)?)?);
    }
    let statistics_difference = difference(
        &step.statistics()?,
        &eager_statistics[offset + config.checked + 1 - runs],
    );
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
        bound,
        statistics_difference,
    })
}

/// The largest difference between `got` and `want`, relative to the largest of `want`
/// (infinite when their lengths differ).
fn difference(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() {
        return f32::INFINITY;
    }
    let scale = want.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0.0, f32::max)
}

/// The kernel policy with `capture` on, until dropped.
struct RecordingPolicy(Option<crate::kernels::KernelPolicy>);

impl RecordingPolicy {
    fn install() -> Self {
        let before = crate::kernels::installed();
        crate::kernels::install(crate::kernels::current().with_capture(true));
        RecordingPolicy(before)
    }
}

impl Drop for RecordingPolicy {
    fn drop(&mut self) {
        crate::kernels::restore(self.0);
    }
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
            lr: 0.05,
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
        // The running statistics, written in place under `capture`, are those of the same
        // number of eager runs.
        assert_eq!(report.statistics_difference, 0.0);
        assert!(report.matches(0.0));
        // The update lands: each batch's loss falls from one turn to the next.
        let losses = &report.eager;
        assert!(
            losses.windows(BATCHES + 1).all(|w| w[BATCHES] < w[0]),
            "{losses:?}"
        );
        assert!(report.eager_ms > 0.0 && report.replay_ms > 0.0);
        assert_eq!(report.bound, 0, "nothing recorded, nothing bound");
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
        // Running statistics that differ are told as well.
        report.replayed[1] /= 1.001;
        report.statistics_difference = 1e-3;
        assert!(report.matches(1e-2));
        assert!(!report.matches(1e-4));
        report.captured = false;
        assert!(!report.matches(1e-2));
    }

    #[test]
    fn differences_are_relative_to_the_largest_value() {
        assert_eq!(difference(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(difference(&[1.5, 4.0], &[1.0, 4.0]), 0.125);
        assert_eq!(difference(&[1.0], &[1.0, 2.0]), f32::INFINITY);
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
