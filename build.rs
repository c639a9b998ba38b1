//! The version line of `sslhost --version`: the package version, the git commit the binary
//! was built from, and the cargo features that change what it can do.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
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
    // A new commit or a checkout changes the line.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=.git/{reference}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
