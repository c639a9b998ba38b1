//! Live functions in a running process: an edit of `lr` takes effect at a later step, a broken
//! edit is reported with its location and the last good version keeps running.

mod run_common;

use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use run_common::{next_line, spawn_lines};

const RECIPE: &str = r#"// live test recipe
fn lr(step, total) { 0.1 }

let ds = dataset("synthetic", #{ samples: 256, classes: 2, size: 8, channels: 1 });
let l = loader(ds, #{ batch_size: 32 });
let net = mlp([64, 16, 2]);
let opt = sgd([net], #{ momentum: 0.9 });
let total = 100000 * l.len;
for b in steps(l, 100000) {
    let rate = live("lr", b.step, total);
    let loss = cross_entropy(net.forward(b.images.reshape([32, 64])), b.labels);
    opt.step(loss, rate);
    print(`step ${b.step} lr ${rate}`);
}
"#;

/// Starts `sslhost run recipe` on the CPU; its stderr arrives line by line on the receiver.
fn spawn_run(recipe: &std::path::Path) -> (std::process::Child, Receiver<String>) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sslhost"));
    c.args(["run", recipe.to_str().unwrap(), "--device", "cpu"])
        .env("NO_COLOR", "1");
    spawn_lines(c)
}

fn parse(line: &str) -> Option<(u64, f64)> {
    let rest = &line[line.find("step ")? + 5..];
    let mut it = rest.split_whitespace();
    let step = it.next()?.parse().ok()?;
    (it.next()? == "lr").then_some(())?;
    Some((step, it.next()?.parse().ok()?))
}

#[test]
fn an_edit_takes_effect_between_steps_and_a_broken_one_is_rejected() {
    let dir = std::env::temp_dir().join(format!("sslhost-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("recipe.rhai");
    std::fs::write(&recipe, RECIPE).unwrap();

    let (mut child, rx) = spawn_run(&recipe);
    let deadline = Instant::now() + Duration::from_secs(120);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Let it run a few steps on the first version. Reading the recipe, or saving it
        // unchanged, is not an edit: no swap may happen.
        let mut last_step = 0;
        let mut touched: Option<Instant> = None;
        // Three debounce periods after the unchanged save, the run must still be on 0.1.
        while touched.is_none_or(|t| t.elapsed() < Duration::from_millis(750)) {
            let line = next_line(&rx, deadline);
            assert!(!line.contains("accepted"), "a swap without an edit: {line}");
            if let Some((s, lr)) = parse(&line) {
                assert_eq!(lr, 0.1);
                last_step = s;
                if s >= 2 && touched.is_none() {
                    let text = std::fs::read_to_string(&recipe).unwrap();
                    std::fs::write(&recipe, text).unwrap();
                    touched = Some(Instant::now());
                }
            }
        }
        std::fs::write(&recipe, RECIPE.replace("{ 0.1 }", "{ 0.05 }")).unwrap();
        let edited_at = last_step;
        // The new value shows up at a later step, and from then on only the new value.
        let swapped_at = loop {
            let line = next_line(&rx, deadline);
            if let Some((s, lr)) = parse(&line) {
                if lr == 0.05 {
                    break s;
                }
                assert_eq!(lr, 0.1, "{line}");
            }
        };
        assert!(swapped_at > edited_at);
        // A broken edit: reported with its location, the last good version continues.
        std::fs::write(&recipe, RECIPE.replace("{ 0.1 }", "{ 0.2 +* }")).unwrap();
        let mut reported = false;
        let mut located = false;
        let mut steps_after_report = 0;
        while steps_after_report < 20 || !located {
            let line = next_line(&rx, deadline);
            if line.contains("edit rejected") {
                reported = true;
            }
            if line.contains("recipe.rhai:2:") {
                assert!(reported, "the location follows the rejection: {line}");
                located = true;
            }
            if let Some((_, lr)) = parse(&line) {
                assert_eq!(lr, 0.05, "the last good version keeps running: {line}");
                if reported {
                    steps_after_report += 1;
                }
            }
        }
        swapped_at
    }));
    let _ = child.kill();
    let _ = child.wait();
    let archived: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    std::fs::remove_dir_all(&dir).ok();
    let swapped_at = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!(
        "swapped at step {swapped_at}; {} files in the run folder",
        archived.len()
    );
}

const LOSS_RECIPE: &str = r#"// live loss test recipe
fn objective(p, y) { (p - y).pow(2).mean() }

let ds = dataset("synthetic", #{ samples: 256, classes: 2, size: 8, channels: 1 });
let l = loader(ds, #{ batch_size: 32 });
let net = linear(64, 1);
let opt = sgd([net], #{ momentum: 0.9 });
let probe = tensor([[3.0], [-1.0]]);
for b in steps(l, 100000) {
    let p = net.forward(b.images.reshape([32, 64]));
    let loss = live("objective", p, b.labels.float().reshape([32, 1]));
    opt.step(loss, 0.01);
    print(`step ${b.step} probe ${live("objective", probe, zeros([2, 1])).item()}`);
}
"#;

#[test]
fn a_loss_function_can_be_swapped_while_training() {
    let dir = std::env::temp_dir().join(format!("sslhost-live-loss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("recipe.rhai");
    std::fs::write(&recipe, LOSS_RECIPE).unwrap();
    let (mut child, rx) = spawn_run(&recipe);
    let deadline = Instant::now() + Duration::from_secs(120);
    let probe = |line: &str| -> Option<f64> { line.split("probe ").nth(1)?.trim().parse().ok() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Mean squared error of the probe: (9 + 1) / 2 = 5.
        loop {
            if let Some(v) = probe(&next_line(&rx, deadline)) {
                assert_eq!(v, 5.0);
                break;
            }
        }
        // Swap in the mean absolute error: (3 + 1) / 2 = 2, and training goes on with it.
        std::fs::write(
            &recipe,
            LOSS_RECIPE.replace("(p - y).pow(2).mean()", "(p - y).abs().mean()"),
        )
        .unwrap();
        let mut after = 0;
        while after < 10 {
            if let Some(v) = probe(&next_line(&rx, deadline)) {
                if v == 2.0 {
                    after += 1;
                } else {
                    assert!(after == 0 && v == 5.0, "unexpected probe value {v}");
                }
            }
        }
    }));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).ok();
    result.unwrap_or_else(|e| std::panic::resume_unwind(e));
}
