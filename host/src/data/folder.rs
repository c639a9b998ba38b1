//! Image folders: one sub-folder per class (as torchvision's `ImageFolder`), JPEG and PNG.
//!
//! Class names are the sub-folder names in sorted order; label `i` is the `i`-th. Each class
//! folder is searched recursively for `.png`, `.jpg` and `.jpeg` files (any case), listed in
//! sorted path order. Images are decoded to RGB and resized to `size x size` (bilinear) when
//! a batch is gathered, so opening a large folder is quick.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::Dataset;
use crate::error::{Error, Result};

/// File extensions read as images.
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
        let path = entry.path();
        if !hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The class sub-folders of `dir`, sorted.
pub fn class_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(entries(dir)?.into_iter().filter(|p| p.is_dir()).collect())
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in entries(dir)? {
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// True when `dir` has at least one sub-folder holding an image file directly.
pub fn looks_like_image_folder(dir: &Path) -> bool {
    class_dirs(dir).is_ok_and(|classes| {
        classes.iter().any(|c| {
            std::fs::read_dir(c).is_ok_and(|mut it| {
                it.any(|e| e.is_ok_and(|e| is_image(&e.path()) || e.path().is_dir()))
            })
        })
    })
}

/// True when `dir` holds image files directly and no sub-folder holding images: a plain
/// collection (one's own photos) rather than one folder per class.
pub fn holds_only_images(dir: &Path) -> bool {
    let Ok(list) = entries(dir) else {
        return false;
    };
    list.iter().any(|p| p.is_file() && is_image(p)) && !looks_like_image_folder(dir)
}

/// Every image below `dir` (nested folders included) as one dataset of `size x size` RGB
/// images without labels.
pub fn read_plain(name: &str, dir: &Path, size: usize) -> Result<Dataset> {
    let mut paths = Vec::new();
    collect_images(dir, &mut paths)?;
    if paths.is_empty() {
        return Err(Error::file(
            dir,
            "no images here or below (expected .png, .jpg or .jpeg files)",
        ));
    }
    let labels = vec![0; paths.len()];
    Dataset::from_files(
        name,
        dir.display().to_string(),
        paths,
        labels,
        Vec::new(),
        size,
    )
}

/// Lists the class folders of `dir` into a dataset of `size x size` RGB images.
pub fn read_dir(name: &str, dir: &Path, size: usize) -> Result<Dataset> {
    let classes = class_dirs(dir)?;
    if classes.is_empty() {
        return Err(Error::file(
            dir,
            "no class sub-folders: expected one folder per class holding .png/.jpg images",
        ));
    }
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    let mut names = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let before = paths.len();
        collect_images(class, &mut paths)?;
        if paths.len() == before {
            return Err(Error::file(
                class,
                "no images in this class folder (expected .png, .jpg or .jpeg files)",
            ));
        }
        labels.resize(paths.len(), label as i64);
        names.push(
            class
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    Dataset::from_files(name, dir.display().to_string(), paths, labels, names, size)
}

/// Decodes an image file to RGB, resized to `size x size`: `[3, size, size]` bytes.
pub fn decode_image(path: &Path, size: usize) -> Result<Vec<u8>> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let img = reader
        .decode()
        .map_err(|e| Error::file(path, format!("cannot decode image (PNG or JPEG): {e}")))?;
    let mut rgb = img.to_rgb8();
    let s = u32::try_from(size).map_err(|_| Error::Invalid(format!("image size {size}")))?;
    if rgb.width() != s || rgb.height() != s {
        rgb = image::imageops::resize(&rgb, s, s, FilterType::Triangle);
    }
    let plane = size * size;
    let mut out = vec![0u8; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
    Ok(out)
}
