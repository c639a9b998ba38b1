//! The version line of `sslhost --version`: the package version, the git commit the binary
//! was built from, and the cargo features that change what it can do.

use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    let features: Vec<&str> = [("cuda", "CUDA"), ("cubecl-cpu", "CUBECL_CPU")]
        .iter()
        .filter(|(_, env)| feature(env))
        .map(|(name, _)| *name)
        .collect();
    let gpu = if feature("CUDA") {
        "CUDA built in"
    } else {
        "CPU only: build with `--features cuda` for GPUs"
    };
    println!(
        "cargo:rustc-env=SSLHOST_VERSION_LINE={} ({gpu}; commit {commit}; features: {})",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        if features.is_empty() {
            "none".to_string()
        } else {
            features.join(", ")
        }
    );
    // A new commit or a checkout changes the line: the files git keeps them in, as git names
    // them (in a worktree `.git` is a file, and a branch's commit may sit in packed-refs).
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// What `git ARGS` prints, trimmed, when it succeeds and prints something.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}
