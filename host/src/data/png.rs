//! Writing a batch of images as one PNG grid, so a person can see what a model sees.

use std::path::Path;

use image::{ImageFormat, RgbImage};

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
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    crate::files::write_atomic(path, bytes.get_ref())
}
