//! Datasets (idx, CIFAR binary, image folders, synthetic, the embedded Fashion-MNIST sample)
//! and the prefetching loader. Plain Rust: nothing here knows Rhai.
//!
//! A [`Dataset`] is a list of labelled images of one size. Readers ([`idx`], [`cifar`],
//! [`folder`], [`synthetic`], [`sample`]) build one; [`resolve`] turns a script's
//! `dataset("fashion-mnist", #{ split })` into the right reader and files; [`loader`] shuffles
//! it per epoch and prepares batches on background threads.
//!
//! Pixels stay `u8` until a batch is gathered, then become `f32` in `[0, 1]`, laid out
//! `[N, C, H, W]` like torchvision's `ToTensor`. Image folders are decoded when their batch
//! is gathered, on the loader's threads.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod png;
pub mod resolve;
pub mod sample;
pub mod synthetic;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::tensor::DynTensor;

pub use loader::{
    Batch, DeviceEpoch, EpochIter, HostBatch, Loader, LoaderConfig, Steps, epoch_order,
};
pub use resolve::{DatasetOptions, Locations, Split, open};
pub use synthetic::SyntheticConfig;

/// `u8 -> f32 / 255`, looked up rather than divided.
fn unit_lut() -> &'static [f32; 256] {
    static LUT: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    LUT.get_or_init(|| std::array::from_fn(|i| i as f32 / 255.0))
}

/// Where the pixels of a dataset live.
#[derive(Clone)]
enum Images {
    /// Decoded pixels, `len * channels * height * width` bytes, `[C, H, W]` per sample.
    Memory { pixels: Arc<[u8]>, channels: usize },
    /// Image files, decoded to RGB and resized when a batch is gathered.
    Files { paths: Arc<[PathBuf]> },
}

/// Labelled images of one size: `len` samples of `[channels, height, width]`.
///
/// Cloning is cheap (the pixels are shared).
#[derive(Clone)]
pub struct Dataset {
    name: String,
    source: String,
    class_names: Arc<[String]>,
    labels: Arc<[i64]>,
    images: Images,
    /// Samples `0..len` of the storage are visible (`limit`).
    len: usize,
    /// Expand one stored grey channel to three on output.
    expand_grey: bool,
    height: usize,
    width: usize,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Dataset({}: {} images [{}, {}, {}], {} classes)",
            self.name,
            self.len,
            self.channels(),
            self.height,
            self.width,
            self.classes()
        )
    }
}

impl Dataset {
    /// A dataset of decoded pixels (`[C, H, W]` per sample, row-major) and labels in
    /// `0..class_names.len()`. `source` says where it came from (for logs).
    #[allow(clippy::too_many_arguments)]
    pub fn from_memory(
        name: impl Into<String>,
        source: impl Into<String>,
        pixels: Vec<u8>,
        [channels, height, width]: [usize; 3],
        labels: Vec<i64>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let name = name.into();
        let per = channels * height * width;
        if per == 0 {
            return Err(Error::Invalid(format!(
                "dataset {name}: images must have at least one pixel, got [{channels}, {height}, {width}]"
            )));
        }
        if pixels.len() != labels.len() * per {
            return Err(Error::Invalid(format!(
                "dataset {name}: {} pixel bytes do not make {} images of [{channels}, {height}, {width}]",
                pixels.len(),
                labels.len()
            )));
        }
        let images = Images::Memory {
            pixels: pixels.into(),
            channels,
        };
        Self::assemble(
            name,
            source.into(),
            labels,
            class_names,
            images,
            [height, width],
        )
    }

    /// A dataset from checked parts (labels are checked against the class count here; with
    /// no class names it has no labels, and every stored label is 0).
    fn assemble(
        name: String,
        source: String,
        labels: Vec<i64>,
        class_names: Vec<String>,
        images: Images,
        [height, width]: [usize; 2],
    ) -> Result<Self> {
        check_labels(&name, &labels, class_names.len().max(1))?;
        Ok(Dataset {
            name,
            source,
            class_names: class_names.into(),
            len: labels.len(),
            labels: labels.into(),
            images,
            expand_grey: false,
            height,
            width,
        })
    }

    /// A dataset of image files (JPEG, PNG), decoded to RGB and resized to `size x size` when
    /// read.
    pub fn from_files(
        name: impl Into<String>,
        source: impl Into<String>,
        paths: Vec<PathBuf>,
        labels: Vec<i64>,
        class_names: Vec<String>,
        size: usize,
    ) -> Result<Self> {
        let name = name.into();
        if size == 0 {
            return Err(Error::Invalid(format!("dataset {name}: size must be >= 1")));
        }
        if paths.len() != labels.len() {
            return Err(Error::Invalid(format!(
                "dataset {name}: {} files but {} labels",
                paths.len(),
                labels.len()
            )));
        }
        let images = Images::Files {
            paths: paths.into(),
        };
        Self::assemble(
            name,
            source.into(),
            labels,
            class_names,
            images,
            [size, size],
        )
    }

    /// The same dataset with grey images expanded to three equal channels (colour images
    /// are unchanged).
    pub fn with_rgb(mut self, rgb: bool) -> Self {
        self.expand_grey = rgb && self.stored_channels() == 1;
        self
    }

    /// The first `n` samples (all of them if there are fewer).
    pub fn limited(mut self, n: usize) -> Self {
        self.len = self.len.min(n);
        self
    }

    /// The same dataset under another name.
    pub fn renamed(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The same dataset with another source description.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The dataset's name (`fashion-mnist`, a path, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the samples came from (a directory, "embedded sample", ...).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of classes (labels are `0..classes`); 0 for a dataset without labels.
    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    /// Whether the samples have labels (an image folder without class sub-folders has none).
    pub fn labelled(&self) -> bool {
        !self.class_names.is_empty()
    }

    /// Class names, indexed by label.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Labels of the visible samples.
    pub fn labels(&self) -> &[i64] {
        &self.labels[..self.len]
    }

    fn stored_channels(&self) -> usize {
        match &self.images {
            Images::Memory { channels, .. } => *channels,
            Images::Files { .. } => 3,
        }
    }

    /// Channels of the output images (3 for colour or expanded grey, 1 for grey).
    pub fn channels(&self) -> usize {
        if self.expand_grey {
            3
        } else {
            self.stored_channels()
        }
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `[channels, height, width]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels(), self.height, self.width]
    }

    /// Values per output image (`channels * height * width`).
    pub fn sample_len(&self) -> usize {
        self.channels() * self.height * self.width
    }

    /// True when images are decoded from files as they are read (slow; use several loader
    /// threads).
    pub fn reads_files(&self) -> bool {
        matches!(self.images, Images::Files { .. })
    }

    fn check_index(&self, index: usize) -> Result<()> {
        if index >= self.len {
            return Err(Error::Invalid(format!(
                "dataset {}: index {index} is out of range (it has {} samples)",
                self.name, self.len
            )));
        }
        Ok(())
    }

    /// One image as bytes, `[C, H, W]` row-major (files are decoded and resized).
    pub fn image_u8(&self, index: usize) -> Result<Vec<u8>> {
        self.check_index(index)?;
        let mut out = Vec::with_capacity(self.sample_len());
        match &self.images {
            Images::Memory { pixels, channels } => {
                let per = channels * self.height * self.width;
                let src = &pixels[index * per..(index + 1) * per];
                out.extend_from_slice(src);
                if self.expand_grey {
                    out.extend_from_slice(src);
                    out.extend_from_slice(src);
                }
            }
            Images::Files { paths } => {
                out = folder::decode_image(&paths[index], self.height)?;
            }
        }
        Ok(out)
    }

    /// Appends the images at `indices` to `images` as `f32` in `[0, 1]` (`[N, C, H, W]`
    /// row-major) and their labels to `labels`. Stops early with an error if `stop` is set.
    pub fn gather(
        &self,
        indices: &[usize],
        images: &mut Vec<f32>,
        labels: &mut Vec<i64>,
        stop: Option<&AtomicBool>,
    ) -> Result<()> {
        let lut = unit_lut();
        images.reserve(indices.len() * self.sample_len());
        labels.reserve(indices.len());
        for &i in indices {
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Err(Error::Other("loader stopped".into()));
            }
            self.check_index(i)?;
            match &self.images {
                Images::Memory { pixels, channels } => {
                    let per = channels * self.height * self.width;
                    let src = &pixels[i * per..(i + 1) * per];
                    let copies = if self.expand_grey { 3 } else { 1 };
                    for _ in 0..copies {
                        images.extend(src.iter().map(|&p| lut[p as usize]));
                    }
                }
                Images::Files { .. } => {
                    let bytes = self.image_u8(i)?;
                    images.extend(bytes.iter().map(|&p| lut[p as usize]));
                }
            }
            labels.push(self.labels[i]);
        }
        Ok(())
    }

    /// Samples `start..end` as host values: images `[n, C, H, W]` in `[0, 1]` and labels.
    pub fn slice_host(&self, start: usize, end: usize) -> Result<(Vec<f32>, Vec<i64>)> {
        if start >= end || end > self.len {
            return Err(Error::Invalid(format!(
                "dataset {}: samples {start}..{end} are not a non-empty range within 0..{}",
                self.name, self.len
            )));
        }
        let indices: Vec<usize> = (start..end).collect();
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        self.gather(&indices, &mut images, &mut labels, None)?;
        Ok((images, labels))
    }

    /// Samples `start..end` on `device`: float images `[n, C, H, W]` in `[0, 1]` and int
    /// labels `[n]`.
    pub fn tensors(
        &self,
        start: usize,
        end: usize,
        device: &Device,
    ) -> Result<(DynTensor, DynTensor)> {
        let (images, labels) = self.slice_host(start, end)?;
        let n = end - start;
        let [c, h, w] = self.image_shape();
        Ok((
            DynTensor::from_vec(images, &[n, c, h, w], device)?,
            DynTensor::from_int_vec(labels, &[n], device)?,
        ))
    }
}

fn check_labels(name: &str, labels: &[i64], classes: usize) -> Result<()> {
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l < 0 || **l as usize >= classes)
    {
        return Err(Error::Invalid(format!(
            "dataset {name}: label {l} of sample {i} is outside 0..{classes}"
        )));
    }
    Ok(())
}

/// Class names `"0", "1", ..` for datasets without names.
pub fn numbered_classes(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}
