//! `sslhost eval`: kNN and offline linear accuracy of a trained backbone, written to
//! eval.json, and its refusals of bad input.

mod run_common;

use run_common::{finished_run, recipe_in_temp, sslhost, sslhost_run};

/// A short run whose config names its dataset, as the recipes' do.
const RECIPE: &str = r#"// eval test recipe
let cfg = config(#{ data: "synthetic", limit: 256, size: 16, epochs: 1, batch_size: 32 });
let ds = dataset(cfg.data, #{ split: "train", limit: cfg.limit });
let l = loader(ds, #{ batch_size: cfg.batch_size });
let backbone = resnet(18, #{ cifar_stem: true, widths: [8, 8, 16, 16], blocks: [1, 1, 1, 1], stem_stride: 2 });
let classifier = linear(16, 10);
let online = sequential([backbone, classifier]);
let opt = sgd([online], #{ momentum: 0.9 });
let state = #{ online: online, opt: opt };
resume(state);
for b in steps(l, cfg.epochs) {
    let x = transform([random_resized_crop(cfg.size)]).apply(b.images);
    opt.step(cross_entropy(online.forward(x), b.labels), 0.05);
}
checkpoint(state);
"#;

fn eval(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["eval"];
    all.extend(args);
    all.extend(["--device", "cpu"]);
    sslhost(&all)
}

#[test]
fn eval_scores_a_run_and_writes_eval_json() {
    let (dir, recipe) = recipe_in_temp("eval", RECIPE);
    let runs = dir.join("runs");
    let run = finished_run(sslhost_run(&recipe, &runs), &runs);
    let run_s = run.to_str().unwrap();
    let checkpoint = run.join("checkpoints/last.safetensors");
    let before = std::fs::read(&checkpoint).unwrap();

    let (code, stdout, stderr) = eval(&[
        run_s,
        "--k",
        "5,20",
        "--linear-epochs",
        "30",
        "--linear-batch",
        "32",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "(online.0), 8 steps: synthetic (256 train / 256 test images at 16x16), 16 features"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("kNN k=5, weighted, cosine, T=0.1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("linear, 30 epochs, SGD lr 0.1 cosine, batch 32, wd 0"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let knn = report["knn"].as_array().unwrap();
    assert_eq!(knn.len(), 2);
    assert_eq!(knn[1]["k"], 20);
    // Synthetic classes are easy to tell apart even for a barely trained network: both
    // classifiers are well above chance (10%).
    for top1 in [&knn[0]["top1"], &knn[1]["top1"], &report["linear"]["top1"]] {
        let top1 = top1.as_f64().unwrap();
        assert!((0.25..=1.0).contains(&top1), "{report}");
    }
    assert_eq!(report["linear"]["protocol"]["epochs"], 30);
    assert_eq!(report["features"], 16);
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        before,
        "the checkpoint is untouched"
    );

    // --knn alone, on the exported backbone (the run's config travels in its metadata).
    let exported = dir.join("backbone.safetensors");
    let (code, _, stderr) = sslhost(&["export", run_s, "-o", exported.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = eval(&[exported.to_str().unwrap(), "--knn", "--k", "5"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("linear"), "{stdout}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(
        again["knn"][0]["top1"], knn[0]["top1"],
        "the same weights, the same score"
    );
    assert!(again["linear"].is_null());

    // Bad input: exit code 2 and a clear message, never a panic.
    let empty = dir.join("no-run");
    std::fs::create_dir_all(&empty).unwrap();
    let nowhere = dir.join("nowhere");
    for (args, expect) in [
        (vec![empty.to_str().unwrap()], "has no checkpoint"),
        (vec![run_s, "--net", "opt"], "no ResNet named `opt`"),
        (
            vec![
                run_s,
                "--eval-data",
                "cifar10",
                "--data",
                nowhere.to_str().unwrap(),
            ],
            "nowhere",
        ),
        (
            vec![run_s, "--eval-data", "cifar10"],
            "dataset `cifar10` not found",
        ),
    ] {
        let (code, _, stderr) = eval(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // A backbone for grey images against a colour dataset, and images too small for it.
    let (grey_dir, grey) = recipe_in_temp(
        "eval-grey",
        "let b = resnet(18, #{ in_channels: 1, cifar_stem: true, widths: [4, 4, 4, 4], blocks: [1, 1, 1, 1] });\ncheckpoint(#{ online: b });\n",
    );
    let grey_run = finished_run(
        sslhost_run(&grey, &grey_dir.join("runs")),
        &grey_dir.join("runs"),
    );
    let (code, _, stderr) = eval(&[grey_run.to_str().unwrap(), "--eval-data", "synthetic"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("has 3 channels; the backbone takes 1"),
        "{stderr}"
    );
    let (code, _, stderr) = eval(&[run_s, "--size", "1", "--knn"]);
    assert!(
        code == 0 || (code == 2 && !stderr.contains("panicked")),
        "{stderr}"
    );
    std::fs::remove_dir_all(&grey_dir).ok();
    std::fs::remove_dir_all(&dir).ok();
}
