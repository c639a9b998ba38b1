//! The Fashion-MNIST sample compiled into the binary, so `dataset("fashion-mnist")` works on a
//! machine without the dataset: 4000 train images (400 per class) and 1000 test images (100 per
//! class), the first of each class in the original files' order. Built by
//! `scripts/make_fashion_sample.py`; see `host/assets/fashion-mnist-sample/README.md`.

use std::path::Path;

use super::Dataset;
use super::idx::{self, FASHION_CLASSES};
use crate::error::Result;

const TRAIN_IMAGES: &[u8] =
    include_bytes!("../../assets/fashion-mnist-sample/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] =
    include_bytes!("../../assets/fashion-mnist-sample/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] =
    include_bytes!("../../assets/fashion-mnist-sample/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] =
    include_bytes!("../../assets/fashion-mnist-sample/t10k-labels-idx1-ubyte.gz");

/// How the sample is described in logs and `ds.source`.
pub const SOURCE: &str = "embedded sample";

/// Train images in the sample.
pub const TRAIN_LEN: usize = 4000;
/// Test images in the sample.
pub const TEST_LEN: usize = 1000;

/// The embedded Fashion-MNIST split.
pub fn fashion_mnist(train: bool) -> Result<Dataset> {
    let (images, labels) = if train {
        (TRAIN_IMAGES, TRAIN_LABELS)
    } else {
        (TEST_IMAGES, TEST_LABELS)
    };
    let prefix = idx::split_prefix(train);
    let image_name = format!("<embedded>/{prefix}-images-idx3-ubyte.gz");
    let label_name = format!("<embedded>/{prefix}-labels-idx1-ubyte.gz");
    let image_bytes = idx::gunzip_if_needed(images.to_vec(), Path::new(&image_name))?;
    let label_bytes = idx::gunzip_if_needed(labels.to_vec(), Path::new(&label_name))?;
    idx::pair_from_bytes(
        "fashion-mnist",
        SOURCE,
        (&image_bytes, Path::new(&image_name)),
        (&label_bytes, Path::new(&label_name)),
        Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()),
    )
}
