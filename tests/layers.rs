//! The layering of docs/ARCHITECTURE.md holds: no module of `host/src` names a module of a
//! layer above its own, through `crate::` or `super::` paths.

use std::path::{Path, PathBuf};

/// The layer of a module path (`["train", "knn"]`), 1 (command line) to 7 (foundations).
fn layer(module: &[&str]) -> usize {
    match module {
        ["main" | "sweep", ..] => 1,
        ["engine" | "reference" | "api", ..] => 2,
        ["context" | "session" | "live", ..] | ["train", "current" | "progress", ..] => 3,
        ["train" | "data" | "augment" | "models" | "optim", ..] => 4,
        ["tensor", ..] => 5,
        ["kernels", ..] => 6,
        _ => 7,
    }
}

/// The module path of a source file: `train/knn.rs` is `["train", "knn"]`, `train/mod.rs`
/// is `["train"]`.
fn module_of(file: &Path, root: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// Every module path a source names (`crate::a::b`, `crate::{a, b::c}`, `super::x`),
/// resolved from the crate root.
fn named_modules(src: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty() && p.chars().next().is_some_and(|c| c.is_lowercase()))
            .collect()
    };
    let mut rest = src;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let path = ident(item.trim());
                if !path.is_empty() {
                    out.push(path);
                }
            }
        } else {
            let path = ident(after);
            if !path.is_empty() {
                out.push(path);
            }
        }
        rest = after;
    }
    let mut rest = src;
    while let Some(i) = rest.find("super::") {
        // `super::` (and `super::super::`) from the file's own module.
        let mut base: Vec<String> = own.to_vec();
        let mut after = &rest[i..];
        while let Some(a) = after.strip_prefix("super::") {
            base.pop();
            after = a;
        }
        let path = ident(after);
        if !path.is_empty() {
            base.extend(path);
            out.push(base);
        }
        rest = &rest[i + "super::".len()..];
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_names_a_layer_above_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("host/src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut upward = Vec::new();
    for file in &files {
        let own = module_of(file, &root);
        let own_refs: Vec<&str> = own.iter().map(String::as_str).collect();
        let own_layer = layer(&own_refs);
        let src = std::fs::read_to_string(file).unwrap();
        for path in named_modules(&src, &own) {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            if layer(&refs) < own_layer {
                upward.push(format!(
                    "{} (layer {own_layer}) names {} (layer {})",
                    file.strip_prefix(&root).unwrap().display(),
                    path.join("::"),
                    layer(&refs)
                ));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    // A domain module naming the session (layer 3) is caught, through either path form.
    let own = vec!["train".to_string(), "knn".to_string()];
    for src in [
        "use crate::session;",
        "use crate::{error::Result, session::with};",
    ] {
        let named = named_modules(src, &own);
        assert!(
            named
                .iter()
                .any(|p| layer(&p.iter().map(String::as_str).collect::<Vec<_>>()) == 3),
            "{src}: {named:?}"
        );
    }
    let named = named_modules("use super::current::checkpoint_after_error;", &own);
    assert_eq!(named, [vec!["train", "current", "checkpoint_after_error"]]);
    assert_eq!(layer(&["train", "current"]), 3);
    assert_eq!(layer(&["train", "knn"]), 4);
}
