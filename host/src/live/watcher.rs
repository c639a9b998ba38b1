//! Watches one file for changes. The parent folder is watched (editors often replace a file
//! by renaming a new one over it), and events are debounced: a change counts once the file
//! has been quiet for [`DEBOUNCE`].

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};

use crate::error::{Error, Result};

/// How long a file must be quiet before a change is taken.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// A debounced watch on one file.
pub struct FileWatcher {
    file: PathBuf,
    events: Receiver<Instant>,
    last_event: Option<Instant>,
    _watcher: notify::RecommendedWatcher,
}

impl FileWatcher {
    /// Starts watching `file` (through its folder).
    pub fn new(file: &Path) -> Result<Self> {
        let file = std::fs::canonicalize(file)
            .map_err(|e| Error::file(file, format!("cannot watch: {e}")))?;
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = file.file_name().map(|n| n.to_os_string());
        let (tx, events) = channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Only writes, creations and renames count: reading the file (as the swap itself
            // does) must not look like an edit.
            if let Ok(event) = res
                && matches!(
                    event.kind,
                    notify::EventKind::Modify(_) | notify::EventKind::Create(_)
                )
                && event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
            {
                let _ = tx.send(Instant::now());
            }
        })
        .map_err(|e| Error::file(&dir, format!("cannot watch: {e}")))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| Error::file(&dir, format!("cannot watch: {e}")))?;
        Ok(FileWatcher {
            file,
            events,
            last_event: None,
            _watcher: watcher,
        })
    }

    /// The watched file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// True once, when the file changed and has been quiet for [`DEBOUNCE`] since.
    pub fn changed(&mut self) -> bool {
        while let Ok(t) = self.events.try_recv() {
            self.last_event = Some(t);
        }
        match self.last_event {
            Some(t) if t.elapsed() >= DEBOUNCE => {
                self.last_event = None;
                true
            }
            _ => false,
        }
    }
}
