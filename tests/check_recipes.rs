//! `sslhost check` runs every recipe for two real steps on tiny data, without a run folder.

use std::path::Path;
use std::process::Command;

/// Every recipe under `--precision precision` (bf16: the products a GPU run makes, on the CPU).
fn check_every_recipe(precision: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut recipes: Vec<_> = std::fs::read_dir(root.join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    recipes.sort();
    assert!(!recipes.is_empty());
    for recipe in recipes {
        let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
            .current_dir(root)
            .args(["check", recipe.to_str().unwrap(), "--device", "cpu"])
            .args(["--precision", precision])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", recipe.display());
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
        // `auto` is f32 on the CPU.
        let products = if precision == "bf16" { "bf16" } else { "f32" };
        assert!(
            stderr.contains(&format!("products in {products}")),
            "{}: {stderr}",
            recipe.display()
        );
        // Two steps, then the end of the loop.
        assert!(stderr.contains("step 0"), "{}: {stderr}", recipe.display());
        assert!(
            !stderr.contains("run directory:"),
            "check must not create a run directory"
        );
    }
}

#[test]
fn every_recipe_passes_check() {
    check_every_recipe("auto");
}

#[test]
fn every_recipe_passes_check_in_bf16() {
    check_every_recipe("bf16");
}

/// The CUDA presets' branches that the CPU presets leave off: SwAV's queues (codes balanced
/// over the batch and the queued projections, the queues saved by the check's checkpoint
/// round trip) and DINO's learned prototype lengths.
#[test]
fn gpu_preset_options_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (recipe, sets) in [
        ("swav", &["queue_size=64", "queue_start_epochs=0"][..]),
        ("dino", &["norm_last_layer=false"][..]),
        ("byol", &["predictor=false", "tau_constant=true"][..]),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sslhost"));
        command.current_dir(root).args([
            "check",
            &format!("recipes/{recipe}.rhai"),
            "--device",
            "cpu",
        ]);
        for set in sets {
            command.args(["--set", set]);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{recipe} {sets:?}: {stderr}");
        assert!(stderr.contains("step 0"), "{recipe}: {stderr}");
    }
}
