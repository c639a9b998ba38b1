//! The current run of this thread: which recipe, where its directory goes, and the
//! directory once something (a metric, a checkpoint) needs it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::run_dir::RunDir;
use crate::error::Result;

struct Current {
    recipe: PathBuf,
    text: String,
    runs_root: PathBuf,
    dir: Option<RunDir>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Declares the running recipe; its run directory is created under `runs_root` on first use.
pub fn begin(recipe: &Path, text: &str, runs_root: &Path) {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            recipe: recipe.to_path_buf(),
            text: text.to_string(),
            runs_root: runs_root.to_path_buf(),
            dir: None,
        })
    });
}

/// Continues an existing run directory (resume).
pub fn resume(dir: RunDir, recipe: &Path, text: &str) {
    let runs_root = dir
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            recipe: recipe.to_path_buf(),
            text: text.to_string(),
            runs_root,
            dir: Some(dir),
        })
    });
}

/// Runs `f` on the run directory, creating it (with the resolved config and the recipe) if
/// this is its first use. `None` when no recipe run is declared (tests, tools run from code).
pub fn with_dir<T>(f: impl FnOnce(&mut RunDir) -> Result<T>) -> Option<Result<T>> {
    CURRENT.with(|c| {
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
                Ok(d) => cur.dir = Some(d),
                Err(e) => return Some(Err(e)),
            }
        }
        cur.dir.as_mut().map(f)
    })
}

/// The run directory's path, if it exists yet.
pub fn dir_path() -> Option<PathBuf> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()?
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
    })
}
