//! `curves.png`: the metrics of a run drawn from `metrics.jsonl` when the run ends (and again
//! with `sslhost curves RUN_DIR`).
//!
//! One panel per metric (`loss`, `lr`, `tau`, the `knn*` accuracies first, then any other
//! number logged at two steps or more), two panels a row, step on the x axis, drawn with
//! plotters in DejaVu Sans (matplotlib's default face): a title with the last value, tick
//! labels on both axes, a light grid. `lr` is on a log axis (its zeros, the end of a cosine,
//! cannot be and are left out). Noisy metrics are smoothed as TensorBoard does (an EMA with
//! its start debiased, weight 0.6 unless asked otherwise) with the raw series faint behind;
//! schedules (`lr`, `tau`) are drawn as they are. A value logged at one step only (a final kNN
//! accuracy) shows as a marker, as do the points of short series; a NaN (`null` in the JSON)
//! breaks the line. A step logged twice (a resumed run repeats the steps after its checkpoint)
//! keeps its last value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::files::write_atomic;

/// Width of one panel in pixels.
pub const PANEL_WIDTH: u32 = 480;
/// Height of one panel in pixels.
pub const PANEL_HEIGHT: u32 = 300;
/// Panels per row.
pub const COLUMNS: u32 = 2;
/// At most this many panels are drawn.
pub const MAX_PANELS: usize = 16;
/// TensorBoard's default smoothing weight.
pub const DEFAULT_SMOOTHING: f64 = 0.6;

/// Metrics drawn first, in this order (then keys starting with `knn`).
const FIRST: [&str; 3] = ["loss", "lr", "tau"];
/// Keys of `metrics.jsonl` that are bookkeeping, not curves.
const NOT_CURVES: [&str; 5] = ["step", "time", "epoch", "wall_s", "img_per_s"];
/// Schedules: exact by construction, never smoothed.
const SCHEDULES: [&str; 2] = ["lr", "tau"];

/// The colour of curves and markers (matplotlib's first colour).
pub const LINE: RGBColor = RGBColor(31, 119, 180);
const TEXT: RGBColor = RGBColor(20, 20, 20);
const MUTED: RGBColor = RGBColor(100, 100, 100);
const GRID: RGBColor = RGBColor(228, 228, 228);
/// Series of at most this many points are drawn with markers and never smoothed.
const FEW_POINTS: usize = 30;
/// The raw series behind a smoothed one.
const FAINT: RGBColor = RGBColor(180, 208, 230);
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
pub fn render_run(run_dir: &Path, options: &CurveOptions) -> Result<Option<PathBuf>> {
    render_run_to(run_dir, &run_dir.join("curves.png"), options)
}

/// [`render_run`] into the PNG file `out`.
pub fn render_run_to(
    run_dir: &Path,
    out: &Path,
    options: &CurveOptions,
) -> Result<Option<PathBuf>> {
    let metrics = run_dir.join("metrics.jsonl");
    let Some(text) = crate::files::read_regular(&metrics)? else {
        return Ok(None);
    };
    let series = curves(&parse_metrics(&text));
    if series.is_empty() {
        return Ok(None);
    }
    let png =
        crate::data::png::encode(&render(&series, options)?).map_err(|e| Error::file(out, e))?;
    write_atomic(out, &png)?;
    Ok(Some(out.to_path_buf()))
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

/// How `curves.png` is drawn.
#[derive(Clone, Copy, Debug)]
pub struct CurveOptions {
    /// TensorBoard's smoothing weight in [0, 1): 0 draws the raw series only.
    pub smoothing: f64,
}

impl Default for CurveOptions {
    fn default() -> Self {
        CurveOptions {
            smoothing: DEFAULT_SMOOTHING,
        }
    }
}

/// The panels of `series`, [`COLUMNS`] a row, each [`PANEL_WIDTH`] x [`PANEL_HEIGHT`]
/// (one column for a single series).
pub fn render(series: &[Series], options: &CurveOptions) -> Result<RgbImage> {
    register_font();
    let n = series.len().max(1) as u32;
    let cols = n.min(COLUMNS);
    let rows = n.div_ceil(cols);
    let (width, height) = (cols * PANEL_WIDTH, rows * PANEL_HEIGHT);
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let cells = root.split_evenly((rows as usize, cols as usize));
        for (cell, s) in cells.iter().zip(series) {
            panel(cell, s, options)
                .map_err(|e| Error::Other(format!("drawing {}: {e}", s.name)))?;
        }
        root.present()
            .map_err(|e| Error::Other(format!("drawing the curves: {e}")))?;
    }
    RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| Error::Other("the curves' buffer has the wrong size".into()))
}

/// DejaVu Sans as plotters' sans-serif face (the binary carries it: no system fonts needed).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; plotters only fails on invalid data.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// One metric's panel in `area`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &Series,
    options: &CurveOptions,
) -> DrawResult<DB> {
    let log = s.name == "lr" && {
        let positive: Vec<f64> = s.finite().map(|p| p.1).filter(|&v| v > 0.0).collect();
        let (lo, hi) = bounds(positive.iter().copied());
        // Within a decade a log axis would show one tick label, and a linear one reads better.
        !positive.is_empty() && hi >= 10.0 * lo
    };
    // The raw segments (broken at NaN; a log axis also leaves out values <= 0) and, for
    // noisy metrics, their smoothed version.
    let segments = segments(s, log);
    let count: usize = segments.iter().map(Vec::len).sum();
    let smoothed =
        (options.smoothing > 0.0 && !SCHEDULES.contains(&s.name.as_str()) && count > FEW_POINTS)
            .then(|| smooth(&segments, options.smoothing));
    let all = segments.iter().flatten();
    let (lo, hi) = bounds(all.clone().map(|p| p.1));
    let (x_lo, x_hi) = bounds(all.map(|p| p.0));
    let Some(&(_, last)) = segments.last().and_then(|seg| seg.last()) else {
        return Ok(());
    };
    let x_range = if x_hi > x_lo {
        x_lo..x_hi
    } else {
        x_lo - 1.0..x_hi + 1.0
    };
    let caption = format!("{}   (last {})", s.name, number(last));
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(caption, ("sans-serif", 17).into_font().color(&TEXT))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(58);
    if log {
        let chart = chart.build_cartesian_2d(x_range, (lo / 1.25..hi * 1.25).log_scale())?;
        draw(chart, &segments, smoothed.as_deref())
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.06
        } else {
            (hi.abs() * 0.05).max(1e-6)
        };
        let chart = chart.build_cartesian_2d(x_range, lo - pad..hi + pad)?;
        draw(chart, &segments, smoothed.as_deref())
    }
}

/// The mesh, the raw series (faint behind a smoothed one) and markers on short series.
fn draw<DB, Y>(
    mut chart: ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    raw: &[Vec<(f64, f64)>],
    smoothed: Option<&[Vec<(f64, f64)>]>,
) -> DrawResult<DB>
where
    DB: DrawingBackend,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let labels = ("sans-serif", 13).into_font().color(&TEXT);
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .axis_style(MUTED)
        .x_labels(6)
        .y_labels(6)
        .x_desc("step")
        .axis_desc_style(("sans-serif", 13).into_font().color(&MUTED))
        .label_style(labels)
        .x_label_formatter(&|x| step_label(*x))
        .y_label_formatter(&|y| number(*y))
        .draw()?;
    let raw_colour = if smoothed.is_some() { FAINT } else { LINE };
    for seg in raw {
        chart.draw_series(LineSeries::new(
            seg.iter().copied(),
            raw_colour.stroke_width(1),
        ))?;
    }
    for seg in smoothed.unwrap_or_default() {
        chart.draw_series(LineSeries::new(seg.iter().copied(), LINE.stroke_width(2)))?;
    }
    // Markers where a line would not show the points: short series and isolated points.
    let count: usize = raw.iter().map(Vec::len).sum();
    for seg in raw
        .iter()
        .filter(|seg| count <= FEW_POINTS || seg.len() == 1)
    {
        chart.draw_series(seg.iter().map(|&p| Circle::new(p, 3, LINE.filled())))?;
    }
    Ok(())
}

/// The finite runs of `s` as (step, value) points; on a log axis values <= 0 break it too.
fn segments(s: &Series, log: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(step, v) in &s.points {
        match v.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
            Some(v) => out.last_mut().expect("never empty").push((step as f64, v)),
            None if out.last().is_some_and(|seg| !seg.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|seg| !seg.is_empty());
    out
}

/// TensorBoard's smoothing: an exponential moving average with weight `w` over the finite
/// points in order (across NaN gaps), divided by `1 - w^n` so the start is not pulled to 0.
pub fn smooth(segments: &[Vec<(f64, f64)>], w: f64) -> Vec<Vec<(f64, f64)>> {
    let (mut last, mut n) = (0.0, 0);
    segments
        .iter()
        .map(|seg| {
            seg.iter()
                .map(|&(x, v)| {
                    last = last * w + (1.0 - w) * v;
                    n += 1;
                    (x, last / (1.0 - w.powi(n)))
                })
                .collect()
        })
        .collect()
}

/// The lowest and highest of `values` (infinite bounds for none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// A step as a tick label: whole numbers (none between them), `12k` from ten thousand on.
fn step_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-6 {
        return String::new();
    }
    let x = x.round();
    if x.abs() >= 10_000.0 {
        number(x / 1000.0) + "k"
    } else {
        format!("{}", x as i64)
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
        let path = render_run(&dir, &CurveOptions::default())
            .unwrap()
            .expect("something to draw");
        assert_eq!(path, dir.join("curves.png"));
        let img = image::open(&path).unwrap().to_rgb8();
        // Five panels: two columns, three rows.
        assert_eq!(img.dimensions(), (2 * PANEL_WIDTH, 3 * PANEL_HEIGHT));
        let cell = |i: u32| {
            let (x0, y0) = (i % 2 * PANEL_WIDTH, i / 2 * PANEL_HEIGHT);
            (0..PANEL_WIDTH).flat_map(move |x| (0..PANEL_HEIGHT).map(move |y| (x0 + x, y0 + y)))
        };
        let line = image::Rgb([LINE.0, LINE.1, LINE.2]);
        for i in 0..5u32 {
            let drawn = cell(i)
                .filter(|&(x, y)| *img.get_pixel(x, y) == line)
                .count();
            // A single kNN point is a marker; curves have more.
            assert!(drawn >= 25, "panel {i}: {drawn} curve pixels");
            // Tick labels: dark text in the strip left of the plot, at several heights.
            let (x0, y0) = (i % 2 * PANEL_WIDTH, i / 2 * PANEL_HEIGHT);
            let rows: Vec<u32> = (40..PANEL_HEIGHT - 40)
                .filter(|&y| {
                    (10..60).any(|x| img.get_pixel(x0 + x, y0 + y).0.iter().all(|&c| c < 90))
                })
                .collect();
            let labels = rows.windows(2).filter(|w| w[1] > w[0] + 3).count() + 1;
            assert!(labels >= 3, "panel {i}: {labels} y tick labels");
        }
        // The empty sixth cell stays white.
        assert!(cell(5).all(|(x, y)| img.get_pixel(x, y).0 == [255, 255, 255]));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn long_noisy_runs_are_smoothed_and_a_decaying_lr_is_logarithmic() {
        // 300 steps: a noisy falling loss, a warm-up then cosine lr over three decades.
        let points = |f: &dyn Fn(f64) -> f64| -> Vec<(u64, Option<f64>)> {
            (0..300u64).map(|i| (i, Some(f(i as f64)))).collect()
        };
        let series = vec![
            Series {
                name: "loss".into(),
                points: points(&|i| 4.0 - i / 100.0 + 0.3 * (i * 1.7).sin()),
            },
            Series {
                name: "lr".into(),
                points: points(&|i| {
                    if i < 30.0 {
                        (i + 1.0) / 30.0
                    } else {
                        1e-3 + 0.5 * (1.0 + (std::f64::consts::PI * (i - 30.0) / 270.0).cos())
                    }
                }),
            },
        ];
        let img = render(&series, &CurveOptions::default()).unwrap();
        let count = |x0: u32, c: RGBColor| {
            (x0..x0 + PANEL_WIDTH)
                .flat_map(|x| (0..PANEL_HEIGHT).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == [c.0, c.1, c.2])
                .count()
        };
        // The loss: smoothed in the line colour over the faint raw series.
        assert!(
            count(0, FAINT) > 100,
            "no raw series behind the smoothed loss"
        );
        assert!(count(0, LINE) > 100);
        // The lr: never smoothed, on a log axis with a label per decade (1e-3 .. 1).
        assert_eq!(count(PANEL_WIDTH, FAINT), 0);
        let labels = (40..PANEL_HEIGHT - 40)
            .filter(|&y| {
                (10..60).any(|x| img.get_pixel(PANEL_WIDTH + x, y).0.iter().all(|&c| c < 90))
            })
            .collect::<Vec<_>>();
        let labels = labels.windows(2).filter(|w| w[1] > w[0] + 3).count() + 1;
        assert!(labels >= 3, "{labels} y tick labels on the lr panel");
    }

    #[test]
    fn smoothing_is_tensorboards_debiased_ema() {
        let raw = vec![vec![(0.0, 1.0), (1.0, 3.0)], vec![(3.0, 3.0)]];
        let s = smooth(&raw, 0.5);
        // First point: itself; then (0.5 * 0.5 + 0.5 * 3) / (1 - 0.25) = 2.333..
        assert_eq!(s[0][0], (0.0, 1.0));
        assert!((s[0][1].1 - 1.75 / 0.75).abs() < 1e-12);
        // Across the gap: ((0.875) * 0.5 + 1.5) / (1 - 0.125).
        assert!((s[1][0].1 - (1.75 * 0.5 + 1.5) / 0.875).abs() < 1e-12);
        // A constant stays constant; weight 0 is the raw series.
        let flat = smooth(&[vec![(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)]], 0.9);
        assert!(flat[0].iter().all(|p| (p.1 - 2.0).abs() < 1e-12));
        assert_eq!(smooth(&raw, 0.0), raw);
    }

    #[test]
    fn a_log_axis_leaves_out_zeros_and_nan_breaks_lines() {
        let all = parse_metrics(METRICS);
        let lr = all.iter().find(|s| s.name == "lr").unwrap();
        assert_eq!(
            segments(lr, true),
            vec![vec![(10.0, 0.1), (20.0, 0.2), (30.0, 0.1), (40.0, 0.05)]]
        );
        assert_eq!(segments(lr, false)[0].len(), 5);
        let loss = all.iter().find(|s| s.name == "loss").unwrap();
        assert_eq!(
            segments(loss, false),
            vec![
                vec![(0.0, 2.0), (10.0, 1.5)],
                vec![(30.0, 0.75), (40.0, 0.5)]
            ]
        );
        assert_eq!(step_label(12_500.0), "12.5k");
        assert_eq!(step_label(300.0), "300");
        assert_eq!(step_label(40.5), "");
    }

    #[test]
    fn nothing_to_draw_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("sslhost-curves-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(render_run(&dir, &CurveOptions::default()).unwrap(), None);
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\":0,\"name\":\"x\"}\ngarbage\n",
        )
        .unwrap();
        assert_eq!(render_run(&dir, &CurveOptions::default()).unwrap(), None);
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
