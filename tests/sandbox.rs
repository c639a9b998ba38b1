//! What a script may read and write: imports only from its own folder, the working directory
//! and the stdlib; images only below the working or run directory, never over a file that
//! sslhost did not write.

use std::path::Path;
use std::process::{Command, Output};

fn run(script: &Path, cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .current_dir(cwd)
        .args(["run", script.to_str().unwrap(), "--device", "cpu", "--runs"])
        .arg(cwd.join("runs"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn temp(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sslhost-sandbox-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn imports_resolve_only_in_the_scripts_folder_and_the_working_directory() {
    let dir = temp("import");
    let (work, elsewhere) = (dir.join("work"), dir.join("elsewhere"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        elsewhere.join("evil.rhai"),
        "fn f() { \"imported code ran\" }",
    )
    .unwrap();
    std::fs::write(work.join("helpers.rhai"), "fn f() { 7 }").unwrap();
    let ok = work.join("ok.rhai");
    std::fs::write(&ok, "import \"helpers\" as h;\nprint(`got ${h::f()}`);\n").unwrap();
    let out = run(&ok, &work);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("got 7"), "{stderr}");
    for (name, import) in [
        ("up.rhai", "../elsewhere/evil".to_string()),
        (
            "absolute.rhai",
            elsewhere.join("evil").display().to_string(),
        ),
    ] {
        let script = work.join(name);
        std::fs::write(
            &script,
            format!("import \"{import}\" as e;\nprint(e::f());\n"),
        )
        .unwrap();
        let out = run(&script, &work);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("lies outside the script's folder"),
            "{stderr}"
        );
        assert!(stderr.contains(&format!("{name}:1:")), "{stderr}");
        assert!(!stderr.contains("imported code ran"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn images_go_below_the_working_directory_and_replace_only_sslhosts_own() {
    let dir = temp("images");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let save = |target: &str| {
        let script = work.join("save.rhai");
        std::fs::write(
            &script,
            format!("save_image_grid(rand([4, 1, 8, 8]), \"{target}\", #{{ nrow: 2 }});\n"),
        )
        .unwrap();
        run(&script, &work)
    };
    let out = save("views/grid.png");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its own image, written by an earlier run, may be replaced.
    assert!(save("views/grid.png").status.success());
    std::fs::write(work.join("notes.png"), b"not an image of ours").unwrap();
    let refused = [
        ("../outside.png", "no `..`"),
        ("grid.txt", "must end in .png"),
        ("notes.png", "sslhost did not write it"),
        ("/etc/grid.png", "below the working or run directory"),
    ];
    for (target, why) in refused {
        let out = save(target);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{target}: {stderr}");
        assert!(stderr.contains(why), "{target}: {stderr}");
    }
    assert!(!dir.join("outside.png").exists());
    assert_eq!(
        std::fs::read(work.join("notes.png")).unwrap(),
        b"not an image of ours"
    );
    std::fs::remove_dir_all(&dir).ok();
}
