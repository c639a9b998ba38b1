//! `sslhost check` runs every recipe for two real steps on tiny data, without a run folder.

use std::path::Path;
use std::process::Command;

/// The recipes under `recipes/`.
fn recipes(root: &Path) -> Vec<std::path::PathBuf> {
    let mut recipes: Vec<_> = std::fs::read_dir(root.join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    recipes.sort();
    assert!(!recipes.is_empty());
    recipes
}

/// `sslhost check` of `recipe` on the CPU with `args`, passing: its stderr.
fn check_one(recipe: &Path, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .current_dir(root)
        .args(["check", recipe.to_str().unwrap(), "--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {stderr}", recipe.display());
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    // Two steps, then the end of the loop.
    assert!(stderr.contains("step 0"), "{}: {stderr}", recipe.display());
    assert!(
        !stderr.contains("run directory:"),
        "check must not create a run directory"
    );
    stderr
}

/// [`check_one`] of every recipe: each recipe with its stderr.
fn check_every_recipe_with(args: &[&str]) -> Vec<(std::path::PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    recipes(root)
        .into_iter()
        .map(|recipe| {
            let stderr = check_one(&recipe, args);
            (recipe, stderr)
        })
        .collect()
}

/// Every recipe under `--precision precision` (bf16: the products a GPU run makes, on the CPU).
fn check_every_recipe(precision: &str) {
    for (recipe, stderr) in check_every_recipe_with(&["--precision", precision]) {
        // `auto` is f32 on the CPU.
        let products = if precision == "bf16" { "bf16" } else { "f32" };
        assert!(
            stderr.contains(&format!("products in {products}")),
            "{}: {stderr}",
            recipe.display()
        );
        // The CPU preset's quarter-width network.
        assert!(
            backbone_params(&stderr) < 2_000_000,
            "{}: {stderr}",
            recipe.display()
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

/// The parameters of the backbone a recipe's check built (its `backbone N params` line).
fn backbone_params(stderr: &str) -> u64 {
    let after = stderr
        .split("backbone ")
        .nth(1)
        .unwrap_or_else(|| panic!("no backbone line: {stderr}"));
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no parameter count: {stderr}"))
}

/// Every recipe's CUDA preset (the GPU run's network, batch and image sizes, with the check's
/// data and batch cuts) runs on the CPU under `--preset cuda`, in bf16 products as on a GPU: a
/// preset that does not fit its recipe fails here rather than on a GPU.
#[test]
fn every_recipe_passes_check_with_its_cuda_preset() {
    let args = ["--preset", "cuda", "--precision", "bf16"];
    for (recipe, stderr) in check_every_recipe_with(&args) {
        for said in ["the presets for cuda, on cpu", "products in bf16"] {
            assert!(stderr.contains(said), "{}: {stderr}", recipe.display());
        }
        // ResNet-18 at full width (11.2M parameters), not the CPU preset's quarter width.
        let params = backbone_params(&stderr);
        assert!(
            params > 11_000_000,
            "{}: a backbone of {params} parameters is not the CUDA preset's: {stderr}",
            recipe.display()
        );
    }
    // And back: the CPU preset's quarter-width network, as on the CPU without the flag.
    let byol = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/byol.rhai");
    let stderr = check_one(&byol, &["--preset", "cpu"]);
    assert!(backbone_params(&stderr) < 2_000_000, "{stderr}");
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
