//! Writing files so that no fault loses or corrupts work: whole-file writes through a
//! temporary file and a rename, appends in whole records that survive a full disk, and the
//! removal of temporary files a killed process left behind.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The marker in the names of [`write_atomic`]'s temporary files: `.<name>.tmp-<pid>`.
const TMP_MARK: &str = ".tmp-";

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash leaves either
/// the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

/// Removes the temporary files of [`write_atomic`] in `dir` whose process is gone (a write
/// killed before its rename); returns how many. Files of a live process are left alone.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .rsplit_once(TMP_MARK)
            .filter(|(head, _)| head.starts_with('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Where a script may write the file it names `path`: a relative path is taken from the
/// working directory; the file must lie under one of `roots` (the working directory, the run
/// directory), never through `..` or a link out of them, have the extension `extension`, and
/// not replace an existing file unless `replaceable` says it is one sslhost wrote.
pub fn script_output(
    path: &str,
    roots: &[PathBuf],
    extension: &str,
    replaceable: impl Fn(&Path) -> bool,
) -> Result<PathBuf> {
    let p = Path::new(path);
    let refuse = |why: &str| Error::file(p, format!("not written: {why}"));
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(refuse(
            "a script writes only below the working or run directory (no `..`)",
        ));
    }
    if p.extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case(extension))
    {
        return Err(refuse(&format!("the file must end in .{extension}")));
    }
    let cwd = std::env::current_dir().map_err(|e| Error::file(".", e))?;
    let full = cwd.join(p);
    // The deepest folder that exists, with links resolved, must be inside a root.
    let mut existing = full.parent().map(Path::to_path_buf).unwrap_or_default();
    while !existing.exists() {
        match existing.parent() {
            Some(up) => existing = up.to_path_buf(),
            None => break,
        }
    }
    let real = std::fs::canonicalize(&existing).unwrap_or(existing);
    let inside = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|r| real.starts_with(r));
    if !inside {
        return Err(refuse(
            "a script writes only below the working or run directory",
        ));
    }
    if std::fs::symlink_metadata(&full).is_ok() && !replaceable(&full) {
        return Err(refuse(
            "a file of that name exists and sslhost did not write it; choose another name",
        ));
    }
    Ok(full)
}

/// The text of `path` when it is a regular file; `None` when it does not exist or is not a
/// regular file (a device such as `/dev/full` reads forever).
pub fn read_regular(path: &Path) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| Error::file(path, format!("cannot read: {e}"))),
        _ => Ok(None),
    }
}

/// Where an [`Appender`] writes: a file, or anything that can append a record and cut itself
/// back to an earlier length (tests use one that fails on demand).
pub trait RecordSink {
    /// The current length in bytes.
    fn size(&mut self) -> std::io::Result<u64>;
    /// Appends `bytes` and flushes them.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Cuts the sink back to `len` bytes (undoing a partly written record).
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl RecordSink for File {
    fn size(&mut self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
}

/// Records held while their file cannot be written, at most (older ones are dropped first).
pub const MAX_HELD_BYTES: usize = 64 << 20;

/// A file appended to in whole records (a JSON line, an event), written so that a failing
/// disk never stops the caller: a record is written whole or cut back out, a failure is
/// warned about once, and records are held in memory and written when the file takes writes
/// again (at the next append).
pub struct Appender<S: RecordSink = File> {
    path: PathBuf,
    sink: S,
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
    dropped: u64,
    failing: bool,
}

impl Appender<File> {
    /// Opens `path` for appending, creating it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
        Ok(Appender::new(path, file))
    }

    /// Creates `path`, which must not exist yet.
    pub fn create_new(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Appender::new(path, file))
    }
}

impl<S: RecordSink> Appender<S> {
    /// Appends to `sink`, named `path` in messages.
    pub fn new(path: &Path, sink: S) -> Self {
        Appender {
            path: path.to_path_buf(),
            sink,
            held: VecDeque::new(),
            held_bytes: 0,
            dropped: 0,
            failing: false,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records not written yet (the file refused them).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Appends `record` after any held ones; never fails (see the type's description).
    pub fn append(&mut self, record: Vec<u8>) {
        self.held_bytes += record.len();
        self.held.push_back(record);
        while self.held_bytes > MAX_HELD_BYTES && self.held.len() > 1 {
            if let Some(old) = self.held.pop_front() {
                self.held_bytes -= old.len();
                self.dropped += 1;
            }
        }
        while let Some(next) = self.held.front() {
            if let Err(e) = write_whole(&mut self.sink, next) {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        "{}: cannot write ({e}); training goes on (checkpoints are the record of \
                         the run) and these lines are kept until the file takes writes again",
                        self.path.display()
                    );
                }
                return;
            }
            if let Some(done) = self.held.pop_front() {
                self.held_bytes -= done.len();
            }
        }
        if self.failing {
            self.failing = false;
            let lost = match self.dropped {
                0 => String::new(),
                n => format!(" ({n} of the oldest held records were dropped)"),
            };
            tracing::info!("{}: writing again{lost}", self.path.display());
            self.dropped = 0;
        }
    }
}

/// Writes one record whole, or cuts the partial write back out.
fn write_whole(sink: &mut impl RecordSink, record: &[u8]) -> std::io::Result<()> {
    let before = sink.size();
    let written = sink.append(record);
    if written.is_err()
        && let Ok(len) = before
    {
        let _ = sink.truncate(len);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes `room` more bytes, writing part of a record that does not fit.
    struct Disk {
        bytes: Vec<u8>,
        room: usize,
    }

    impl RecordSink for &mut Disk {
        fn size(&mut self) -> std::io::Result<u64> {
            Ok(self.bytes.len() as u64)
        }
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            let n = bytes.len().min(self.room);
            self.bytes.extend_from_slice(&bytes[..n]);
            self.room -= n;
            if n < bytes.len() {
                return Err(std::io::Error::other("no space left on device"));
            }
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            self.bytes.truncate(len as usize);
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_leaves_no_partial_record_and_held_records_follow_when_space_returns() {
        let mut disk = Disk {
            bytes: Vec::new(),
            room: 10,
        };
        let mut a = Appender::new(Path::new("metrics.jsonl"), &mut disk);
        a.append(b"{\"step\":0}\n".to_vec()); // 11 bytes: does not fit
        a.append(b"{\"step\":1}\n".to_vec());
        assert_eq!(a.held(), 2);
        assert!(a.sink.bytes.is_empty(), "the partial line was cut back out");
        a.sink.room = 1000;
        a.append(b"{\"step\":2}\n".to_vec());
        assert_eq!(a.held(), 0);
        assert_eq!(
            String::from_utf8(disk.bytes.clone()).unwrap(),
            "{\"step\":0}\n{\"step\":1}\n{\"step\":2}\n"
        );
    }

    #[test]
    fn stale_temp_files_are_removed_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("sslhost-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No process has a pid this large (Linux's limit is 2^22).
        let stale = dir.join(".last.safetensors.tmp-4294967");
        let mine = dir.join(format!(".config.json.tmp-{}", std::process::id()));
        let other = dir.join("notes.tmp-1");
        for f in [&stale, &mine, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(&dir), 1);
        assert!(!stale.exists() && mine.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
