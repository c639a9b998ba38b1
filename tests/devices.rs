//! `--device`: what each choice does in a build without the GPU features (the default build,
//! which CI tests), and that a device a build lacks is a clear error, not a panic.

use std::process::Command;

/// `sslhost bench` on the smallest settings, on `device`.
fn bench_on(device: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .args(["bench", "--device", device, "--batch", "2", "--image", "8"])
        .args(["--widths", "4,4,4,4", "--warmup", "0", "--steps", "1"])
        .output()
        .unwrap()
}

#[cfg(not(feature = "cuda"))]
#[test]
fn auto_falls_back_to_the_cpu_and_says_why() {
    let out = bench_on("auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cpu (burn-flex): this binary was built without CUDA"),
        "{stderr}"
    );
}

/// `--device DEVICE` in a build without `feature` exits 1 with a sentence naming the feature.
#[allow(dead_code)]
fn missing_feature(device: &str, feature: &str) {
    let out = bench_on(device);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cargo feature `{feature}`")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_an_error() {
    missing_feature("cuda", "cuda");
}

#[cfg(not(feature = "cubecl-cpu"))]
#[test]
fn cubecl_cpu_without_the_feature_is_an_error() {
    missing_feature("cubecl-cpu", "cubecl-cpu");
}
