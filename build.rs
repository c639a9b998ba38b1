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
    // them (in a worktree `.git` is a file). The branch's folder rather than its file, which
    // may not exist yet (its commit in packed-refs); and only what exists, since cargo reruns
    // a build script on every build while a file it watches is missing.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let folder = branch
        .as_deref()
        .and_then(|b| b.rsplit_once('/'))
        .map(|(dir, _)| dir);
    for name in ["HEAD", "packed-refs"].into_iter().chain(folder) {
        if let Some(path) = git(&["rev-parse", "--git-path", name])
            && std::path::Path::new(&path).exists()
        {
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
