//! Faults around a run that must not stop it or lose work: a disk that refuses the metrics,
//! temporary files a killed write left behind.

mod run_common;

use run_common::{finished_run, recipe_in_temp, sslhost_run};

const RECIPE: &str = r#"// faults test recipe
let cfg = config(#{ epochs: 1, batch_size: 16 });
let ds = dataset("synthetic", #{ samples: 128, classes: 4, size: 8, channels: 1 });
let l = loader(ds, #{ batch_size: cfg.batch_size });
let net = mlp([64, 16, 4]);
let opt = sgd([net], #{ momentum: 0.9 });
let state = #{ net: net, opt: opt };
resume(state);
for b in steps(l, cfg.epochs) {
    let loss = cross_entropy(net.forward(b.images.reshape([cfg.batch_size, 64])), b.labels);
    opt.step(loss, 0.05);
    log(b.step, #{ loss: loss });
    if (b.step + 1) % 8 == 0 { checkpoint(state); }
}
"#;

#[test]
fn a_full_disk_under_the_metrics_warns_once_and_the_run_goes_on_to_its_checkpoint() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("no /dev/full here: skipped");
        return;
    }
    let (dir, recipe) = recipe_in_temp("faults", RECIPE);
    let runs = dir.join("runs");
    let run = finished_run(sslhost_run(&recipe, &runs), &runs);

    // Every write to metrics.jsonl now fails with "no space left on device"; a killed write
    // left a temporary file beside the checkpoint.
    let metrics = run.join("metrics.jsonl");
    std::fs::remove_file(&metrics).unwrap();
    std::os::unix::fs::symlink("/dev/full", &metrics).unwrap();
    let stale = run.join("checkpoints/.last.safetensors.tmp-4294967");
    std::fs::write(&stale, b"half a checkpoint").unwrap();

    let out = sslhost_run(&recipe, &runs)
        .args(["--set", "epochs=3", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings = stderr.matches("metrics.jsonl: cannot write").count();
    assert_eq!(warnings, 1, "one warning, not one a step:\n{stderr}");
    assert!(
        stderr.contains("resumes at step 24"),
        "the last checkpoint was written:\n{stderr}"
    );
    assert!(!stale.exists(), "the stale temporary file was removed");
    // TensorBoard's events were written meanwhile.
    let events = std::fs::read_dir(&run)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tfevents")
        })
        .count();
    assert_eq!(events, 2, "one event file per session");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resuming_with_a_different_data_order_or_model_needs_force() {
    let (dir, recipe) = recipe_in_temp("resume-guard", RECIPE);
    let runs = dir.join("runs");
    let run = finished_run(sslhost_run(&recipe, &runs), &runs);
    let resume = |args: &[&str]| {
        let out = sslhost_run(&recipe, &runs)
            .args(args)
            .arg("--resume")
            .arg(&run)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stderr) = resume(&["--set", "batch_size=32"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("resuming with batch_size 16 -> 32"),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    let (code, stderr) = resume(&["--seed", "7"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--seed 0, this one --seed 7"), "{stderr}");
    // Settings that keep the order and the model: a warning names them, and the run goes on.
    let (code, stderr) = resume(&["--set", "epochs=2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("resuming with changed settings: epochs 1 -> 2"),
        "{stderr}"
    );
    let (code, stderr) = resume(&["--set", "batch_size=32", "--set", "epochs=6", "--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("batch_size 16 -> 32"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn data_pointing_nowhere_is_an_error() {
    let (dir, recipe) = recipe_in_temp("nodata", RECIPE);
    let out = sslhost_run(&recipe, &dir.join("runs"))
        .args(["--data", "/no/such/folder"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/no/such/folder: --data: no such directory"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn max_memory_bounds_one_tensor_with_an_error_at_the_line() {
    let dir = std::env::temp_dir().join(format!("sslhost-maxmem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("big.rhai");
    std::fs::write(
        &script,
        "let a = ones([1000, 1]);\nlet b = a + ones([1, 1000]);\n",
    )
    .unwrap();
    let run = |budget: &str| {
        sslhost_run(&script, &dir.join("runs"))
            .args(["--max-memory", budget])
            .output()
            .unwrap()
    };
    // 1000 x 1000 floats are 3.8 MiB: over a 1 MiB budget, under a 16 MiB one.
    let out = run("1M");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("big.rhai:2:11"), "{stderr}");
    assert!(
        stderr.contains("more than the 1.0 MiB allowed (--max-memory)"),
        "{stderr}"
    );
    assert!(run("16M").status.success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn weights_with_nan_are_named_and_not_worth_a_checkpoint() {
    use sslhost::train::checkpoint::Checkpointed;
    let device = sslhost::device::cpu();
    let mut rng = sslhost::tensor::HostRng::new(0);
    let config = sslhost::models::layers::LinearConfig::new(3, 2);
    let net = sslhost::models::SharedNet::linear(&config, &mut rng, &device).unwrap();
    assert_eq!(net.non_finite("online"), None);
    let mut values = std::collections::HashMap::new();
    for (name, t) in net.parameters() {
        let bad = if name.ends_with("weight") {
            t.binary_scalar(f64::NAN, sslhost::tensor::BinaryOp::Mul, false)
                .unwrap()
        } else {
            t.clone()
        };
        values.insert(name, bad);
    }
    net.load(&values).unwrap();
    let bad = net.non_finite("online").expect("a NaN weight is found");
    assert!(
        bad.starts_with("`online/") && bad.ends_with("weight`"),
        "{bad}"
    );
}

#[test]
fn a_loop_over_loader_epoch_marks_steps_like_steps_does() {
    // `loader.epoch(e)` is the same batch stream as `steps(..)`: its steps are known, so an
    // error in it checkpoints the work done, as in a `steps` loop.
    let dir = std::env::temp_dir().join(format!("sslhost-epoch-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("recipe.rhai");
    let text = RECIPE
        .replace("for b in steps(l, cfg.epochs) {", "for b in l.epoch(1) {")
        .replace(
            "    log(b.step, #{ loss: loss });",
            "    if b.step == 11 { throw \"bug\"; }",
        );
    std::fs::write(&recipe, text).unwrap();
    let out = sslhost_run(&recipe, &dir.join("runs")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("(resumes at step 12)"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_run_records_each_session_and_a_resume_needs_no_script() {
    let (dir, recipe) = recipe_in_temp("record", RECIPE);
    let runs = dir.join("runs");
    let run = finished_run(sslhost_run(&recipe, &runs), &runs);
    // --resume alone runs the run directory's copy of the recipe.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["run", "--device", "cpu", "-s", "epochs=2", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resumes at step 16"), "{stderr}");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join(name)).unwrap()).unwrap()
    };
    let sessions = read("run.json");
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0]["seed"], 0);
    assert_eq!(sessions[0]["device"], "cpu");
    assert_eq!(sessions[0]["precision"], "f32");
    assert!(sessions[0]["resumed_at"].is_null());
    assert_eq!(sessions[1]["resumed_at"], 8);
    let command = sessions[1]["command"].as_array().unwrap();
    assert!(command.iter().any(|a| a == "--resume"), "{command:?}");
    assert_eq!(
        read("config.json")["epochs"],
        2,
        "the resumed run's settings"
    );
    assert_eq!(
        read("config-8.json")["epochs"],
        1,
        "the earlier settings are kept"
    );
    std::fs::remove_dir_all(&dir).ok();
}
