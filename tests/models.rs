//! Models: torchvision parameter counts and names, shapes, batch-norm modes.

use burn::tensor::{DType, Tensor, TensorData};
use sslhost::kernels::{GpuKernelSet, KernelPolicy, Precision};
use sslhost::models::{MlpConfig, ResNetConfig, SharedNet};
use sslhost::tensor::HostRng;

mod model_common;

fn resnet(config: &ResNetConfig) -> SharedNet {
    SharedNet::resnet(config, &mut HostRng::new(0), &sslhost::device::cpu()).unwrap()
}

#[test]
fn parameter_counts_equal_torchvision_without_fc() {
    assert_eq!(resnet(&ResNetConfig::new(18)).num_params(), 11_176_512);
    assert_eq!(resnet(&ResNetConfig::new(34)).num_params(), 21_284_672);
    assert_eq!(resnet(&ResNetConfig::new(50)).num_params(), 23_508_032);
    // The CIFAR stem swaps the 7x7x3x64 conv (9408) for a 3x3x3x64 one (1728).
    let cifar = ResNetConfig {
        cifar_stem: true,
        ..ResNetConfig::new(18)
    };
    assert_eq!(resnet(&cifar).num_params(), 11_176_512 - 9408 + 1728);
}

#[test]
fn blocks_and_stem_stride_shape_the_network() {
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(3);
    let base = ResNetConfig {
        cifar_stem: true,
        widths: [4, 8, 16, 32],
        ..ResNetConfig::new(18)
    };
    let full = resnet(&base);
    let ten = resnet(&ResNetConfig {
        blocks: Some([1, 1, 1, 1]),
        ..base.clone()
    });
    // One block per stage: each stage loses one basic block: two 3x3 convs and two BNs (weight, bias).
    let block = |c: usize| 2 * (9 * c * c) + 2 * (2 * c);
    assert_eq!(
        full.num_params() - ten.num_params(),
        block(4) + block(8) + block(16) + block(32)
    );
    assert!(
        !ten.parameters()
            .into_iter()
            .any(|(n, _)| n.starts_with("layer1.1."))
    );
    // A stride-2 stem halves the 16x16 map; the output stays [N, features].
    let strided = resnet(&ResNetConfig {
        stem_stride: 2,
        ..base.clone()
    });
    let x = rng.randn(&[2, 3, 16, 16], &device).unwrap();
    assert_eq!(strided.forward(&x).unwrap().shape(), vec![2, 32]);
    assert!(
        SharedNet::resnet(
            &ResNetConfig {
                blocks: Some([1, 0, 1, 1]),
                ..base
            },
            &mut rng,
            &device
        )
        .is_err()
    );
}

#[test]
fn parameter_names_follow_torchvision() {
    let names: Vec<String> = resnet(&ResNetConfig::new(18))
        .parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for want in [
        "conv1.weight",
        "bn1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.conv.weight",
        "layer4.1.bn2.bias",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing {want} in {names:?}"
        );
    }
}

#[test]
fn forward_shapes() {
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(1);
    for (depth, features) in [(18, 32), (34, 32), (50, 128)] {
        let config = ResNetConfig {
            cifar_stem: true,
            widths: [4, 8, 16, 32],
            ..ResNetConfig::new(depth)
        };
        let net = resnet(&config);
        let x = rng.randn(&[2, 3, 16, 16], &device).unwrap();
        assert_eq!(
            net.forward(&x).unwrap().shape(),
            vec![2, features],
            "depth {depth}"
        );
    }
    let imagenet = resnet(&ResNetConfig {
        widths: [4, 8, 16, 32],
        ..ResNetConfig::new(18)
    });
    let x = rng.randn(&[2, 3, 32, 32], &device).unwrap();
    assert_eq!(imagenet.forward(&x).unwrap().shape(), vec![2, 32]);
}

#[test]
fn batch_norm_modes_and_running_statistics() {
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(2);
    let net = SharedNet::mlp(
        &MlpConfig {
            last_batch_norm: true,
            ..MlpConfig::new(vec![3, 4])
        },
        &mut rng,
        &device,
    )
    .unwrap();
    // Inputs with mean 5 per feature: after one training step the running mean moves 10% of
    // the way from 0 to the batch mean of the linear output.
    let x = rng
        .randn(&[64, 3], &device)
        .unwrap()
        .binary_scalar(5.0, sslhost::tensor::BinaryOp::Add, false)
        .unwrap();
    let train_out = net.forward(&x).unwrap();
    // Training mode normalises with batch statistics: per-feature mean ≈ 0.
    let mean = train_out.mean_dim(0, false).unwrap().to_f64_vec().unwrap();
    assert!(mean.iter().all(|m| m.abs() < 1e-4), "{mean:?}");
    let params: std::collections::HashMap<_, _> = net.parameters().into_iter().collect();
    let linear_out_mean = {
        let w = params["layers.0.linear.weight"].clone();
        let b = params["layers.0.linear.bias"].clone();
        x.matmul(&w.t().unwrap())
            .unwrap()
            .binary(&b, sslhost::tensor::BinaryOp::Add)
            .unwrap()
            .mean_dim(0, false)
            .unwrap()
            .to_f64_vec()
            .unwrap()
    };
    let running = params["layers.0.bn.running_mean"].to_f64_vec().unwrap();
    for (r, m) in running.iter().zip(&linear_out_mean) {
        assert!(
            (r - 0.1 * m).abs() < 1e-4,
            "running mean {r}, batch mean {m}"
        );
    }
    // Evaluation mode uses the running statistics, so the output differs and stats stay.
    net.set_training(false);
    let eval_out = net.forward(&x).unwrap();
    let diff = train_out
        .binary(&eval_out, sslhost::tensor::BinaryOp::Sub)
        .unwrap()
        .norm()
        .unwrap()
        .item()
        .unwrap();
    assert!(diff > 1.0, "eval output should differ, diff {diff}");
    let after: std::collections::HashMap<_, _> = net.parameters().into_iter().collect();
    assert_eq!(
        after["layers.0.bn.running_mean"].to_f64_vec().unwrap(),
        running,
        "evaluation must not update running statistics"
    );
}

#[test]
fn an_evaluation_copy_builds_no_graph_and_uses_running_statistics() {
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(4);
    let net = SharedNet::mlp(&MlpConfig::new(vec![3, 8, 2]), &mut rng, &device).unwrap();
    let x = rng.randn(&[16, 3], &device).unwrap();
    net.forward(&x).unwrap(); // one training-mode step of running statistics
    let copy = net.evaluation_copy();
    let out = copy.forward(&x.without_autodiff()).unwrap();
    assert!(!out.float4("test").unwrap().is_tracked());
    assert!(!out.float4("test").unwrap().is_autodiff());
    assert!(net.is_training(), "the original keeps its mode");
    net.set_training(false);
    let want = net.forward(&x).unwrap().to_f64_vec().unwrap();
    let got = out.to_f64_vec().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

/// [`model_common::resnet_step`] on the CPU (burn-flex).
fn resnet_step(precision: Precision) -> (DType, Vec<f32>, Vec<f32>) {
    model_common::resnet_step(&sslhost::device::cpu(), precision, model_common::PLAIN)
}

/// [`model_common::resnet_step`] on the CPU with half activations and batch norm `norm`.
fn resnet_step_half(precision: Precision, norm: GpuKernelSet) -> (DType, Vec<f32>, Vec<f32>) {
    model_common::resnet_step(&sslhost::device::cpu(), precision, model_common::half(norm))
}

#[test]
fn bf16_precision_multiplies_in_bf16_and_returns_f32() {
    let (dtype32, y32, grad32) = resnet_step(Precision::F32);
    let (dtype16, y16, grad16) = resnet_step(Precision::Bf16);
    // Outputs and gradients come back in f32 whatever the products ran in.
    assert_eq!(dtype32, DType::F32);
    assert_eq!(dtype16, DType::F32);
    for (a, b) in [(&y32, &y16), (&grad32, &grad16)] {
        let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let norm: f32 = a.iter().map(|x| x * x).sum();
        let rel = (diff / norm).sqrt();
        // bf16 keeps 8 bits of mantissa: about 1e-2 apart, not f32's 1e-6. (Gradients that
        // pass back through batch norm drift further: about 3% a layer, as under
        // torch.autocast, so the test reads the output and the head.)
        assert!(rel < 3e-2, "bf16 is {rel} off f32");
        assert!(
            rel > 1e-4,
            "bf16 matched f32 to {rel}: no product ran in bf16"
        );
    }
}

#[test]
fn half_activations_stay_bf16_inside_the_resnet_and_leave_in_f32() {
    let (_, y32, grad32) = resnet_step(Precision::F32);
    let (_, y_products, grad_products) = resnet_step(Precision::Bf16);
    for norm in model_common::BATCH_NORMS {
        let (dtype, y_half, grad_half) = resnet_step_half(Precision::Bf16, norm);
        assert_eq!(dtype, DType::F32, "the ResNet's features leave in f32");
        for (full, products, half) in [
            (&y32, &y_products, &y_half),
            (&grad32, &grad_products, &grad_half),
        ] {
            let rel = model_common::rel_distance(full, half);
            assert!(rel < 5e-2, "bf16 activations ({norm:?}) are {rel} off f32");
            // Stored activations are rounded too: not the products-only result.
            let moved = model_common::rel_distance(products, half);
            assert!(
                moved > 1e-5,
                "half activations matched bf16 products to {moved}"
            );
        }
    }
}

#[test]
fn under_half_activations_a_conv_hands_on_bf16_and_batch_norm_keeps_its_type() {
    use sslhost::models::layers::{BatchNormConfig, Conv2dConfig};
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(3);
    let conv = Conv2dConfig::new(3, 4, 3).init(&mut rng, &device);
    let mut bn = BatchNormConfig::new(4).init(&device);
    let x = Tensor::<4>::from_data(
        TensorData::new(rng.normal_vec(2 * 3 * 6 * 6, 1.0), [2, 3, 6, 6]),
        &device,
    );
    sslhost::kernels::install(KernelPolicy {
        precision: Precision::Bf16,
        half_activations: true,
        ..KernelPolicy::default()
    });
    let y = conv.forward(x.clone());
    let z = bn.forward_relu(y.clone());
    assert_eq!(y.dtype(), DType::BF16);
    assert_eq!(z.dtype(), DType::BF16);
    // The statistics are f32, and equal those of the f32 layer on the same bf16 values.
    assert_eq!(bn.running_mean.val().dtype(), DType::F32);
    let mut bn32 = BatchNormConfig::new(4).init(&device);
    let z32 = bn32.forward_relu(y.cast(burn::tensor::FloatDType::F32));
    sslhost::kernels::install(KernelPolicy::default());
    let read = model_common::values;
    let (m, m32) = (read(bn.running_mean.val()), read(bn32.running_mean.val()));
    assert!(
        m.iter().zip(&m32).all(|(a, b)| (a - b).abs() < 1e-6),
        "{m:?} vs {m32:?}"
    );
    let (z, z32) = (
        read(z.cast(burn::tensor::FloatDType::F32).reshape([-1])),
        read(z32.reshape([-1])),
    );
    // bf16 output: rounded to 8 bits of mantissa, no further.
    assert!(
        z.iter()
            .zip(&z32)
            .all(|(a, b)| (a - b).abs() <= b.abs() / 128.0 + 1e-6)
    );
    assert!(
        z.iter().zip(&z32).any(|(a, b)| a != b),
        "the output was not rounded to bf16"
    );
}

/// The row-wise batch norm (the GPU's, with its written-out backward) against burn's op, on
/// burn-flex: output, statistics and all three gradients. (tests/gpu_path.rs checks it in
/// cubecl kernels.)
#[test]
fn rows_batch_norm_matches_burns_op() {
    for channels_last in [false, true] {
        let device = burn::tensor::Device::flex();
        let f32 = burn::tensor::FloatDType::F32;
        let (dtype, dx_dtype, distances) =
            model_common::rows_against_burn(&device, f32, channels_last);
        assert_eq!((dtype, dx_dtype), (DType::F32, DType::F32));
        for (name, rel) in distances {
            assert!(
                rel < 1e-5,
                "{name} (channels last {channels_last}): rows are {rel} off burn's op"
            );
        }
    }
}

/// On a bf16 input the row-wise batch norm computes in f32 and hands on bf16: output and
/// input gradient in bf16, within its rounding of burn's op on the same values in f32.
#[test]
fn rows_batch_norm_keeps_a_bf16_input_bf16() {
    let device = burn::tensor::Device::flex();
    for channels_last in [false, true] {
        let bf16 = burn::tensor::FloatDType::BF16;
        let (dtype, dx_dtype, distances) =
            model_common::rows_against_burn(&device, bf16, channels_last);
        assert_eq!((dtype, dx_dtype), (DType::BF16, DType::BF16));
        for (name, rel) in distances {
            // bf16 keeps 8 bits of mantissa (2^-8 = 0.4%); the output and dx are rounded once.
            assert!(
                rel < 1e-2,
                "{name}: rows on bf16 are {rel} off burn's op in f32"
            );
        }
    }
}
