//! Training progress: a bar on the terminal, or facts for the log lines.
//!
//! A step stream ([`Progress`]) measures images per second from its batch sizes and wall
//! time and knows the epoch and the run's total of steps; `log(..)` adds the last loss
//! ([`note_loss`]). When stderr is a terminal (and not under `sslhost check`) this is drawn
//! as an [`indicatif`] bar:
//!
//! ```text
//! epoch 3/100 [=========>            ] 1210/39000 · loss 0.4172 · 812 img/s · ETA 46m
//! ```
//!
//! Otherwise nothing is drawn and the `log(..)` lines carry the same facts ([`Status`]).
//! Log output goes through [`StderrWriter`], which hides the bar while a line is written, so
//! the two never garble each other.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar being drawn, if any, with the id of its [`Progress`]: the log writer hides it
/// while it writes.
static BAR: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
/// Ids of [`Progress`] values.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// What the running step stream and `log(..)` last reported in the current run context.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Status {
    /// Epoch of the current step (from 0, as `b.epoch`), while a step stream runs.
    pub epoch: Option<u64>,
    /// Epochs of the stream.
    pub epochs: u64,
    /// Smoothed images per second, once two batches were taken.
    pub img_per_s: Option<f64>,
    /// The last `loss` given to `log(..)`.
    pub loss: Option<f64>,
}

impl Status {
    /// `epoch 3/100, 812 img/s` (what is known of it; epochs counted from 1 here, while
    /// `b.epoch` counts from 0), for log lines while a stream runs.
    pub fn describe(&self) -> Option<String> {
        let epoch = self.epoch?;
        let mut parts = vec![format!("epoch {}/{}", epoch + 1, self.epochs)];
        if let Some(rate) = self.img_per_s {
            parts.push(format!("{} img/s", rate_text(rate)));
        }
        Some(parts.join(", "))
    }

    /// The bar's message: the last loss and the images per second.
    fn message(&self) -> String {
        let loss = self
            .loss
            .map_or_else(|| "-".to_string(), crate::train::curves::number);
        let rate = self.img_per_s.map_or_else(|| "-".to_string(), rate_text);
        format!("loss {loss} · {rate} img/s")
    }
}

fn rate_text(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

/// This thread's current [`Status`].
pub fn status() -> Status {
    crate::context::progress(|s| *s.borrow())
}

/// Records the loss given to `log(..)`, shown by the bar from now on.
pub fn note_loss(loss: f64) {
    let status = crate::context::progress(|s| {
        let mut s = s.borrow_mut();
        s.loss = Some(loss);
        *s
    });
    if let Some(bar) = active_bar() {
        bar.set_message(status.message());
    }
}

/// Whether a step stream draws a bar: stderr is a terminal and this is not `sslhost check`.
pub fn should_draw(check: bool) -> bool {
    !check && std::io::stderr().is_terminal()
}

/// Images per second over the last batches, with exponentially fading weights.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    images: f64,
    secs: f64,
    last: Option<(Instant, usize)>,
}

impl Throughput {
    /// Weight of the past after each batch.
    const DECAY: f64 = 0.9;

    /// A batch of `size` images is handed out at `now`: the previous batch took the time
    /// since it was handed out.
    pub fn batch(&mut self, now: Instant, size: usize) {
        if let Some((then, n)) = self.last {
            let dt = now.saturating_duration_since(then).as_secs_f64();
            self.images = self.images * Self::DECAY + n as f64;
            self.secs = self.secs * Self::DECAY + dt;
        }
        self.last = Some((now, size));
    }

    /// Smoothed images per second; `None` before the second batch.
    pub fn rate(&self) -> Option<f64> {
        (self.secs > 0.0).then(|| self.images / self.secs)
    }
}

/// The progress of one step stream. Dropping it clears its bar.
pub struct Progress {
    id: u64,
    bar: Option<ProgressBar>,
    throughput: Throughput,
    started: Instant,
    start: u64,
    batches: u64,
    images: u64,
}

impl Progress {
    /// Progress of a stream covering steps `start..total` of `epochs` epochs of
    /// `steps_per_epoch`, drawn as a bar when `draw` (see [`should_draw`]).
    pub fn new(start: u64, total: u64, epochs: u64, steps_per_epoch: u64, draw: bool) -> Self {
        crate::context::progress(|s| {
            let mut s = s.borrow_mut();
            s.epochs = epochs;
            s.img_per_s = None;
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let bar = draw.then(|| {
            let epoch = start / steps_per_epoch.max(1) + 1;
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_position(start)
                .with_prefix(format!("epoch {}/{epochs}", epoch.min(epochs)))
                .with_style(style());
            bar.set_message(status().message());
            // Slow steps still get a live clock.
            bar.enable_steady_tick(Duration::from_millis(500));
            if let Ok(mut active) = BAR.lock()
                && let Some((_, old)) = active.replace((id, bar.clone()))
            {
                old.finish_and_clear();
            }
            bar
        });
        Progress {
            id,
            bar,
            throughput: Throughput::default(),
            started: Instant::now(),
            start,
            batches: 0,
            images: 0,
        }
    }

    /// The stream hands out the batch of `step` (in `epoch`) with `size` images.
    pub fn batch(&mut self, step: u64, epoch: u64, size: usize) {
        self.throughput.batch(Instant::now(), size);
        self.batches += 1;
        self.images += size as u64;
        let status = crate::context::progress(|s| {
            let mut s = s.borrow_mut();
            s.epoch = Some(epoch);
            s.img_per_s = self.throughput.rate();
            *s
        });
        if let Some(bar) = &self.bar {
            if self.batches == 2 {
                // The first step includes warm-up (allocation, compilation): not a rate.
                bar.reset_eta();
            }
            bar.set_prefix(format!("epoch {}/{}", epoch + 1, status.epochs));
            bar.set_message(status.message());
            bar.set_position(step + 1);
        }
    }

    /// The stream ended normally: one summary line, and the bar goes.
    pub fn done(&mut self) {
        if self.batches > 0 {
            let secs = self.started.elapsed().as_secs_f64();
            let rate = self.images as f64 / secs.max(1e-9);
            tracing::info!(
                "steps {}..{}: {} steps in {secs:.1} s ({} img/s)",
                self.start,
                self.start + self.batches,
                self.batches,
                rate_text(rate)
            );
        }
        self.clear();
    }

    /// Removes the bar (if any) and forgets the stream's epoch.
    pub fn clear(&mut self) {
        crate::context::progress(|s| s.borrow_mut().epoch = None);
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut active) = BAR.lock()
                && active.as_ref().is_some_and(|(id, _)| *id == self.id)
            {
                *active = None;
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The template of the bar.
fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{wide_bar}] {pos}/{len} · {msg} · ETA {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The bar being drawn now, if any.
fn active_bar() -> Option<ProgressBar> {
    BAR.lock()
        .ok()
        .and_then(|b| b.as_ref().map(|(_, bar)| bar.clone()))
}

/// Ends any bar still drawn (the end of a run, whatever ended it).
pub fn clear() {
    let bar = BAR.lock().ok().and_then(|mut b| b.take());
    if let Some((_, bar)) = bar {
        bar.finish_and_clear();
    }
    crate::context::progress(|s| *s.borrow_mut() = Status::default());
}

/// Runs `f` with the bar (if any) hidden, so it can write to the terminal.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match active_bar() {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// Writes one line to stderr without garbling the bar.
pub fn eprint_line(line: &str) {
    suspend(|| {
        let _ = writeln!(std::io::stderr(), "{line}");
    });
}

/// A `tracing_subscriber` writer to stderr that hides the bar while it writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = StderrWriter;

    fn make_writer(&'a self) -> Self::Writer {
        StderrWriter
    }
}
