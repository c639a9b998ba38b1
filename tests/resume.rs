//! Exact resume on the CPU: a run killed with SIGKILL and resumed with `--resume` produces
//! the same per-step losses, bit for bit, as a run that was never interrupted; with the step
//! replayed (`--capture replay`) too.

mod run_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use run_common::{finished_run, only_run, recipe_in_temp, sslhost_run};

const RECIPE: &str = r#"// resume test: augmentation randomness, momentum optimiser, EMA target
let cfg = config(#{ epochs: 3, batch_size: 16, fail_at: -1, fail_late: -1, size: 8, width: 4,
                   log_every: 1 });
let ds = dataset("synthetic", #{ samples: 128, classes: 4, size: cfg.size, channels: 3 });
let l = loader(ds, #{ batch_size: cfg.batch_size });
let views = transform([random_resized_crop(cfg.size, #{ scale: [0.5, 1.0] }), hflip(0.5)]);
let w = cfg.width;
let net = sequential([resnet(18, #{ cifar_stem: true, widths: [w, w, 2 * w, 2 * w] }),
                      linear(2 * w, 4)]);
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
    if (b.step + 1) % cfg.log_every == 0 { log(b.step, #{ loss: loss }); }
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

/// Runs the recipe whole, then again stopped by `signal` once step `after` is logged, resumed
/// with `--resume`; the per-step losses of both must be equal. `args` go to every run.
fn interrupted_and_resumed_matches_whole(signal: &str, tag: &str, args: &[&str], after: u64) {
    let (dir, recipe) = recipe_in_temp(&format!("resume-{tag}"), RECIPE);
    let sslhost = |runs: &Path| {
        let mut c = sslhost(&recipe, runs);
        c.args(args);
        c
    };

    // The reference: never interrupted.
    let whole = dir.join("whole");
    let reference = losses(&finished_run(sslhost(&whole), &whole));
    assert_eq!(
        *reference.keys().last().unwrap(),
        23,
        "3 epochs of 8 batches"
    );

    let split = dir.join("split");
    let mut child = sslhost(&split)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in stderr.by_ref().map_while(Result::ok) {
        if line.contains(&format!("step {after}:")) {
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
    assert!(
        before.len() < reference.len(),
        "the run was stopped before its end"
    );

    let out = sslhost(&split).arg("--resume").arg(&run).output().unwrap();
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
    interrupted_and_resumed_matches_whole("-KILL", "kill", &[], 10);
}

#[test]
fn ctrl_c_checkpoints_at_a_step_boundary_and_resumes_exactly() {
    interrupted_and_resumed_matches_whole("-INT", "int", &[], 10);
}

/// Under `--capture replay` a step that reads nothing ends with its work (the update, the
/// EMA) still pending; Ctrl-C's checkpoint must come after that work runs. The steps are
/// slow enough (32x32, wider network) that the signal lands within the three steps after
/// step 3's log, none of which reads.
#[test]
fn ctrl_c_under_replay_checkpoints_the_replayed_update() {
    let args = [
        "--capture",
        "replay",
        "--set",
        "size=32",
        "--set",
        "width=16",
        "--set",
        "log_every=4",
    ];
    interrupted_and_resumed_matches_whole("-INT", "int-replay", &args, 3);
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

/// A loop without an optimiser (whose step reads the loss inside it on the CPU, which a
/// capture refuses): an EMA target and a queue of keys, with augmentation randomness. Step 2
/// departs from the recording, so the graph is recorded afresh and its capture falls at step
/// 6, mid-epoch, after the checkpoint of step 4.
const GRAPH_RECIPE: &str = r#"// a failed capture test
let cfg = config(#{ epochs: 2, batch_size: 16 });
let ds = dataset("synthetic", #{ samples: 128, classes: 4, size: 8, channels: 1 });
let l = loader(ds, #{ batch_size: cfg.batch_size });
let views = transform([random_resized_crop(8, #{ scale: [0.5, 1.0] }), hflip(0.5)]);
let net = mlp([64, 16, 4]);
let target = momentum_copy(net);
let keys = queue(32, 4);
let state = #{ net: net, target: target, keys: keys };
resume(state);
for b in steps(l, cfg.epochs) {
    let x = views.apply(b.images).reshape([cfg.batch_size, 64]);
    let k = target.forward(x).detach();
    let loss = (net.forward(x) - k).pow(2).mean() + k.matmul(keys.tensor().t()).mean();
    if b.step == 2 { loss = loss * 1.0; }
    update_momentum(net, target, 0.5);
    keys.enqueue(k.normalize(1));
    if b.step % 4 == 3 { log(b.step, #{ loss: loss }); }
    if b.step == 3 { checkpoint(state); }
}
"#;

/// A device-graph capture that fails once begun loses the state its step was to update (on a
/// GPU, cubecl marks those buffers failed). The replay checkpoints before each capture, the
/// failure writes nothing over that checkpoint, and the run resumes from it exactly. The
/// failure is `SSLHOST_FAULT=capture`'s stand-in, since the CPU records no graphs.
#[test]
fn a_failed_capture_resumes_from_the_checkpoint_written_before_it() {
    let (dir, recipe) = recipe_in_temp("failed-capture", GRAPH_RECIPE);
    let replay = |runs: &Path| {
        let mut c = sslhost(&recipe, runs);
        c.args(["--capture", "replay"]);
        c
    };
    let whole = dir.join("whole");
    let reference = losses(&finished_run(replay(&whole), &whole));
    assert_eq!(reference.len(), 4, "{reference:?}");

    let split = dir.join("split");
    let out = replay(&split)
        .env("SSLHOST_CAPTURE_GRAPH", "1")
        .env("SSLHOST_FAULT", "capture")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Located at the loop, where the step's work was launched.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("recording step 6 as a device graph failed"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("the next step may be recorded as a device graph: checkpoint written first"),
        "{stderr}"
    );
    let run = only_run(&split);
    assert!(
        stderr.contains(&format!(
            "the last checkpoint is kept (resumes at step 6): sslhost run {} --resume {}",
            recipe.display(),
            run.display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("checkpoint written before exiting"),
        "{stderr}"
    );

    let out = replay(&split).arg("--resume").arg(&run).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("at step 6"), "{stderr}");
    assert_eq!(
        losses(&run),
        reference,
        "per-step losses differ after resume"
    );

    // A fault it does not know is an error, not a run without one.
    let out = replay(&dir.join("typo"))
        .env("SSLHOST_FAULT", "captur")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SSLHOST_FAULT=captur"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
