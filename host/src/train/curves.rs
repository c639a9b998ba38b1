//! `curves.png`: the metrics of a run drawn from `metrics.jsonl` when the run ends.
//!
//! One panel per metric (`loss`, `lr`, `tau`, the `knn*` accuracies first, then any other
//! number logged at two steps or more), two panels a row, step on the x axis. Each panel has
//! its title and last value, the lowest and highest value on the y axis and the first and
//! last step on the x axis, written with a small built-in 5x7 bitmap font. A value logged at
//! one step only (a final kNN accuracy) shows as a marker; a NaN (`null` in the JSON) breaks
//! the line. A step logged twice (a resumed run repeats the steps after its checkpoint)
//! keeps its last value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::files::write_atomic;

/// Width of one panel in pixels.
pub const PANEL_WIDTH: u32 = 400;
/// Height of one panel in pixels.
pub const PANEL_HEIGHT: u32 = 250;
/// Panels per row.
pub const COLUMNS: u32 = 2;
/// At most this many panels are drawn.
pub const MAX_PANELS: usize = 16;

/// Metrics drawn first, in this order (then keys starting with `knn`).
const FIRST: [&str; 3] = ["loss", "lr", "tau"];
/// Keys of `metrics.jsonl` that are bookkeeping, not curves.
const NOT_CURVES: [&str; 5] = ["step", "time", "epoch", "wall_s", "img_per_s"];

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([90, 90, 90]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const TEXT: Rgb<u8> = Rgb([20, 20, 20]);
const MUTED: Rgb<u8> = Rgb([110, 110, 110]);
/// The colour of curves and markers.
pub const LINE: Rgb<u8> = Rgb([31, 119, 180]);

/// One metric over the steps: `None` where it was logged as NaN (`null`).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The metric's key.
    pub name: String,
    /// `(step, value)` by increasing step.
    pub points: Vec<(u64, Option<f64>)>,
}

impl Series {
    fn finite(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.points
            .iter()
            .filter_map(|&(s, v)| v.filter(|v| v.is_finite()).map(|v| (s, v)))
    }
}

/// Renders `curves.png` in `run_dir` from its `metrics.jsonl`. `None` when there is nothing
/// to draw (no metrics file, or no numeric metric).
pub fn render_run(run_dir: &Path) -> Result<Option<PathBuf>> {
    let metrics = run_dir.join("metrics.jsonl");
    let Some(text) = crate::files::read_regular(&metrics)? else {
        return Ok(None);
    };
    let series = curves(&parse_metrics(&text));
    if series.is_empty() {
        return Ok(None);
    }
    let out = run_dir.join("curves.png");
    let png = crate::data::png::encode(&render(&series)).map_err(|e| Error::file(&out, e))?;
    write_atomic(&out, &png)?;
    Ok(Some(out))
}

/// Every key of the JSON lines with its values by step. Lines that are not JSON objects
/// with a `step` are skipped; strings and bools are not values.
pub fn parse_metrics(text: &str) -> Vec<Series> {
    let mut by_key: BTreeMap<String, BTreeMap<u64, Option<f64>>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(line) else {
            continue;
        };
        let Some(step) = map.get("step").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        for (k, v) in &map {
            let value = match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::Null => None,
                _ => continue,
            };
            by_key.entry(k.clone()).or_default().insert(step, value);
        }
    }
    by_key
        .into_iter()
        .map(|(name, points)| Series {
            name,
            points: points.into_iter().collect(),
        })
        .collect()
}

/// The series worth a panel, in panel order: `loss`, `lr`, `tau` and `knn*` with at least
/// one finite value, then other metrics with finite values at two steps or more (not the
/// bookkeeping keys `step`, `time`, `epoch`, `wall_s`, `img_per_s`), at most [`MAX_PANELS`].
pub fn curves(all: &[Series]) -> Vec<Series> {
    let rank = |name: &str| match FIRST.iter().position(|f| *f == name) {
        Some(i) => i,
        None if name.starts_with("knn") => FIRST.len(),
        None => FIRST.len() + 1,
    };
    let mut chosen: Vec<&Series> = all
        .iter()
        .filter(|s| !NOT_CURVES.contains(&s.name.as_str()))
        .filter(|s| {
            let needed = if rank(&s.name) <= FIRST.len() { 1 } else { 2 };
            s.finite().count() >= needed
        })
        .collect();
    chosen.sort_by(|a, b| (rank(&a.name), &a.name).cmp(&(rank(&b.name), &b.name)));
    chosen.into_iter().take(MAX_PANELS).cloned().collect()
}

/// The panels of `series`, [`COLUMNS`] a row, each [`PANEL_WIDTH`] x [`PANEL_HEIGHT`]
/// (one column for a single series).
pub fn render(series: &[Series]) -> RgbImage {
    let n = series.len().max(1) as u32;
    let cols = n.min(COLUMNS);
    let rows = n.div_ceil(cols);
    let mut img = RgbImage::from_pixel(cols * PANEL_WIDTH, rows * PANEL_HEIGHT, BACKGROUND);
    for (i, s) in series.iter().enumerate() {
        let i = i as u32;
        let mut canvas = Canvas {
            img: &mut img,
            x0: (i % cols * PANEL_WIDTH) as i64,
            y0: (i / cols * PANEL_HEIGHT) as i64,
        };
        canvas.panel(s);
    }
    img
}

/// The plot area of a panel, relative to the panel: `(left, top, right, bottom)`.
pub const PLOT: (i64, i64, i64, i64) = (66, 34, PANEL_WIDTH as i64 - 16, PANEL_HEIGHT as i64 - 30);
/// Pixels between the plot frame and the lowest/highest value.
const INSET: i64 = 6;

/// Drawing in one panel: coordinates are relative to its top-left corner, and pixels
/// outside the image are ignored.
struct Canvas<'a> {
    img: &'a mut RgbImage,
    x0: i64,
    y0: i64,
}

impl Canvas<'_> {
    fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        let (x, y) = (self.x0 + x, self.y0 + y);
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
        for dy in 0..h {
            for dx in 0..w {
                self.put(x + dx, y + dy, c);
            }
        }
    }

    /// A line two pixels thick (Bresenham).
    fn line(&mut self, (mut x, mut y): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
        let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
        let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.rect(x, y, 2, 2, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// `text` with its top-left corner at `(x, y)`, each font pixel `scale` pixels wide.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb<u8>) {
        for (i, ch) in text.chars().enumerate() {
            let rows = font::glyph(ch);
            let gx = x + i as i64 * font::ADVANCE * scale;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..font::WIDTH {
                    if bits & (1 << (font::WIDTH - 1 - col)) != 0 {
                        self.rect(gx + col * scale, y + r as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Like [`Canvas::text`], ending at `x`.
    fn text_right(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb<u8>) {
        self.text(x - font::width(text) * scale, y, text, scale, c);
    }

    fn panel(&mut self, s: &Series) {
        let (left, top, right, bottom) = PLOT;
        let points: Vec<(u64, f64)> = s.finite().collect();
        self.text(10, 8, &s.name, 2, TEXT);
        if let Some(&(_, last)) = points.last() {
            let label = format!("last {}", number(last));
            self.text_right(PANEL_WIDTH as i64 - 16, 14, &label, 1, MUTED);
        }
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return;
        };
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
                (lo.min(v), hi.max(v))
            });
        let (x_lo, x_hi) = (first.0, last.0);

        // Frame, grid lines at the lowest and highest value (one line in the middle for a
        // flat series), axes, and their labels.
        let (y_hi, y_lo) = (top + INSET, bottom - INSET);
        let levels = if hi == lo {
            vec![((y_hi + y_lo) / 2, hi)]
        } else {
            vec![(y_hi, hi), (y_lo, lo)]
        };
        for x in left..=right {
            self.put(x, top, GRID);
            for &(y, _) in &levels {
                self.put(x, y, GRID);
            }
        }
        for y in top..=bottom {
            self.put(right, y, GRID);
        }
        for x in left..=right {
            self.put(x, bottom, AXIS);
        }
        for y in top..=bottom {
            self.put(left, y, AXIS);
        }
        for &(y, v) in &levels {
            self.rect(left - 4, y, 4, 1, AXIS);
            self.text_right(left - 7, y - 3, &number(v), 1, TEXT);
        }
        if x_hi == x_lo {
            let label = x_lo.to_string();
            self.text(
                (left + right) / 2 - font::width(&label) / 2,
                bottom + 8,
                &label,
                1,
                TEXT,
            );
        } else {
            self.text(left, bottom + 8, &x_lo.to_string(), 1, TEXT);
            self.text_right(right, bottom + 8, &x_hi.to_string(), 1, TEXT);
            self.text(
                (left + right) / 2 - font::width("step") / 2,
                bottom + 8,
                "step",
                1,
                MUTED,
            );
        }

        // Values to pixels: a flat series sits in the middle, one step in the centre.
        let px = |step: u64| -> i64 {
            let (x_a, x_b) = (left + INSET, right - INSET);
            if x_hi == x_lo {
                return (x_a + x_b) / 2;
            }
            let t = (step - x_lo) as f64 / (x_hi - x_lo) as f64;
            x_a + (t * (x_b - x_a) as f64).round() as i64
        };
        let py = |v: f64| -> i64 {
            if hi == lo {
                return (y_hi + y_lo) / 2;
            }
            let t = (v - lo) / (hi - lo);
            y_lo - (t * (y_lo - y_hi) as f64).round() as i64
        };

        // The curve, broken at NaN; isolated points (and all points of short series) get a
        // marker.
        let few = points.len() <= 30;
        let mut prev: Option<(i64, i64)> = None;
        let values = &s.points;
        for (i, &(step, v)) in values.iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite()) else {
                prev = None;
                continue;
            };
            let p = (px(step), py(v));
            if let Some(q) = prev {
                self.line(q, p, LINE);
            }
            let next_finite = values
                .get(i + 1)
                .is_some_and(|&(_, v)| v.is_some_and(f64::is_finite));
            if few || (prev.is_none() && !next_finite) {
                self.rect(p.0 - 2, p.1 - 2, 5, 5, LINE);
            }
            prev = Some(p);
        }
    }
}

/// A number in at most about eight characters: four significant digits, scientific
/// notation outside `[0.001, 100000)`.
pub fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else {
            format!("{v}")
        };
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let digits = a.log10().floor() as i32 + 1;
        let decimals = (4 - digits).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.2e}");
        match s.split_once('e') {
            Some((m, e)) if m.contains('.') => {
                format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => s,
        }
    }
}

/// A 5x7 bitmap font: digits, lower-case letters (upper case is drawn as lower case) and
/// `. - _ % + : / = ( ) ?`; anything else is drawn as `?`.
mod font {
    /// Glyph width in pixels.
    pub const WIDTH: i64 = 5;
    /// Horizontal distance between glyphs.
    pub const ADVANCE: i64 = 6;

    /// Width of `text` in pixels at scale 1.
    pub fn width(text: &str) -> i64 {
        let n = text.chars().count() as i64;
        (n * ADVANCE - 1).max(0)
    }

    /// Seven rows, top first; bit 4 is the leftmost pixel.
    pub fn glyph(c: char) -> [u8; 7] {
        match c.to_ascii_lowercase() {
            '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
            '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
            '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
            '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
            '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
            '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
            '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
            '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
            '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
            '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
            'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
            'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
            'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
            'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
            'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
            'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
            'g' => [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
            'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
            'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
            'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
            'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
            'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
            'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
            'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
            'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
            'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
            'q' => [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01],
            'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
            's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
            't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
            'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
            'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
            'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
            'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
            'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
            'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
            '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
            '-' => [0x00, 0x00, 0x00, 0x0E, 0x00, 0x00, 0x00],
            '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
            '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
            '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
            ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
            '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
            '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
            '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
            ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
            ' ' => [0x00; 7],
            _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"{"step":0,"time":1.0,"epoch":0,"loss":2.0,"lr":0.0,"note":"warm-up"}
{"step":10,"time":2.0,"epoch":0,"loss":1.5,"lr":0.1,"tau":0.99}
{"step":20,"time":3.0,"epoch":1,"loss":null,"lr":0.2,"tau":0.995}
not json at all
{"step":30,"time":4.0,"epoch":1,"loss":0.75,"lr":0.1,"tau":1.0,"grad_norm":3.5,"ok":true}
{"step":40,"time":5.0,"epoch":2,"loss":0.5,"lr":0.05,"tau":1.0,"grad_norm":2.5}
{"step":40,"time":6.0,"knn_top1":0.625}
"#;

    #[test]
    fn panels_are_chosen_and_ordered() {
        let names: Vec<String> = curves(&parse_metrics(METRICS))
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["loss", "lr", "tau", "knn_top1", "grad_norm"]);
        let all = parse_metrics(METRICS);
        let loss = all.iter().find(|s| s.name == "loss").unwrap();
        assert_eq!(
            loss.points,
            vec![
                (0, Some(2.0)),
                (10, Some(1.5)),
                (20, None),
                (30, Some(0.75)),
                (40, Some(0.5))
            ]
        );
    }

    #[test]
    fn curves_png_has_a_drawn_panel_per_metric() {
        let dir = std::env::temp_dir().join(format!("sslhost-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), METRICS).unwrap();
        let path = render_run(&dir).unwrap().expect("something to draw");
        assert_eq!(path, dir.join("curves.png"));
        let img = image::open(&path).unwrap().to_rgb8();
        // Five panels: two columns, three rows.
        assert_eq!(img.dimensions(), (2 * PANEL_WIDTH, 3 * PANEL_HEIGHT));
        let (left, top, right, bottom) = PLOT;
        for i in 0..5u32 {
            let (x0, y0) = (i % 2 * PANEL_WIDTH, i / 2 * PANEL_HEIGHT);
            let drawn = (left + 1..right)
                .flat_map(|x| (top + 1..bottom).map(move |y| (x, y)))
                .filter(|&(x, y)| *img.get_pixel(x0 + x as u32, y0 + y as u32) == LINE)
                .count();
            // A single kNN point is a 5x5 marker; curves have more.
            assert!(drawn >= 25, "panel {i}: {drawn} curve pixels");
        }
        // The empty sixth cell stays background.
        let (x0, y0) = (PANEL_WIDTH, 2 * PANEL_HEIGHT);
        assert!(
            (0..PANEL_WIDTH)
                .all(|x| (0..PANEL_HEIGHT).all(|y| *img.get_pixel(x0 + x, y0 + y) == BACKGROUND))
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn nothing_to_draw_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("sslhost-curves-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(render_run(&dir).unwrap(), None);
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\":0,\"name\":\"x\"}\ngarbage\n",
        )
        .unwrap();
        assert_eq!(render_run(&dir).unwrap(), None);
        assert!(!dir.join("curves.png").exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(0.123456), "0.1235");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(12345.6), "12346");
        assert_eq!(number(1.5e-5), "1.5e-5");
        assert_eq!(number(2.0e7), "2e7");
        for v in [0.001, 99999.0, -3.25e-9, 1e300] {
            assert!(number(v).len() <= 9, "{v}: {}", number(v));
        }
    }
}
