//! `sslhost check` runs every recipe for two real steps on tiny data, without a run folder.

use std::path::Path;
use std::process::Command;

#[test]
fn every_recipe_passes_check() {
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
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", recipe.display());
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
        // Two steps, then the end of the loop.
        assert!(stderr.contains("step 0"), "{}: {stderr}", recipe.display());
        assert!(
            !stderr.contains("run directory:"),
            "check must not create a run directory"
        );
    }
}
