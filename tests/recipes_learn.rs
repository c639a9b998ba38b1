//! Each recipe, run for real on a small Fashion-MNIST subset on the CPU, learns: its loss ends
//! lower than it starts, and its embeddings have not collapsed.
//!
//! Collapse is measured by `embedding_std` (stdlib/monitors.rhai): the per-dimension standard
//! deviation of the L2-normalised projections, averaged over dimensions. Every image mapped to
//! one point gives 0; embeddings spread evenly over the unit sphere of `proj_dim` = 256
//! dimensions give 1/sqrt(256) = 0.0625, and a freshly initialised network already sits near
//! 0.05. The threshold, 0.3/sqrt(256) ≈ 0.019, is far above a collapsed run (BYOL without its
//! predictor falls below 0.005 within tens of steps) and leaves room for the partial
//! dimensional collapse every short run shows.

mod run_common;

use std::path::Path;

use run_common::{only_run, sslhost_run};

const COLLAPSE_THRESHOLD: f64 = 0.3 / 16.0;

/// Runs `recipe` for 4 epochs of 512 images (64 steps of 32 at 16x16) into a fresh runs
/// folder and returns its metrics lines.
fn train(recipe: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let runs = std::env::temp_dir().join(format!("sslhost-learn-{recipe}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runs);
    let mut command = sslhost_run(&root.join(format!("recipes/{recipe}.rhai")), &runs);
    command.current_dir(root);
    for set in [
        "limit=512",
        "batch_size=32",
        "epochs=4",
        "size=16",
        "log_every=4",
        "knn_every=0",
        "knn_k=20",
    ]
    .iter()
    .chain(extra)
    {
        command.args(["--set", set]);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{recipe}: {stderr}");
    let text = std::fs::read_to_string(only_run(&runs).join("metrics.jsonl")).unwrap();
    let _ = std::fs::remove_dir_all(&runs);
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn values(lines: &[serde_json::Value], key: &str) -> Vec<f64> {
    lines.iter().filter_map(|l| l[key].as_f64()).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Trains `recipe` and checks it learned; the first `skip` logged losses are not compared.
fn assert_learns(recipe: &str, extra: &[&str], skip: usize) {
    let lines = train(recipe, extra);
    let loss = values(&lines, "loss");
    assert_eq!(
        loss.len(),
        16,
        "{recipe}: one loss every 4 of 64 steps: {loss:?}"
    );
    let (first, last) = (mean(&loss[skip..skip + 3]), mean(&loss[loss.len() - 3..]));
    assert!(
        last < first,
        "{recipe}: loss went from {first} to {last}: {loss:?}"
    );
    let std = values(&lines, "embedding_std");
    let end = *std.last().unwrap();
    assert!(
        end > COLLAPSE_THRESHOLD,
        "{recipe}: embeddings collapsed: std {end} <= {COLLAPSE_THRESHOLD} ({std:?})"
    );
    // The run ends with its kNN accuracy, well above chance (10%) on 512 images.
    let knn = values(&lines, "knn_top1");
    assert_eq!(knn.len(), 1, "{recipe}: {knn:?}");
    assert!(knn[0] > 0.3, "{recipe}: kNN {}", knn[0]);
    eprintln!(
        "{recipe}: loss {first:.3} -> {last:.3}, embedding std {end:.4}, kNN {:.3}",
        knn[0]
    );
}

#[test]
fn byol_learns_without_collapse() {
    assert_learns("byol", &[], 0);
}

#[test]
fn moco_learns_without_collapse() {
    // A queue of 4 steps of keys (2 views x 32). Until real keys fill it, its negatives are
    // the random vectors it starts with, far easier than real ones: the loss at step 0 is
    // low and jumps once the queue is full, at step 4. Compare from there (skip step 0).
    assert_learns("moco", &["queue_size=256"], 1);
}

#[test]
fn simclr_learns_without_collapse() {
    assert_learns("simclr", &[], 0);
}
