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

/// The one run directory under `runs`.
pub fn only_run(runs: &Path) -> PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}
