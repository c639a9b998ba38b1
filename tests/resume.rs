//! Exact resume on the CPU: a run killed with SIGKILL and resumed with `--resume` produces
//! the same per-step losses, bit for bit, as a run that was never interrupted.

mod run_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use run_common::{finished_run, only_run, recipe_in_temp, sslhost_run};

const RECIPE: &str = r#"// resume test: augmentation randomness, momentum optimiser, EMA target
let cfg = config(#{ epochs: 3, batch_size: 16, fail_at: -1, fail_late: -1 });
let ds = dataset("synthetic", #{ samples: 128, classes: 4, size: 8, channels: 3 });
let l = loader(ds, #{ batch_size: cfg.batch_size });
let views = transform([random_resized_crop(8, #{ scale: [0.5, 1.0] }), hflip(0.5)]);
let net = sequential([resnet(18, #{ cifar_stem: true, widths: [4, 4, 8, 8] }), linear(8, 4)]);
let target = momentum_copy(net);
let opt = sgd([net], #{ momentum: 0.9, weight_decay: 1e-4 });
let state = #{ net: net, target: target, opt: opt };
resume(state);
for b in steps(l, cfg.epochs) {
    if b.step == cfg.fail_at { throw "a bug before the update"; }
    let x = views.apply(b.images);
    let loss = cross_entropy(net.forward(x), b.labels) + (target.forward(x) - net.forward(x)).pow(2).mean();
    opt.step(loss, 0.05);
    update_momentum(net, target, 0.9);
    if b.step == cfg.fail_late { throw "a bug after the update"; }
    log(b.step, #{ loss: loss });
    if (b.step + 1) % 8 == 0 { checkpoint(state); }   // once an epoch
}
"#;

fn losses(run: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        let loss = v["loss"].to_string();
        // A resumed run drops the rows of the steps it logs again.
        assert!(out.insert(step, loss).is_none(), "step {step} logged twice");
    }
    out
}

fn sslhost(recipe: &Path, runs: &Path) -> Command {
    let mut c = sslhost_run(recipe, runs);
    c.args(["--seed", "5"]);
    c
}

/// Runs the recipe whole, then again stopped by `signal` once step 10 is logged, resumed with
/// `--resume`; the per-step losses of both must be equal.
fn interrupted_and_resumed_matches_whole(signal: &str, tag: &str) {
    let (dir, recipe) = recipe_in_temp(&format!("resume-{tag}"), RECIPE);

    // The reference: never interrupted.
    let whole = dir.join("whole");
    let reference = losses(&finished_run(sslhost(&recipe, &whole), &whole));
    assert_eq!(reference.len(), 24, "3 epochs of 8 batches");

    let split = dir.join("split");
    let mut child = sslhost(&recipe, &split)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in stderr.by_ref().map_while(Result::ok) {
        if line.contains("step 10:") {
            break;
        }
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = stderr.map_while(Result::ok).collect();
    let code = child.wait().unwrap().code();
    // Ctrl-C writes its own checkpoint at the step boundary, and the resume starts there.
    let interrupted_before = if signal == "-INT" {
        assert_eq!(code, Some(130), "{rest:?}");
        let line = rest
            .iter()
            .find(|l| l.contains("checkpoint written: continue with --resume"))
            .unwrap_or_else(|| panic!("{rest:?}"));
        let n = line.split("interrupted before step ").nth(1).unwrap();
        Some(n.split(';').next().unwrap().to_string())
    } else {
        None
    };
    let run = only_run(&split);
    let before = losses(&run);
    assert!(before.len() < 24, "the run was stopped before its end");

    let out = sslhost(&recipe, &split)
        .arg("--resume")
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resumed from"), "{stderr}");
    if let Some(n) = interrupted_before {
        assert!(
            stderr.contains(&format!("at step {n}")),
            "resumed elsewhere than {n}: {stderr}"
        );
    }
    let resumed = losses(&run);
    assert_eq!(resumed, reference, "per-step losses differ after resume");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_killed_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    interrupted_and_resumed_matches_whole("-KILL", "kill");
}

#[test]
fn ctrl_c_checkpoints_at_a_step_boundary_and_resumes_exactly() {
    interrupted_and_resumed_matches_whole("-INT", "int");
}

/// Runs the recipe whole, then again with a script error at step 13 (`fail_at`: before the
/// step's update; `fail_late`: after it) and resumed from the checkpoint the error wrote.
fn failed_and_resumed(key: &str, tag: &str) -> (BTreeMap<u64, String>, BTreeMap<u64, String>) {
    let (dir, recipe) = recipe_in_temp(&format!("fail-{tag}"), RECIPE);
    let whole = dir.join("whole");
    let reference = losses(&finished_run(sslhost(&recipe, &whole), &whole));

    let split = dir.join("split");
    let out = sslhost(&recipe, &split)
        .args(["--set", &format!("{key}=13")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let resumes_at = if key == "fail_at" { 13 } else { 14 };
    let run = only_run(&split);
    let how = format!("checkpoint written before exiting (resumes at step {resumes_at})");
    assert!(stderr.contains(&how), "{stderr}");
    assert!(
        stderr.contains(&format!("--resume {}", run.display())),
        "{stderr}"
    );
    // The periodic checkpoint was at step 8; the one the error wrote is later.
    let out = sslhost(&recipe, &split)
        .args(["--set", &format!("{key}=-1"), "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("at step {resumes_at}")),
        "{stderr}"
    );
    let resumed = losses(&run);
    std::fs::remove_dir_all(&dir).ok();
    (reference, resumed)
}

#[test]
fn an_error_before_the_update_checkpoints_and_resumes_exactly() {
    let (reference, resumed) = failed_and_resumed("fail_at", "early");
    assert_eq!(
        resumed, reference,
        "per-step losses differ after the resume"
    );
}

#[test]
fn an_error_after_the_update_loses_only_the_failing_step() {
    let (reference, resumed) = failed_and_resumed("fail_late", "late");
    assert_eq!(reference.len(), 24);
    assert!(!resumed.contains_key(&13), "step 13 failed before its log");
    assert_eq!(
        resumed.len(),
        23,
        "every other step ran: {:?}",
        resumed.keys()
    );
    for s in 0..13 {
        assert_eq!(resumed[&s], reference[&s], "step {s}");
    }
}
