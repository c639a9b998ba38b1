//! The run directory: `runs/<recipe>-<UTC time>/` with the resolved config, a copy of the
//! recipe, metrics as JSON lines (and as TensorBoard scalars), archived live edits and
//! checkpoints.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::train::tensor_file::write_atomic;
use crate::train::tensorboard::{self, EventWriter};

/// An open run directory.
pub struct RunDir {
    root: PathBuf,
    metrics: File,
    /// This session's TensorBoard event file, created at the first logged scalar (a resumed
    /// run writes a new one).
    events: Option<EventWriter>,
}

/// `YYYY-MM-DDTHH-MM-SS` (UTC) for a time in seconds since the Unix epoch; dashes instead of
/// colons so the name is a valid file name everywhere.
pub fn timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl RunDir {
    /// Creates `runs_root/<stem>-<time>/` (with a numeric suffix if that exists) holding a
    /// copy of the recipe.
    pub fn create(runs_root: &Path, recipe: &Path, recipe_text: &str) -> Result<Self> {
        let stem = recipe
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        let base = format!("{stem}-{}", timestamp(now_secs() as u64));
        let mut root = runs_root.join(&base);
        let mut n = 1;
        while root.exists() {
            n += 1;
            root = runs_root.join(format!("{base}-{n}"));
        }
        for dir in [root.clone(), root.join("live"), root.join("checkpoints")] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::file(&dir, format!("cannot create the run directory: {e}")))?;
        }
        write_atomic(&root.join("recipe.rhai"), recipe_text.as_bytes())?;
        Self::open(&root)
    }

    /// Opens an existing run directory to continue it (metrics are appended).
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::file(root, "not a run directory"));
        }
        let path = root.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::file(&path, format!("cannot open: {e}")))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            metrics,
            events: None,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where accepted live edits are archived.
    pub fn live_dir(&self) -> PathBuf {
        self.root.join("live")
    }

    /// Where checkpoints go.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The checkpoint a run continues from: `checkpoints/last.safetensors`.
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints_dir().join("last.safetensors")
    }

    /// Writes the resolved configuration as `config.json`.
    pub fn write_config(&self, config: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(config).expect("json values serialise");
        write_atomic(&self.root.join("config.json"), text.as_bytes())
    }

    /// The saved `config.json` (an empty object if the run never wrote one).
    pub fn read_config(&self) -> Result<serde_json::Value> {
        let path = self.root.join("config.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::file(&path, format!("not valid JSON: {e}"))),
            Err(_) => Ok(serde_json::Value::Object(Default::default())),
        }
    }

    /// Appends one line `{"step": .., "time": .., ..values}` to `metrics.jsonl`, and the
    /// numeric values as scalars to the TensorBoard event file.
    pub fn log(
        &mut self,
        step: u64,
        values: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let time = now_secs();
        let mut line = serde_json::Map::new();
        line.insert("step".into(), step.into());
        line.insert("time".into(), time.into());
        for (k, v) in values {
            line.insert(k.clone(), v.clone());
        }
        let path = self.root.join("metrics.jsonl");
        writeln!(self.metrics, "{}", serde_json::Value::Object(line))
            .and_then(|()| self.metrics.flush())
            .map_err(|e| Error::file(&path, format!("cannot append: {e}")))?;
        let scalars = tensorboard::scalars(values);
        if scalars.is_empty() {
            return Ok(());
        }
        let events = match &mut self.events {
            Some(w) => w,
            None => self.events.insert(EventWriter::create(&self.root, time)?),
        };
        events.add_scalars(step, time, &scalars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01T00-00-00");
        // 2026-11-22 10:00:00 UTC
        assert_eq!(timestamp(1_795_341_600), "2026-11-22T10-00-00");
        // Leap day.
        assert_eq!(timestamp(951_782_400), "2000-02-29T00-00-00");
    }
}
