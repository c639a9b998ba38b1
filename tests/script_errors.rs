//! The corpus of broken scripts in tests/errors/: each must exit 2 and print its exact
//! `file:line:col` and message, and nothing may panic.
//!
//! Each file starts with `// expect: LINE:COL | MESSAGE SUBSTRING`.

use std::path::Path;
use std::process::Command;

mod run_common;

fn expectation(text: &str) -> (String, String) {
    let first = text.lines().next().unwrap_or_default();
    let spec = first
        .strip_prefix("// expect: ")
        .unwrap_or_else(|| panic!("first line must be `// expect: L:C | message`: {first}"));
    let (loc, msg) = spec.split_once(" | ").expect("`L:C | message`");
    (loc.trim().to_string(), msg.trim().to_string())
}

#[test]
fn every_broken_script_is_located_and_explained() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/errors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "the corpus needs at least 15 scripts, has {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let (loc, msg) = expectation(&text);
        let rel = format!(
            "tests/errors/{}",
            file.file_name().unwrap().to_string_lossy()
        );
        let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["run", &rel, "--device", "cpu"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want_loc = format!("{rel}:{loc}");
        let problems: Vec<String> = [
            (out.status.code() != Some(2))
                .then(|| format!("exit code {:?}, want 2", out.status.code())),
            (!stderr.contains(&want_loc)).then(|| format!("no `{want_loc}`")),
            (!stderr.contains(&msg)).then(|| format!("no `{msg}`")),
            (!stderr.contains('^')).then(|| "no caret".to_string()),
            stderr
                .contains("panicked")
                .then(|| "a panic reached the user".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            failures.push(format!(
                "{rel}: {}\n--- stderr ---\n{stderr}",
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_missing_script_names_the_file_and_exits_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["run", "no/such/recipe.rhai", "--device", "cpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no/such/recipe.rhai"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_panic_inside_a_host_function_becomes_a_located_error() {
    use sslhost::api::args;
    use sslhost::engine::ScriptEngine;
    use sslhost::session::{self, Session};

    session::install(Session::new(sslhost::device::cpu(), 0));
    let mut engine = ScriptEngine::new(Path::new(".")).unwrap();
    engine
        .engine_mut()
        .register_fn("explode", || -> args::RhaiResult<i64> {
            args::run(|| -> sslhost::Result<i64> { panic!("index out of bounds in a kernel") })
        });
    let src = "let a = 1;\nlet b = explode();\n";
    let ast = engine.compile("probe.rhai", src).unwrap();
    let err = engine.run("probe.rhai", &ast).unwrap_err().to_string();
    assert!(err.contains("probe.rhai:2:9"), "{err}");
    assert!(
        err.contains("internal error (a bug in sslhost or a library it uses, not in the script): index out of bounds in a kernel"),
        "{err}"
    );
}

#[test]
fn version_and_help_say_what_the_build_can_do_and_how_it_exits() {
    let run_args = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let run = |arg: &str| run_args(&[arg]);
    let version = run("--version");
    let gpu = if cfg!(feature = "cuda") {
        "(CUDA built in)"
    } else {
        "(CPU only"
    };
    assert!(version.contains(gpu), "{version}");
    let features = if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "features: "
    };
    assert!(
        version.contains(features) && version.contains("; commit "),
        "{version}"
    );
    // The commit checked out, not the one of an earlier build (in a git checkout).
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        assert!(
            version.contains(&format!("commit {head}")),
            "{version} (HEAD is {head})"
        );
    }
    // Completions, from clap's generator; an unknown shell lists the known ones.
    let bash = run_args(&["completions", "bash"]);
    assert!(
        bash.contains("sslhost") && bash.contains("export"),
        "{bash}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("bash") && stderr.contains("zsh") && stderr.contains("fish"),
        "{stderr}"
    );
    let help = run("--help");
    for want in ["Exit codes:", "130", "NO_COLOR", "SSLHOST_DATA", "RUST_LOG"] {
        assert!(help.contains(want), "no `{want}` in:\n{help}");
    }
}

#[test]
fn a_knn_monitor_too_large_for_the_data_is_said_before_training() {
    let runs = std::env::temp_dir().join(format!("sslhost-knn-k-{}", std::process::id()));
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/byol.rhai");
    let out = run_common::sslhost_run(&recipe, &runs)
        .args(["--set", "limit=96", "--set", "epochs=1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("knn_k = 200 needs more than 200 training images, and this run has 96"),
        "{stderr}"
    );
    assert!(stderr.contains("stdlib/presets.rhai:"), "{stderr}");
    assert!(
        stderr.contains(&format!("called from {}:", recipe.display())),
        "{stderr}"
    );
    // Said at set-up: no step ran, so no run directory was made.
    assert!(!stderr.contains("step 0:"), "{stderr}");
    assert!(!runs.exists(), "{stderr}");
}
