//! The loader: seeded per-epoch shuffling, batches prepared on background threads.
//!
//! The order of an epoch is a pure function of `(seed, epoch)` ([`epoch_order`]): ChaCha8
//! seeded with `seed` on stream `epoch`, then a Fisher–Yates shuffle. So a resumed run sees
//! the same batches, and [`Loader::epoch`] can start at any batch index of an epoch.
//!
//! [`Loader::epoch`] starts worker threads that gather batches (copy `u8` pixels or decode
//! image files, convert to `f32` in `[0, 1]`) and hand them over through bounded channels,
//! a few batches ahead of use. Worker `k` of `W` prepares batches `k, k + W, ..` of the epoch
//! and the consumer reads the workers in turn, so batches arrive in order. Dropping the
//! iterator midway stops and joins the workers. Uploading to the device happens on the
//! consuming thread ([`HostBatch::to_device`], [`DeviceEpoch`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::Device;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Dataset;
use crate::error::{Error, Result};
use crate::guard;
use crate::tensor::DynTensor;

/// How a [`Loader`] batches a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (else dataset order).
    pub shuffle: bool,
    /// Drop the last, smaller batch of an epoch.
    pub drop_last: bool,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Background threads preparing batches; 0 picks one for in-memory datasets and up to
    /// the number of cores for image folders.
    pub workers: usize,
    /// Batches prepared ahead of use (at least one per worker).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Shuffled batches of `batch_size`, last partial batch dropped, seed 0.
    pub fn new(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: true,
            seed: 0,
            workers: 0,
            prefetch: 4,
        }
    }
}

/// The order of the samples `0..len` in `epoch`: a permutation that depends only on
/// `(seed, epoch)` when `shuffle`, else `0..len`.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch);
        for i in (1..len).rev() {
            // Uniform in 0..=i by multiply-shift; the bias is below 2^-40 for any real dataset.
            let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Batches of a dataset, epoch after epoch. Cloning is cheap (clones share the count of
/// [`Loader::next_epoch`]).
#[derive(Clone, Debug)]
pub struct Loader {
    dataset: Dataset,
    config: LoaderConfig,
    iterated: Arc<std::sync::atomic::AtomicU64>,
}

impl Loader {
    /// The epoch a loop over the loader itself takes next (`for b in loader`, as a PyTorch
    /// loader is iterated): 0, then one more each time.
    pub fn next_epoch(&self) -> u64 {
        self.iterated.fetch_add(1, Ordering::Relaxed)
    }

    /// A loader over `dataset`; an epoch with no batch is an error.
    pub fn new(dataset: Dataset, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Invalid("loader: batch_size must be >= 1".into()));
        }
        if dataset.is_empty() {
            return Err(Error::Invalid(format!(
                "loader: dataset {} has no samples",
                dataset.name()
            )));
        }
        let loader = Loader {
            dataset,
            config,
            iterated: Arc::default(),
        };
        if loader.is_empty() {
            return Err(Error::Invalid(format!(
                "loader: batch_size {} is larger than dataset {} ({} samples) and drop_last is \
                 true, so an epoch would have no batch",
                loader.config.batch_size,
                loader.dataset.name(),
                loader.dataset.len()
            )));
        }
        Ok(loader)
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// True when an epoch has no batch (never, for a loader built by [`Loader::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(
            self.dataset.len(),
            self.config.shuffle,
            self.config.seed,
            epoch,
        )
    }

    /// The sample indices of batch `index` of `epoch`.
    pub fn batch_indices(&self, epoch: u64, index: usize) -> Result<Vec<usize>> {
        self.check_batch(index, false)?;
        let order = self.order(epoch);
        Ok(batch_range(&order, self.config.batch_size, index).to_vec())
    }

    fn check_batch(&self, index: usize, allow_end: bool) -> Result<()> {
        let len = self.len();
        if index > len || (index == len && !allow_end) {
            return Err(Error::Invalid(format!(
                "loader: batch {index} is out of range (an epoch has {len} batches)"
            )));
        }
        Ok(())
    }

    fn workers(&self, batches: usize) -> usize {
        let auto = if self.dataset.reads_files() {
            std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
        } else {
            1
        };
        let w = if self.config.workers == 0 {
            auto
        } else {
            self.config.workers
        };
        w.min(batches)
    }

    /// Batches `start_batch..len` of `epoch`, prepared on background threads. `start_batch`
    /// equal to [`Loader::len`] gives an empty epoch (a run resumed at an epoch's end).
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> Result<EpochIter> {
        self.check_batch(start_batch, true)?;
        let end = self.len();
        let n_workers = self.workers(end - start_batch);
        let order: Arc<[usize]> = self.order(epoch).into();
        let stop = Arc::new(AtomicBool::new(false));
        let capacity = self.config.prefetch.div_ceil(n_workers.max(1)).max(1);
        let mut iter = EpochIter {
            receivers: Vec::with_capacity(n_workers),
            handles: Vec::with_capacity(n_workers),
            stop: stop.clone(),
            next: start_batch,
            start: start_batch,
            end,
            failed: false,
        };
        for k in 0..n_workers {
            let (tx, rx) = sync_channel(capacity);
            let job = Job {
                dataset: self.dataset.clone(),
                order: order.clone(),
                batch_size: self.config.batch_size,
                epoch,
                batches: (start_batch + k..end).step_by(n_workers),
                stop: stop.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("sslhost-loader-{k}"))
                .spawn(move || job.run(tx))
                .map_err(|e| Error::Other(format!("loader: cannot start a thread: {e}")));
            // On an error, dropping `iter` stops and joins the threads already started.
            let h = handle?;
            iter.receivers.push(rx);
            iter.handles.push(h);
        }
        Ok(iter)
    }

    /// Like [`Loader::epoch`], uploading each batch to `device` as it is taken.
    pub fn epoch_on(&self, epoch: u64, start_batch: usize, device: &Device) -> Result<DeviceEpoch> {
        Ok(DeviceEpoch {
            inner: self.epoch(epoch, start_batch)?,
            device: device.clone(),
            batches_per_epoch: self.len(),
        })
    }
}

impl Loader {
    /// The batches of `epochs` whole epochs as one stream of steps, starting at global step
    /// `start_step` (`epoch * len + index`), so a run resumed at a checkpoint's step sees
    /// exactly the batches it would have seen. Each epoch's threads start when the previous
    /// epoch ends.
    pub fn steps_on(&self, epochs: u64, start_step: u64, device: &Device) -> Result<Steps> {
        let len = self.len() as u64;
        let total = epochs.saturating_mul(len);
        if start_step > total {
            return Err(Error::Invalid(format!(
                "loader: step {start_step} is past the end of {epochs} epochs of {len} batches"
            )));
        }
        Ok(Steps {
            loader: self.clone(),
            device: device.clone(),
            epochs,
            next_epoch: start_step / len,
            next_start: (start_step % len) as usize,
            current: None,
            start: start_step,
            next_step: start_step,
            end: total,
        })
    }
}

/// Batches over several epochs, from a given step on ([`Loader::steps_on`]), optionally
/// cut at a step ([`Steps::max_steps`]).
pub struct Steps {
    loader: Loader,
    device: Device,
    epochs: u64,
    next_epoch: u64,
    next_start: usize,
    current: Option<DeviceEpoch>,
    start: u64,
    next_step: u64,
    end: u64,
}

impl Steps {
    /// The epochs this stream covers.
    pub fn epochs(&self) -> u64 {
        self.epochs
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.loader.len() as u64
    }

    /// The step the stream started at.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The step the stream ends before: `min(epochs * steps_per_epoch, max_steps)`.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// A stream of no batches over `loader`.
    pub fn empty(loader: &Loader, device: &Device) -> Self {
        Steps {
            loader: loader.clone(),
            device: device.clone(),
            epochs: 0,
            next_epoch: 0,
            next_start: 0,
            current: None,
            start: 0,
            next_step: 0,
            end: 0,
        }
    }

    /// The same stream ending after `max_steps` steps of the run (steps `0..max_steps`);
    /// 0 means no limit. A stream already past `max_steps` (a resumed run) is empty.
    pub fn max_steps(mut self, max_steps: u64) -> Self {
        if max_steps > 0 {
            self.end = self.end.min(max_steps);
        }
        self
    }
}

impl Iterator for Steps {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_step >= self.end {
            // Stops the current epoch's threads, too.
            self.current = None;
            self.next_epoch = self.epochs;
            return None;
        }
        loop {
            if let Some(epoch) = &mut self.current {
                match epoch.next() {
                    Some(Err(e)) => {
                        // An error ends the stream.
                        self.next_epoch = self.epochs;
                        self.end = self.next_step;
                        self.current = None;
                        return Some(Err(e));
                    }
                    Some(ok) => {
                        self.next_step += 1;
                        return Some(ok);
                    }
                    None => self.current = None,
                }
            }
            if self.next_epoch >= self.epochs {
                return None;
            }
            match self
                .loader
                .epoch_on(self.next_epoch, self.next_start, &self.device)
            {
                Ok(e) => self.current = Some(e),
                Err(e) => {
                    self.next_epoch = self.epochs;
                    self.end = self.next_step;
                    return Some(Err(e));
                }
            }
            self.next_epoch += 1;
            self.next_start = 0;
        }
    }
}

fn batch_range(order: &[usize], batch_size: usize, index: usize) -> &[usize] {
    let lo = index * batch_size;
    let hi = (lo + batch_size).min(order.len());
    &order[lo..hi]
}

/// What one worker thread does.
struct Job {
    dataset: Dataset,
    order: Arc<[usize]>,
    batch_size: usize,
    epoch: u64,
    batches: std::iter::StepBy<std::ops::Range<usize>>,
    stop: Arc<AtomicBool>,
}

impl Job {
    fn run(self, tx: SyncSender<Result<HostBatch>>) {
        let [c, h, w] = self.dataset.image_shape();
        for index in self.batches.clone() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let indices = batch_range(&self.order, self.batch_size, index);
            let result = guard::catch(|| {
                let mut images = Vec::new();
                let mut labels = Vec::new();
                self.dataset
                    .gather(indices, &mut images, &mut labels, Some(&self.stop))?;
                Ok(HostBatch {
                    epoch: self.epoch,
                    index,
                    shape: [indices.len(), c, h, w],
                    images,
                    labels,
                    labelled: self.dataset.labelled(),
                })
            });
            let failed = result.is_err();
            // The receiver is gone when the iterator was dropped: stop quietly.
            if tx.send(result).is_err() || failed {
                return;
            }
        }
    }
}

/// A batch on the host: images `[N, C, H, W]` as `f32` in `[0, 1]`, and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Its index in the epoch.
    pub index: usize,
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
    /// Row-major pixel values.
    pub images: Vec<f32>,
    /// One label per image (0 for a dataset without labels).
    pub labels: Vec<i64>,
    /// Whether the labels are real.
    pub labelled: bool,
}

impl HostBatch {
    /// Uploads the batch to `device`. `batches_per_epoch` sets [`Batch::step`].
    pub fn to_device(self, device: &Device, batches_per_epoch: usize) -> Result<Batch> {
        let n = self.shape[0];
        Ok(Batch {
            images: DynTensor::from_vec(self.images, &self.shape, device)?,
            labels: DynTensor::from_int_vec(self.labels, &[n], device)?,
            labelled: self.labelled,
            index: self.index,
            epoch: self.epoch,
            step: self.epoch * batches_per_epoch as u64 + self.index as u64,
        })
    }
}

/// A batch on the device.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Float images `[N, C, H, W]` in `[0, 1]`.
    pub images: DynTensor,
    /// Int labels `[N]` (zeros for a dataset without labels).
    pub labels: DynTensor,
    /// Whether `labels` are real.
    pub labelled: bool,
    /// Index of the batch in its epoch.
    pub index: usize,
    /// The epoch.
    pub epoch: u64,
    /// `epoch * batches_per_epoch + index`: the global step of a run over whole epochs.
    pub step: u64,
}

/// The batches of one epoch, in order, prepared ahead on background threads.
///
/// Yields an error (and then stops) if a batch cannot be prepared, e.g. an unreadable image.
/// Dropping it stops and joins the threads.
pub struct EpochIter {
    receivers: Vec<Receiver<Result<HostBatch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: usize,
    start: usize,
    end: usize,
    failed: bool,
}

impl EpochIter {
    /// Index of the next batch.
    pub fn next_index(&self) -> usize {
        self.next
    }

    /// Number of background threads.
    pub fn threads(&self) -> usize {
        self.handles.len()
    }
}

impl Iterator for EpochIter {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.end {
            return None;
        }
        let k = (self.next - self.start) % self.receivers.len();
        match self.receivers[k].recv() {
            Ok(Ok(batch)) => {
                self.next += 1;
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.failed = true;
                Some(Err(e))
            }
            Err(_) => {
                self.failed = true;
                Some(Err(Error::Other(format!(
                    "loader: the thread preparing batch {} stopped unexpectedly",
                    self.next
                ))))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed { 0 } else { self.end - self.next };
        (0, Some(left))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Senders blocked on a full channel wake up with an error once the receivers go.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// An epoch whose batches are uploaded to a device as they are taken.
pub struct DeviceEpoch {
    inner: EpochIter,
    device: Device,
    batches_per_epoch: usize,
}

impl DeviceEpoch {
    /// The host-side iterator.
    pub fn host(&self) -> &EpochIter {
        &self.inner
    }
}

impl Iterator for DeviceEpoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.inner.next()?;
        Some(batch.and_then(|b| b.to_device(&self.device, self.batches_per_epoch)))
    }
}
