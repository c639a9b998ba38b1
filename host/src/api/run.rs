//! The training loop's spine in scripts: `for b in steps(loader, epochs) { .. }`.
//!
//! `steps` streams batches across epochs starting at the run's first step (0, or the step a
//! resumed run continues from), marks each step boundary for live functions and reports
//! progress (a bar on a terminal, else the facts in `log(..)` lines).

use std::sync::{Arc, Mutex};

use rhai::plugin::*;

use crate::api::args::{RhaiResult, to_rhai};
use crate::data::{Batch, Steps};
use crate::error::Error;
use crate::session;
use crate::train::progress::{self, Progress};

/// The batches of a whole run as a script value: `for b in steps(loader, epochs)`.
#[derive(Clone)]
pub struct StepStream {
    inner: Arc<Mutex<StreamState>>,
}

/// A stream's batches and, once it started, its progress (cleared when the stream ends,
/// fails or is dropped).
struct StreamState {
    steps: Steps,
    progress: Option<Progress>,
    started: bool,
    /// Why the stream could not start, reported by its first `next` (a `for` loop over a
    /// value has no other way to fail).
    failed: Option<Error>,
}

impl StreamState {
    /// Ends the progress display: with a summary line when the stream ran to its end.
    fn end_progress(&mut self, completed: bool) {
        if let Some(mut p) = self.progress.take() {
            if completed {
                p.done();
            } else {
                p.clear();
            }
        }
    }
}

impl Iterator for StepStream {
    type Item = RhaiResult<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(_) => return Some(Err(to_rhai(Error::Other("steps: poisoned".into())))),
        };
        let state = &mut *guard;
        if let Some(e) = state.failed.take() {
            return Some(Err(to_rhai(e)));
        }
        if crate::train::current::interrupted() {
            state.end_progress(false);
            return Some(Err(to_rhai(stop_for_interrupt())));
        }
        if !state.started {
            state.started = true;
            state.progress = Some(Progress::new(
                state.steps.start(),
                state.steps.end(),
                state.steps.epochs(),
                state.steps.steps_per_epoch(),
                progress::should_draw(session::with(|s| s.check)),
            ));
        }
        let next = crate::guard::catch(|| state.steps.next().transpose());
        match next.transpose() {
            None => {
                state.end_progress(true);
                // The last step's replayed work runs now; its failure is the loop's.
                crate::tensor::tape::end_steps()
                    .err()
                    .map(|e| Err(to_rhai(e)))
            }
            Some(Err(e)) => {
                state.end_progress(false);
                // The loader's error is the one to report.
                let _ = crate::tensor::tape::end_steps();
                Some(Err(to_rhai(e)))
            }
            Some(Ok(b)) => {
                if let Err(e) = begin_step(b.step) {
                    state.end_progress(false);
                    return Some(Err(to_rhai(e)));
                }
                if let Some(p) = &mut state.progress {
                    let size = b.images.shape().first().copied().unwrap_or(0);
                    p.batch(b.step, b.epoch, size);
                }
                Some(Ok(b))
            }
        }
    }
}

/// Ctrl-C at a step boundary: the step before ends first (its replayed work runs, or the
/// checkpoint would hold the state before its update), then the tracked state is written.
fn stop_for_interrupt() -> Error {
    match crate::tensor::tape::end_steps() {
        Ok(()) => crate::train::current::stop_for_interrupt(),
        Err(e) => e,
    }
}

/// Step `step` of the run begins: the tape's step, and the step that live functions (which
/// may swap before their first call in it) and a failure's checkpoint go by. Before a step
/// that a replay may record as a device graph, the tracked state is checkpointed: a failed
/// capture loses it on the device.
fn begin_step(step: u64) -> crate::error::Result<()> {
    crate::tensor::tape::end_steps()?;
    if crate::tensor::tape::captures_next() {
        crate::train::current::checkpoint_before_capture();
    }
    crate::tensor::tape::begin_step(step)?;
    session::with(|s| {
        s.step = Some(step);
        s.step_rng = Some(s.rng.state());
        s.step_updated = false;
    });
    Ok(())
}

/// The step numbers of a loop that makes its own inputs: `for step in step_numbers(n)`.
#[derive(Clone)]
pub struct StepNumbers {
    next: u64,
    end: u64,
    /// Whether the last step has been ended.
    ended: bool,
}

impl Iterator for StepNumbers {
    type Item = RhaiResult<i64>;

    fn next(&mut self) -> Option<Self::Item> {
        if crate::train::current::interrupted() {
            return Some(Err(to_rhai(stop_for_interrupt())));
        }
        if self.next >= self.end {
            if std::mem::replace(&mut self.ended, true) {
                return None;
            }
            // The last step's replayed work runs now; its failure is the loop's.
            return crate::tensor::tape::end_steps()
                .err()
                .map(|e| Err(to_rhai(e)));
        }
        let step = self.next;
        self.next += 1;
        Some(begin_step(step).map(|()| step as i64).map_err(to_rhai))
    }
}

/// Registers the iterators of `StepStream` and `StepNumbers`, which an export module cannot
/// declare.
pub fn register_iterators(engine: &mut Engine) {
    engine.register_iterator_result::<StepNumbers, i64>();
    engine.register_iterator_result::<StepStream, Batch>();
    engine.register_iterator_result::<crate::data::Loader, Batch>();
}

/// The training loop.
#[export_module]
pub mod run_api {
    use rhai::Map;

    use crate::api::args::{RhaiResult, count, run};
    use crate::data::{Dataset, Loader};
    use crate::error::Error;
    use crate::models::SharedNet;
    use crate::session;

    use super::{StepStream, knn, transform_option};
    use crate::tensor::DynTensor;

    /// The stream of a run's steps.
    pub type Steps = StepStream;

    /// Batches for `epochs` epochs, from the run's first step on (a resumed run continues
    /// where its checkpoint stopped). `b.step` counts batches from the start of the run,
    /// `b.epoch` the epochs. On a terminal a progress bar shows the epoch, the step, the
    /// last logged loss, images per second and the time left.
    ///
    /// ```rhai
    /// for b in steps(loader, cfg.epochs) {
    ///     let loss = objective(b.images);
    ///     opt.step(loss, live("lr", b.step, total));
    /// }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn steps(loader: &mut Loader, epochs: i64) -> RhaiResult<Steps> {
        run(|| super::step_stream(loader, epochs, 0))
    }

    /// Like `steps(loader, epochs)`, ending after step `max_steps - 1` of the run (at most
    /// `max_steps` steps from step 0; `0` means no limit). Handy for short trials of a long
    /// schedule: `total` stays what the schedule expects.
    ///
    /// ```rhai
    /// let total = cfg.epochs * loader.len;
    /// for b in steps(loader, cfg.epochs, cfg.max_steps) {
    ///     opt.step(objective(b.images), live("lr", b.step, total));
    /// }
    /// ```
    #[rhai_fn(name = "steps", return_raw)]
    pub fn steps_at_most(loader: &mut Loader, epochs: i64, max_steps: i64) -> RhaiResult<Steps> {
        run(|| {
            let max_steps = count(max_steps, "max_steps")? as u64;
            super::step_stream(loader, epochs, max_steps)
        })
    }

    /// The step numbers `start..n`, for a loop that makes its own inputs (a benchmark, an
    /// objective on generated data): each step begins as a step of `steps(loader, epochs)`
    /// does (live functions may swap, `--capture` tapes it), without data or a progress bar.
    /// `start` is the run's first step (0, or where a resumed run continues).
    ///
    /// ```rhai
    /// let x = rand([8, 4]);
    /// for step in step_numbers(3) {
    ///     let loss = (x * (step + 1)).mean();
    /// }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn step_numbers(n: i64) -> RhaiResult<super::StepNumbers> {
        run(|| {
            let end = count(n, "step_numbers")? as u64;
            let start = session::with(|s| s.start_step);
            let end = super::check_cap(start).map_or(end, |cap| end.min(cap));
            crate::live::set_end_step(end);
            Ok(super::StepNumbers {
                next: start,
                end,
                ended: false,
            })
        })
    }

    /// Records metrics for `step`: appended to `metrics.jsonl` in the run directory (created
    /// on first use, under `runs/`) and printed. Values may be numbers, strings, bools or
    /// one-element tensors (read with `item()`: a device sync).
    ///
    /// ```rhai
    /// if b.step % 50 == 0 { log(b.step, #{ loss: loss, lr: rate }); }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn log(step: i64, values: Map) -> RhaiResult<()> {
        run(|| {
            let step = count(step, "log step")? as u64;
            let json = super::metrics_json(&values)?;
            if let Some(created) = crate::train::current::with_dir(|d| {
                d.log(step, &json);
                Ok(())
            }) {
                created?;
            }
            if let Some(loss) = json.get("loss").and_then(serde_json::Value::as_f64) {
                crate::train::progress::note_loss(loss);
            }
            // About four significant digits here; metrics.jsonl keeps every digit.
            let show = |v: &serde_json::Value| match v.as_f64() {
                Some(x) if v.is_f64() => crate::train::curves::number(x),
                _ => v.to_string(),
            };
            // The raw pixels' kNN goes beside the encoder's: `knn_top1 0.81 (raw pixels 0.79)`.
            let anchor = json
                .get("knn_raw_pixels")
                .filter(|_| json.contains_key("knn_top1"));
            let shown: Vec<String> = json
                .iter()
                .filter(|(k, _)| anchor.is_none() || k.as_str() != "knn_raw_pixels")
                .map(|(k, v)| match (k.as_str(), anchor) {
                    ("knn_top1", Some(raw)) => {
                        format!("{k} {} (raw pixels {})", show(v), show(raw))
                    }
                    _ => format!("{k} {}", show(v)),
                })
                .collect();
            match crate::train::progress::status().describe() {
                Some(progress) => {
                    tracing::info!("step {step}: {} ({progress})", shown.join(", "))
                }
                None => tracing::info!("step {step}: {}", shown.join(", ")),
            }
            Ok(())
        })
    }

    /// Saves a checkpoint of the given networks and optimisers, with the step to continue
    /// from (the one after the current step) and the random generator's position, to
    /// `checkpoints/last.safetensors` in the run directory (atomically). Returns its path.
    ///
    /// ```rhai
    /// let state = #{ online: online, target: target, predictor: predictor, opt: opt };
    /// if (b.step + 1) % 500 == 0 { checkpoint(state); }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn checkpoint(items: Map) -> RhaiResult<String> {
        run(|| {
            crate::tensor::tape::barrier()?;
            let items = super::tracked_items(&items)?;
            crate::train::current::track(&items);
            if session::with(|s| s.check) {
                let path = crate::train::current::check_checkpoint(&items)?;
                return Ok(path.display().to_string());
            }
            match crate::train::current::save_checkpoint(&items) {
                Some(path) => Ok(path?.display().to_string()),
                None => Err(Error::Invalid(
                    "checkpoint: no run directory (only `sslhost run` creates one)".into(),
                )),
            }
        })
    }

    /// On a run started with `--resume RUN_DIR`: loads the networks and optimisers from the
    /// run's last checkpoint, restores the random generator and makes `steps(..)` continue at
    /// the saved step. On a fresh run it changes nothing. Returns the step the loop starts at.
    ///
    /// ```rhai
    /// let state = #{ online: online, target: target, predictor: predictor, opt: opt };
    /// resume(state);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn resume(items: Map) -> RhaiResult<i64> {
        run(|| {
            let items = super::tracked_items(&items)?;
            crate::train::current::track(&items);
            let (from, device, seed, force) =
                session::with(|s| (s.resume_from.clone(), s.device.clone(), s.seed, s.force));
            let Some(path) = from else {
                return Ok(0);
            };
            let loaded = crate::train::checkpoint::load(&path)?;
            if let Some(saved) = loaded.seed
                && saved != seed
            {
                let what = format!(
                    "the checkpoint's run has --seed {saved}, this one --seed {seed}: the data \
                     order would differ from the checkpoint's"
                );
                if !force {
                    return Err(Error::Invalid(format!(
                        "{what}; pass --seed {saved}, or --force to resume anyway"
                    )));
                }
                tracing::warn!("{what} (--force)");
            }
            loaded.restore(&items, &device)?;
            session::with(|s| {
                s.rng = crate::tensor::HostRng::from_state(&loaded.rng);
                s.start_step = loaded.next_step;
            });
            if let Some(continued) =
                crate::train::current::with_dir(|d| d.continue_at(loaded.next_step))
            {
                continued?;
            }
            tracing::info!(
                "resumed from {} at step {}",
                path.display(),
                loaded.next_step
            );
            Ok(loaded.next_step as i64)
        })
    }

    /// Weighted kNN top-1 accuracy of `encoder`'s embeddings: each `test` image votes with
    /// its `k` most cosine-similar `train` images weighted by `exp(sim / temperature)`.
    /// Options: `k` (200), `temperature` (0.1), `batch_size` (256), `transform` (applied to
    /// images before encoding, e.g. resize + normalize as in training). A copy of the encoder
    /// runs in evaluation mode, without autodiff; the encoder itself is untouched. Datasets
    /// without labels give `()` (which `log` leaves out), with one log line.
    ///
    /// ```rhai
    /// let acc = knn_accuracy(backbone, train_ds, test_ds, #{ k: 200, transform: eval_view });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn knn_accuracy(
        encoder: SharedNet,
        train: Dataset,
        test: Dataset,
        options: Map,
    ) -> RhaiResult<Dynamic> {
        run(|| {
            crate::tensor::tape::barrier()?;
            knn(Some(&encoder), &train, &test, &options)
        })
    }

    /// `encoder`'s features of every image of `ds`, in dataset order, computed as
    /// `knn_accuracy` computes them (an evaluation copy, no autodiff): `#{ features: [N, D],
    /// labels: [N] }` (no `labels` for a dataset without them). Options: `transform`,
    /// `batch_size` (256). For evaluations of one's own, such as the online probe's test
    /// accuracy (`probe_accuracy` in the stdlib).
    ///
    /// ```rhai
    /// let f = embed(backbone, test, #{ transform: eval_view });
    /// print(f.features.shape);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn embed(encoder: SharedNet, ds: Dataset, options: Map) -> RhaiResult<Map> {
        run(|| {
            crate::tensor::tape::barrier()?;
            let o =
                crate::api::args::Options::new(&options, "embed", &["batch_size", "transform"])?;
            let transform = transform_option(&options, "embed")?;
            let batch_size = o.usize("batch_size", 256)?;
            let (device, mut rng) = session::with(|s| (s.device.clone(), s.rng.clone()));
            let (f, y) = crate::train::knn::features(
                Some(&encoder),
                &ds,
                batch_size,
                transform.as_ref(),
                &device,
                &mut rng,
            )?;
            let mut m = Map::new();
            m.insert("features".into(), Dynamic::from(DynTensor::from_float(f)));
            if ds.labelled() {
                m.insert("labels".into(), Dynamic::from(DynTensor::from_int(y)));
            }
            Ok(m)
        })
    }

    /// Weighted kNN accuracy of the raw pixels (flattened): the anchor an encoder must beat.
    /// Computed once a run for the same splits and settings, then remembered.
    ///
    /// ```rhai
    /// let anchor = knn_accuracy(train_ds, test_ds, #{ k: 200 });
    /// ```
    #[rhai_fn(name = "knn_accuracy", return_raw)]
    pub fn knn_accuracy_pixels(train: Dataset, test: Dataset, options: Map) -> RhaiResult<Dynamic> {
        run(|| knn(None, &train, &test, &options))
    }
}

/// The stream of `steps(loader, epochs, max_steps)`.
fn step_stream(
    loader: &crate::data::Loader,
    epochs: i64,
    max_steps: u64,
) -> crate::error::Result<StepStream> {
    let epochs = crate::api::args::count(epochs, "epochs")? as u64;
    let (start, device) = session::with(|s| (s.start_step, s.device.clone()));
    let steps = loader
        .steps_on(epochs, start, &device)?
        .max_steps(max_steps);
    Ok(stream(steps))
}

/// The stream of `loader.epoch(e, start)`: the steps of epoch `e` from its batch `start` on.
pub fn epoch_stream(
    loader: &crate::data::Loader,
    epoch: u64,
    start: usize,
) -> crate::error::Result<StepStream> {
    let len = loader.len() as u64;
    if start as u64 > len {
        return Err(Error::Invalid(format!(
            "epoch: start batch {start} is out of range (an epoch has {len} batches)"
        )));
    }
    let device = session::device();
    let steps = loader.steps_on(epoch + 1, epoch * len + start as u64, &device)?;
    Ok(stream(steps))
}

/// Under `sslhost check`, where a loop from step `start` ends: a couple of real steps are
/// enough.
fn check_cap(start: u64) -> Option<u64> {
    session::with(|s| s.check).then_some(start + session::CHECK_STEPS)
}

/// A stream over `steps`, cut to a couple of steps under `sslhost check`.
fn stream(mut steps: Steps) -> StepStream {
    if let Some(cap) = check_cap(steps.start()) {
        steps = steps.max_steps(cap);
    }
    crate::live::set_end_step(steps.end());
    StepStream {
        inner: Arc::new(Mutex::new(StreamState {
            steps,
            progress: None,
            started: false,
            failed: None,
        })),
    }
}

/// `for b in loader { .. }`: the loader's next epoch (each loop over it one more, as with a
/// PyTorch loader), the same stream as `steps(..)`.
impl IntoIterator for crate::data::Loader {
    type Item = RhaiResult<Batch>;
    type IntoIter = StepStream;

    fn into_iter(self) -> StepStream {
        let epoch = self.next_epoch();
        epoch_stream(&self, epoch, 0).unwrap_or_else(|e| {
            // An empty stream that reports `e` when the loop asks for its first batch.
            let stream = stream(Steps::empty(&self, &session::device()));
            if let Ok(mut state) = stream.inner.lock() {
                state.failed = Some(e);
            }
            stream
        })
    }
}

/// kNN accuracy with the options of `knn_accuracy`, through the session's monitor.
fn knn(
    encoder: Option<&crate::models::SharedNet>,
    train: &crate::data::Dataset,
    test: &crate::data::Dataset,
    options: &rhai::Map,
) -> crate::error::Result<rhai::Dynamic> {
    use crate::train::knn::KnnConfig;
    let o = crate::api::args::Options::new(
        options,
        "knn_accuracy",
        &["k", "temperature", "batch_size", "transform"],
    )?;
    let d = KnnConfig::default();
    let config = KnnConfig {
        k: o.usize("k", d.k)?,
        temperature: o.number("temperature", d.temperature)?,
        batch_size: o.usize("batch_size", d.batch_size)?,
    };
    let transform = transform_option(options, "knn_accuracy")?;
    // Taken out of the session for the evaluation, so the session is not borrowed while it
    // runs (it can take seconds, and the code it calls may read the session).
    let (device, mut rng, mut monitor) =
        session::with(|s| (s.device.clone(), s.rng.clone(), std::mem::take(&mut s.knn)));
    let task = crate::train::knn::KnnTask {
        encoder,
        train,
        test,
        config: &config,
        transform: transform.as_ref(),
    };
    let accuracy = monitor.accuracy(task, &device, &mut rng);
    session::with(|s| s.knn = monitor);
    Ok(accuracy?.map_or(rhai::Dynamic::UNIT, rhai::Dynamic::from_float))
}

/// The `transform` option of `op`, if given.
fn transform_option(
    options: &rhai::Map,
    op: &str,
) -> crate::error::Result<Option<crate::augment::Transform>> {
    match options.get("transform") {
        None => Ok(None),
        Some(v) => v
            .clone()
            .try_cast::<crate::augment::Transform>()
            .map(Some)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{op}: option `transform` must be a transform, got {}",
                    v.type_name()
                ))
            }),
    }
}

/// The networks and optimisers of a checkpoint map, sorted by key.
fn tracked_items(
    items: &rhai::Map,
) -> crate::error::Result<Vec<(String, crate::train::checkpoint::Item)>> {
    use crate::train::checkpoint::Item;
    let mut out = Vec::new();
    for (k, v) in items {
        let item: Item = if let Some(net) = v.clone().try_cast::<crate::models::SharedNet>() {
            std::rc::Rc::new(net)
        } else if let Some(opt) = v.clone().try_cast::<crate::api::optim::OptimizerHandle>() {
            opt.shared()
        } else if let Some(q) = v
            .clone()
            .try_cast::<crate::api::models::models_api::Queue>()
        {
            q
        } else if let Some(s) = v
            .clone()
            .try_cast::<crate::api::tensor::tensor_api::State>()
        {
            s
        } else {
            return Err(Error::Invalid(format!(
                "checkpoint: `{k}` must be a network, an optimiser, a queue or a state tensor, got {}",
                v.type_name()
            )));
        };
        out.push((k.to_string(), item));
    }
    Ok(out)
}

/// Script metric values as JSON: numbers, strings, bools and one-element tensors.
fn metrics_json(
    values: &rhai::Map,
) -> crate::error::Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    for (k, v) in values {
        // `()`: nothing to log this time (a monitor skipped for want of labels).
        if v.is_unit() {
            continue;
        }
        let value = if let Ok(f) = v.as_float() {
            serde_json::json!(f)
        } else if let Ok(i) = v.as_int() {
            serde_json::json!(i)
        } else if let Ok(b) = v.as_bool() {
            serde_json::json!(b)
        } else if let Some(t) = v.clone().try_cast::<crate::tensor::DynTensor>() {
            serde_json::json!(crate::tensor::tape::resolve(&t)?.item()?)
        } else if v.is_string() {
            serde_json::json!(v.to_string())
        } else {
            return Err(Error::Invalid(format!(
                "log: `{k}` must be a number, string, bool or one-element tensor, got {}",
                v.type_name()
            )));
        };
        out.insert(k.to_string(), value);
    }
    Ok(out)
}
