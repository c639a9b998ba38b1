//! CIFAR-10 and CIFAR-100 in their binary versions.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin` (train) and
//! `test_batch.bin`, records of 1 label byte + 3072 pixel bytes (red, green, blue planes of
//! 32x32). CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`, records of 2 label
//! bytes (coarse, fine) + 3072 pixel bytes; the fine label (100 classes) is used.

use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{Error, Result};

/// Pixel bytes per image (3 x 32 x 32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which of the two CIFAR datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes, one label byte per record.
    Ten,
    /// 100 fine classes (and 20 coarse), two label bytes per record.
    Hundred,
}

impl Cifar {
    /// Label bytes before each image.
    pub fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    /// Bytes per record.
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }

    /// Number of (fine) classes.
    pub fn classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    /// `cifar10` or `cifar100`.
    pub fn name(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar10",
            Cifar::Hundred => "cifar100",
        }
    }

    /// The split's files in `dir`.
    pub fn files(self, dir: &Path, train: bool) -> Vec<PathBuf> {
        match (self, train) {
            (Cifar::Ten, true) => (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}.bin")))
                .collect(),
            (Cifar::Ten, false) => vec![dir.join("test_batch.bin")],
            (Cifar::Hundred, true) => vec![dir.join("train.bin")],
            (Cifar::Hundred, false) => vec![dir.join("test.bin")],
        }
    }

    /// True when `dir` holds at least one of the split's files.
    pub fn has_split(self, dir: &Path, train: bool) -> bool {
        self.files(dir, train).iter().any(|p| p.is_file())
    }

    /// The class-name file the archive ships, if any.
    fn names_file(self, dir: &Path) -> PathBuf {
        match self {
            Cifar::Ten => dir.join("batches.meta.txt"),
            Cifar::Hundred => dir.join("fine_label_names.txt"),
        }
    }

    /// Class names from the archive's name file, else the built-in list.
    pub fn class_names(self, dir: &Path) -> Vec<String> {
        let from_file: Vec<String> = std::fs::read_to_string(self.names_file(dir))
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if from_file.len() == self.classes() {
            return from_file;
        }
        match self {
            Cifar::Ten => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            Cifar::Hundred => CIFAR100_CLASSES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Appends the records of `bytes` (read from `path`) to `pixels` and `labels`.
pub fn parse_records(
    kind: Cifar,
    bytes: &[u8],
    path: &Path,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    let rec = kind.record_bytes();
    let layout = match kind {
        Cifar::Ten => "1 label byte + 3072 pixel bytes",
        Cifar::Hundred => "2 label bytes (coarse, fine) + 3072 pixel bytes",
    };
    if bytes.is_empty() {
        return Err(Error::file(
            path,
            format!("empty: expected {} records of {rec} bytes", kind.name()),
        ));
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(Error::file(
            path,
            format!(
                "truncated: {} bytes is not a whole number of {rec}-byte {} records ({layout})",
                bytes.len(),
                kind.name()
            ),
        ));
    }
    pixels.reserve(bytes.len() / rec * IMAGE_BYTES);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[kind.label_bytes() - 1] as usize;
        if kind == Cifar::Hundred && r[0] >= 20 {
            return Err(Error::file(
                path,
                format!(
                    "coarse label {} of record {i} is outside 0..20; not a CIFAR-100 file?",
                    r[0]
                ),
            ));
        }
        if label >= kind.classes() {
            return Err(Error::file(
                path,
                format!(
                    "label {label} of record {i} is outside 0..{}; not a {} file ({layout})?",
                    kind.classes(),
                    kind.name()
                ),
            ));
        }
        labels.push(label as i64);
        pixels.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(())
}

/// Reads the split from `dir`. A missing file is an error naming it.
pub fn read_dir(kind: Cifar, dir: &Path, train: bool) -> Result<Dataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in kind.files(dir, train) {
        if !path.is_file() {
            return Err(Error::file(
                &path,
                format!(
                    "missing: the {} {} split needs {}",
                    kind.name(),
                    if train { "train" } else { "test" },
                    kind.files(dir, train)
                        .iter()
                        .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let bytes =
            std::fs::read(&path).map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
        parse_records(kind, &bytes, &path, &mut pixels, &mut labels)?;
    }
    Dataset::from_memory(
        kind.name(),
        dir.display().to_string(),
        pixels,
        [3, 32, 32],
        labels,
        kind.class_names(dir),
    )
}

/// CIFAR-10's class names.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100's fine class names, in label order.
pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];
