//! `dataset(..)`, `loader(..)` and batches in scripts.
//!
//! `for b in loader.epoch(e) { .. }` is the same batch stream as `steps(..)` (`api::run`),
//! cut to one epoch: batches prepared on background threads and uploaded one at a time as the
//! loop takes them, with live swaps, Ctrl-C and progress at each step.

use rhai::plugin::*;

/// Datasets and loaders.
#[export_module]
pub mod data_api {
    use rhai::{Array, Dynamic, Map};

    use crate::api::args::{Options, RhaiResult, run};
    use crate::data::{self as d, DatasetOptions, LoaderConfig, Locations, Split};
    use crate::error::Error;
    use crate::session;
    use crate::tensor::DynTensor;
    use crate::train::tensor_file;

    /// Labelled images of one size.
    pub type Dataset = d::Dataset;
    /// Batches of a dataset, epoch after epoch.
    pub type Loader = d::Loader;
    /// One batch on the run's device.
    pub type Batch = d::Batch;
    /// The batches of one epoch (iterate it with `for`).
    pub type Epoch = crate::api::run::StepStream;

    // ---- images ----------------------------------------------------------------------

    /// Writes images `[N, C, H, W]` in [0, 1] as one PNG grid. Options: `nrow` (images per
    /// row, default 8), `padding` (pixels between images, default 2). The path ends in
    /// `.png` and lies below the working directory or the run directory; an existing file
    /// is replaced only when it is an image sslhost wrote.
    ///
    /// ```rhai
    /// save_image_grid(b.images, "views.png", #{ nrow: 16 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn save_image_grid(images: DynTensor, path: &str, options: Map) -> RhaiResult<()> {
        run(|| {
            let images = crate::tensor::tape::resolve(&images)?;
            let o = Options::new(&options, "save_image_grid", &["nrow", "padding"])?;
            let nrow = o.usize("nrow", 8)?;
            let padding = o.number("padding", 2.0)?;
            if !(0.0..=64.0).contains(&padding) || padding.fract() != 0.0 {
                return Err(Error::Invalid(format!(
                    "save_image_grid: padding must be a whole number of pixels in 0..=64, got {padding}"
                )));
            }
            let padding = padding as usize;
            let mut roots = vec![std::path::PathBuf::from(".")];
            roots.extend(crate::train::current::dir_path());
            let path = crate::files::script_output(path, &roots, "png", d::png::ours)?;
            d::png::save_grid(&images, &path, nrow, padding)
        })
    }

    /// Writes named tensors to a safetensors file (`safetensors.torch.load_file` reads it;
    /// float tensors as F32, int tensors as I64, each with a checksum): features to compare
    /// with another framework, embeddings to plot. The path ends in `.safetensors` and lies
    /// below the working directory or the run directory; an existing file is replaced only
    /// when sslhost wrote it.
    ///
    /// ```rhai
    /// let x = tensor([[1.0, 2.0], [3.0, 4.0]]);
    /// save_tensors("features.safetensors", #{ features: x, labels: x.argmax(1) });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn save_tensors(path: &str, tensors: Map) -> RhaiResult<()> {
        run(|| {
            let mut named = Vec::with_capacity(tensors.len());
            for (name, value) in &tensors {
                let t = value.clone().try_cast::<DynTensor>().ok_or_else(|| {
                    Error::Invalid(format!(
                        "save_tensors: `{name}` is a {}, not a tensor",
                        value.type_name()
                    ))
                })?;
                named.push(tensor_file::NamedTensor::of(
                    name,
                    &crate::tensor::tape::resolve(&t)?,
                )?);
            }
            let mut roots = vec![std::path::PathBuf::from(".")];
            roots.extend(crate::train::current::dir_path());
            let path =
                crate::files::script_output(path, &roots, "safetensors", tensor_file::is_ours)?;
            let meta = std::collections::BTreeMap::from([(
                "format".to_string(),
                tensor_file::SCRIPT_FORMAT.to_string(),
            )]);
            tensor_file::write(&path, &named, &meta)
        })
    }

    // ---- datasets ----------------------------------------------------------------------

    /// A dataset's train split: `"fashion-mnist"`, `"mnist"`, `"cifar10"`, `"cifar100"`,
    /// `"synthetic"`, or the path of a folder (idx files, CIFAR batches, or one sub-folder
    /// per class of PNG/JPEG images). Named datasets are looked for in `--data` /
    /// `SSLHOST_DATA`, then `/usr/share/datasets`; Fashion-MNIST falls back to a sample
    /// compiled into sslhost. The log says which source was used.
    ///
    /// ```rhai
    /// let ds = dataset("fashion-mnist");
    /// print(`${ds.len} images of ${ds.channels}x${ds.height}x${ds.width}`);
    /// ```
    #[rhai_fn(name = "dataset", return_raw)]
    pub fn dataset_default(name: &str) -> RhaiResult<Dataset> {
        dataset(name, Map::new())
    }

    /// CIFAR-10's binary files (`cifar-10-batches-bin` under `--data`, `SSLHOST_DATA` or the
    /// working directory), the first 1000 test images:
    ///
    /// ```rhai no_run
    /// let test = dataset("cifar10", #{ split: "test", limit: 1000 });
    /// ```
    ///
    /// A dataset with options: `split` (`"train"` or `"test"`, default `"train"`), `rgb`
    /// (expand grey images to 3 channels, default false), `size` (image side for folders and
    /// synthetic data, default 32), `limit` (keep the first N samples, 0 = all; image folders list
    /// class by class, so there the first N come from the first classes). `"synthetic"` also
    /// takes `samples` (default 4096 train / 1024 test), `classes` (10), `channels` (3) and
    /// `seed` (0).
    ///
    /// ```rhai
    /// let train = dataset("fashion-mnist", #{ split: "train", rgb: true });
    /// let toy = dataset("synthetic", #{ classes: 4, samples: 512, size: 16 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn dataset(name: &str, options: Map) -> RhaiResult<Dataset> {
        run(|| {
            let o = Options::new(
                &options,
                "dataset",
                &[
                    "split", "rgb", "size", "limit", "samples", "classes", "channels", "seed",
                    "labels",
                ],
            )?;
            let split = match options.get("split") {
                None => Split::Train,
                Some(v) => {
                    let s = v.clone().into_string().map_err(|t| {
                        Error::Invalid(format!(
                            "dataset: option `split` must be \"train\" or \"test\", got {t}"
                        ))
                    })?;
                    Split::parse(&s)?
                }
            };
            let opt = |key: &str| -> Result<Option<usize>, Error> {
                match options.get(key) {
                    None => Ok(None),
                    Some(_) => o.usize(key, 1).map(Some),
                }
            };
            let seed = match options.get("seed") {
                None => None,
                Some(v) => Some(
                    v.as_int()
                        .ok()
                        .and_then(|i| u64::try_from(i).ok())
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "dataset: option `seed` must be an integer >= 0, got {v}"
                            ))
                        })?,
                ),
            };
            let opts = DatasetOptions {
                split,
                rgb: o.bool("rgb", false)?,
                size: opt("size")?,
                // `limit: 0` means every sample, so a recipe can pass its config through.
                limit: match (
                    match options.get("limit").and_then(|v| v.as_int().ok()) {
                        Some(0) => None,
                        _ => opt("limit")?,
                    },
                    session::with(|s| s.check),
                ) {
                    (limit, true) => Some(limit.unwrap_or(usize::MAX).min(session::CHECK_SAMPLES)),
                    (limit, false) => limit,
                },
                plain_folder: !o.bool("labels", true)?,
                samples: opt("samples")?,
                classes: opt("classes")?,
                channels: opt("channels")?,
                seed,
            };
            let locations = Locations::new(session::with(|s| s.data_root.clone()));
            d::open(name, &opts, &locations)
        })
    }

    /// Number of samples.
    ///
    /// ```rhai
    /// print(dataset("fashion-mnist").len);
    /// ```
    #[rhai_fn(get = "len", name = "len", pure)]
    pub fn dataset_len(ds: &mut Dataset) -> i64 {
        ds.len() as i64
    }

    /// Whether the samples have labels: false for a folder of images without class
    /// sub-folders (or one opened with `labels: false`).
    ///
    /// ```rhai
    /// let ds = dataset("fashion-mnist");
    /// if ds.labelled { print(`${ds.classes} classes`); }
    /// ```
    #[rhai_fn(get = "labelled", pure)]
    pub fn labelled(ds: &mut Dataset) -> bool {
        ds.labelled()
    }

    /// Number of classes (labels are `0..classes`; 0 without labels).
    ///
    /// ```rhai
    /// let head = linear(512, dataset("fashion-mnist").classes);   // 10
    /// ```
    #[rhai_fn(get = "classes", pure)]
    pub fn classes(ds: &mut Dataset) -> i64 {
        ds.classes() as i64
    }

    /// Class names, indexed by label.
    ///
    /// ```rhai
    /// print(dataset("fashion-mnist").class_names[0]);   // T-shirt/top
    /// ```
    #[rhai_fn(get = "class_names", pure)]
    pub fn class_names(ds: &mut Dataset) -> Array {
        ds.class_names()
            .iter()
            .map(|s| Dynamic::from(s.clone()))
            .collect()
    }

    /// Channels per image (1 grey, 3 colour or `rgb: true`).
    ///
    /// ```rhai
    /// let net = resnet(18, #{ cifar_stem: true, in_channels: ds.channels });
    /// ```
    #[rhai_fn(get = "channels", pure)]
    pub fn channels(ds: &mut Dataset) -> i64 {
        ds.channels() as i64
    }

    /// Image height in pixels.
    ///
    /// ```rhai
    /// print(ds.height);
    /// ```
    #[rhai_fn(get = "height", pure)]
    pub fn height(ds: &mut Dataset) -> i64 {
        ds.height() as i64
    }

    /// Image width in pixels.
    ///
    /// ```rhai
    /// print(ds.width);
    /// ```
    #[rhai_fn(get = "width", pure)]
    pub fn width(ds: &mut Dataset) -> i64 {
        ds.width() as i64
    }

    /// The dataset's name (`"fashion-mnist"`, a path, ...).
    ///
    /// ```rhai
    /// print(ds.name);
    /// ```
    #[rhai_fn(get = "name", pure)]
    pub fn name(ds: &mut Dataset) -> String {
        ds.name().to_string()
    }

    /// Where the samples came from: a directory, `"embedded sample"`, or the synthetic
    /// generator.
    ///
    /// ```rhai
    /// print(ds.source);
    /// ```
    #[rhai_fn(get = "source", pure)]
    pub fn source(ds: &mut Dataset) -> String {
        ds.source().to_string()
    }

    /// Samples `start..end` (in dataset order) on the run's device:
    /// `#{ images: [n, C, H, W] floats in [0, 1], labels: [n] ints }`. For evaluation.
    ///
    /// ```rhai
    /// let test = dataset("fashion-mnist", #{ split: "test" });
    /// let part = test.tensors(0, 256);
    /// let logits = classifier.forward(backbone.forward(part.images));
    /// ```
    #[rhai_fn(return_raw, pure)]
    pub fn tensors(ds: &mut Dataset, start: i64, end: i64) -> RhaiResult<Map> {
        run(|| {
            let bad = || {
                Error::Invalid(format!(
                    "tensors: samples {start}..{end} are not a non-empty range within 0..{}",
                    ds.len()
                ))
            };
            let start = usize::try_from(start).map_err(|_| bad())?;
            let end = usize::try_from(end).map_err(|_| bad())?;
            let (images, labels) = ds.tensors(start, end, &session::device())?;
            let mut m = Map::new();
            m.insert("images".into(), Dynamic::from(images));
            if ds.labelled() {
                m.insert("labels".into(), Dynamic::from(labels));
            }
            Ok(m)
        })
    }

    /// `Dataset(fashion-mnist: 60000 images [1, 28, 28], 10 classes)`.
    ///
    /// ```rhai
    /// print(ds);
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn dataset_to_string(ds: &mut Dataset) -> String {
        ds.to_string()
    }

    // ---- loaders -----------------------------------------------------------------------

    /// Batches of `ds`: `batch_size` (required), `shuffle` (default true), `drop_last`
    /// (default true), `seed` (default: the run's seed), `workers` (background threads;
    /// default 1 for in-memory data, more for image folders), `prefetch` (batches prepared
    /// ahead, default 4). The order of an epoch depends only on `(seed, epoch)`.
    ///
    /// ```rhai
    /// let train = loader(dataset("fashion-mnist"), #{ batch_size: 256 });
    /// for b in train.epoch(0) {
    ///     let loss = byol_loss(online.forward(b.images), target.forward(b.images));
    /// }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn loader(ds: Dataset, options: Map) -> RhaiResult<Loader> {
        run(|| {
            let o = Options::new(
                &options,
                "loader",
                &[
                    "batch_size",
                    "shuffle",
                    "drop_last",
                    "seed",
                    "workers",
                    "prefetch",
                ],
            )?;
            if !options.contains_key("batch_size") {
                return Err(Error::Invalid(
                    "loader: option `batch_size` is required".into(),
                ));
            }
            let mut batch_size = o.usize("batch_size", 1)?;
            if session::with(|s| s.check) {
                batch_size = batch_size.min(session::CHECK_BATCH);
            }
            let mut config = LoaderConfig::new(batch_size);
            config.shuffle = o.bool("shuffle", true)?;
            config.drop_last = o.bool("drop_last", true)?;
            config.seed = match options.get("seed") {
                None => session::with(|s| s.seed),
                Some(v) => v
                    .as_int()
                    .ok()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "loader: option `seed` must be an integer >= 0, got {v}"
                        ))
                    })?,
            };
            config.workers = o.usize("workers", 0)?.min(64);
            config.prefetch = o.usize("prefetch", config.prefetch)?;
            d::Loader::new(ds, config)
        })
    }

    /// Batches per epoch.
    ///
    /// ```rhai
    /// let total = cfg.epochs * train.len;
    /// ```
    #[rhai_fn(get = "len", name = "len", pure)]
    pub fn loader_len(l: &mut Loader) -> i64 {
        l.len() as i64
    }

    /// Samples per batch.
    ///
    /// ```rhai
    /// print(train.batch_size);
    /// ```
    #[rhai_fn(get = "batch_size", pure)]
    pub fn batch_size(l: &mut Loader) -> i64 {
        l.config().batch_size as i64
    }

    /// The loader's dataset.
    ///
    /// ```rhai
    /// print(train.dataset.classes);
    /// ```
    #[rhai_fn(get = "dataset", pure)]
    pub fn loader_dataset(l: &mut Loader) -> Dataset {
        l.dataset().clone()
    }

    /// The batches of epoch `e`, streamed: prepared ahead on background threads, uploaded to
    /// the run's device as the loop takes them.
    ///
    /// ```rhai
    /// for e in 0..cfg.epochs {
    ///     for b in train.epoch(e) {
    ///         opt.step(loss_of(b.images), lr);
    ///     }
    /// }
    /// ```
    #[rhai_fn(return_raw, pure)]
    pub fn epoch(l: &mut Loader, e: i64) -> RhaiResult<Epoch> {
        epoch_from(l, e, 0)
    }

    /// The batches of epoch `e` from batch `start` on (the same order as the whole epoch:
    /// resuming a run midway sees the batches it would have seen).
    ///
    /// ```rhai
    /// for b in train.epoch(3, 10) { print(b.index); }   // 10, 11, ..
    /// ```
    #[rhai_fn(name = "epoch", return_raw, pure)]
    pub fn epoch_from(l: &mut Loader, e: i64, start: i64) -> RhaiResult<Epoch> {
        run(|| {
            let e = u64::try_from(e)
                .map_err(|_| Error::Invalid(format!("epoch: epoch must be >= 0, got {e}")))?;
            let start = usize::try_from(start).map_err(|_| {
                Error::Invalid(format!("epoch: start batch must be >= 0, got {start}"))
            })?;
            crate::api::run::epoch_stream(l, e, start)
        })
    }

    /// `Loader(256 per batch, 234 batches per epoch of Dataset(..))`.
    ///
    /// ```rhai
    /// print(train);
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn loader_to_string(l: &mut Loader) -> String {
        format!(
            "Loader({} per batch, {} batches per epoch of {})",
            l.config().batch_size,
            l.len(),
            l.dataset()
        )
    }

    // ---- batches -----------------------------------------------------------------------

    /// Float images `[N, C, H, W]` in `[0, 1]`.
    ///
    /// ```rhai
    /// let x1 = view1.apply(b.images);
    /// ```
    #[rhai_fn(get = "images", pure)]
    pub fn images(b: &mut Batch) -> DynTensor {
        b.images.clone()
    }

    /// Int labels `[N]`; an error for a dataset without labels (check `ds.labelled`).
    ///
    /// ```rhai
    /// let loss = cross_entropy(logits, b.labels);
    /// ```
    #[rhai_fn(get = "labels", pure, return_raw)]
    pub fn labels(b: &mut Batch) -> RhaiResult<DynTensor> {
        if b.labelled {
            Ok(b.labels.clone())
        } else {
            Err(crate::api::args::to_rhai(Error::Invalid(
                "this batch has no labels: its dataset is a folder of images without class \
                 sub-folders (check `ds.labelled` before using labels)"
                    .into(),
            )))
        }
    }

    /// Index of the batch in its epoch.
    ///
    /// ```rhai
    /// if b.index % 50 == 0 { print(b.index); }
    /// ```
    #[rhai_fn(get = "index", pure)]
    pub fn index(b: &mut Batch) -> i64 {
        b.index as i64
    }

    /// The epoch of the batch.
    ///
    /// ```rhai
    /// print(b.epoch);
    /// ```
    #[rhai_fn(get = "epoch", pure)]
    pub fn batch_epoch(b: &mut Batch) -> i64 {
        b.epoch as i64
    }

    /// `epoch * loader.len + index`: the global step of a run over whole epochs.
    ///
    /// ```rhai
    /// opt.step(loss, warmup_cosine(b.step, total, total / 10, 1.0, 0.0));
    /// ```
    #[rhai_fn(get = "step", pure)]
    pub fn step(b: &mut Batch) -> i64 {
        b.step as i64
    }

    /// Number of images in the batch.
    ///
    /// ```rhai
    /// print(b.size);
    /// ```
    #[rhai_fn(get = "size", pure)]
    pub fn size(b: &mut Batch) -> i64 {
        b.images.shape()[0] as i64
    }

    /// `Batch(epoch 0, index 3, images [256, 1, 28, 28])`.
    ///
    /// ```rhai
    /// print(b);
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn batch_to_string(b: &mut Batch) -> String {
        format!(
            "Batch(epoch {}, index {}, images {:?})",
            b.epoch,
            b.index,
            b.images.shape()
        )
    }
}
