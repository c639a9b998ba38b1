//! `scripts/gpu_session.sh session`, the one prepared call of a session lent a GPU, run here
//! with a stand-in for the CUDA binary (`tests/scripts/fake_sslhost.sh`): its stages, the
//! self-test's gate on cuDNN's variants, the rows it writes to `bench.jsonl` and its checks of
//! a replayed run, so that a slip in the script is found here and not in scarce device time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the session with `env` (on top of the stand-in's settings) in a fresh folder: the
/// session's log and `bench.jsonl`'s rows.
fn session(name: &str, env: &[(&str, &str)]) -> (String, Vec<serde_json::Value>, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir =
        std::env::temp_dir().join(format!("sslhost-gpu-session-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let (out, carry) = (dir.join("out"), dir.join("carry"));
    std::fs::create_dir_all(&carry).unwrap();
    let status = Command::new("bash")
        .arg(root.join("scripts/gpu_session.sh"))
        .arg("session")
        .env("OUT", &out)
        .env("WORK", dir.join("work"))
        .env("CARRY", &carry)
        .env("SSLHOST_BIN", root.join("tests/scripts/fake_sslhost.sh"))
        .env("SAVE_CACHE", "0")
        .env("TORCH", "0")
        .env("DEADLINE", "300")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(out.join("session.log")).unwrap_or_default();
    assert!(
        status.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let rows = std::fs::read_to_string(out.join("bench.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (log, rows, dir)
}

/// The rows' (variant, tag) pairs: `cudnn:half` and `signal`, `warm`, `graph`, `stream graph`
/// or `""`.
fn variants(rows: &[serde_json::Value]) -> Vec<(String, String)> {
    rows.iter()
        .map(|r| {
            assert_eq!(r["impl"], "sslhost", "{r}");
            let variant = format!(
                "{}:{}",
                r["batch_norm"].as_str().unwrap(),
                r["activations"].as_str().unwrap()
            );
            let tag = match (
                r["cudnn_order"].as_str(),
                r["warm_start"].as_bool(),
                r["capture"].as_str(),
            ) {
                (Some(order), _, Some(capture)) => format!("{order} {capture}"),
                (Some(order), _, None) => order.into(),
                (None, Some(true), _) => "warm".into(),
                (None, _, Some(capture)) => capture.into(),
                _ => String::new(),
            };
            (variant, tag)
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const PLAN: &[(&str, &str)] = &[
    ("VARIANTS", "cudnn:half,nhwc:half"),
    ("ORDERS", "stream signal"),
    ("REPLAY", "1"),
    ("RECIPES", "dino"),
];

#[test]
fn a_passing_self_test_times_cudnn_under_each_ordering_and_the_replays_are_checked() {
    let (log, rows, dir) = session("pass", PLAN);
    assert!(log.contains("== selftest: passed"), "{log}");
    assert!(log.contains("== selftest stream: passed"), "{log}");
    assert_eq!(
        variants(&rows),
        pairs(&[
            ("cudnn:half", ""),
            ("nhwc:half", ""),
            ("cudnn:half", "stream"),
            // cuDNN's step through a graph, right after its eager row under `stream`.
            ("cudnn:half", "stream graph"),
            ("cudnn:half", "signal"),
            ("cudnn:half", "warm"),
            // The graph's row in the first variant that is not cuDNN's.
            ("nhwc:half", "graph"),
        ]),
        "{log}"
    );
    // Every stage is announced in the session's log, those writing files of their own too.
    // With `stream` among the orderings, the captured step runs cuDNN's kernels too, on
    // cubecl's stream.
    assert!(
        log.contains("ordered with cubecl's kernels by `stream`"),
        "{log}"
    );
    for stage in [
        "== sslhost byol (at most",
        "== capture nhwc:half",
        "== capture cudnn:half",
        "== replay check byol off",
        "== replay check byol graph",
        "== recipe dino",
    ] {
        assert!(log.contains(stage), "{stage}: {log}");
    }
    assert!(log.contains("replay check byol replay: equal"), "{log}");
    assert!(log.contains("replay check byol graph: equal"), "{log}");
    // Each replayed run's rate is named by its file, and its steady step is computed from its
    // logs' times (the stand-in logs steps 0, 5 and 10, at 0.5, 5.5 and 10.5 s).
    assert!(log.contains("replay-byol-graph.log:steps 0..30"), "{log}");
    for mode in ["off", "replay", "graph"] {
        let steady = format!("replay check byol {mode}: 1000.0 ms a step over steps 6..10");
        assert!(log.contains(&steady), "{steady}: {log}");
    }
    // bench_rows.py's table closes the call, with the orderings' and the graph's losses
    // compared with the first row of their variant.
    assert!(
        log.contains("losses vs the first such row: 0.0e+00"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("nhwc:half") && l.contains(" graph ") && l.contains("losses vs")),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_failed_self_test_drops_cudnns_variants_and_a_differing_graph_is_named() {
    let mut env = PLAN.to_vec();
    env.extend([("FAKE_SELFTEST", "fail"), ("FAKE_GRAPH_DIFFERS", "1")]);
    let (log, rows, dir) = session("fail", &env);
    assert!(log.contains("== selftest: failed"), "{log}");
    assert!(
        log.contains("cuDNN's variants dropped (self-test failed); timing: nhwc:half"),
        "{log}"
    );
    assert_eq!(
        variants(&rows),
        pairs(&[
            ("nhwc:half", ""),
            ("nhwc:half", "warm"),
            ("nhwc:half", "graph")
        ]),
        "{log}"
    );
    assert!(log.contains("replay check byol replay: equal"), "{log}");
    assert!(
        log.contains("replay check byol graph: differ, largest relative difference 2.5e-01"),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_stream_ordering_that_fails_its_self_test_or_falls_back_is_dropped_alone() {
    for (fake, verdict) in [
        (("FAKE_SELFTEST_STREAM", "fail"), "failed"),
        (("FAKE_NO_CUPTI", "1"), "ran under signal"),
    ] {
        let mut env = PLAN.to_vec();
        env.extend([fake, ("REPLAY", "0"), ("RECIPES", "")]);
        let (log, rows, dir) = session(&format!("stream-{}", fake.0), &env);
        assert!(log.contains("== selftest: passed"), "{log}");
        assert!(
            log.contains(&format!("== selftest stream: {verdict}")),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "the stream ordering dropped (self-test {verdict})"
            )),
            "{log}"
        );
        assert_eq!(
            variants(&rows),
            pairs(&[
                ("cudnn:half", ""),
                ("nhwc:half", ""),
                ("cudnn:half", "signal"),
                ("cudnn:half", "warm"),
                ("nhwc:half", "graph"),
            ]),
            "{log}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn a_stage_that_runs_out_of_time_is_named_and_the_later_ones_are_skipped() {
    // The bench takes longer than the whole call may: it is stopped at the deadline.
    let (log, rows, dir) = session(
        "deadline",
        &[
            ("DEADLINE", "14"),
            ("SELFTEST", "0"),
            ("VARIANTS", "nhwc:half"),
            ("FAKE_BENCH_SECONDS", "30"),
            ("REPLAY", "1"),
        ],
    );
    assert!(log.contains("== sslhost byol (at most 1"), "{log}");
    assert!(log.contains("== sslhost byol: exit 124"), "{log}");
    assert!(rows.is_empty(), "{log}");
    for later in [
        "warm start nhwc:half",
        "sslhost byol graph nhwc:half",
        "capture nhwc:half",
        "replay check byol off",
    ] {
        assert!(
            log.contains(&format!("== {later}: skipped (deadline)")),
            "{later}: {log}"
        );
    }
    let took: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("gpu_session.sh: session took "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    assert!(took <= 16, "the call outran its deadline: {took} s\n{log}");
    std::fs::remove_dir_all(&dir).ok();
}
