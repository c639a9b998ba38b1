//! `sslhost sweep`: every combination runs in its own directory, the summary has a row per
//! run, a second start redoes nothing, and an unknown key fails before any run starts.

mod run_common;

use run_common::{recipe_in_temp, sslhost};

const RECIPE: &str = r#"// sweep test
let cfg = config(#{ lr: 0.1, hidden: 8, epochs: 2 });
let ds = dataset("synthetic", #{ samples: 64, classes: 2, size: 4, channels: 1 });
let test = dataset("synthetic", #{ samples: 32, classes: 2, size: 4, channels: 1, split: "test" });
let l = loader(ds, #{ batch_size: 16 });
let net = mlp([16, cfg.hidden, 2]);
let opt = sgd([net], #{ momentum: 0.9 });
let state = #{ net: net, opt: opt };
resume(state);
for b in steps(l, cfg.epochs) {
    let loss = cross_entropy(net.forward(b.images.reshape([16, 16])), b.labels);
    opt.step(loss, cfg.lr);
    log(b.step, #{ loss: loss });
}
log(7, #{ knn_top1: knn_accuracy(ds, test, #{ k: 5 }) });
checkpoint(state);
"#;

#[test]
fn a_grid_runs_each_combination_once() {
    let (dir, recipe) = recipe_in_temp("sweep", RECIPE);
    let out = dir.join("sweep");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "sweep",
            recipe.to_str().unwrap(),
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        sslhost(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // An unknown key: refused before any run, naming the key.
    let (code, _, stderr) = run(&["--grid", "lr=0.1,0.2", "--grid", "depth=1,2"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("depth"), "{stderr}");
    assert!(!out.join("results.jsonl").exists());

    let grid = [
        "--grid",
        "lr=0.05,0.1",
        "--grid",
        "hidden=4,8",
        "-s",
        "epochs=1",
    ];
    let (code, stdout, stderr) = run(&grid);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("4 runs made, 0 already finished"),
        "{stdout}"
    );
    assert!(
        stderr.contains("sweep [4/4] lr=0.1,hidden=8,seed=0: knn_top1"),
        "{stderr}"
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert!(row["loss"].as_f64().unwrap().is_finite());
        assert!(row["knn_top1"].as_f64().is_some());
        // Each run in its own directory, with the run's own config.
        let config = std::fs::read_to_string(
            std::path::Path::new(row["run"].as_str().unwrap()).join("config.json"),
        )
        .unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(
            config["hidden"].to_string(),
            row["values"]["hidden"].as_str().unwrap()
        );
        assert_eq!(config["epochs"], 1);
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.starts_with("| lr | hidden | seed | kNN top-1 | loss | minutes |"));
    assert_eq!(summary.lines().count(), 6, "{summary}");

    // Started again: nothing is redone.
    let (code, stdout, stderr) = run(&grid);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("0 runs made, 4 already finished"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
