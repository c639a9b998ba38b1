//! `sslhost run --capture check`: the tape of a recipe's steps (`tensor::tape`), reported at
//! the end of the run, and a run that computes exactly what it computes without the tape.

mod run_common;

use std::path::Path;

use std::time::{Duration, Instant};

use run_common::{next_line, only_run, recipe_in_temp, spawn_lines, sslhost_run};

/// A small network on a synthetic loader, with its optimiser, for the recipes written here.
const TINY_NET: &str = r#"
let ds = dataset("synthetic", #{ samples: 256, size: 8, classes: 4 });
let loader = loader(ds, #{ batch_size: 32 });
let net = sequential([resnet(18, #{ cifar_stem: true, widths: [4, 4, 8, 8], blocks: [1, 1, 1, 1] }),
                      mlp([8, 8, 4])]);
let opt = sgd([net], #{ lr: 0.1 });
"#;

/// Runs `recipe` for two short epochs with `--capture MODE`: the capture line (if any) and
/// the metric lines without their timestamps.
fn run(recipe: &Path, runs: &Path, mode: &str) -> (Option<String>, Vec<String>) {
    let mut command = sslhost_run(recipe, runs);
    command.args([
        "--seed",
        "0",
        "-s",
        "limit=384",
        "-s",
        "epochs=2",
        "-s",
        "log_every=4",
    ]);
    command.args(["--capture", mode]);
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("capture {mode}:")))
        .map(str::to_string);
    let metrics = std::fs::read_to_string(only_run(runs).join("metrics.jsonl")).unwrap();
    let values = metrics
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut()
                .unwrap()
                .retain(|k, _| !k.contains("time"));
            v.to_string()
        })
        .collect();
    (line, values)
}

/// The numbers of "Replay: R steps recorded, P steps replayed, D steps departed".
fn replay_counts(line: &str) -> (u64, u64, u64) {
    let at = line.find("Replay: ").expect(line) + "Replay: ".len();
    let mut counts = line[at..].split(", ").take(3).map(|part| {
        part.split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .expect(line)
    });
    let mut next = || counts.next().expect(line);
    (next(), next(), next())
}

/// The numbers of "U of S steps make the same E tensor calls".
fn usual(line: &str) -> (u64, u64, u64) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "of").expect(line);
    let num = |i: usize| words[i].parse::<u64>().expect(line);
    (num(at - 1), num(at + 1), num(at + 6))
}

#[test]
fn byol_steps_repeat_one_tape_and_the_tape_changes_nothing() {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/byol.rhai");
    let dir = std::env::temp_dir().join(format!("sslhost-capture-byol-{}", std::process::id()));
    let (plain, checked) = (dir.join("plain"), dir.join("checked"));
    let (none, without) = run(&recipe, &plain, "off");
    let (line, with) = run(&recipe, &checked, "check");
    assert_eq!(none, None, "no tape without --capture check");
    assert_eq!(without, with, "the same metrics with and without the tape");
    let line = line.expect("a capture line");
    // 12 steps: the log steps (0, 4, 8) and the last (the kNN monitor) only add work after
    // the usual tape's end, so a replay of it could serve every step.
    let (same, steps, calls) = usual(&line);
    assert_eq!((same, steps), (8, 12), "{line}");
    assert!(calls > 20, "{line}");
    assert!(
        line.contains("add 4 after it") && line.contains("adds"),
        "{line}"
    );
    assert!(!line.contains("depart"), "{line}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_step_that_computes_something_else_is_named() {
    // From step 5 on the loss has another term, as a live edit of the loss would make it.
    let (dir, recipe) = recipe_in_temp(
        "capture-edit",
        &format!(
            r#"{TINY_NET}
for b in steps(loader, 1) {{
    let z = net.forward(b.images);
    let loss = z.pow(2).mean();
    if b.step >= 5 {{ loss = loss + z.abs().mean(); }}
    opt.step(loss, 0.1);
}}
"#
        ),
    );
    let runs = dir.join("runs");
    let out = sslhost_run(&recipe, &runs)
        .args(["--capture", "replay"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("capture replay:"))
        .expect(&stderr);
    // Eight steps: forward, pow, mean, opt.step (its loss read on the CPU, an entry before
    // the call's own).
    assert_eq!(usual(line), (5, 8, 5), "{line}");
    assert!(
        line.contains(
            "3 steps from step 5 depart from it at 3: `abs`(entry 0) where the usual tape has \
             a read of device values in `opt.step`"
        ),
        "{line}"
    );
    // Under a replay: step 0 recorded, 1-4 replayed, step 5 departs where the loss changes,
    // 6 is recorded afresh and 7 replays it.
    assert!(
        line.contains(
            "Replay: 2 steps recorded, 5 steps replayed, 1 step departed; step 5: entry 4: \
             `abs`(entry 0) where the recording has `opt.step`(entry 2)"
        ),
        "{line}"
    );
    assert!(!line.contains("numbers"), "{line}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_replayed_run_computes_what_the_run_computes() {
    // Step 0 is recorded; the later steps match it to its end, log steps included. DINO's
    // teacher temperature warms up: step 1 departs where it changed, and the recording after
    // takes it as an input.
    for (name, replay) in [
        (
            "byol",
            "1 step recorded, 11 steps replayed, 0 steps departed",
        ),
        (
            "moco",
            "1 step recorded, 11 steps replayed, 0 steps departed",
        ),
        (
            "dino",
            "2 steps recorded, 9 steps replayed, 1 step departed",
        ),
    ] {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("recipes/{name}.rhai"));
        let dir =
            std::env::temp_dir().join(format!("sslhost-replay-{name}-{}", std::process::id()));
        let (_, plain) = run(&recipe, &dir.join("plain"), "off");
        let (line, replayed) = run(&recipe, &dir.join("replayed"), "replay");
        assert_eq!(plain, replayed, "{name}: every metric equal");
        let line = line.expect("a capture line");
        assert!(line.contains(&format!("Replay: {replay}")), "{line}");
        if name == "dino" {
            assert!(
                line.contains("step 1: entry 18: `div_f`")
                    && line.contains("numbers taken as inputs, as they changed: `div_f` at 18"),
                "{line}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn a_schedules_number_departs_once_then_replays_as_an_input() {
    // The loss's weight follows a schedule: a new number every step.
    let (dir, recipe) = recipe_in_temp(
        "capture-schedule",
        &format!(
            r#"{TINY_NET}
for b in steps(loader, 1) {{
    let z = net.forward(b.images);
    let w = 1.0 / (1.0 + b.step);
    let loss = (z.pow(2).mean() * w + 0.5) / (2.0 - w);
    opt.step(loss, 0.1);
    log(b.step, #{{ loss: loss }});
}}
"#
        ),
    );
    let losses = |mode: &str| {
        let runs = dir.join(mode);
        let out = sslhost_run(&recipe, &runs)
            .args(["--seed", "0", "--capture", mode])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let metrics = std::fs::read_to_string(only_run(&runs).join("metrics.jsonl")).unwrap();
        let losses: Vec<f64> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .map(Option::unwrap)
            .collect();
        (losses, stderr)
    };
    let (eager, _) = losses("off");
    let (replayed, stderr) = losses("replay");
    assert_eq!(eager.len(), 8);
    assert_eq!(replayed, eager, "the same losses to the bit");
    let line = stderr
        .lines()
        .find(|l| l.contains("capture replay:"))
        .expect(&stderr);
    // Step 1 departs at the weight; every number that changed in it (the weight, and the
    // divisor after it) is an input from step 2's recording on, which steps 3-7 replay.
    assert!(
        line.contains("Replay: 2 steps recorded, 5 steps replayed, 1 step departed"),
        "{line}"
    );
    assert!(
        line.contains("numbers taken as inputs, as they changed: `mul_f` at 3, `div_f` at 5"),
        "{line}"
    );
    // The steps make one tape but for those numbers, and the report says so.
    assert_eq!(usual(line), (8, 8, 9), "{line}");
    assert!(
        line.contains(
            "but for numbers that differ between steps (a replay takes them as inputs): \
             `mul_f` at 3, `div_f` at 5"
        ),
        "{line}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_device_graph_with_cudnns_kernels_is_tried_only_on_cubecls_stream() {
    let (dir, recipe) = recipe_in_temp(
        "capture-cudnn",
        r#"
let net = mlp([12, 4]);
let opt = sgd([net], #{ lr: 0.1 });
for b in steps(loader(dataset("synthetic", #{ samples: 64, size: 2, classes: 2 }), #{ batch_size: 16 }), 1) {
    opt.step(net.forward(b.images.reshape([16, 12])).pow(2).mean(), 0.1);
}
"#,
    );
    let line_ordered = |gpu_kernels: &str, order: &str| {
        let out = sslhost_run(&recipe, &dir.join(format!("{gpu_kernels}-{order}")))
            .args(["--capture", "replay"])
            .env("SSLHOST_CAPTURE_GRAPH", "1")
            .env("SSLHOST_GPU_BATCH_NORM", gpu_kernels)
            .env("SSLHOST_CUDNN_ORDER", order)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    // The graph is asked for (and not tried here: the CPU checks the loss inside the
    // optimiser's step), and the report says what became of it.
    let nhwc = line_ordered("nhwc", "sync");
    assert!(nhwc.contains(". Graph: not tried"), "{nhwc}");
    // With cuDNN's kernels on a stream of their own it is not asked for, and the run says
    // why and what would do.
    for order in ["sync", "signal", "flags"] {
        let cudnn = line_ordered("cudnn", order);
        assert!(
            cudnn.contains(&format!(
                "no device graph with cuDNN's kernels ordered by `{order}`"
            )),
            "{cudnn}"
        );
        assert!(cudnn.contains("SSLHOST_CUDNN_ORDER=stream"), "{cudnn}");
        assert!(!cudnn.contains(". Graph:"), "{cudnn}");
        assert!(
            cudnn.contains("Replay: 1 step recorded, 3 steps replayed"),
            "{cudnn}"
        );
    }
    // On cubecl's own stream a graph records cuDNN's calls, and the launches after them
    // bind their buffers: it is asked for.
    let shared = line_ordered("cudnn", "stream");
    assert!(!shared.contains("no device graph"), "{shared}");
    assert!(shared.contains(". Graph: not tried"), "{shared}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_stand_in_graph_needs_the_gpu_code_path_and_an_unknown_graph_is_an_error() {
    let (dir, recipe) = recipe_in_temp(
        "capture-stand-in",
        r#"
let net = mlp([12, 4]);
let target = momentum_copy(net);
for b in steps(loader(dataset("synthetic", #{ samples: 64, size: 2, classes: 2 }), #{ batch_size: 16 }), 1) {
    log(b.step, #{ d: (net.forward(b.images.reshape([16, 12])) - target.forward(b.images.reshape([16, 12]))).pow(2).mean() });
}
"#,
    );
    let run = |graph: &str| {
        sslhost_run(&recipe, &dir.join("runs"))
            .args(["--capture", "replay"])
            .env("SSLHOST_CAPTURE_GRAPH", graph)
            .output()
            .unwrap()
    };
    // burn-flex writes no buffer in place, so a stand-in's replays would read stale inputs:
    // it is refused, and the steps replay without it.
    let out = run("stand-in");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "Graph: refused: preparing the capture: the stand-in needs a device that writes \
             in place (the GPU code path)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 step recorded, 3 steps replayed"),
        "{stderr}"
    );
    let out = run("yes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SSLHOST_CAPTURE_GRAPH=yes"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_live_edited_schedule_replays_once_its_number_is_an_input() {
    let dir = std::env::temp_dir().join(format!("sslhost-capture-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("recipe.rhai");
    let first = r#"fn gain(step) { 1.0 }

fn stop(step) { false }

let ds = dataset("synthetic", #{ samples: 256, classes: 2, size: 8, channels: 1 });
let l = loader(ds, #{ batch_size: 32 });
let net = mlp([64, 16, 2]);
let opt = sgd([net], #{ momentum: 0.9 });
for b in steps(l, 100000) {
    let g = live("gain", b.step);
    let loss = cross_entropy(net.forward(b.images.reshape([32, 64])), b.labels) * g;
    opt.step(loss, 0.01);
    print(`step ${b.step} gain ${g}`);
    if live("stop", b.step) { break; }
}
"#;
    std::fs::write(&recipe, first).unwrap();
    let mut command = sslhost_run(&recipe, &dir.join("runs"));
    command.args(["--capture", "replay"]);
    let (mut child, rx) = spawn_lines(command);
    let deadline = Instant::now() + Duration::from_secs(240);
    let gain = |line: &str| -> Option<f64> { line.split(" gain ").nth(1)?.trim().parse().ok() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A few steps at a constant gain, then a schedule, edited in while the run trains.
        let mut seen = 0;
        while seen < 5 {
            seen += gain(&next_line(&rx, deadline)).is_some() as usize;
        }
        let schedule = first.replace(
            "fn gain(step) { 1.0 }",
            "fn gain(step) { 1.0 / (1.0 + step) }",
        );
        std::fs::write(&recipe, &schedule).unwrap();
        let mut scheduled = 0;
        while scheduled < 20 {
            if gain(&next_line(&rx, deadline)).is_some_and(|g| g < 1.0) {
                scheduled += 1;
            }
        }
        std::fs::write(
            &recipe,
            schedule.replace("fn stop(step) { false }", "fn stop(step) { true }"),
        )
        .unwrap();
        assert_eq!(
            child.wait().unwrap().code(),
            Some(0),
            "the run ends cleanly"
        );
        let mut rest = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
            rest.push(line);
        }
        let line = rest
            .iter()
            .find(|l| l.contains("capture replay:"))
            .unwrap_or_else(|| panic!("{rest:?}"));
        // The edit makes one step depart where the gain changed; from the recording after
        // it, the gain is an input, and the schedule's steps replay.
        assert!(
            line.contains("numbers taken as inputs, as they changed: `mul_f`"),
            "{line}"
        );
        let (recorded, replayed, departed) = replay_counts(line);
        assert_eq!(departed, 1, "{line}");
        assert!(recorded <= 3 && replayed >= 18, "{line}");
    }));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).ok();
    result.unwrap_or_else(|e| std::panic::resume_unwind(e));
}
