//! The run directory: `runs/<recipe>-<UTC time>/` with the resolved config, a copy of the
//! recipe, metrics as JSON lines (and as TensorBoard scalars), archived live edits and
//! checkpoints.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::files::{Appender, write_atomic};
use crate::train::tensorboard::{self, EventWriter};

/// An open run directory.
pub struct RunDir {
    root: PathBuf,
    metrics: Appender,
    /// This session's TensorBoard event file, created at the first logged scalar (a resumed
    /// run writes a new one).
    events: Option<EventWriter>,
    /// Why the event file could not be created, once warned about (it is tried again at
    /// every log).
    events_failed: bool,
    /// The step a resumed run continues from: marked in its event file as a restart.
    restart: Option<u64>,
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
        // Temporary files of atomic writes that a killed run left behind.
        let stale: usize = [
            root.to_path_buf(),
            root.join("checkpoints"),
            root.join("live"),
        ]
        .iter()
        .map(|d| crate::files::remove_stale_temp_files(d))
        .sum();
        if stale > 0 {
            tracing::info!("removed {stale} temporary file(s) of an interrupted write");
        }
        let metrics = Appender::open(&root.join("metrics.jsonl"))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            metrics,
            events: None,
            events_failed: false,
            restart: None,
        })
    }

    /// Continues the run at `step` (a resume): the rows of `metrics.jsonl` from `step` on,
    /// which the resumed run logs again, are dropped (with any line a kill cut short), and the
    /// new event file starts with a restart marker at `step` so TensorBoard drops the old
    /// events from there.
    pub fn continue_at(&mut self, step: u64) -> Result<()> {
        self.restart = Some(step);
        let path = self.root.join("metrics.jsonl");
        let Some(text) = crate::files::read_regular(&path)? else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step")?.as_u64())
                    .is_some_and(|s| s < step)
            })
            .collect();
        let dropped = text.lines().count() - kept.len();
        if dropped == 0 {
            return Ok(());
        }
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        write_atomic(&path, out.as_bytes())?;
        // The rename replaced the file the appender had open.
        self.metrics = Appender::open(&path)?;
        tracing::info!(
            "metrics.jsonl: {dropped} row(s) from step {step} on dropped (the resumed run logs \
             them again)"
        );
        Ok(())
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

    /// Replaces `config.json` with `config` on a resume that changed settings, keeping the
    /// earlier one as `config-<step>.json` (`step`: where the resumed run continues).
    pub fn replace_config(&self, config: &serde_json::Value, step: u64) -> Result<()> {
        let path = self.root.join("config.json");
        if path.is_file() {
            let kept = self.root.join(format!("config-{step}.json"));
            std::fs::rename(&path, &kept)
                .map_err(|e| Error::file(&kept, format!("cannot keep the earlier config: {e}")))?;
        }
        self.write_config(config)
    }

    /// Appends `session` (how this session of the run was started) to `run.json`, the list of
    /// a run's sessions: the first, then one per resume.
    pub fn record_session(&self, session: serde_json::Value) -> Result<()> {
        let path = self.root.join("run.json");
        let mut sessions = match crate::files::read_regular(&path)? {
            Some(text) => serde_json::from_str::<Vec<serde_json::Value>>(&text)
                .map_err(|e| Error::file(&path, format!("not a list of sessions: {e}")))?,
            None => Vec::new(),
        };
        sessions.push(session);
        let text = serde_json::to_string_pretty(&sessions).expect("json values serialise");
        write_atomic(&path, text.as_bytes())
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

    /// The resolved config and the latest session of `run.json` as Markdown tables (for
    /// TensorBoard's Text tab): nested keys dotted as `--set` takes them.
    fn record_markdown(&self) -> String {
        let mut md = String::from("**config** (config.json)\n\n| key | value |\n|---|---|\n");
        let mut rows = Vec::new();
        flat_rows("", &self.read_config().unwrap_or_default(), &mut rows);
        for (k, v) in rows {
            md += &format!("| {k} | {v} |\n");
        }
        let sessions = crate::files::read_regular(&self.root.join("run.json"))
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
            .unwrap_or_default();
        if let Some(session) = sessions.last() {
            md += "\n**session** (run.json)\n\n| key | value |\n|---|---|\n";
            let mut rows = Vec::new();
            flat_rows("", session, &mut rows);
            // The command line as a shell shows it.
            if let Some(args) = session.get("command").and_then(|c| c.as_array()) {
                let words: Vec<String> = args
                    .iter()
                    .filter_map(|a| a.as_str())
                    .map(|a| match a.contains(char::is_whitespace) {
                        true => format!("'{a}'"),
                        false => a.to_string(),
                    })
                    .collect();
                for row in rows.iter_mut().filter(|r| r.0 == "command") {
                    row.1 = format!("`{}`", words.join(" ").replace('|', "\\|"));
                }
            }
            for (k, v) in rows {
                md += &format!("| {k} | {v} |\n");
            }
        }
        md
    }

    /// Appends one line `{"step": .., "time": .., ..values}` to `metrics.jsonl`, and the
    /// numeric values as scalars to the TensorBoard event file. A file that cannot be written
    /// (a full disk) is warned about once and does not stop the run: its lines are written
    /// whole when it takes writes again.
    pub fn log(&mut self, step: u64, values: &serde_json::Map<String, serde_json::Value>) {
        let time = now_secs();
        let mut line = serde_json::Map::new();
        line.insert("step".into(), step.into());
        line.insert("time".into(), time.into());
        for (k, v) in values {
            line.insert(k.clone(), v.clone());
        }
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        self.metrics.append(text.into_bytes());
        let scalars = tensorboard::scalars(values);
        if scalars.is_empty() {
            return;
        }
        if self.events.is_none() {
            match EventWriter::create(&self.root, time) {
                Ok(mut w) => {
                    if let Some(at) = self.restart {
                        w.restart_at(at, time);
                    }
                    // Each event file (a run's first session, each resume) says how it ran.
                    w.add_text(step, time, "config", &self.record_markdown());
                    self.events = Some(w)
                }
                Err(e) => {
                    if !self.events_failed {
                        tracing::warn!("TensorBoard events are not written for now: {e}");
                    }
                    self.events_failed = true;
                    return;
                }
            }
        }
        if let Some(events) = &mut self.events {
            events.add_scalars(step, time, &scalars);
        }
    }
}

/// `value` as (dotted key, text) rows: a map's entries by key, anything else as one row
/// (strings bare, other values as JSON; `|` escaped for Markdown tables).
fn flat_rows(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flat_rows(&key, v, rows);
            }
        }
        serde_json::Value::String(s) => rows.push((prefix.to_string(), s.replace('|', "\\|"))),
        other => rows.push((prefix.to_string(), other.to_string().replace('|', "\\|"))),
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

    #[test]
    fn nested_config_rows_have_dotted_keys() {
        let config =
            serde_json::json!({ "lr": 0.1, "optim": { "name": "a|b", "betas": [0.9, 0.99] } });
        let mut rows = Vec::new();
        flat_rows("", &config, &mut rows);
        assert_eq!(
            rows,
            vec![
                ("lr".to_string(), "0.1".to_string()),
                ("optim.betas".to_string(), "[0.9,0.99]".to_string()),
                ("optim.name".to_string(), "a\\|b".to_string()),
            ]
        );
    }
}
