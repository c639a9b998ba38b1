//! Augmentations: every deterministic kernel against torchvision outputs
//! (`scripts/make_augment_fixtures.py`), the rates and distributions of the random ops over
//! 10k+ samples, seeding, and bad input.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;
use sslhost::augment::{
    self, Augment, ColorJitter, CropBox, GaussianBlur, JitterOp, JitterParams, RandomResizedCrop,
    Transform,
};
use sslhost::tensor::HostRng;

const TOL: f32 = 1e-3;

fn device() -> Device {
    sslhost::device::cpu()
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/augment")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn shape4(v: &Value) -> [usize; 4] {
    let s: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    s.try_into().unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

fn tensor(v: &Value) -> Tensor<4> {
    Tensor::from_data(TensorData::new(floats(&v["data"]), shape4(v)), &device())
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn assert_close(got: Tensor<4>, want: &Value, label: &str) {
    assert_eq!(got.dims(), shape4(want), "{label}: shape");
    let got = values(got);
    let want = floats(&want["data"]);
    let (i, err) = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    eprintln!("{label}: max error {err:.2e}");
    assert!(
        err <= TOL,
        "{label}: max error {err} at {i} (got {}, want {})",
        got[i],
        want[i]
    );
}

fn jitter_params(v: &Value) -> Vec<Option<JitterParams>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            if p.is_null() {
                return None;
            }
            let order: Vec<JitterOp> = p["order"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| JitterOp::ALL[i.as_u64().unwrap() as usize])
                .collect();
            let f = |i: usize| p["factors"][i].as_f64();
            Some(JitterParams {
                order: order.try_into().unwrap(),
                brightness: f(0),
                contrast: f(1),
                saturation: f(2),
                hue: f(3),
            })
        })
        .collect()
}

// ---- deterministic kernels vs torchvision -----------------------------------------------

#[test]
fn colour_ops_match_torchvision() {
    let fx = fixture("colour.json");
    let mut checked = 0;
    for set in fx["sets"].as_array().unwrap() {
        let x = tensor(&set["input"]);
        let c = x.dims()[1];
        for case in set["cases"].as_array().unwrap() {
            let op = case["op"].as_str().unwrap();
            let label = format!("{op} on {c} channel(s), params {}", case["params"]);
            let p = &case["params"];
            let x = x.clone();
            let got = match op {
                "brightness" => augment::adjust_brightness(x, &f64s(p)),
                "contrast" => augment::adjust_contrast(x, &f64s(p)),
                "saturation" => augment::adjust_saturation(x, &f64s(p)),
                "hue" => augment::adjust_hue(x, &f64s(p)),
                "grayscale" => augment::grayscale(x, &bools(p)),
                "solarize" => augment::solarize(x, case["threshold"].as_f64().unwrap(), &bools(p)),
                "normalize" => augment::normalize(x, &f64s(&case["mean"]), &f64s(&case["std"])),
                "color_jitter" => augment::color_jitter(x, &jitter_params(p)),
                other => panic!("unknown fixture op {other}"),
            }
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_close(got, &case["output"], &label);
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} colour cases");
}

#[test]
fn crops_and_flips_match_torchvision() {
    let fx = fixture("geometry.json");
    let x = tensor(&fx["input"]);
    for case in fx["cases"].as_array().unwrap() {
        let got = match case["op"].as_str().unwrap() {
            "resized_crop" => {
                let boxes: Vec<CropBox> = case["boxes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        let b: Vec<usize> = b
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_u64().unwrap() as usize)
                            .collect();
                        CropBox {
                            top: b[0],
                            left: b[1],
                            height: b[2],
                            width: b[3],
                        }
                    })
                    .collect();
                let size = f64s(&case["size"]);
                let size = [size[0] as usize, size[1] as usize];
                augment::resized_crop(x.clone(), &boxes, size, &bools(&case["flips"])).unwrap()
            }
            "hflip" => augment::hflip(x.clone(), &bools(&case["flags"])).unwrap(),
            other => panic!("unknown fixture op {other}"),
        };
        let label = format!(
            "{} boxes {} size {} flips {}",
            case["op"], case["boxes"], case["size"], case["flips"]
        );
        assert_close(got, &case["output"], &label);
    }
}

#[test]
fn blur_matches_torchvision() {
    let fx = fixture("blur.json");
    for set in fx["sets"].as_array().unwrap() {
        let x = tensor(&set["input"]);
        for case in set["cases"].as_array().unwrap() {
            let sigmas: Vec<Option<f64>> = case["sigmas"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::as_f64)
                .collect();
            let k = case["kernel_size"].as_u64().unwrap() as usize;
            let got = augment::gaussian_blur(x.clone(), &sigmas, k).unwrap();
            let label = format!("blur k {k} sigmas {:?} on {:?}", sigmas, x.dims());
            assert_close(got, &case["output"], &label);
        }
    }
}

#[test]
fn a_crop_followed_by_a_flip_is_folded_without_changing_the_result() {
    let mut rng = HostRng::new(3);
    let x = Tensor::<4>::from_data(
        TensorData::new(rng.uniform_vec(6 * 3 * 20 * 20, 0.0, 1.0), [6, 3, 20, 20]),
        &device(),
    );
    let crop = RandomResizedCrop::new(9);
    let t = Transform::new(vec![
        Augment::RandomResizedCrop(crop.clone()),
        Augment::HorizontalFlip { p: 0.5 },
    ])
    .unwrap();
    let fused = t.apply(x.clone(), &mut HostRng::new(7)).unwrap();

    let mut rng = HostRng::new(7);
    let boxes: Vec<_> = (0..6).map(|_| crop.sample(20, 20, &mut rng)).collect();
    let flips = augment::bernoulli(6, 0.5, &mut rng);
    assert!(flips.contains(&true) && flips.contains(&false), "{flips:?}");
    let cropped = augment::resized_crop(x, &boxes, [9, 9], &[false; 6]).unwrap();
    let separate = augment::hflip(cropped, &flips).unwrap();
    let err = values(fused)
        .iter()
        .zip(values(separate))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-5, "fused vs separate: {err}");
}

// ---- random parameters: rates and distributions -----------------------------------------

const DRAWS: usize = 10_000;

fn apply(op: Augment, x: Tensor<4>, seed: u64) -> Vec<f32> {
    let t = Transform::new(vec![op]).unwrap();
    values(t.apply(x, &mut HostRng::new(seed)).unwrap())
}

fn rate(hits: usize) -> f64 {
    hits as f64 / DRAWS as f64
}

/// Within 5 standard deviations of a binomial rate.
fn assert_rate(label: &str, got: f64, p: f64) {
    let sd = (p * (1.0 - p) / DRAWS as f64).sqrt();
    assert!(
        (got - p).abs() <= 5.0 * sd + 1e-9,
        "{label}: rate {got}, expected {p} ± {:.4}",
        5.0 * sd
    );
    eprintln!("{label}: {got:.4} (p = {p})");
}

#[test]
fn flip_rate() {
    // Each image is [0, 1] on one row; flipped it reads [1, 0].
    let data: Vec<f32> = (0..DRAWS).flat_map(|_| [0.0, 1.0]).collect();
    let x = Tensor::from_data(TensorData::new(data, [DRAWS, 1, 1, 2]), &device());
    for p in [0.5, 0.1] {
        let out = apply(Augment::HorizontalFlip { p }, x.clone(), 1);
        let flipped = out.chunks(2).filter(|px| px[0] == 1.0).count();
        assert_rate("hflip", rate(flipped), p);
    }
}

#[test]
fn grayscale_and_solarize_rates() {
    let data: Vec<f32> = (0..DRAWS).flat_map(|_| [0.9, 0.2, 0.1]).collect();
    let x = Tensor::from_data(TensorData::new(data, [DRAWS, 3, 1, 1]), &device());
    let out = apply(Augment::Grayscale { p: 0.2 }, x.clone(), 2);
    let grey = out
        .chunks(3)
        .filter(|px| px[0] == px[1] && px[1] == px[2])
        .count();
    assert_rate("grayscale", rate(grey), 0.2);

    let out = apply(
        Augment::Solarize {
            p: 0.2,
            threshold: 0.5,
        },
        x,
        3,
    );
    // Only the 0.9 channel is above the threshold.
    let solarized = out
        .chunks(3)
        .filter(|px| (px[0] - 0.1).abs() < 1e-6 && px[1] == 0.2 && px[2] == 0.1)
        .count();
    let untouched = out.chunks(3).filter(|px| px[0] == 0.9).count();
    assert_eq!(solarized + untouched, DRAWS);
    assert_rate("solarize", rate(solarized), 0.2);
}

#[test]
fn jitter_and_blur_rates() {
    let x = Tensor::<4>::full([DRAWS, 3, 1, 1], 0.5, &device());
    let jitter = ColorJitter::new(0.5, 0.0, 0.0, 0.0).with_p(0.8);
    let out = apply(Augment::ColorJitter(jitter), x, 4);
    let changed = out.chunks(3).filter(|px| px[0] != 0.5).count();
    assert_rate("color_jitter applied", rate(changed), 0.8);

    // A single bright pixel in a 3x3 image spreads out when blurred.
    let mut data = vec![0.0f32; DRAWS * 9];
    for i in 0..DRAWS {
        data[i * 9 + 4] = 1.0;
    }
    let x = Tensor::from_data(TensorData::new(data, [DRAWS, 1, 3, 3]), &device());
    let mut blur = GaussianBlur::new(0.1);
    blur.sigma = [0.5, 2.0];
    let out = apply(Augment::GaussianBlur(blur), x, 5);
    let blurred = out.chunks(9).filter(|px| px[4] < 0.999).count();
    assert_rate("gaussian_blur", rate(blurred), 0.1);
}

#[test]
fn jitter_orders_are_uniform_and_factors_in_range() {
    let jitter = ColorJitter::new(0.4, 0.4, 0.2, 0.1);
    let mut rng = HostRng::new(6);
    let n = 24 * 1000;
    let mut counts = std::collections::HashMap::new();
    let mut brightness = Vec::new();
    for _ in 0..n {
        let p = jitter.sample(&mut rng).expect("p = 1 always applies");
        *counts.entry(p.order).or_insert(0usize) += 1;
        let b = p.brightness.unwrap();
        assert!((0.6..1.4).contains(&b), "brightness {b}");
        assert!((0.6..1.4).contains(&p.contrast.unwrap()));
        assert!((0.8..1.2).contains(&p.saturation.unwrap()));
        assert!((-0.1..0.1).contains(&p.hue.unwrap()));
        brightness.push(b);
    }
    assert_eq!(counts.len(), 24, "every permutation appears");
    for (order, c) in &counts {
        // Expected 1000 each, sd ~31.
        assert!((850..=1150).contains(c), "{order:?}: {c}");
    }
    let mean = brightness.iter().sum::<f64>() / n as f64;
    assert!((mean - 1.0).abs() < 0.01, "mean brightness {mean}");
    // A zero strength skips the op; brightness 0.9 never goes negative.
    let p = ColorJitter::new(0.0, 1.5, 0.0, 0.0)
        .sample(&mut rng)
        .unwrap();
    assert!(p.brightness.is_none() && p.saturation.is_none() && p.hue.is_none());
    assert!((0.0..2.5).contains(&p.contrast.unwrap()));
}

#[test]
fn crop_boxes_follow_torchvision_get_params() {
    let fx = fixture("crop_stats.json");
    for s in fx["stats"].as_array().unwrap() {
        let (h, w) = (
            s["height"].as_u64().unwrap() as usize,
            s["width"].as_u64().unwrap() as usize,
        );
        let scale = f64s(&s["scale"]);
        let ratio = f64s(&s["ratio"]);
        let crop = RandomResizedCrop::new(8)
            .with_scale([scale[0], scale[1]])
            .with_ratio([ratio[0], ratio[1]]);
        let mut rng = HostRng::new(8);
        let n = 20_000;
        let (mut area, mut area2, mut lr, mut lr2, mut top, mut left, mut full) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
        for _ in 0..n {
            let b = crop.sample(h, w, &mut rng);
            assert!(b.height >= 1 && b.width >= 1);
            assert!(b.top + b.height <= h && b.left + b.width <= w, "{b:?}");
            let a = (b.height * b.width) as f64 / (h * w) as f64;
            let r = (b.width as f64 / b.height as f64).ln();
            area += a;
            area2 += a * a;
            lr += r;
            lr2 += r * r;
            top += b.top as f64 / h as f64;
            left += b.left as f64 / w as f64;
            full += usize::from(b.height == h && b.width == w);
        }
        let n = n as f64;
        let mean = |x: f64| x / n;
        let sd = |x: f64, x2: f64| (x2 / n - (x / n).powi(2)).max(0.0).sqrt();
        let ours = [
            ("area_mean", mean(area)),
            ("area_std", sd(area, area2)),
            ("log_ratio_mean", mean(lr)),
            ("log_ratio_std", sd(lr, lr2)),
            ("top_mean", mean(top)),
            ("left_mean", mean(left)),
            ("full_fraction", full as f64 / n),
        ];
        for (key, got) in ours {
            let want = s[key].as_f64().unwrap();
            eprintln!(
                "{h}x{w} scale {scale:?} ratio {ratio:?}: {key} {got:.4} (torchvision {want:.4})"
            );
            assert!(
                (got - want).abs() < 0.012,
                "{h}x{w} scale {scale:?} ratio {ratio:?}: {key} {got} vs torchvision {want}"
            );
        }
    }
}

// ---- seeding -----------------------------------------------------------------------------

fn byol_like() -> Transform {
    Transform::new(vec![
        Augment::RandomResizedCrop(RandomResizedCrop::new(16)),
        Augment::HorizontalFlip { p: 0.5 },
        Augment::ColorJitter(ColorJitter::new(0.4, 0.4, 0.2, 0.1).with_p(0.8)),
        Augment::Grayscale { p: 0.2 },
        Augment::GaussianBlur(GaussianBlur::new(0.5)),
        Augment::Solarize {
            p: 0.2,
            threshold: 0.5,
        },
        Augment::Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        },
    ])
    .unwrap()
}

fn batch(seed: u64, shape: [usize; 4]) -> Tensor<4> {
    let n = shape.iter().product();
    let v = HostRng::new(seed).uniform_vec(n, 0.0, 1.0);
    Tensor::from_data(TensorData::new(v, shape), &device())
}

#[test]
fn the_same_seed_gives_the_same_views_and_another_seed_others() {
    let t = byol_like();
    let x = batch(0, [8, 3, 24, 24]);
    let a = values(t.apply(x.clone(), &mut HostRng::new(42)).unwrap());
    let b = values(t.apply(x.clone(), &mut HostRng::new(42)).unwrap());
    let c = values(t.apply(x.clone(), &mut HostRng::new(43)).unwrap());
    assert_eq!(a.len(), 8 * 3 * 16 * 16);
    assert_eq!(a, b, "same seed, same views");
    assert_ne!(a, c, "another seed, other views");
    assert!(a.iter().all(|v| v.is_finite()));
    // Two calls on one generator give two different views (the generator advances).
    let mut rng = HostRng::new(42);
    let v1 = values(t.apply(x.clone(), &mut rng).unwrap());
    let v2 = values(t.apply(x, &mut rng).unwrap());
    assert_eq!(v1, a);
    assert_ne!(v1, v2);
}

#[test]
fn views_of_a_batch_differ_per_sample() {
    // Eight copies of one image: per-sample parameters make eight different views.
    let one = batch(1, [1, 3, 20, 20]);
    let x = Tensor::cat(vec![one; 8], 0);
    let out = values(byol_like().apply(x, &mut HostRng::new(5)).unwrap());
    let per = 3 * 16 * 16;
    let views: Vec<&[f32]> = out.chunks(per).collect();
    for i in 0..8 {
        for j in i + 1..8 {
            assert_ne!(views[i], views[j], "views {i} and {j} are equal");
        }
    }
}

#[test]
fn grey_images_work_through_every_op() {
    let x = batch(2, [4, 1, 20, 20]);
    let out = byol_like().apply(x, &mut HostRng::new(1)).unwrap();
    assert_eq!(out.dims(), [4, 1, 16, 16]);
    assert!(values(out).iter().all(|v| v.is_finite()));
}

// ---- bad input is an error, never a panic -------------------------------------------------

#[test]
fn bad_input_is_an_error() {
    let x = batch(0, [2, 3, 8, 8]);
    let two = batch(0, [2, 2, 8, 8]);
    let err = |r: sslhost::Result<Tensor<4>>| r.err().map(|e| e.to_string()).unwrap_or_default();

    assert!(err(augment::adjust_hue(two.clone(), &[0.1, 0.1])).contains("1 or 3 channels"));
    assert!(err(augment::adjust_hue(x.clone(), &[0.7, 0.1])).contains("outside"));
    assert!(err(augment::adjust_brightness(x.clone(), &[1.0])).contains("for a batch of 2"));
    assert!(err(augment::normalize(x.clone(), &[0.5, 0.5], &[1.0])).contains("2 mean values"));
    assert!(!err(augment::normalize(x.clone(), &[0.5], &[0.0])).is_empty());
    let b = CropBox {
        top: 4,
        left: 0,
        height: 5,
        width: 8,
    };
    assert!(
        err(augment::resized_crop(
            x.clone(),
            &[b, b],
            [4, 4],
            &[false; 2]
        ))
        .contains("fit")
    );
    assert!(!err(augment::gaussian_blur(x.clone(), &[Some(1.0); 2], 4)).is_empty());
    assert!(!err(augment::gaussian_blur(x.clone(), &[Some(-1.0); 2], 3)).is_empty());
    let empty = Tensor::<4>::zeros([0, 3, 8, 8], &device());
    assert!(err(byol_like().apply(empty, &mut HostRng::new(0))).contains("non-empty"));
    assert!(err(byol_like().apply(two, &mut HostRng::new(0))).contains("1 or 3 channels"));

    for bad in [
        Augment::HorizontalFlip { p: 1.5 },
        Augment::RandomResizedCrop(RandomResizedCrop::new(0)),
        Augment::RandomResizedCrop(RandomResizedCrop::new(8).with_scale([0.5, 0.1])),
        Augment::RandomResizedCrop(RandomResizedCrop::new(8).with_ratio([0.0, 1.0])),
        Augment::ColorJitter(ColorJitter::new(-0.1, 0.0, 0.0, 0.0)),
        Augment::ColorJitter(ColorJitter::new(0.1, 0.0, 0.0, 0.6)),
        Augment::Normalize {
            mean: vec![],
            std: vec![1.0],
        },
        Augment::Solarize {
            p: 0.5,
            threshold: f64::NAN,
        },
    ] {
        assert!(
            Transform::new(vec![bad.clone()]).is_err(),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn a_crop_larger_than_the_image_and_tiny_images_work() {
    // Upsampling crops of a 3x5 image, blur with a kernel wider than the image.
    let x = batch(3, [5, 3, 3, 5]);
    let t = Transform::new(vec![
        Augment::RandomResizedCrop(RandomResizedCrop::new(12)),
        Augment::GaussianBlur(GaussianBlur {
            p: 1.0,
            sigma: [1.0, 2.0],
            kernel_size: Some(15),
        }),
    ])
    .unwrap();
    let out = t.apply(x, &mut HostRng::new(0)).unwrap();
    assert_eq!(out.dims(), [5, 3, 12, 12]);
    let v = values(out);
    assert!(
        v.iter()
            .all(|x| x.is_finite() && (-1e-5..=1.0 + 1e-5).contains(x))
    );
    // 1x1 images.
    let x = batch(4, [3, 3, 1, 1]);
    let out = byol_like().apply(x, &mut HostRng::new(0)).unwrap();
    assert_eq!(out.dims(), [3, 3, 16, 16]);
}

// ---- scripts ------------------------------------------------------------------------------

/// Runs `body` in a fresh session seeded with `seed`; the stdlib presets are global.
fn run_script(body: &str, seed: u64) -> sslhost::Result<rhai::Dynamic> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    sslhost::engine::run_source(
        "augment_test.rhai",
        body,
        root,
        sslhost::session::Session::new(device(), seed),
    )
}

fn dims_of(v: &rhai::Dynamic) -> Vec<i64> {
    v.clone()
        .into_typed_array::<i64>()
        .unwrap_or_else(|e| panic!("not a shape: {v:?} ({e})"))
}

#[test]
fn presets_apply_to_a_batch_from_a_script() {
    let body = r#"
        let x = rand([6, 3, 28, 28]);
        let v1 = byol_view1_transform(16);
        let v2 = byol_view2_transform(16, cifar10_normalization());
        print(v1);
        let custom = transform([
            random_resized_crop(8, #{ scale: [0.5, 1], ratio: [1, 1] }),
            hflip(1),
            color_jitter(0.4, 0.4, 0.2, 0.1),
            grayscale(0),
            gaussian_blur(#{ p: 1, sigma: [1, 2], kernel_size: 3 }),
            solarize(#{ p: 1, threshold: 0.5 }),
            normalize([0.5], [0.5]),
        ]);
        let nested = transform([v1, normalize([0.0], [2.0])]);
        [
            v1.apply(x).shape(),
            v2.apply(x).shape(),
            simclr_transform(16).apply(x).shape(),
            moco_v2_transform([16, 12]).apply(x).shape(),
            v1.apply(rand([4, 1, 28, 28])).shape(),
            custom.apply(rand([3, 10, 10])).shape(),
            [v1.len, custom.len(), nested.len],
            [v1.apply(x).sum().item(), v1.apply(x).sum().item()],
        ]
    "#;
    let out = run_script(body, 7)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_array()
        .unwrap();
    assert_eq!(dims_of(&out[0]), [6, 3, 16, 16]);
    assert_eq!(dims_of(&out[1]), [6, 3, 16, 16]);
    assert_eq!(dims_of(&out[2]), [6, 3, 16, 16]);
    assert_eq!(dims_of(&out[3]), [6, 3, 16, 12]);
    assert_eq!(dims_of(&out[4]), [4, 1, 16, 16]);
    assert_eq!(dims_of(&out[5]), [3, 8, 8]);
    assert_eq!(dims_of(&out[6]), [7, 7, 8]);
    // The session generator advances: two applications give two different views.
    let sums = out[7].clone().into_typed_array::<f64>().unwrap();
    assert_ne!(sums[0], sums[1]);

    // The same seed gives the same views from a script.
    let body = "let x = rand([4, 3, 20, 20]); byol_view2_transform(12).apply(x).to_array()";
    let a = format!("{:?}", run_script(body, 11).unwrap());
    let b = format!("{:?}", run_script(body, 11).unwrap());
    let c = format!("{:?}", run_script(body, 12).unwrap());
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn script_errors_name_the_problem() {
    for (body, want) in [
        ("hflip(2)", "probability must be in [0, 1]"),
        ("hflip(\"a\")", "must be a number"),
        (
            "random_resized_crop(32, #{ scal: [0.1, 1.0] })",
            "unknown option `scal`",
        ),
        ("random_resized_crop(0)", "size must be"),
        ("random_resized_crop([32], #{})", "size must be"),
        (
            "random_resized_crop(32, #{ scale: [0.1] })",
            "must be [low, high]",
        ),
        (
            "color_jitter(0.4, 0.4, 0.2, 0.9)",
            "hue must be in [0, 0.5]",
        ),
        (
            "color_jitter(0.4, 0.4, 0.2, 0.1, #{ q: 1 })",
            "unknown option `q`",
        ),
        ("gaussian_blur(#{ kernel_size: 4 })", "odd"),
        ("gaussian_blur(#{ sigma: [2.0, 1.0] })", "low <= high"),
        ("solarize(#{ p: -1 })", "probability"),
        (
            "normalize([0.5, 0.5], [0.5, 0.5, 0.5])",
            "2 means but 3 stds",
        ),
        ("normalize([0.5], [0])", "non-zero"),
        ("transform([1, 2])", "array of augmentation ops"),
        (
            "transform([hflip(0.5)]).apply(zeros([2, 3]))",
            "[N, C, H, W]",
        ),
        (
            "transform([hflip(0.5)]).apply(zeros([2, 3, 4, 4]).int())",
            "float tensor",
        ),
        (
            "transform([grayscale(0.5)]).apply(zeros([2, 2, 4, 4]))",
            "1 or 3 channels",
        ),
        (
            "transform([normalize([0.5, 0.5], [1.0, 1.0])]).apply(zeros([2, 3, 4, 4]))",
            "2 mean values",
        ),
        ("byol_view1_transform(32, 5)", "view options must be a map"),
    ] {
        let err = run_script(body, 0).expect_err(body).to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
}

#[test]
fn every_example_in_the_augment_api_docs_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("host/src/api/augment.rs")).unwrap();
    let mut examples = Vec::new();
    let mut current: Option<String> = None;
    for line in source.lines() {
        let line = line.trim_start();
        let Some(doc) = line.strip_prefix("///") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        match (&mut current, doc.trim()) {
            (None, "```rhai") => current = Some(String::new()),
            (Some(_), "```") => examples.push(current.take().unwrap()),
            (Some(code), _) => {
                code.push_str(doc);
                code.push('\n');
            }
            _ => {}
        }
    }
    assert!(examples.len() >= 12, "found {} examples", examples.len());
    for code in examples {
        if let Err(e) = run_script(&code, 0) {
            panic!("example failed:\n{code}\n{e}");
        }
    }
}
