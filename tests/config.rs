//! `config(#{ defaults })` and `--set key=value`.

use std::process::Command;

use rhai::{Dynamic, Map};
use sslhost::api::config::resolve;

fn defaults() -> Map {
    let mut m = Map::new();
    m.insert("batch_size".into(), Dynamic::from(256_i64));
    m.insert("lr".into(), Dynamic::from(0.1_f64));
    m.insert("data".into(), Dynamic::from("fashion-mnist".to_string()));
    m.insert("fast".into(), Dynamic::from(false));
    m
}

fn set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn overrides_parse_as_the_defaults_types() {
    let m = resolve(
        defaults(),
        &set(&[
            ("batch_size", "32"),
            ("lr", "1"),
            ("data", "mnist"),
            ("fast", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(m["batch_size"].as_int().unwrap(), 32);
    assert_eq!(m["lr"].as_float().unwrap(), 1.0);
    assert_eq!(m["data"].clone().into_string().unwrap(), "mnist");
    assert!(m["fast"].as_bool().unwrap());
}

#[test]
fn dotted_keys_set_keys_of_nested_maps() {
    let mut optim = Map::new();
    optim.insert("lr".into(), Dynamic::from(0.1_f64));
    optim.insert(
        "betas".into(),
        Dynamic::from_array(vec![Dynamic::from(0.9_f64)]),
    );
    let mut d = defaults();
    d.insert("optim".into(), Dynamic::from_map(optim));
    let m = resolve(
        d.clone(),
        &set(&[("optim.lr", "0.5"), ("optim.betas", "[0.8, 0.99]")]),
    )
    .unwrap();
    let optim = m["optim"].read_lock::<Map>().unwrap().clone();
    assert_eq!(optim["lr"].as_float().unwrap(), 0.5);
    assert_eq!(optim["betas"].read_lock::<rhai::Array>().unwrap().len(), 2);
    assert_eq!(m["batch_size"].as_int().unwrap(), 256, "the rest untouched");

    for (key, value, expect) in [
        (
            "optim.lrr",
            "1",
            "`optim.lrr` is not a config key (known: optim.betas, optim.lr)",
        ),
        (
            "optim.lr",
            "fast",
            "`optim.lr` is a finite number (default 0.1)",
        ),
        ("lr.x", "1", "`lr` is f64, not a map of keys"),
        (
            "optim",
            "1",
            "`optim` is a map; set its keys one by one (`--set optim.KEY=VALUE`)",
        ),
    ] {
        let e = resolve(d.clone(), &set(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{key}: {e}");
    }

    // A resumed run takes its saved nested values key by key; a key added since stays.
    let saved = serde_json::json!({ "optim": { "lr": 0.25 } });
    let m = sslhost::api::config::with_saved(d, &saved).unwrap();
    let optim = m["optim"].read_lock::<Map>().unwrap().clone();
    assert_eq!(optim["lr"].as_float().unwrap(), 0.25);
    assert!(optim.contains_key("betas"));
}

#[test]
fn unknown_keys_and_wrong_types_are_errors() {
    let e = resolve(defaults(), &set(&[("batch_sise", "32")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`batch_sise` is not a config key (known: batch_size, data, fast, lr)"),
        "{e}"
    );
    let e = resolve(defaults(), &set(&[("batch_size", "3.5")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`batch_size` is an integer"), "{e}");
    let e = resolve(defaults(), &set(&[("fast", "yes")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("true or false"), "{e}");
    let e = resolve(defaults(), &set(&[("lr", "nan")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`lr` is a finite number"), "{e}");
}

/// The defaults with a list of stage widths.
fn d_widths() -> Map {
    let mut d = defaults();
    d.insert(
        "widths".into(),
        Dynamic::from_array(vec![Dynamic::from(64_i64), Dynamic::from(128_i64)]),
    );
    d
}

#[test]
fn overrides_read_as_a_hydra_user_writes_them() {
    let m = resolve(
        d_widths(),
        &set(&[
            (" batch_size ", " 32"),
            ("fast", "True"),
            ("data", "\"cifar10\""),
            ("widths", "[16, 32,64 ,128]"),
        ]),
    )
    .unwrap();
    assert_eq!(m["batch_size"].as_int().unwrap(), 32);
    assert!(m["fast"].as_bool().unwrap());
    assert_eq!(m["data"].clone().into_string().unwrap(), "cifar10");
    let widths: Vec<i64> = m["widths"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|v| v.as_int().unwrap())
        .collect();
    assert_eq!(widths, [16, 32, 64, 128]);
    let e = resolve(d_widths(), &set(&[("widths", "[16, x]")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a list whose elements are each an integer"),
        "{e}"
    );
    let m = resolve(defaults(), &set(&[("fast", "1")])).unwrap();
    assert!(m["fast"].as_bool().unwrap());
    let m = resolve(defaults(), &set(&[("fast", "FALSE")])).unwrap();
    assert!(!m["fast"].as_bool().unwrap());
}

#[test]
fn the_cli_reports_a_bad_set_at_the_config_line() {
    let dir = std::env::temp_dir().join(format!("sslhost-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("cfg.rhai");
    std::fs::write(
        &script,
        "// a recipe\nlet cfg = config(#{ epochs: 3 });\nprint(cfg.epochs);\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sslhost"))
            .args(["run", script.to_str().unwrap(), "--device", "cpu"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--set", "epoch=5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cfg.rhai:2:11"), "{stderr}");
    assert!(stderr.contains("`epoch` is not a config key"), "{stderr}");
    let out = run(&["--set", "epochs=5"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(" 5\n"));

    std::fs::write(&script, "let x = 1;\n").unwrap();
    let out = run(&["--set", "epochs=5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("never calls config(..)"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn print_config_shows_the_resolved_config_and_runs_nothing() {
    let dir = std::env::temp_dir().join(format!("sslhost-print-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("cfg.rhai");
    std::fs::write(
        &script,
        "let cfg = config(#{ epochs: 2, widths: [4, 8], fast: false });\nthrow \"ran on\";\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args([
            "run",
            script.to_str().unwrap(),
            "--device",
            "cpu",
            "--print-config",
        ])
        .args([
            "-s",
            "epochs = 5",
            "-s",
            "widths=[16, 32]",
            "--set",
            "fast=True",
        ])
        .arg("--runs")
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "epochs": 5, "widths": [16, 32], "fast": true })
    );
    assert!(!dir.join("runs").exists(), "no run directory");
    std::fs::remove_dir_all(&dir).ok();
}
