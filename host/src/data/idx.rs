//! MNIST-format idx files (MNIST, Fashion-MNIST, KMNIST...), plain or gzip-compressed.
//!
//! An idx file is a big-endian `u32` magic number `0x0000TTNN` (`TT` = 0x08 for unsigned
//! bytes, `NN` = number of dimensions), `NN` big-endian `u32` sizes, then the values.
//! Images are idx3 (`0x00000803`: count, rows, columns), labels idx1 (`0x00000801`: count).

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{Dataset, numbered_classes};
use crate::error::{Error, Result};

/// Magic number of idx3 unsigned-byte files (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of idx1 unsigned-byte files (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole file, gunzipping it if it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    gunzip_if_needed(raw, path)
}

/// `raw` itself, or its decompressed contents if it starts with the gzip magic bytes. `path`
/// names the data in errors.
pub fn gunzip_if_needed(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 2);
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt or truncated gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Splits idx `bytes` into its dimensions and values, checking the magic number and that the
/// values fill the dimensions exactly. `path` names the file in errors.
pub fn parse<'a>(bytes: &'a [u8], path: &Path, magic: u32) -> Result<(Vec<usize>, &'a [u8])> {
    let what = match magic {
        IMAGES_MAGIC => "an idx3 image file",
        LABELS_MAGIC => "an idx1 label file",
        _ => "an idx file",
    };
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < 4 {
        return Err(Error::file(
            path,
            format!(
                "truncated: {} bytes, {what} starts with a {header}-byte header",
                bytes.len()
            ),
        ));
    }
    let found = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
    if found != magic {
        return Err(Error::file(
            path,
            format!("not {what}: magic number 0x{found:08x}, expected 0x{magic:08x}"),
        ));
    }
    if bytes.len() < header {
        return Err(Error::file(
            path,
            format!(
                "truncated: {} bytes, {what} starts with a {header}-byte header",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::file(path, format!("implausible sizes {dims:?} in the header")))?;
    let values = &bytes[header..];
    if values.len() < expected {
        return Err(Error::file(
            path,
            format!(
                "truncated: the header promises {dims:?} = {expected} bytes of values, \
                 the file holds {}",
                values.len()
            ),
        ));
    }
    if values.len() > expected {
        return Err(Error::file(
            path,
            format!(
                "{} bytes after the values of shape {dims:?} ({expected} bytes); not {what}?",
                values.len() - expected
            ),
        ));
    }
    Ok((dims, values))
}

/// Parses idx3 image bytes: `(pixels, count, rows, columns)`.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let (dims, values) = parse(bytes, path, IMAGES_MAGIC)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(Error::file(
            path,
            format!("images of {}x{} pixels", dims[1], dims[2]),
        ));
    }
    Ok((values.to_vec(), dims[0], dims[1], dims[2]))
}

/// Reads an idx3 image file: `(pixels, count, rows, columns)`.
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    parse_images(&read_maybe_gz(path)?, path)
}

/// Reads an idx1 label file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let (_, values) = parse(&bytes, path, LABELS_MAGIC)?;
    Ok(values.to_vec())
}

/// Reads an image file and its label file into a dataset. Class names default to numbers
/// `0..=max label`.
pub fn read_pair(
    name: &str,
    images: &Path,
    labels: &Path,
    class_names: Option<Vec<String>>,
) -> Result<Dataset> {
    let source = images
        .parent()
        .unwrap_or(Path::new("."))
        .display()
        .to_string();
    pair_from_bytes(
        name,
        &source,
        (&read_maybe_gz(images)?, images),
        (&read_maybe_gz(labels)?, labels),
        class_names,
    )
}

/// A dataset from the (decompressed) bytes of an image file and a label file, each with the
/// path that names it in errors.
pub fn pair_from_bytes(
    name: &str,
    source: &str,
    (image_bytes, images): (&[u8], &Path),
    (label_bytes, labels): (&[u8], &Path),
    class_names: Option<Vec<String>>,
) -> Result<Dataset> {
    let (pixels, n, rows, cols) = parse_images(image_bytes, images)?;
    let (_, raw_labels) = parse(label_bytes, labels, LABELS_MAGIC)?;
    if raw_labels.len() != n {
        return Err(Error::file(
            labels,
            format!(
                "{} labels, but {} holds {n} images",
                raw_labels.len(),
                images.display()
            ),
        ));
    }
    let classes = match class_names {
        Some(c) => {
            if let Some((i, l)) = raw_labels
                .iter()
                .enumerate()
                .find(|(_, l)| **l as usize >= c.len())
            {
                return Err(Error::file(
                    labels,
                    format!("label {l} of sample {i} is outside 0..{}", c.len()),
                ));
            }
            c
        }
        None => numbered_classes(raw_labels.iter().max().map_or(0, |m| *m as usize + 1)),
    };
    Dataset::from_memory(
        name,
        source,
        pixels,
        [1, rows, cols],
        raw_labels.iter().map(|&l| i64::from(l)).collect(),
        classes,
    )
}

/// Prefix of the split's files: `train` or `t10k`.
pub fn split_prefix(train: bool) -> &'static str {
    if train { "train" } else { "t10k" }
}

/// The spellings of a split's image and label files, most common first: `PREFIX-images-idx3-ubyte`
/// and `PREFIX-images.idx3-ubyte` (the original MNIST archive), each plain or `.gz`.
pub fn file_candidates(dir: &Path, train: bool, kind: &str) -> Vec<PathBuf> {
    let prefix = split_prefix(train);
    let idx = if kind == "images" { "idx3" } else { "idx1" };
    let mut out = Vec::new();
    for sep in ['-', '.'] {
        for ext in [".gz", ""] {
            out.push(dir.join(format!("{prefix}-{kind}{sep}{idx}-ubyte{ext}")));
        }
    }
    out
}

/// The first existing file among the split's spellings in `dir`.
pub fn find_file(dir: &Path, train: bool, kind: &str) -> Option<PathBuf> {
    file_candidates(dir, train, kind)
        .into_iter()
        .find(|p| p.is_file())
}

/// True when `dir` holds the split's image file (in any spelling).
pub fn has_split(dir: &Path, train: bool) -> bool {
    find_file(dir, train, "images").is_some()
}

/// Reads the split from `dir` (`train-*` or `t10k-*` files). A missing label file is an error
/// naming the file that was expected.
pub fn read_dir(
    name: &str,
    dir: &Path,
    train: bool,
    class_names: Option<Vec<String>>,
) -> Result<Dataset> {
    let images = find_file(dir, train, "images").ok_or_else(|| {
        Error::file(
            &file_candidates(dir, train, "images")[0],
            "missing: no idx3 image file for this split (also tried .gz-less and \
             `.idx3-ubyte` spellings)",
        )
    })?;
    let labels = find_file(dir, train, "labels").ok_or_else(|| {
        Error::file(
            &file_candidates(dir, train, "labels")[0],
            format!(
                "missing: the idx1 label file for {} (also tried .gz-less and \
                 `.idx1-ubyte` spellings)",
                images.display()
            ),
        )
    })?;
    read_pair(name, &images, &labels, class_names)
}

/// Fashion-MNIST's class names.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
