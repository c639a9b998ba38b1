//! Helpers shared by the tests that run `sslhost run` and read its run directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `sslhost run RECIPE --device cpu --runs RUNS`, without colours; add arguments and run.
pub fn sslhost_run(recipe: &Path, runs: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sslhost"));
    c.args(["run", recipe.to_str().unwrap(), "--device", "cpu", "--runs"])
        .arg(runs)
        .env("NO_COLOR", "1");
    c
}

/// Runs `sslhost <args..>` without colours to its end: exit code, stdout, stderr.
pub fn sslhost(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one run directory under `runs`.
pub fn only_run(runs: &Path) -> PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

/// A fresh folder `sslhost-<tag>-<pid>` in the temporary directory holding `recipe.rhai`
/// with `text`; returns the folder and the recipe's path.
pub fn recipe_in_temp(tag: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sslhost-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("recipe.rhai");
    std::fs::write(&recipe, text).unwrap();
    (dir, recipe)
}

/// Runs `command` to its end, which must succeed; the one run directory under `runs`.
pub fn finished_run(mut command: Command, runs: &Path) -> PathBuf {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    only_run(runs)
}

/// Starts `command` with its stderr arriving line by line on the receiver.
pub fn spawn_lines(
    mut command: Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next line from [`spawn_lines`], or a failure at the deadline.
pub fn next_line(rx: &std::sync::mpsc::Receiver<String>, deadline: std::time::Instant) -> String {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    rx.recv_timeout(left)
        .expect("the run stopped printing or the test timed out")
}
