//! Helpers shared by the data tests: temporary directories and files in the real formats.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sslhost-{tag}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `self/rel`, with its parent directories created.
    pub fn join(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An idx3 image file: `n` images of `rows x cols`.
pub fn idx3(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), n * rows * cols);
    let mut out = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// An idx1 label file.
pub fn idx1(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzip-compressed bytes.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Pixel `p` of image `i`, recognisable in the output.
pub fn pixel(i: usize, p: usize) -> u8 {
    ((i * 31 + p * 7) % 256) as u8
}

/// Writes a split of an MNIST-format dataset in `dir`: `n` images of `rows x cols` with
/// pixels [`pixel`] and labels `i % classes`; gzip-compressed if `gzip`.
pub fn write_idx_split(
    dir: &Path,
    prefix: &str,
    n: usize,
    (rows, cols): (usize, usize),
    classes: usize,
    gzip: bool,
) {
    std::fs::create_dir_all(dir).unwrap();
    let pixels: Vec<u8> = (0..n)
        .flat_map(|i| (0..rows * cols).map(move |p| pixel(i, p)))
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % classes) as u8).collect();
    let (images, labels) = (idx3(n, rows, cols, &pixels), idx1(&labels));
    let ext = if gzip { ".gz" } else { "" };
    let write = |name: String, bytes: Vec<u8>| {
        std::fs::write(dir.join(name), if gzip { gz(&bytes) } else { bytes }).unwrap()
    };
    write(format!("{prefix}-images-idx3-ubyte{ext}"), images);
    write(format!("{prefix}-labels-idx1-ubyte{ext}"), labels);
}

/// Writes both splits (`train`: `n_train`, `t10k`: `n_test`) of 28x28 images, 10 classes.
pub fn write_mnist_like(dir: &Path, n_train: usize, n_test: usize) {
    write_idx_split(dir, "train", n_train, (28, 28), 10, true);
    write_idx_split(dir, "t10k", n_test, (28, 28), 10, true);
}

/// CIFAR records: `label_bytes` label bytes (given) + 3072 pixels [`pixel`] of image `first + i`.
pub fn cifar_records(labels: &[Vec<u8>], first: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        out.extend_from_slice(l);
        out.extend((0..3072).map(|p| pixel(first + i, p)));
    }
    out
}

/// A CIFAR-10 folder: 5 train batches of `per_batch` records and a test batch of `test`.
pub fn write_cifar10(dir: &Path, per_batch: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for b in 0..5 {
        let labels: Vec<Vec<u8>> = (0..per_batch)
            .map(|i| vec![((b * per_batch + i) % 10) as u8])
            .collect();
        std::fs::write(
            dir.join(format!("data_batch_{}.bin", b + 1)),
            cifar_records(&labels, b * per_batch),
        )
        .unwrap();
    }
    let labels: Vec<Vec<u8>> = (0..test).map(|i| vec![(i % 10) as u8]).collect();
    std::fs::write(dir.join("test_batch.bin"), cifar_records(&labels, 0)).unwrap();
}

/// A CIFAR-100 folder: `train` and `test` records with fine label `(7 * i) % 100` and coarse
/// label `i % 20`.
pub fn write_cifar100(dir: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, n) in [("train.bin", train), ("test.bin", test)] {
        let labels: Vec<Vec<u8>> = (0..n)
            .map(|i| vec![(i % 20) as u8, ((7 * i) % 100) as u8])
            .collect();
        std::fs::write(dir.join(name), cifar_records(&labels, 0)).unwrap();
    }
}

/// A solid-colour RGB image file (format from the extension).
pub fn write_image(path: &Path, (w, h): (u32, u32), rgb: [u8; 3]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let format = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase)
    {
        Some(e) if e == "png" => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    img.save_with_format(path, format).unwrap();
}
