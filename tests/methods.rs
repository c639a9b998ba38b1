//! The method recipes train: each runs a short real run (Fashion-MNIST, the embedded sample
//! when the system copy is missing) whose logged losses are finite and fall; and state tensors
//! (UniGrad's F) survive a checkpoint exactly, or refuse a checkpoint of another shape.

mod run_common;

use std::path::{Path, PathBuf};

use run_common::{finished_run, recipe_in_temp, sslhost_run};

/// The `key` values (a loss, a monitor) of a run's metrics.jsonl, in step order.
fn losses(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get(key)?.as_f64())
        .collect()
}

/// 40 steps of `recipe` on 640 images (batch 32, two epochs), a loss logged each step: all
/// finite, and the last ten lower on average than the first ten.
fn loss_falls(recipe: &str) {
    logged_loss_falls(recipe, "loss");
}

/// The command that runs the shipped `recipe` with `--set` for each of `sets`, into a fresh
/// runs folder named after `tag`; and that folder.
fn shipped_recipe(recipe: &str, tag: &str, sets: &[&str]) -> (std::process::Command, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let runs = std::env::temp_dir().join(format!("sslhost-method-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runs);
    let mut command = sslhost_run(&root.join(format!("recipes/{recipe}.rhai")), &runs);
    command.current_dir(root);
    for set in sets {
        command.args(["-s", set]);
    }
    (command, runs)
}

/// As [`loss_falls`] for the logged value `key`.
fn logged_loss_falls(recipe: &str, key: &str) {
    let sets = [
        "limit=640",
        "batch_size=32",
        "epochs=2",
        "log_every=1",
        "linear_probe=false",
    ];
    let (command, runs) = shipped_recipe(recipe, recipe, &sets);
    let run = finished_run(command, &runs);
    let loss = losses(&run, key);
    assert_eq!(loss.len(), 40, "{recipe}: {loss:?}");
    assert!(loss.iter().all(|l| l.is_finite()), "{recipe}: {loss:?}");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&loss[..10]), mean(&loss[30..]));
    assert!(last < first, "{recipe}: loss {first} -> {last}: {loss:?}");
    std::fs::remove_dir_all(&runs).ok();
}

#[test]
fn simsiam_trains() {
    loss_falls("simsiam");
}

#[test]
fn barlow_twins_trains() {
    loss_falls("barlow_twins");
}

#[test]
fn vicreg_trains() {
    loss_falls("vicreg");
}

#[test]
fn unigrad_trains() {
    loss_falls("unigrad");
}

#[test]
fn mocov3_trains() {
    loss_falls("mocov3");
}

#[test]
fn nnclr_trains() {
    loss_falls("nnclr");
}

/// DINO's loss rises at first, with the teacher's entropy, while the centring flattens the
/// teacher; what the student learns is the loss less that entropy (`kl`).
#[test]
fn dino_trains() {
    logged_loss_falls("dino", "kl");
}

#[test]
fn swav_trains() {
    loss_falls("swav");
}

/// The kNN monitor of the preset recipes prints the raw pixels' accuracy of the same split
/// beside the encoder's (`knn_top1 0.8 (raw pixels 0.7)`) and records it in metrics.jsonl.
#[test]
fn knn_monitor_shows_the_raw_pixel_anchor() {
    let sets = [
        "limit=320",
        "batch_size=32",
        "epochs=1",
        "knn_k=20",
        "linear_probe=false",
    ];
    let (mut command, runs) = shipped_recipe("simclr", "anchor", &sets);
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("knn_top1"))
        .unwrap_or_else(|| panic!("no kNN line: {stderr}"));
    assert!(line.contains(" (raw pixels 0."), "{line}");
    assert!(!line.contains("knn_raw_pixels"), "{line}");
    let raw = losses(&run_common::only_run(&runs), "knn_raw_pixels");
    assert_eq!(raw.len(), 1, "knn_raw_pixels in metrics.jsonl: {raw:?}");
    assert!(raw[0] > 0.3 && raw[0] < 1.0, "{raw:?}");
    std::fs::remove_dir_all(&runs).ok();
}

const STATE_RECIPE: &str = r#"// state tensor test
let cfg = config(#{ steps: 6, rows: 2 });
let ds = dataset("synthetic", #{ samples: 64, classes: 2, size: 4, channels: 1 });
let l = loader(ds, #{ batch_size: 16 });
let s = state_tensor(zeros([cfg.rows, 3]));
let state = #{ s: s };
resume(state);
for b in steps(l, 10, cfg.steps) {
    let x = b.images.reshape([16, 16]).slice([0..cfg.rows, 0..3]);
    s.set(0.5 * s.value + x);
    log(b.step, #{ total: s.value.sum() });
}
checkpoint(state);
print(`final ${s.value.to_array()}`);
"#;

fn final_line(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.split_once("final ").map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| panic!("no final line in {stderr}"))
}

#[test]
fn a_state_tensor_resumes_exactly_and_refuses_another_shape() {
    let (dir, recipe) = recipe_in_temp("state-tensor", STATE_RECIPE);
    let whole_runs = dir.join("whole");
    let out = sslhost_run(&recipe, &whole_runs).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let whole = final_line(&String::from_utf8_lossy(&out.stderr));

    // Three steps, then a resume to six (a resume starts from the run's saved config): the
    // same state as the whole run.
    let split_runs = dir.join("split");
    let mut first = sslhost_run(&recipe, &split_runs);
    first.args(["-s", "steps=3"]);
    let run = finished_run(first, &split_runs);
    let out = sslhost_run(&recipe, &split_runs)
        .arg("--resume")
        .arg(&run)
        .args(["-s", "steps=6"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(final_line(&stderr), whole);

    // The recipe's state has another shape than the checkpoint's: both shapes are named.
    let out = sslhost_run(&recipe, &split_runs)
        .arg("--resume")
        .arg(&run)
        .args(["-s", "rows=3", "--force"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("[2, 3]") && stderr.contains("[3, 3]") && stderr.contains("`s`"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
