//! `sslhost export`: a checkpoint's ResNet in torchvision's layout, checked against the
//! layout torchvision itself produces (tests/fixtures/torchvision_resnet.json, made by
//! scripts/make_torchvision_fixture.py), and its refusals of bad input.

mod run_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use run_common::{finished_run, recipe_in_temp, sslhost, sslhost_run};
use sslhost::models::{ResNetConfig, SharedNet};
use sslhost::tensor::HostRng;
use sslhost::train::checkpoint::{self, Item, Position};
use sslhost::train::tensor_file::{self, Values};

/// torchvision's (key, shape, dtype) of each model, without `fc`.
fn fixture() -> BTreeMap<String, Vec<(String, Vec<usize>, String)>> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_resnet.json"),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["models"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(model, entries)| {
            let mut rows: Vec<_> = entries
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let shape = e[1].as_array().unwrap();
                    (
                        e[0].as_str().unwrap().to_string(),
                        shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
                        e[2].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            rows.sort();
            (model.clone(), rows)
        })
        .collect()
}

fn save(path: &Path, items: &[(String, Item)]) {
    let at = Position {
        next_step: 7,
        rng: HostRng::new(0).state(),
        seed: 0,
        config: None,
    };
    checkpoint::save(path, &at, items).unwrap();
}

#[test]
fn exported_resnets_have_torchvisions_keys_shapes_and_types() {
    let dir = std::env::temp_dir().join(format!("sslhost-export-layout-{}", std::process::id()));
    let device = sslhost::device::cpu();
    let fixture = fixture();
    for depth in [18, 34, 50] {
        for cifar in [false, true] {
            let mut config = ResNetConfig::new(depth);
            config.cifar_stem = cifar;
            let mut rng = HostRng::new(1);
            let net = SharedNet::resnet(&config, &mut rng, &device).unwrap();
            // Saved inside a sequence, as the recipes hold it (backbone + projector).
            let head = SharedNet::linear(
                &sslhost::models::layers::LinearConfig::new(net_features(depth), 8),
                &mut rng,
                &device,
            )
            .unwrap();
            let online = SharedNet::sequential(vec![net, head]).unwrap();
            let file = dir.join(format!("{depth}-{cifar}.safetensors"));
            save(&file, &[("online".into(), Rc::new(online) as Item)]);
            let out = dir.join(format!("{depth}-{cifar}-tv.safetensors"));
            let done = sslhost::train::export::export(&file, None, &out).unwrap();
            assert_eq!(done.net, "online.0");
            assert_eq!(done.config, config);

            let (tensors, meta) = tensor_file::read(&out).unwrap();
            let mut got: Vec<_> = tensors
                .iter()
                .map(|t| {
                    let dtype = match t.values {
                        Values::F32(_) => "float32",
                        Values::I64(_) => "int64",
                    };
                    (t.name.clone(), t.shape.clone(), dtype.to_string())
                })
                .collect();
            got.sort();
            let model = format!("resnet{depth}{}", if cifar { "-cifar" } else { "" });
            assert_eq!(got, fixture[&model], "{model}");
            assert_eq!(meta["torchvision_model"], format!("resnet{depth}"));
            assert_eq!(meta["stem"], if cifar { "cifar" } else { "imagenet" });
            assert!(meta["architecture"].contains(&format!("\"depth\":{depth}")));
            let nbt = tensors
                .iter()
                .find(|t| t.name == "bn1.num_batches_tracked")
                .unwrap();
            assert_eq!(nbt.values, Values::I64(vec![7]));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn without_net_the_trained_network_is_chosen_online_or_dinos_student() {
    let dir = std::env::temp_dir().join(format!("sslhost-export-default-{}", std::process::id()));
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(3);
    let mut config = ResNetConfig::new(18);
    config.widths = [8, 8, 8, 8];
    let trained = SharedNet::resnet(&config, &mut rng, &device).unwrap();
    let copy = trained.momentum_copy();
    let wrap = |n: &SharedNet| Rc::new(SharedNet::sequential(vec![n.clone()]).unwrap()) as Item;
    // MoCo v3's `momentum` sorts before `online`: the order of the file does not decide.
    let pairs = [
        ("online", "target"),
        ("online", "momentum"),
        ("student", "teacher"),
    ];
    for (trained_key, copy_key) in pairs {
        let file = dir.join(format!("{trained_key}-{copy_key}.safetensors"));
        save(
            &file,
            &[
                (copy_key.into(), wrap(&copy)),
                (trained_key.into(), wrap(&trained)),
            ],
        );
        let out = dir.join(format!("{trained_key}-{copy_key}-tv.safetensors"));
        let done = sslhost::train::export::export(&file, None, &out).unwrap();
        assert_eq!(done.net, format!("{trained_key}.0"));
    }
    // Neither name: the choice is the user's, and the error lists what there is.
    let file = dir.join("other.safetensors");
    save(
        &file,
        &[("a".into(), wrap(&trained)), ("b".into(), wrap(&copy))],
    );
    let err = sslhost::train::export::export(&file, None, &dir.join("x.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("choose one with --net") && err.contains("`a.0`, `b.0`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn net_features(depth: usize) -> usize {
    if depth == 50 { 2048 } else { 512 }
}

const RECIPE: &str = r#"// export test recipe: a small ResNet inside a sequence, a head, an EMA target
let cfg = config(#{ epochs: 1, batch_size: 8 });
let ds = dataset("synthetic", #{ samples: 32, classes: 4, size: 16, channels: 3 });
let l = loader(ds, #{ batch_size: cfg.batch_size });
let backbone = resnet(18, #{ cifar_stem: true, widths: [4, 8, 8, 16], blocks: [1, 1, 1, 1], stem_stride: 2 });
let online = sequential([backbone, linear(16, 4)]);
let predictor = mlp([4, 8, 4]);
let target = momentum_copy(online);
let opt = sgd([online, predictor], #{ momentum: 0.9 });
let state = #{ online: online, predictor: predictor, target: target, opt: opt };
resume(state);
for b in steps(l, cfg.epochs) {
    let loss = cross_entropy(predictor.forward(online.forward(b.images)), b.labels);
    opt.step(loss, 0.05);
    update_momentum(online, target, 0.9);
}
checkpoint(state);
"#;

fn export(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["export"];
    all.extend(args);
    sslhost(&all)
}

#[test]
fn export_from_a_run_directory_and_its_refusals() {
    let (dir, recipe) = recipe_in_temp("export-cli", RECIPE);
    let runs = dir.join("runs");
    let run = finished_run(sslhost_run(&recipe, &runs), &runs);
    let run_s = run.to_str().unwrap();
    let out = dir.join("backbone.safetensors");
    let out_s = out.to_str().unwrap();

    // The default is online's ResNet; the checkpoint also holds target's.
    let (code, stdout, stderr) = export(&[run_s, "-o", out_s]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("exported online.0 (4 steps)"), "{stdout}");
    assert!(stdout.contains("blocks [1, 1, 1, 1]"), "{stdout}");
    let (tensors, meta) = tensor_file::read(&out).unwrap();
    assert!(
        tensors
            .iter()
            .any(|t| t.name == "layer2.0.downsample.0.weight")
    );
    assert!(tensors.iter().all(|t| !t.name.contains("downsample.conv")));
    assert!(meta["recipe"].contains("export test recipe"));
    assert!(meta["config"].contains("\"batch_size\":8"));
    assert!(meta["architecture"].contains("\"stem_stride\":2"));
    let (code, stdout, _) = export(&[run_s, "--net", "target", "-o", out_s]);
    assert_eq!(code, 0);
    assert!(stdout.contains("exported target.0"), "{stdout}");

    let checkpoint = run.join("checkpoints/last.safetensors");
    let before = std::fs::read(&checkpoint).unwrap();
    for (args, expect) in [
        (
            vec![run_s, "-o", out_s, "--net", "predictor"],
            "`predictor` is an MLP, not a ResNet",
        ),
        (
            vec![run_s, "-o", out_s, "--net", "nope"],
            "no ResNet named `nope`; the ResNets there are: `online.0`, `target.0`",
        ),
        (
            vec![run_s, "-o", checkpoint.to_str().unwrap()],
            "is the checkpoint being exported",
        ),
    ] {
        let (code, _, stderr) = export(&args);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        before,
        "the checkpoint is untouched"
    );

    // A run directory without a checkpoint, and a checkpoint with one flipped bit.
    let empty = dir.join("empty-run");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, stderr) = export(&[empty.to_str().unwrap(), "-o", out_s]);
    assert_eq!(code, 2);
    assert!(stderr.contains("has no checkpoint"), "{stderr}");
    let mut damaged = before.clone();
    let n = damaged.len();
    damaged[n - 5] ^= 0x01;
    let bad = dir.join("damaged.safetensors");
    std::fs::write(&bad, &damaged).unwrap();
    let (code, _, stderr) = export(&[bad.to_str().unwrap(), "-o", out_s]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("damaged.safetensors") && stderr.contains("fails its checksum"),
        "{stderr}"
    );

    // load_backbone: the exported file (target's, the last export), the run directory's
    // target, and the same weights as a plain
    // torchvision state dict (no metadata: the architecture read from the shapes) give the
    // same features.
    let plain = dir.join("plain.safetensors");
    write_plain(&out, &plain);
    let script = dir.join("features.rhai");
    std::fs::write(
        &script,
        format!(
            r#"let x = dataset("synthetic", #{{ samples: 8, classes: 4, size: 16, channels: 3, split: "test" }}).tensors(0, 8).images;
let a = load_backbone("{out}"); a.eval_mode();
let b = load_backbone("{run}", #{{ net: "target" }}); b.eval_mode();
let c = load_backbone("{plain}", #{{ stem_stride: 2 }}); c.eval_mode();
save_tensors("features.safetensors", #{{ exported: a.forward(x), run: b.forward(x), plain: c.forward(x) }});
"#,
            out = out.display(),
            run = run.display(),
            plain = plain.display()
        ),
    )
    .unwrap();
    let done = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["run", "features.rhai", "--device", "cpu", "--runs", "runs"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (features, meta) = tensor_file::read(&dir.join("features.safetensors")).unwrap();
    assert_eq!(meta["format"], "sslhost-tensors-1");
    assert_eq!(features.len(), 3);
    assert_eq!(features[0].shape, vec![8, 16]);
    assert_eq!(features[0].values, features[1].values);
    assert_eq!(features[0].values, features[2].values);
    std::fs::remove_dir_all(&dir).ok();
}

/// `from` rewritten as PyTorch's `safetensors.torch.save_file(model.state_dict())` would
/// write it: the same tensors, no metadata.
fn write_plain(from: &Path, to: &Path) {
    let (tensors, _) = tensor_file::read(from).unwrap();
    let encoded: Vec<(Vec<u8>, safetensors::Dtype)> = tensors
        .iter()
        .map(|t| match &t.values {
            Values::F32(v) => (
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                safetensors::Dtype::F32,
            ),
            Values::I64(v) => (
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                safetensors::Dtype::I64,
            ),
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&encoded)
        .map(|(t, (bytes, dtype))| {
            let view =
                safetensors::tensor::TensorView::new(*dtype, t.shape.clone(), bytes).unwrap();
            (t.name.as_str(), view)
        })
        .collect();
    std::fs::write(to, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The checkpoint at `path` rewritten as version 1 wrote it: every tensor padded to rank 4,
/// no checksums, no architectures or config.
fn as_version_1(path: &Path) {
    let (tensors, meta) = tensor_file::read(path).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = tensors
        .into_iter()
        .map(|t| {
            let (data, dtype, shape) = match t.values {
                Values::F32(v) => {
                    let mut shape = vec![1; 4 - t.shape.len()];
                    shape.extend(&t.shape);
                    (
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        safetensors::Dtype::F32,
                        shape,
                    )
                }
                Values::I64(v) => (
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::I64,
                    t.shape.clone(),
                ),
            };
            (t.name, shape, data, dtype)
        })
        .collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(name, shape, data, dtype)| {
            (
                name.as_str(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let keep = ["next_step", "rng", "seed"];
    let mut info: std::collections::HashMap<String, String> = meta
        .into_iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .collect();
    info.insert("format".into(), "sslhost-checkpoint-1".into());
    std::fs::write(path, safetensors::serialize(views, Some(info)).unwrap()).unwrap();
}

#[test]
fn version_1_checkpoints_resume_and_export() {
    let (dir, recipe) = recipe_in_temp("export-v1", RECIPE);
    let runs = dir.join("runs");
    let run = finished_run(sslhost_run(&recipe, &runs), &runs);
    let v2_out = dir.join("v2.safetensors");
    let v1_out = dir.join("v1.safetensors");
    let (code, _, stderr) = export(&[run.to_str().unwrap(), "-o", v2_out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");

    let checkpoint = run.join("checkpoints/last.safetensors");
    as_version_1(&checkpoint);
    let (_, meta) = tensor_file::read(&checkpoint).unwrap();
    assert_eq!(meta["format"], "sslhost-checkpoint-1");
    assert!(!meta.contains_key("checksums"));
    let (code, _, stderr) = export(&[run.to_str().unwrap(), "-o", v1_out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // The same tensors, names and shapes; only what the weights cannot show (the stem's
    // stride) is missing from the version 1 export's record.
    assert_eq!(
        tensor_file::read(&v1_out).unwrap().0,
        tensor_file::read(&v2_out).unwrap().0
    );

    // And the run continues from it.
    let mut resume = sslhost_run(&recipe, &runs);
    resume.args(["--resume", run.to_str().unwrap(), "--set", "epochs=2"]);
    let out = resume.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (_, meta) = tensor_file::read(&checkpoint).unwrap();
    assert_eq!(meta["format"], "sslhost-checkpoint-2");
    assert_eq!(meta["next_step"], "8");
    std::fs::remove_dir_all(&dir).ok();
}
