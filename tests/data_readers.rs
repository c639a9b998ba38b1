//! The dataset readers on small files written here in the real formats: idx (plain and gzip),
//! CIFAR-10 and CIFAR-100 binary, folders of PNG and JPEG, synthetic data. Broken files are
//! errors naming the file, never panics.

mod data_common;

use std::path::Path;

use data_common::*;
use sslhost::data::cifar::{self, Cifar};
use sslhost::data::synthetic::{self, SyntheticConfig};
use sslhost::data::{Dataset, folder, idx};

fn err_text<T: std::fmt::Debug>(r: sslhost::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Asserts that `ds` image `i` holds the pixels written by [`pixel`] for image `id`.
fn assert_pixels(ds: &Dataset, i: usize, id: usize) {
    let got = ds.image_u8(i).unwrap();
    let want: Vec<u8> = (0..got.len()).map(|p| pixel(id, p)).collect();
    assert_eq!(got, want, "image {i}");
}

// ---- idx --------------------------------------------------------------------------------

#[test]
fn idx_plain_and_gzip_files_read_the_same() {
    let tmp = TempDir::new("idx");
    for (sub, gzip) in [("plain", false), ("gz", true)] {
        write_idx_split(&tmp.path().join(sub), "train", 5, (3, 4), 3, gzip);
        write_idx_split(&tmp.path().join(sub), "t10k", 2, (3, 4), 3, gzip);
    }
    for sub in ["plain", "gz"] {
        let ds = idx::read_dir("t", &tmp.path().join(sub), true, None).unwrap();
        assert_eq!(ds.len(), 5);
        assert_eq!(ds.image_shape(), [1, 3, 4]);
        assert_eq!(ds.labels(), &[0, 1, 2, 0, 1]);
        assert_eq!(ds.classes(), 3);
        for i in 0..5 {
            assert_pixels(&ds, i, i);
        }
        // Gathered as f32 in [0, 1].
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        ds.gather(&[4, 1], &mut images, &mut labels, None).unwrap();
        assert_eq!(labels, vec![1, 1]);
        assert_eq!(images.len(), 2 * 12);
        assert!((images[0] - pixel(4, 0) as f32 / 255.0).abs() < 1e-7);
        assert!((images[12 + 5] - pixel(1, 5) as f32 / 255.0).abs() < 1e-7);

        let test = idx::read_dir("t", &tmp.path().join(sub), false, None).unwrap();
        assert_eq!(test.len(), 2);
    }
}

#[test]
fn idx_accepts_the_original_mnist_spelling() {
    let tmp = TempDir::new("idx-dot");
    std::fs::write(
        tmp.join("train-images.idx3-ubyte"),
        idx3(2, 2, 2, &[1, 2, 3, 4, 5, 6, 7, 8]),
    )
    .unwrap();
    std::fs::write(tmp.join("train-labels.idx1-ubyte"), idx1(&[3, 1])).unwrap();
    let ds = idx::read_dir("mnist", tmp.path(), true, None).unwrap();
    assert_eq!(ds.labels(), &[3, 1]);
    assert_eq!(ds.image_u8(1).unwrap(), vec![5, 6, 7, 8]);
}

#[test]
fn idx_wrong_magic_is_an_error_naming_the_file() {
    let tmp = TempDir::new("idx-magic");
    let images = tmp.join("train-images-idx3-ubyte");
    // A label file where the images should be.
    std::fs::write(&images, idx1(&[1, 2, 3])).unwrap();
    std::fs::write(tmp.join("train-labels-idx1-ubyte"), idx1(&[1, 2, 3])).unwrap();
    let e = err_text(idx::read_dir("t", tmp.path(), true, None));
    assert!(e.contains(&images.display().to_string()), "{e}");
    assert!(
        e.contains("magic number 0x00000801, expected 0x00000803"),
        "{e}"
    );

    // Labels with an image magic number.
    std::fs::write(&images, idx3(1, 1, 1, &[9])).unwrap();
    let labels = tmp.join("train-labels-idx1-ubyte");
    std::fs::write(&labels, idx3(1, 1, 1, &[9])).unwrap();
    let e = err_text(idx::read_dir("t", tmp.path(), true, None));
    assert!(e.contains(&labels.display().to_string()), "{e}");
    assert!(e.contains("expected 0x00000801"), "{e}");
}

#[test]
fn idx_truncated_files_are_errors_naming_the_file() {
    let tmp = TempDir::new("idx-trunc");
    let full = idx3(4, 5, 5, &[7; 100]);
    let path = tmp.join("train-images-idx3-ubyte");
    std::fs::write(tmp.join("train-labels-idx1-ubyte"), idx1(&[0; 4])).unwrap();

    // Values cut short.
    std::fs::write(&path, &full[..full.len() - 1]).unwrap();
    let e = err_text(idx::read_dir("t", tmp.path(), true, None));
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("truncated"), "{e}");
    assert!(e.contains("[4, 5, 5] = 100 bytes"), "{e}");

    // Header cut short, and an empty file.
    for cut in [10, 0] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let e = err_text(idx::read_dir("t", tmp.path(), true, None));
        assert!(e.contains("truncated"), "{cut}: {e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    // A truncated gzip stream.
    std::fs::remove_file(&path).unwrap();
    let gz_path = tmp.join("train-images-idx3-ubyte.gz");
    let zipped = gz(&full);
    std::fs::write(&gz_path, &zipped[..zipped.len() / 2]).unwrap();
    let e = err_text(idx::read_dir("t", tmp.path(), true, None));
    assert!(e.contains(&gz_path.display().to_string()), "{e}");
    assert!(e.contains("corrupt or truncated gzip"), "{e}");
}

#[test]
fn idx_missing_or_mismatched_labels_are_errors() {
    let tmp = TempDir::new("idx-labels");
    std::fs::write(
        tmp.join("train-images-idx3-ubyte.gz"),
        gz(&idx3(3, 1, 1, &[1, 2, 3])),
    )
    .unwrap();
    let e = err_text(idx::read_dir("t", tmp.path(), true, None));
    assert!(e.contains("train-labels-idx1-ubyte.gz"), "{e}");
    assert!(e.contains("missing"), "{e}");

    let labels = tmp.join("train-labels-idx1-ubyte.gz");
    std::fs::write(&labels, gz(&idx1(&[1, 2]))).unwrap();
    let e = err_text(idx::read_dir("t", tmp.path(), true, None));
    assert!(e.contains(&labels.display().to_string()), "{e}");
    assert!(e.contains("2 labels, but"), "{e}");

    // A label outside the named classes.
    std::fs::write(&labels, gz(&idx1(&[1, 2, 10]))).unwrap();
    let names = (0..10).map(|i| i.to_string()).collect();
    let e = err_text(idx::read_dir("t", tmp.path(), true, Some(names)));
    assert!(e.contains("label 10 of sample 2 is outside 0..10"), "{e}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = err_text(idx::read_images(Path::new(
        "/nonexistent/train-images-idx3-ubyte",
    )));
    assert!(e.contains("/nonexistent/train-images-idx3-ubyte"), "{e}");
    assert!(e.contains("cannot read"), "{e}");
}

// ---- CIFAR ------------------------------------------------------------------------------

#[test]
fn cifar10_reads_the_five_train_batches_in_order_and_the_test_batch() {
    let tmp = TempDir::new("cifar10");
    write_cifar10(tmp.path(), 3, 4);
    let ds = cifar::read_dir(Cifar::Ten, tmp.path(), true).unwrap();
    assert_eq!(ds.len(), 15);
    assert_eq!(ds.image_shape(), [3, 32, 32]);
    assert_eq!(ds.classes(), 10);
    assert_eq!(ds.class_names()[0], "airplane");
    assert_eq!(
        ds.labels(),
        &(0..15).map(|i| i % 10).collect::<Vec<i64>>()[..]
    );
    for i in 0..15 {
        assert_pixels(&ds, i, i);
    }
    // Planes: red first, then green, then blue.
    let img = ds.image_u8(7).unwrap();
    assert_eq!(img[1024], pixel(7, 1024));

    let test = cifar::read_dir(Cifar::Ten, tmp.path(), false).unwrap();
    assert_eq!(test.len(), 4);
    assert_pixels(&test, 3, 3);
}

#[test]
fn cifar10_class_names_come_from_batches_meta_when_present() {
    let tmp = TempDir::new("cifar10-meta");
    write_cifar10(tmp.path(), 1, 1);
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    std::fs::write(tmp.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    let ds = cifar::read_dir(Cifar::Ten, tmp.path(), false).unwrap();
    assert_eq!(ds.class_names(), &names[..]);
}

#[test]
fn cifar100_uses_the_fine_labels() {
    let tmp = TempDir::new("cifar100");
    write_cifar100(tmp.path(), 6, 3);
    let ds = cifar::read_dir(Cifar::Hundred, tmp.path(), true).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.classes(), 100);
    assert_eq!(ds.labels(), &[0, 7, 14, 21, 28, 35]);
    assert_eq!(ds.class_names()[99], "worm");
    for i in 0..6 {
        assert_pixels(&ds, i, i);
    }
    let test = cifar::read_dir(Cifar::Hundred, tmp.path(), false).unwrap();
    assert_eq!(test.len(), 3);
}

#[test]
fn cifar_truncated_missing_and_foreign_files_are_errors_naming_the_file() {
    let tmp = TempDir::new("cifar-bad");
    write_cifar10(tmp.path(), 2, 2);
    let third = tmp.join("data_batch_3.bin");
    let bytes = std::fs::read(&third).unwrap();
    std::fs::write(&third, &bytes[..bytes.len() - 1]).unwrap();
    let e = err_text(cifar::read_dir(Cifar::Ten, tmp.path(), true));
    assert!(e.contains(&third.display().to_string()), "{e}");
    assert!(e.contains("truncated"), "{e}");
    assert!(e.contains("3073-byte"), "{e}");

    std::fs::write(&third, &bytes).unwrap();
    let fifth = tmp.join("data_batch_5.bin");
    std::fs::remove_file(&fifth).unwrap();
    let e = err_text(cifar::read_dir(Cifar::Ten, tmp.path(), true));
    assert!(e.contains(&fifth.display().to_string()), "{e}");
    assert!(e.contains("missing"), "{e}");

    // A CIFAR-100 file read as CIFAR-10: 3074-byte records.
    let tmp100 = TempDir::new("cifar-foreign");
    write_cifar100(tmp100.path(), 3, 3);
    std::fs::copy(tmp100.join("test.bin"), tmp.join("test_batch.bin")).unwrap();
    let e = err_text(cifar::read_dir(Cifar::Ten, tmp.path(), false));
    assert!(e.contains("test_batch.bin"), "{e}");

    // Labels out of range.
    std::fs::write(
        tmp.join("test_batch.bin"),
        cifar_records(&[vec![3], vec![42]], 0),
    )
    .unwrap();
    let e = err_text(cifar::read_dir(Cifar::Ten, tmp.path(), false));
    assert!(e.contains("label 42 of record 1 is outside 0..10"), "{e}");

    // An empty file.
    std::fs::write(tmp100.join("train.bin"), b"").unwrap();
    let e = err_text(cifar::read_dir(Cifar::Hundred, tmp100.path(), true));
    assert!(e.contains("train.bin"), "{e}");
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn cifar100_names_built_in_are_a_hundred() {
    assert_eq!(cifar::CIFAR100_CLASSES.len(), 100);
    let mut sorted = cifar::CIFAR100_CLASSES.to_vec();
    sorted.sort();
    assert_eq!(
        sorted,
        cifar::CIFAR100_CLASSES.to_vec(),
        "label order is alphabetical"
    );
}

// ---- image folders ----------------------------------------------------------------------

#[test]
fn folders_of_png_and_jpeg_are_classes_in_sorted_order() {
    let tmp = TempDir::new("folder");
    write_image(&tmp.join("dog/b.jpg"), (16, 12), [0, 0, 255]);
    write_image(&tmp.join("cat/a.png"), (8, 8), [255, 0, 0]);
    write_image(&tmp.join("cat/nested/c.PNG"), (8, 8), [0, 255, 0]);
    write_image(&tmp.join("dog/a.JPEG"), (4, 4), [255, 255, 255]);
    std::fs::write(tmp.join("cat/notes.txt"), "not an image").unwrap();
    write_image(&tmp.join(".hidden/x.png"), (4, 4), [0, 0, 0]);

    let ds = folder::read_dir("pets", tmp.path(), 4).unwrap();
    assert_eq!(ds.class_names(), &["cat".to_string(), "dog".to_string()]);
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.labels(), &[0, 0, 1, 1]);
    assert_eq!(ds.image_shape(), [3, 4, 4]);
    assert!(ds.reads_files());

    let close = |img: &[u8], rgb: [u8; 3]| {
        for (c, want) in rgb.iter().enumerate() {
            for v in &img[c * 16..(c + 1) * 16] {
                assert!((*v as i32 - *want as i32).abs() <= 3, "{img:?} vs {rgb:?}");
            }
        }
    };
    close(&ds.image_u8(0).unwrap(), [255, 0, 0]); // cat/a.png
    close(&ds.image_u8(1).unwrap(), [0, 255, 0]); // cat/nested/c.PNG
    close(&ds.image_u8(2).unwrap(), [255, 255, 255]); // dog/a.JPEG
    close(&ds.image_u8(3).unwrap(), [0, 0, 255]); // dog/b.jpg, resized from 16x12

    let (mut images, mut labels) = (Vec::new(), Vec::new());
    ds.gather(&[3, 0], &mut images, &mut labels, None).unwrap();
    assert_eq!(labels, vec![1, 0]);
    assert_eq!(images.len(), 2 * 48);
    assert!(images[32] > 0.98 && images[48] > 0.98);
}

#[test]
fn a_corrupt_image_is_an_error_naming_it_when_read() {
    let tmp = TempDir::new("folder-bad");
    write_image(&tmp.join("a/ok.png"), (4, 4), [1, 2, 3]);
    let bad = tmp.join("b/broken.png");
    std::fs::write(&bad, b"\x89PNG this is not really a png").unwrap();
    let ds = folder::read_dir("bad", tmp.path(), 4).unwrap();
    let e = err_text(ds.image_u8(1));
    assert!(e.contains(&bad.display().to_string()), "{e}");
    assert!(e.contains("cannot decode"), "{e}");
}

#[test]
fn folders_without_classes_or_images_are_errors() {
    let tmp = TempDir::new("folder-empty");
    let e = err_text(folder::read_dir("x", tmp.path(), 8));
    assert!(e.contains("no class sub-folders"), "{e}");
    std::fs::create_dir_all(tmp.join("a/sub")).unwrap();
    std::fs::write(tmp.join("a/readme.txt"), "x").unwrap();
    let e = err_text(folder::read_dir("x", tmp.path(), 8));
    assert!(e.contains("no images in this class folder"), "{e}");
    assert!(
        e.contains(&tmp.path().join("a").display().to_string()),
        "{e}"
    );
}

#[test]
fn a_folder_without_class_folders_is_a_dataset_without_labels() {
    use sslhost::data::{DatasetOptions, Locations, Split, open};
    let tmp = TempDir::new("folder-plain");
    write_image(&tmp.join("photos/b.png"), (8, 8), [0, 0, 255]);
    write_image(&tmp.join("photos/a.jpg"), (8, 8), [255, 0, 0]);
    write_image(&tmp.join("nested/2023/x.png"), (8, 8), [0, 255, 0]);
    write_image(&tmp.join("nested/2024/y.png"), (8, 8), [0, 255, 0]);
    let loc = Locations::new(None);
    let opts = |plain_folder| DatasetOptions {
        size: Some(4),
        plain_folder,
        ..DatasetOptions::split(Split::Train)
    };

    // Images directly in the folder: one collection, no labels.
    let photos = tmp.join("photos");
    let ds = open(photos.to_str().unwrap(), &opts(false), &loc).unwrap();
    assert!(!ds.labelled());
    assert_eq!((ds.len(), ds.classes()), (2, 0));
    assert_eq!(ds.image_shape(), [3, 4, 4]);

    // Nested folders are classes unless asked otherwise.
    let nested = tmp.join("nested");
    let ds = open(nested.to_str().unwrap(), &opts(false), &loc).unwrap();
    assert!(ds.labelled());
    assert_eq!(ds.class_names(), &["2023".to_string(), "2024".to_string()]);
    let ds = open(nested.to_str().unwrap(), &opts(true), &loc).unwrap();
    assert!(!ds.labelled());
    assert_eq!(ds.len(), 2);

    // A folder with no images at all is an error naming it.
    std::fs::create_dir_all(tmp.join("empty/sub")).unwrap();
    let e = err_text(folder::read_plain("x", &tmp.join("empty"), 4));
    assert!(e.contains("no images here or below"), "{e}");
}

// ---- synthetic --------------------------------------------------------------------------

#[test]
fn synthetic_data_is_deterministic_and_limit_keeps_the_first_samples() {
    let mut config = SyntheticConfig::new(true);
    config.samples = 40;
    let a = synthetic::generate(&config).unwrap();
    let b = synthetic::generate(&config).unwrap();
    assert_eq!(a.len(), 40);
    assert_eq!(a.image_shape(), [3, 32, 32]);
    assert_eq!(a.labels()[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    for i in [0, 17, 39] {
        assert_eq!(a.image_u8(i).unwrap(), b.image_u8(i).unwrap());
    }
    config.samples = 10;
    let short = synthetic::generate(&config).unwrap();
    assert_eq!(short.image_u8(9).unwrap(), a.image_u8(9).unwrap());

    config.seed = 1;
    let other = synthetic::generate(&config).unwrap();
    assert_ne!(other.image_u8(0).unwrap(), a.image_u8(0).unwrap());
    let mut test = SyntheticConfig::new(false);
    test.samples = 10;
    let test = synthetic::generate(&test).unwrap();
    assert_ne!(test.image_u8(0).unwrap(), a.image_u8(0).unwrap());

    let mut grey = SyntheticConfig::new(true);
    (grey.samples, grey.channels, grey.size, grey.classes) = (5, 1, 8, 3);
    let grey = synthetic::generate(&grey).unwrap();
    assert_eq!(grey.image_shape(), [1, 8, 8]);
    assert_eq!(grey.classes(), 3);
    assert_eq!(grey.with_rgb(true).channels(), 3);

    let mut bad = SyntheticConfig::new(true);
    bad.channels = 2;
    assert!(synthetic::generate(&bad).is_err());
}

/// Magnitudes of the 2-D DFT of the channel-mean image at low frequencies: invariant to the
/// random phase of a sample, so nearest class centroid in this space measures whether the
/// classes have learnable structure.
fn spectrum(img: &[u8], size: usize, channels: usize) -> Vec<f64> {
    let plane = size * size;
    let grey: Vec<f64> = (0..plane)
        .map(|p| {
            (0..channels)
                .map(|c| img[c * plane + p] as f64)
                .sum::<f64>()
                / channels as f64
        })
        .collect();
    let mut out = Vec::new();
    for u in 0..6 {
        for v in 0..size {
            let (mut re, mut im) = (0.0, 0.0);
            for y in 0..size {
                for x in 0..size {
                    let a = std::f64::consts::TAU
                        * ((u * y) as f64 / size as f64 + (v * x) as f64 / size as f64);
                    re += grey[y * size + x] * a.cos();
                    im -= grey[y * size + x] * a.sin();
                }
            }
            out.push((re * re + im * im).sqrt().ln_1p());
        }
    }
    out
}

#[test]
fn synthetic_classes_are_learnable() {
    let size = 16;
    let mut train = SyntheticConfig::new(true);
    (train.samples, train.size) = (300, size);
    let mut test = SyntheticConfig::new(false);
    (test.samples, test.size) = (200, size);
    let (train, test) = (
        synthetic::generate(&train).unwrap(),
        synthetic::generate(&test).unwrap(),
    );
    let feats = |ds: &Dataset, i: usize| spectrum(&ds.image_u8(i).unwrap(), size, 3);
    let dim = feats(&train, 0).len();
    let mut centroids = vec![vec![0.0; dim]; 10];
    for i in 0..train.len() {
        let f = feats(&train, i);
        let c = &mut centroids[train.labels()[i] as usize];
        for (a, b) in c.iter_mut().zip(f) {
            *a += b / 30.0;
        }
    }
    let mut correct = 0;
    for i in 0..test.len() {
        let f = feats(&test, i);
        let best = (0..10)
            .min_by(|&a, &b| {
                let d = |c: &Vec<f64>| c.iter().zip(&f).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
                d(&centroids[a]).total_cmp(&d(&centroids[b]))
            })
            .unwrap();
        correct += usize::from(best as i64 == test.labels()[i]);
    }
    let acc = correct as f64 / test.len() as f64;
    assert!(acc > 0.8, "nearest-centroid accuracy {acc} (chance 0.1)");
}

// ---- dataset views ----------------------------------------------------------------------

#[test]
fn rgb_expands_grey_limit_truncates_and_tensors_slice() {
    let tmp = TempDir::new("views");
    write_idx_split(tmp.path(), "train", 6, (2, 3), 4, true);
    let ds = idx::read_dir("t", tmp.path(), true, None).unwrap();
    let rgb = ds.clone().with_rgb(true);
    assert_eq!(rgb.image_shape(), [3, 2, 3]);
    let img = rgb.image_u8(2).unwrap();
    assert_eq!(img[..6], img[6..12]);
    assert_eq!(img[..6], img[12..]);
    assert_eq!(img[..6], ds.image_u8(2).unwrap()[..]);

    let limited = rgb.limited(4);
    assert_eq!(limited.len(), 4);
    assert!(limited.image_u8(4).is_err());

    let device = sslhost::device::cpu();
    let (images, labels) = limited.tensors(1, 4, &device).unwrap();
    assert_eq!(images.shape(), vec![3, 3, 2, 3]);
    assert!(labels.is_int());
    assert_eq!(labels.to_f64_vec().unwrap(), vec![1.0, 2.0, 3.0]);
    let values = images.to_f64_vec().unwrap();
    assert!((values[0] - pixel(1, 0) as f64 / 255.0).abs() < 1e-6);
    assert!(limited.tensors(3, 5, &device).is_err());
    assert!(limited.tensors(2, 2, &device).is_err());
}
