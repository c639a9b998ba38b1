//! What a run leaves besides `metrics.jsonl`: TensorBoard event files and `curves.png`;
//! `steps(loader, epochs, max_steps)`; and no progress bar when stderr is not a terminal.

mod run_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use run_common::{only_run, sslhost_run};

use sslhost::engine;
use sslhost::session::Session;

fn run_script(text: &str) -> sslhost::Result<rhai::Dynamic> {
    engine::run_source(
        "steps_test.rhai",
        text,
        Path::new("."),
        Session::new(sslhost::device::cpu(), 3),
    )
}

/// The steps a loop over `stream` sees (`l` has 4 batches an epoch).
fn steps_seen(stream: &str) -> Vec<i64> {
    let text = format!(
        "let ds = dataset(\"synthetic\", #{{ samples: 32, classes: 2, size: 4, channels: 1 }});\n\
         let l = loader(ds, #{{ batch_size: 8 }});\n\
         let seen = [];\n\
         for b in {stream} {{ seen.push(b.step); }}\n\
         seen"
    );
    run_script(&text)
        .unwrap_or_else(|e| panic!("{stream}: {e}"))
        .into_typed_array::<i64>()
        .unwrap()
}

#[test]
fn max_steps_ends_the_stream() {
    assert_eq!(steps_seen("steps(l, 3)"), (0..12).collect::<Vec<_>>());
    assert_eq!(steps_seen("steps(l, 3, 0)"), (0..12).collect::<Vec<_>>());
    assert_eq!(steps_seen("steps(l, 3, 6)"), (0..6).collect::<Vec<_>>());
    assert_eq!(steps_seen("steps(l, 3, 100)"), (0..12).collect::<Vec<_>>());
    let e = run_script(
        "let l = loader(dataset(\"synthetic\", #{ samples: 32 }), #{ batch_size: 8 });\n\
         for b in steps(l, 1, -1) {}",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_steps"), "{e}");
}

const RECIPE: &str = r#"// run outputs test
let ds = dataset("synthetic", #{ samples: 64, classes: 2, size: 4, channels: 1 });
let l = loader(ds, #{ batch_size: 16 });
let net = mlp([16, 8, 2]);
let opt = sgd([net], #{ momentum: 0.9 });
let state = #{ net: net, opt: opt };
resume(state);
for b in steps(l, 10, 6) {
    let loss = cross_entropy(net.forward(b.images.reshape([16, 16])), b.labels);
    opt.step(loss, 0.1);
    log(b.step, #{ loss: loss, lr: 0.1, phase: "train", warm: b.step < 2 });
}
checkpoint(state);
log(5, #{ knn_top1: 0.75 });
"#;

#[test]
fn a_run_writes_event_files_and_curves_and_no_bar_off_a_terminal() {
    let dir = std::env::temp_dir().join(format!("sslhost-outputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("outputs.rhai");
    std::fs::write(&recipe, RECIPE).unwrap();
    let runs = dir.join("runs");
    let out = sslhost_run(&recipe, &runs).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // No bar: no carriage returns or escape sequences, on either stream.
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text.iter().any(|&c| c == b'\r' || c == 0x1b),
            "{name} has terminal control characters: {}",
            String::from_utf8_lossy(text)
        );
    }
    // The log lines carry the progress instead: epoch and, after the first batch, img/s.
    assert!(stderr.contains("step 0: "), "{stderr}");
    assert!(stderr.contains("(epoch 1/10"), "{stderr}");
    assert!(stderr.contains("img/s)"), "{stderr}");
    assert!(
        !stderr.contains("step 6: "),
        "max_steps 6 stops after step 5: {stderr}"
    );

    let run = only_run(&runs);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 7, "{metrics}");

    // One event file, holding every numeric value as a scalar (not the string or the bool).
    let events: Vec<PathBuf> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let bytes = std::fs::read(&events[0]).unwrap();
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(count(b"brain.Event:2"), 1);
    assert_eq!(count(b"\x0a\x04loss"), 6);
    assert_eq!(count(b"\x0a\x02lr"), 6);
    assert_eq!(count(b"\x0a\x08knn_top1"), 1);
    assert_eq!(count(b"phase") + count(b"warm"), 0);
    // The run record as a text summary for TensorBoard's Text tab.
    assert_eq!(count(b"\x0a\x06config"), 1);
    assert_eq!(count(b"\x0a\x04text"), 1);
    assert_eq!(count(b"| seed | 0 |"), 1);
    assert_eq!(count(b"| device | cpu |"), 1);

    // Curves: loss, lr and the single kNN point, two columns.
    let curves = image::open(run.join("curves.png")).unwrap();
    assert_eq!((curves.width(), curves.height()), (960, 600));
    assert!(stderr.contains("curves: "), "{stderr}");
    // Drawn again into another file, without smoothing; a weight outside [0, 1) is refused.
    let other = dir.join("other.png");
    let again = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["curves", run.to_str().unwrap(), "--smoothing", "0", "-o"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(image::open(&other).unwrap().width(), curves.width());
    let bad = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["curves", run.to_str().unwrap(), "--smoothing", "1.5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--smoothing 1.5"));

    // Resumed (after its last step: the loop is empty, the final log runs again), the run
    // appends to a second event file.
    let again = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["run", recipe.to_str().unwrap(), "--device", "cpu"])
        .arg("--resume")
        .arg(&run)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
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
    assert_eq!(events, 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_failing_run_still_draws_its_curves() {
    let dir = std::env::temp_dir().join(format!("sslhost-outputs-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("fails.rhai");
    std::fs::write(
        &recipe,
        "for i in 0..4 { log(i, #{ loss: 1.0 / (i + 1) }); }\nlet x = tensor([1.0]).matmul(3);\n",
    )
    .unwrap();
    let runs = dir.join("runs");
    let out = sslhost_run(&recipe, &runs).output().unwrap();
    assert!(!out.status.success());
    let run = only_run(&runs);
    let curves = image::open(run.join("curves.png")).unwrap();
    assert_eq!((curves.width(), curves.height()), (480, 300));
    std::fs::remove_dir_all(&dir).ok();
}

/// A second Ctrl-C exits at once (no checkpoint) and still leaves the curves of what was
/// logged. The script never reaches a step boundary, so the first Ctrl-C alone cannot stop it.
#[test]
fn a_second_ctrl_c_exits_at_once_and_draws_the_curves() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = std::env::temp_dir().join(format!("sslhost-outputs-int-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("busy.rhai");
    std::fs::write(
        &recipe,
        "for i in 0..4 { log(i, #{ loss: 1.0 / (i + 1) }); }\n\
         let x = randn([256, 256]);\n\
         loop { let y = x.matmul(x); }\n",
    )
    .unwrap();
    let runs = dir.join("runs");
    let mut child = sslhost_run(&recipe, &runs)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in stderr.by_ref() {
        let line = line.unwrap();
        let logged = line.contains("step 3: ");
        seen.push(line);
        if logged {
            break;
        }
    }
    let interrupt = || {
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    interrupt();
    std::thread::sleep(std::time::Duration::from_millis(300));
    interrupt();
    seen.extend(stderr.map_while(Result::ok));
    assert_eq!(child.wait().unwrap().code(), Some(130), "{seen:?}");
    assert!(seen.iter().any(|l| l.contains("second Ctrl-C")), "{seen:?}");
    let run = only_run(&runs);
    assert!(run.join("curves.png").exists(), "{seen:?}");
    assert!(!run.join("checkpoints").join("last.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}
