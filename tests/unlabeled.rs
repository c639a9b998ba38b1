//! Pretraining on one's own images: a folder without class sub-folders trains, its monitors
//! (kNN, the online linear probe) are skipped with a log line, and using its labels is a
//! located error.

mod data_common;
mod run_common;

use data_common::write_image;
use run_common::{recipe_in_temp, sslhost_run};

#[test]
fn a_recipe_trains_on_a_folder_without_labels_and_skips_its_monitors() {
    let (dir, _) = recipe_in_temp("unlabeled", "");
    for i in 0..24u8 {
        write_image(
            &dir.join(format!("photos/{i:02}.png")),
            (12, 12),
            [i * 10, 255 - i * 10, 7],
        );
    }
    let photos = dir.join("photos");
    // The BYOL recipe as shipped, on the folder: its probe and kNN monitor need labels.
    let recipe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/byol.rhai");
    let runs = dir.join("runs");
    let mut run = sslhost_run(&recipe, &runs);
    run.args([
        "--set",
        &format!("data={}", photos.display()),
        "--set",
        "batch_size=8",
        "--set",
        "epochs=1",
        "--set",
        "log_every=1",
    ]);
    let out = run.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("24 images without labels"), "{stderr}");
    assert!(
        stderr.contains("no labels: the online linear probe is off"),
        "{stderr}"
    );
    assert!(stderr.contains("kNN monitor skipped"), "{stderr}");
    assert!(
        !stderr.contains("knn_top1") && !stderr.contains("linear_top1"),
        "{stderr}"
    );
    assert!(stderr.contains("step 2: embedding_std"), "{stderr}");

    // A script that reads the labels anyway: a located error, exit 2.
    let (_, script) = recipe_in_temp(
        "unlabeled-script",
        &format!(
            "let ds = dataset(\"{}\");\nlet l = loader(ds, #{{ batch_size: 4 }});\nfor b in steps(l, 1) {{\n    let y = b.labels;\n}}\n",
            photos.display()
        ),
    );
    let out = sslhost_run(&script, &dir.join("runs2")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("this batch has no labels"), "{stderr}");
    assert!(stderr.contains(":4:"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
