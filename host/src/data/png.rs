//! Writing a batch of images as one PNG grid, so a person can see what a model sees.
//!
//! Every PNG sslhost writes carries a `Software` text chunk naming sslhost, so that a script
//! may replace an image sslhost wrote before but never another file (see [`ours`]).

use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::tensor::DynTensor;

/// Writes images `[N, C, H, W]` (C = 1 or 3, values in [0, 1], clamped) as a grid with
/// `nrow` images per row and `padding` white pixels between them.
pub fn save_grid(images: &DynTensor, path: &Path, nrow: usize, padding: usize) -> Result<()> {
    let shape = images.shape();
    let [n, c, h, w] = match shape.as_slice() {
        &[n, c, h, w] if c == 1 || c == 3 => [n, c, h, w],
        _ => {
            return Err(Error::Shape(format!(
                "save_grid needs images [N, 1 or 3, H, W], got {shape:?}"
            )));
        }
    };
    if nrow == 0 {
        return Err(Error::Invalid("save_grid: nrow must be at least 1".into()));
    }
    let values = images.to_f64_vec()?;
    let cols = nrow.min(n);
    let rows = n.div_ceil(cols);
    let width = cols * w + (cols + 1) * padding;
    let height = rows * h + (rows + 1) * padding;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let (x0, y0) = (
            padding + (i % cols) * (w + padding),
            padding + (i / cols) * (h + padding),
        );
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    let v = values[((i * c + ch) * h + y) * w + x];
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8
                };
                let rgb = if c == 1 {
                    [px(0); 3]
                } else {
                    [px(0), px(1), px(2)]
                };
                img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(rgb));
            }
        }
    }
    crate::files::write_atomic(path, &encode(&img).map_err(|e| Error::file(path, e))?)
}

/// The `Software` text of sslhost's PNGs.
fn software() -> String {
    format!("sslhost {}", env!("CARGO_PKG_VERSION"))
}

/// `img` as PNG bytes, marked as sslhost's.
pub fn encode(img: &RgbImage) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let bad = |e: png::EncodingError| format!("cannot encode PNG: {e}");
    let mut encoder = png::Encoder::new(&mut bytes, img.width(), img.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk("Software".into(), software())
        .map_err(bad)?;
    let mut writer = encoder.write_header().map_err(bad)?;
    writer.write_image_data(img.as_raw()).map_err(bad)?;
    writer.finish().map_err(bad)?;
    Ok(bytes)
}

/// Whether the file at `path` is a PNG that sslhost wrote (its `Software` text chunk).
pub fn ours(path: &Path) -> bool {
    // Images are small; a large file is not one of ours.
    let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() < 1 << 28);
    let Some(bytes) = small.then(|| std::fs::read(path).ok()).flatten() else {
        return false;
    };
    let Ok(reader) = png::Decoder::new(std::io::Cursor::new(bytes)).read_info() else {
        return false;
    };
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .any(|t| t.keyword == "Software" && t.text.starts_with("sslhost"))
}
