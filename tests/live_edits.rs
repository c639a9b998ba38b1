//! Broken live edits cannot stop a run. A real run is edited, one broken kind after another,
//! while it trains; each edit must be rejected with its `file:line:col`, the run must keep
//! its last good version, and it must end on its own with exit 0. An accepted version that
//! fails at a later step is rolled back (checked on the library, where the steps are chosen).

mod run_common;

use std::time::{Duration, Instant};

use rhai::Dynamic;
use sslhost::engine::ScriptEngine;
use sslhost::live::{self, LiveFunctions};

use run_common::{next_line, spawn_lines, sslhost_run};

const RECIPE: &str = r#"// live edits test recipe
fn lr(step, total) { 0.1 }

fn stop() { false }

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
    if live("stop") { break; }
}
"#;

/// The learning rate a `step N lr X` line reports.
fn lr_of(line: &str) -> Option<f64> {
    let rest = &line[line.find("step ")? + 5..];
    let mut it = rest.split_whitespace();
    it.next()?.parse::<u64>().ok()?;
    (it.next()? == "lr").then_some(())?;
    it.next()?.parse().ok()
}

#[test]
fn broken_live_edits_are_rejected_with_locations_and_the_run_ends_cleanly() {
    let dir = std::env::temp_dir().join(format!("sslhost-live-edits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("recipe.rhai");
    std::fs::write(&recipe, RECIPE).unwrap();
    let (mut child, rx) = spawn_lines(sslhost_run(&recipe, &dir.join("runs")));
    let deadline = Instant::now() + Duration::from_secs(240);
    // (edit, the line:col it must be located at, a text the report must hold)
    let broken: &[(String, &str, &str)] = &[
        (
            RECIPE.replace("{ 0.1 }", "{ \"fast\" }"),
            "2:1",
            "returns a value of type string",
        ),
        (
            RECIPE.replace("{ 0.1 }", "{ }"),
            "2:1",
            "returns a value of type ()",
        ),
        (
            RECIPE.replace(
                "{ 0.1 }",
                "{ if step > total / 2 { (-1.0).sqrt() } else { 0.1 } }",
            ),
            "2:1",
            "returns NaN at step",
        ),
        (
            RECIPE.replace("{ 0.1 }", "{ -0.1 }"),
            "2:1",
            "a learning rate must be >= 0",
        ),
        (
            RECIPE.replace("{ 0.1 }", "{ 1e300 }"),
            "2:1",
            "within f32's range",
        ),
        (
            RECIPE.replace("{ 0.1 }", "{ if step == total - 1 { throw \"late\" } 0.1 }"),
            "2:",
            "late",
        ),
        (
            RECIPE.replace("fn lr(step, total) { 0.1 }\n", "\n"),
            "12:16",
            "live function `lr` with 2 argument(s) is missing",
        ),
        (
            RECIPE.replace("{ 0.1 }", "{ 0.1 +* }"),
            "2:",
            "syntax error",
        ),
    ];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A few steps on the first version: `lr` is known to feed opt.step.
        let mut seen = 0;
        while seen < 3 {
            if lr_of(&next_line(&rx, deadline)).is_some() {
                seen += 1;
            }
        }
        for (text, at, says) in broken {
            std::fs::write(&recipe, text).unwrap();
            let mut report = String::new();
            loop {
                let line = next_line(&rx, deadline);
                if let Some(lr) = lr_of(&line) {
                    assert_eq!(lr, 0.1, "a broken version ran: {line}");
                    continue;
                }
                assert!(
                    !line.contains("accepted"),
                    "a broken edit was accepted: {line}\n{text}"
                );
                if line.contains("edit rejected") || !report.is_empty() {
                    report += &line;
                    report.push('\n');
                }
                if line.contains("-->") {
                    break;
                }
            }
            let want = format!("recipe.rhai:{at}");
            assert!(report.contains(&want), "want `{want}` in:\n{report}");
            assert!(report.contains(says), "want `{says}` in:\n{report}");
            // Training goes on with the good version.
            let mut after = 0;
            while after < 2 {
                if let Some(lr) = lr_of(&next_line(&rx, deadline)) {
                    assert_eq!(lr, 0.1);
                    after += 1;
                }
            }
        }
        // An edit of the loop body is not applied, and not called accepted.
        std::fs::write(&recipe, RECIPE.replace("print(`step", "print(`Step")).unwrap();
        loop {
            let line = next_line(&rx, deadline);
            assert!(!line.contains("accepted"), "{line}");
            assert!(
                !line.starts_with("Step") && !line.contains(" Step "),
                "{line}"
            );
            if line.contains("not applied until restart") {
                break;
            }
        }
        // A good edit ends the run: the loop body's `live("stop")` now returns true.
        std::fs::write(
            &recipe,
            RECIPE.replace("fn stop() { false }", "fn stop() { true }"),
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "the run must end cleanly");
    }));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).ok();
    result.unwrap_or_else(|e| std::panic::resume_unwind(e));
}

const GAIN: &str = r#"
fn gain(x) { 1.0 }
fn lr(step, total) { 0.1 }
"#;

#[test]
fn an_accepted_version_that_fails_later_is_rolled_back() {
    let mut engine = ScriptEngine::new(std::path::Path::new(".")).unwrap();
    let ast = engine.compile("recipe.rhai", GAIN).unwrap();
    live::install(LiveFunctions::new("recipe.rhai", &ast).with_text(GAIN));
    let e = engine.engine();
    let gain = |x: f64, step: u64| -> f64 {
        live::call(e, "gain", vec![Dynamic::from(x)], Some(step))
            .unwrap()
            .as_float()
            .unwrap()
    };
    assert_eq!(gain(1.0, 0), 1.0);
    // Probed with the last call's argument (x = 1), this version is fine; from x > 5 on it
    // returns a string, where the running version returns a number.
    let edit = GAIN.replace("{ 1.0 }", "{ if x > 5.0 { \"oops\" } else { 2.0 } }");
    assert!(live::with(|l| l.offer(e, &edit, 1)).unwrap().unwrap());
    assert_eq!(gain(2.0, 1), 2.0);
    assert_eq!(gain(9.0, 2), 1.0, "rolled back to the first version");
    assert_eq!(live::with(|l| l.rollbacks()), Some(1));
    assert_eq!(gain(9.0, 3), 1.0);
    assert_eq!(gain(1.0, 3), 1.0);
    // A version that throws at run time is rolled back as well.
    let edit = GAIN.replace("{ 1.0 }", "{ if x > 5.0 { throw \"boom\" } 3.0 }");
    assert!(live::with(|l| l.offer(e, &edit, 4)).unwrap().unwrap());
    assert_eq!(gain(1.0, 4), 3.0);
    assert_eq!(gain(6.0, 5), 1.0);
    assert_eq!(live::with(|l| l.rollbacks()), Some(2));
}

#[test]
fn a_learning_rate_is_held_to_its_limits_once_it_feeds_an_optimiser() {
    let mut engine = ScriptEngine::new(std::path::Path::new(".")).unwrap();
    let ast = engine.compile("recipe.rhai", GAIN).unwrap();
    live::install(LiveFunctions::new("recipe.rhai", &ast).with_text(GAIN));
    let e = engine.engine();
    let args = || vec![Dynamic::from(0_i64), Dynamic::from(100_i64)];
    let lr = live::call(e, "lr", args(), Some(0))
        .unwrap()
        .as_float()
        .unwrap();
    let negative = GAIN.replace("{ 0.1 }", "{ if step > 50 { -0.1 } else { 0.1 } }");
    // Until the value is known to be a learning rate, a negative number is a number.
    assert!(live::with(|l| l.offer(e, &negative, 1)).unwrap().unwrap());
    live::install(LiveFunctions::new("recipe.rhai", &ast).with_text(GAIN));
    let lr2 = live::call(e, "lr", args(), Some(0))
        .unwrap()
        .as_float()
        .unwrap();
    assert_eq!(lr, lr2);
    live::note_use(lr2, live::Role::LearningRate, Some(0));
    let err = live::with(|l| l.offer(e, &negative, 1))
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at step 51: a learning rate must be >= 0"),
        "{err}"
    );
    assert!(err.contains("recipe.rhai:3:1"), "{err}");
}
