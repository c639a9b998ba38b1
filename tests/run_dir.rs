//! A recipe run gets its own directory: the recipe, the resolved config, metrics as JSON
//! lines, and the archive of accepted live edits.

use std::process::Command;

#[test]
fn log_creates_the_run_directory_with_config_recipe_and_metrics() {
    let dir = std::env::temp_dir().join(format!("sslhost-rundir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("tiny.rhai");
    let text = "let cfg = config(#{ steps: 3, lr: 0.5 });\n\
                for i in 0..cfg.steps { log(i, #{ loss: tensor([2.0]) / (i + 1), lr: cfg.lr }); }\n";
    std::fs::write(&recipe, text).unwrap();
    let runs = dir.join("runs");
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--device",
            "cpu",
            "--set",
            "lr=0.25",
        ])
        .arg("--runs")
        .arg(&runs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(run.len(), 1, "{run:?}");
    let run = &run[0];
    assert!(
        run.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tiny-20"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("recipe.rhai")).unwrap(),
        text
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["lr"], 0.25);
    assert_eq!(config["steps"], 3);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i as u64);
        assert!((l["loss"].as_f64().unwrap() - 2.0 / (i + 1) as f64).abs() < 1e-6);
        assert_eq!(l["lr"], 0.25);
    }
    assert!(run.join("live").is_dir() && run.join("checkpoints").is_dir());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn log_lines_off_a_terminal_have_no_colours_and_four_significant_digits() {
    let dir = std::env::temp_dir().join(format!("sslhost-loglines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("tiny.rhai");
    std::fs::write(&recipe, "log(0, #{ loss: 2.0 / 3.0, steps: 7 });\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["run", recipe.to_str().unwrap(), "--device", "cpu", "--runs"])
        .arg(dir.join("runs"))
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes off a terminal: {stderr:?}"
    );
    assert!(stderr.contains("loss 0.6667, steps 7"), "{stderr}");
    // The file keeps every digit.
    let runs: Vec<_> = std::fs::read_dir(dir.join("runs")).unwrap().collect();
    let run = runs[0].as_ref().unwrap().path();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("0.6666666666666666"), "{metrics}");
    std::fs::remove_dir_all(&dir).ok();
}
