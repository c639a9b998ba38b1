//! The current run of this thread: which recipe, where its directory goes, and the
//! directory once something (a metric, a checkpoint) needs it.

use std::path::{Path, PathBuf};

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::checkpoint::{self, Item};
use super::run_dir::RunDir;
use crate::error::{Error, Result};

/// A run's record: its recipe, where its directory goes, the directory once made, and what a
/// checkpoint tracks. Part of the run context.
pub struct RunRecord {
    recipe: PathBuf,
    text: String,
    runs_root: PathBuf,
    dir: Option<RunDir>,
    tracked: Vec<(String, Item)>,
    /// Whether this session is in the directory's `run.json` yet.
    recorded: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The run directory once it exists, for the Ctrl-C handler's thread (the rest of the run
/// state belongs to the script's thread).
static RUN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Makes Ctrl-C (SIGINT) ask the training loop to stop at the next step boundary, where it
/// writes a checkpoint of the tracked state. A second Ctrl-C before that exits at once,
/// without a checkpoint but with `curves.png` drawn from the metrics logged so far.
pub fn handle_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            super::progress::clear();
            eprintln!("second Ctrl-C: exiting without a checkpoint");
            let dir = RUN_DIR.lock().ok().and_then(|d| d.clone());
            if let Some(dir) = dir {
                draw_curves(&dir);
            }
            std::process::exit(130);
        }
        super::progress::eprint_line(
            "Ctrl-C: stopping at the next step boundary (Ctrl-C again to quit now)",
        );
    });
}

/// Whether Ctrl-C asked the run to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Remembers what a checkpoint holds (`resume(#{..})`, `checkpoint(#{..})`), so Ctrl-C can
/// save it.
pub fn track(items: &[(String, Item)]) {
    crate::context::record(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.tracked = items.to_vec();
        }
    });
}

/// Writes `items` to the run directory's last checkpoint, continuing at the session's next
/// step with its random state. `None` when there is no run directory.
pub fn save_checkpoint(items: &[(String, Item)]) -> Option<Result<PathBuf>> {
    let at = position(None);
    let next = at.next_step;
    with_dir(|d| {
        let path = d.last_checkpoint();
        checkpoint::save(&path, &at, items)?;
        tracing::info!("checkpoint: {} (resumes at step {next})", path.display());
        Ok(path)
    })
}

/// A checkpoint's position: the session's next step and generator, or `at` (a step and
/// the generator's state there); the run's seed and resolved config.
fn position(at: Option<(u64, crate::tensor::RngState)>) -> checkpoint::Position {
    crate::session::with(|s| {
        let (next_step, rng) = at.unwrap_or_else(|| (s.next_step(), s.rng.state()));
        checkpoint::Position {
            next_step,
            rng,
            seed: s.seed,
            config: s.config.clone(),
        }
    })
}

/// `sslhost check`'s checkpoint: `items` written to a temporary folder and read back (the
/// folder is removed); the path it had.
pub fn check_checkpoint(items: &[(String, Item)]) -> Result<PathBuf> {
    let at = position(None);
    let dir = std::env::temp_dir().join(format!("sslhost-check-{}", std::process::id()));
    let path = dir.join("last.safetensors");
    let saved =
        checkpoint::save(&path, &at, items).and_then(|()| checkpoint::load(&path).map(|_| ()));
    let _ = std::fs::remove_dir_all(&dir);
    saved.map(|()| path)
}

/// Called at a step boundary after Ctrl-C: writes the tracked state and returns the error
/// that ends the script.
pub fn stop_for_interrupt() -> Error {
    let next_step = crate::session::with(|s| s.next_step());
    let tracked = tracked();
    if tracked.is_empty() {
        return Error::Other(format!(
            "interrupted before step {next_step}; nothing to checkpoint (the recipe calls \
             neither resume(#{{..}}) nor checkpoint(#{{..}}))"
        ));
    }
    match save_checkpoint(&tracked) {
        Some(Ok(_)) => Error::Other(format!(
            "interrupted before step {next_step}; checkpoint written: continue with \
             --resume {}",
            dir_path().unwrap_or_default().display()
        )),
        Some(Err(e)) => e,
        None => Error::Other(format!("interrupted before step {next_step}")),
    }
}

/// Called when the script failed: writes the tracked state to the run's last checkpoint, so
/// that `--resume` loses at most the failing step, and returns a line for the user saying
/// what was done and how to resume (`None` when nothing would be gained: no training step
/// ran, or `sslhost check`).
///
/// A failure before the step changed any tracked state resumes at that step with the
/// random generator where it began (batch-norm statistics may have seen its batch); a
/// failure after an update resumes at the next step. Weights holding NaN or Inf are not
/// saved: the last periodic checkpoint stays.
pub fn checkpoint_after_error() -> Option<String> {
    let (check, step, start, updated, step_rng, rng) = crate::session::with(|s| {
        (
            s.check,
            s.step,
            s.start_step,
            s.step_updated,
            s.step_rng.clone(),
            s.rng.state(),
        )
    });
    let step = step.filter(|_| !check)?;
    let (next, rng) = match (updated, step_rng) {
        (false, Some(at_start)) => (step, at_start),
        _ => (step + 1, rng),
    };
    if next <= start {
        return None;
    }
    let (tracked, recipe) = crate::context::record(|c| {
        let c = c.borrow();
        let cur = c.as_ref()?;
        Some((cur.tracked.clone(), cur.recipe.clone()))
    })?;
    if tracked.is_empty() {
        return Some(
            "no checkpoint written: the recipe calls neither resume(#{..}) nor checkpoint(#{..})"
                .into(),
        );
    }
    if let Some(bad) = first_non_finite(&tracked) {
        return Some(format!(
            "no checkpoint written: {bad} holds NaN or Inf; the last periodic checkpoint, if \
             any, is kept"
        ));
    }
    let saved = with_dir(|d| {
        let path = d.last_checkpoint();
        checkpoint::save(&path, &position(Some((next, rng))), &tracked)?;
        Ok(d.path().to_path_buf())
    })?;
    Some(match saved {
        Ok(dir) => format!(
            "checkpoint written before exiting (resumes at step {next}): sslhost run {} \
             --resume {}",
            recipe.display(),
            dir.display()
        ),
        Err(e) => format!("the checkpoint after the error could not be written: {e}"),
    })
}

/// Writes the tracked state as the run's last checkpoint, continuing at the step about to
/// begin, before a step that may be recorded as a device graph: a capture that fails once
/// begun loses the state the step was to update on the device, and the run then resumes from
/// here ([`checkpoint_kept`]). Nothing under `sslhost check`, without tracked state or
/// without a run directory; a checkpoint that cannot be written is a warning, since the
/// capture itself seldom fails.
pub fn checkpoint_before_capture() {
    if crate::session::with(|s| s.check) {
        return;
    }
    let tracked = tracked();
    if tracked.is_empty() {
        return;
    }
    // Its time is named: a run's rate over its steps includes it.
    let started = std::time::Instant::now();
    match save_checkpoint(&tracked) {
        Some(Ok(_)) => tracing::info!(
            "the next step may be recorded as a device graph: checkpoint written first ({:.2} s)",
            started.elapsed().as_secs_f64()
        ),
        Some(Err(e)) => tracing::warn!("the checkpoint before the capture was not written: {e}"),
        None => {}
    }
}

/// Called when the script failed in a way that left the tracked state unreadable (`why`: a
/// failed device-graph capture): nothing is saved over the run's last checkpoint. The line
/// for the user: that checkpoint's step and how to resume from it (`None` under `sslhost
/// check`, or with no run directory).
pub fn checkpoint_kept(why: &str) -> Option<String> {
    if crate::session::with(|s| s.check) {
        return None;
    }
    let (recipe, dir, last) = crate::context::record(|c| {
        let c = c.borrow();
        let cur = c.as_ref()?;
        let dir = cur.dir.as_ref()?;
        Some((
            cur.recipe.clone(),
            dir.path().to_path_buf(),
            dir.last_checkpoint(),
        ))
    })?;
    Some(match checkpoint::next_step(&last) {
        Ok(next) => format!(
            "no checkpoint written: {why}; the last checkpoint is kept (resumes at step \
             {next}): sslhost run {} --resume {}",
            recipe.display(),
            dir.display()
        ),
        Err(_) => format!("no checkpoint written: {why}; there is no checkpoint to resume from"),
    })
}

/// What a checkpoint holds (`resume(#{..})`, `checkpoint(#{..})`): none before either.
fn tracked() -> Vec<(String, Item)> {
    crate::context::record(|c| c.borrow().as_ref().map(|cur| cur.tracked.clone()))
        .unwrap_or_default()
}

/// The first tracked value (`key/name`) that is not finite.
fn first_non_finite(tracked: &[(String, Item)]) -> Option<String> {
    tracked.iter().find_map(|(key, item)| item.non_finite(key))
}

impl RunRecord {
    /// The record of a new run of `recipe` (its text `text`): the run directory is created
    /// under `runs_root` on first use.
    pub fn new(recipe: &Path, text: &str, runs_root: &Path) -> Self {
        RunRecord {
            recipe: recipe.to_path_buf(),
            text: text.to_string(),
            runs_root: runs_root.to_path_buf(),
            dir: None,
            tracked: Vec::new(),
            recorded: false,
        }
    }

    /// The record of a run continued in its existing directory (`--resume`).
    pub fn resuming(dir: RunDir, recipe: &Path, text: &str) -> Self {
        let runs_root = dir
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        RunRecord {
            recipe: recipe.to_path_buf(),
            text: text.to_string(),
            runs_root,
            dir: Some(dir),
            tracked: Vec::new(),
            recorded: false,
        }
    }
}

/// Runs `f` on the run directory, creating it (with the resolved config and the recipe) if
/// this is its first use. `None` when no recipe run is declared (tests, tools run from code).
pub fn with_dir<T>(f: impl FnOnce(&mut RunDir) -> Result<T>) -> Option<Result<T>> {
    crate::context::record(|c| {
        let mut c = c.borrow_mut();
        let cur = c.as_mut()?;
        if cur.dir.is_none() {
            let created = RunDir::create(&cur.runs_root, &cur.recipe, &cur.text).and_then(|d| {
                if let Some(config) = crate::session::resolved_config() {
                    d.write_config(&config)?;
                }
                crate::live::with(|l| l.archive_in(&d.live_dir()));
                tracing::info!("run directory: {}", d.path().display());
                Ok(d)
            });
            match created {
                Ok(d) => {
                    if let Ok(mut shared) = RUN_DIR.lock() {
                        *shared = Some(d.path().to_path_buf());
                    }
                    cur.dir = Some(d)
                }
                Err(e) => return Some(Err(e)),
            }
        }
        let dir = cur.dir.as_mut()?;
        if !cur.recorded {
            cur.recorded = true;
            if let Err(e) = dir.record_session(session_record()) {
                tracing::warn!("run.json not written: {e}");
            }
        }
        Some(f(dir))
    })
}

/// How this session of the run started: the command line, sslhost's version and features,
/// the seed, device and precision, and the step it resumed at.
fn session_record() -> serde_json::Value {
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("cubecl-cpu", cfg!(feature = "cubecl-cpu")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let (seed, device, policy, resumed_at) = crate::session::with(|s| {
        (
            s.seed,
            crate::device::kind(&s.device).name(),
            s.kernels,
            s.resume_step,
        )
    });
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({
        "started": super::run_dir::timestamp(started),
        "command": std::env::args().collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
        "features": features,
        "seed": seed,
        "device": device,
        "precision": policy.precision.name(),
        "activations": policy.activations_name(),
        "resumed_at": resumed_at,
    })
}

/// Ends the run, however the script ended (finished, failed, Ctrl-C): clears any progress
/// bar and, if the run directory exists, draws `curves.png` from its metrics. Drawing never
/// fails the run: a problem is a warning.
pub fn finish() {
    super::progress::clear();
    if let Some(dir) = dir_path() {
        draw_curves(&dir);
    }
}

/// Draws `curves.png` in `dir` from its metrics; a problem is a warning, never an error.
fn draw_curves(dir: &Path) {
    match crate::guard::catch(|| {
        super::curves::render_run(dir, &super::curves::CurveOptions::default())
    }) {
        Ok(Some(path)) => tracing::info!("curves: {}", path.display()),
        Ok(None) => {}
        Err(e) => tracing::warn!("curves.png not drawn: {e}"),
    }
}

/// The run directory's path, if it exists yet.
pub fn dir_path() -> Option<PathBuf> {
    crate::context::record(|c| {
        c.borrow()
            .as_ref()?
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
    })
}
