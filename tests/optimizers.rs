//! One and two steps of SGD-momentum, LARS and AdamW on a linear layer, against updates
//! computed by hand.
//!
//! The layer is `y = x Wᵀ + b` with `W0 = [[0.5, -1.0]]`, `b0 = [0.25]`, one input
//! `x = [1, 2]` and `loss = sum(y)`. The gradient is constant: `dL/dW = x = [1, 2]`,
//! `dL/db = 1`, so every expected value below follows from the update rule alone.

use sslhost::models::SharedNet;
use sslhost::models::layers::LinearConfig;
use sslhost::optim::{AdamWConfig, LarsConfig, Optimizer, Rule, SgdConfig};
use sslhost::tensor::{DynTensor, HostRng};

fn layer() -> SharedNet {
    let device = sslhost::device::cpu();
    let net = SharedNet::linear(&LinearConfig::new(2, 1), &mut HostRng::new(0), &device).unwrap();
    let values = [
        (
            "weight",
            DynTensor::from_vec(vec![0.5, -1.0], &[1, 2], &device),
        ),
        ("bias", DynTensor::from_vec(vec![0.25], &[1], &device)),
    ];
    net.load(
        &values
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.unwrap()))
            .collect(),
    )
    .unwrap();
    net
}

fn step(opt: &mut Optimizer, net: &SharedNet, lr: f64) {
    let x = DynTensor::from_vec(vec![1.0, 2.0], &[1, 2], &sslhost::device::cpu()).unwrap();
    let loss = net.forward(&x).unwrap().sum().unwrap();
    opt.step(&loss, lr).unwrap();
}

fn params(net: &SharedNet) -> (Vec<f64>, f64) {
    let p: std::collections::HashMap<_, _> = net.parameters().into_iter().collect();
    (
        p["weight"].to_f64_vec().unwrap(),
        p["bias"].to_f64_vec().unwrap()[0],
    )
}

fn close(got: &[f64], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
    }
}

#[test]
fn sgd_momentum_with_weight_decay() {
    let net = layer();
    let rule = Rule::Sgd(SgdConfig {
        momentum: 0.9,
        weight_decay: 0.01,
        ..Default::default()
    });
    let mut opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
    // Step 1: d = g + 0.01·W0 = [1.005, 1.99]; buf = d; W1 = W0 − 0.1·d = [0.3995, −1.199].
    //         d_b = 1 + 0.01·0.25 = 1.0025; b1 = 0.25 − 0.10025 = 0.14975.
    step(&mut opt, &net, 0.1);
    let (w, b) = params(&net);
    close(&w, &[0.3995, -1.199]);
    close(&[b], &[0.14975]);
    // Step 2: d = g + 0.01·W1 = [1.003995, 1.98801]; buf = 0.9·[1.005, 1.99] + d
    //         = [1.908495, 3.77901]; W2 = W1 − 0.1·buf = [0.2086505, −1.576901].
    //         d_b = 1.0014975; buf_b = 0.9·1.0025 + 1.0014975 = 1.9037475;
    //         b2 = 0.14975 − 0.19037475 = −0.04062475.
    step(&mut opt, &net, 0.1);
    let (w, b) = params(&net);
    close(&w, &[0.2086505, -1.576901]);
    close(&[b], &[-0.04062475]);
}

#[test]
fn sgd_nesterov() {
    let net = layer();
    let rule = Rule::Sgd(SgdConfig {
        momentum: 0.5,
        nesterov: true,
        ..Default::default()
    });
    let mut opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
    // Step 1: buf = g; d = g + 0.5·buf = 1.5·g; W1 = W0 − 0.1·1.5·[1, 2] = [0.35, −1.3].
    step(&mut opt, &net, 0.1);
    close(&params(&net).0, &[0.35, -1.3]);
    // Step 2: buf = 0.5·g + g = 1.5·g; d = g + 0.75·g = 1.75·g; W2 = W1 − 0.175·[1, 2].
    step(&mut opt, &net, 0.1);
    close(&params(&net).0, &[0.175, -1.65]);
}

#[test]
fn lars_adapts_weights_and_excludes_biases() {
    let net = layer();
    let rule = Rule::Lars(LarsConfig {
        momentum: 0.9,
        weight_decay: 0.01,
        eta: 0.001,
        exclude_bias_and_norm: true,
    });
    let mut opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
    // W (rank 2, adapted): d = g + 0.01·W0 = [1.005, 1.99]; ‖W0‖ = √1.25 = 1.1180340;
    // ‖d‖ = √4.970125 = 2.2293777; trust = 0.001·1.1180340/2.2293777 = 5.0150784e-4;
    // W1 = W0 − 0.1·trust·d = [0.5 − 5.0401538e-5, −1 − 9.9800060e-5].
    // b (rank 1, excluded): no decay, no trust ratio: b1 = 0.25 − 0.1·1 = 0.15.
    step(&mut opt, &net, 0.1);
    let (w, b) = params(&net);
    close(&w, &[0.5 - 5.0401538e-5, -1.0 - 9.9800060e-5]);
    close(&[b], &[0.15]);
    // Step 2 for b: buf = 0.9·1 + 1 = 1.9; b2 = 0.15 − 0.19 = −0.04.
    step(&mut opt, &net, 0.1);
    close(&[params(&net).1], &[-0.04]);
}

#[test]
fn lars_without_exclusion_adapts_biases_too() {
    let net = layer();
    let rule = Rule::Lars(LarsConfig {
        momentum: 0.9,
        weight_decay: 0.01,
        eta: 0.001,
        exclude_bias_and_norm: false,
    });
    let mut opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
    // b: d = 1 + 0.01·0.25 = 1.0025; trust = 0.001·0.25/1.0025 = 2.4937656e-4;
    // b1 = 0.25 − 0.1·1.0025·2.4937656e-4 = 0.25 − 2.5e-5.
    step(&mut opt, &net, 0.1);
    close(&[params(&net).1], &[0.25 - 2.5e-5]);
}

/// The layer and AdamW over it with a weight decay of 0.1.
fn adamw_layer() -> (SharedNet, Optimizer) {
    let net = layer();
    let rule = Rule::AdamW(AdamWConfig {
        weight_decay: 0.1,
        ..Default::default()
    });
    let opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
    (net, opt)
}

#[test]
fn adamw_two_steps() {
    let (net, mut opt) = adamw_layer();
    // Step 1: W ← W0·(1 − 0.1·0.1) = [0.495, −0.99]; m = 0.1·g, v = 0.001·g²;
    // m̂ = g, v̂ = g²; W1 = W − 0.1·g/(|g| + 1e-8) = [0.395, −1.09] (to 1e-8).
    // b: 0.25·0.99 − 0.1 = 0.1475.
    step(&mut opt, &net, 0.1);
    let (w, b) = params(&net);
    close(&w, &[0.395, -1.09]);
    close(&[b], &[0.1475]);
    // Step 2: decay by 0.99 again, m = 0.19·g, v = 0.001999·g², m̂ = g, v̂ = g²:
    // W2 = [0.395·0.99 − 0.1, −1.09·0.99 − 0.1] = [0.29105, −1.1791]; b2 = 0.1475·0.99 − 0.1.
    step(&mut opt, &net, 0.1);
    let (w, b) = params(&net);
    close(&w, &[0.29105, -1.1791]);
    close(&[b], &[0.046025]);
}

#[test]
fn adamw_on_the_gpu_paths_rules_takes_its_bias_corrections_from_the_device_step_by_step() {
    // The rules as tensor ops (what a GPU runs), with the step's values staged before the
    // step, and written in place as when a step is recorded: the same two steps as above.
    use sslhost::kernels::{CpuKernelSet, KernelPolicy, install, installed, restore};
    let before = installed();
    for capture in [false, true] {
        install(
            KernelPolicy {
                cpu: CpuKernelSet::Burn,
                ..KernelPolicy::default()
            }
            .with_capture(capture),
        );
        let (net, mut opt) = adamw_layer();
        step(&mut opt, &net, 0.1);
        close(&params(&net).0, &[0.395, -1.09]);
        let x = DynTensor::from_vec(vec![1.0, 2.0], &[1, 2], &sslhost::device::cpu()).unwrap();
        let loss = net.forward(&x).unwrap().sum().unwrap();
        opt.stage(0.1).unwrap();
        opt.step_staged(&loss).unwrap();
        let (w, b) = params(&net);
        close(&w, &[0.29105, -1.1791]);
        close(&[b], &[0.046025]);
        // A step with nothing staged is refused, and changes nothing.
        let loss = net.forward(&x).unwrap().sum().unwrap();
        let err = opt.step_staged(&loss).unwrap_err().to_string();
        assert!(err.contains("no learning rate was staged"), "{err}");
        assert_eq!(opt.steps(), 2);
        let err = opt.stage(-1.0).unwrap_err().to_string();
        assert!(err.contains("learning rate"), "{err}");
    }
    restore(before);
}

#[test]
fn a_non_finite_loss_changes_nothing() {
    let net = layer();
    let mut opt = Optimizer::new(Rule::Sgd(SgdConfig::default()), vec![net.clone()]).unwrap();
    let x = DynTensor::from_vec(vec![1.0, 2.0], &[1, 2], &sslhost::device::cpu()).unwrap();
    let loss = net
        .forward(&x)
        .unwrap()
        .sum()
        .unwrap()
        .binary_scalar(f64::NAN, sslhost::tensor::BinaryOp::Mul, false)
        .unwrap();
    let err = opt.step(&loss, 0.1).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
    close(&params(&net).0, &[0.5, -1.0]);
    assert_eq!(opt.steps(), 0);
}

#[test]
fn lars_norms_each_parameter_across_its_rows_of_the_vector() {
    // A weight of 2 x 1500 values spans three rows of the optimiser's [chunks, 1024] view;
    // its trust ratio must come from its own norm, summed over those rows, and the bias
    // (rank 1, excluded) must get neither decay nor a ratio.
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(7);
    let net = SharedNet::linear(&LinearConfig::new(1500, 2), &mut rng, &device).unwrap();
    let before: std::collections::HashMap<_, _> = net
        .parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_f64_vec().unwrap()))
        .collect();
    let (eta, wd, lr) = (0.02, 0.01, 0.5);
    let rule = Rule::Lars(LarsConfig {
        momentum: 0.9,
        weight_decay: wd,
        eta,
        exclude_bias_and_norm: true,
    });
    let mut opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
    let xs = rng.normal_vec(1500, 1.0);
    let x = DynTensor::from_vec(xs.clone(), &[1, 1500], &device).unwrap();
    opt.step(&net.forward(&x).unwrap().sum().unwrap(), lr)
        .unwrap();
    // loss = Σ y: dL/dW[o, i] = x[i], dL/db = 1.
    let w0 = &before["weight"];
    let d: Vec<f64> = (0..3000)
        .map(|k| f64::from(xs[k % 1500]) + wd * w0[k])
        .collect();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let trust = eta * norm(w0) / norm(&d);
    let want: Vec<f64> = (0..3000).map(|k| w0[k] - lr * trust * d[k]).collect();
    let after: std::collections::HashMap<_, _> = net.parameters().into_iter().collect();
    let got = after["weight"].to_f64_vec().unwrap();
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5 * scale, "weight: got {g}, want {w}");
    }
    let b0 = &before["bias"];
    close(
        &after["bias"].to_f64_vec().unwrap(),
        &[b0[0] - lr, b0[1] - lr],
    );
}

#[test]
fn a_network_restored_from_its_parameters_and_state_continues_bit_for_bit() {
    // After an update a network's parameters are views of one vector, and the optimiser keeps
    // its state as vectors. A fresh network loaded with the same values and a fresh optimiser
    // given the same per-parameter state must take the next step to the same bits (batch norm
    // included, whose scale the CPU kernels read back in the backward).
    use sslhost::models::ResNetConfig;
    let device = sslhost::device::cpu();
    let build = || {
        let mut rng = HostRng::new(1);
        let config = ResNetConfig {
            cifar_stem: true,
            widths: [4, 4, 8, 8],
            ..ResNetConfig::new(18)
        };
        let r = SharedNet::resnet(&config, &mut rng, &device).unwrap();
        let l = SharedNet::linear(&LinearConfig::new(8, 4), &mut rng, &device).unwrap();
        SharedNet::sequential(vec![r, l]).unwrap()
    };
    let rule = Rule::Sgd(SgdConfig {
        momentum: 0.9,
        weight_decay: 1e-4,
        ..Default::default()
    });
    let x = DynTensor::from_vec(
        HostRng::new(9).normal_vec(4 * 3 * 8 * 8, 1.0),
        &[4, 3, 8, 8],
        &device,
    )
    .unwrap();
    let step = |opt: &mut Optimizer, net: &SharedNet| {
        let loss = net.forward(&x).unwrap().pow(2.0).unwrap().mean().unwrap();
        opt.step(&loss, 0.05).unwrap();
    };
    let net = build();
    let mut opt = Optimizer::new(rule.clone(), vec![net.clone()]).unwrap();
    step(&mut opt, &net);
    step(&mut opt, &net);
    // Copies of every value, as a checkpoint would hold them.
    let copy = |t: &DynTensor| {
        let values = t
            .to_f64_vec()
            .unwrap()
            .into_iter()
            .map(|v| v as f32)
            .collect();
        DynTensor::from_vec(values, &t.shape(), &device).unwrap()
    };
    let values = net
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), copy(t)))
        .collect();
    let (state, steps) = opt.state();
    let state = state
        .iter()
        .map(|(k, s)| {
            let mut s = s.clone();
            s.first = s
                .first
                .map(|t| burn::tensor::Tensor::from_data(t.into_data(), &device));
            (k.clone(), s)
        })
        .collect();
    let restored = build();
    restored.load(&values).unwrap();
    let mut opt2 = Optimizer::new(rule, vec![restored.clone()]).unwrap();
    opt2.set_state(state, steps);
    step(&mut opt, &net);
    step(&mut opt2, &restored);
    for ((name, a), (_, b)) in net.parameters().into_iter().zip(restored.parameters()) {
        assert_eq!(a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap(), "{name}");
    }
}

#[test]
fn the_cpu_update_kernels_match_the_updates_written_as_tensor_ops() {
    // On burn-flex an update runs as one-pass kernels; with the CPU kernels switched off
    // (`SSLHOST_CPU_KERNELS=burn`) as the tensor ops a GPU runs. Given the same vectors (three
    // parameters over five rows, a rank-1 one excluded) both must give the same values.
    use burn::tensor::{Tensor, TensorData};
    use sslhost::kernels::{CpuKernelSet, KernelPolicy, install};
    use sslhost::models::flat::{CHUNK, FlatEntry, FlatLayout};
    use sslhost::optim::FlatUpdate;
    let device = burn::tensor::Device::flex();
    let entry = |name: &str, shape: Vec<usize>, offset| FlatEntry {
        name: name.into(),
        shape,
        offset,
    };
    let layout = FlatLayout {
        entries: vec![
            entry("a", vec![3, 700], 0),
            entry("b", vec![10], 3 * CHUNK),
            entry("c", vec![1500], 4 * CHUNK),
        ],
        chunks: 6,
        buffers: false,
    };
    let len = layout.len();
    let mut rng = HostRng::new(11);
    // Values in the parameters' places, zeros in the gaps, as the optimiser lays them out.
    let mut vector = |scale: f64, positive: bool| {
        let mut v = vec![0.0f32; len];
        for e in &layout.entries {
            for (k, x) in rng.normal_vec(e.len(), scale).into_iter().enumerate() {
                v[e.offset + k] = if positive { x.abs() } else { x };
            }
        }
        Tensor::<2>::from_data(TensorData::new(v, [layout.chunks, CHUNK]), &device)
    };
    let (p, g, first, second) = (
        vector(1.0, false),
        vector(0.1, false),
        vector(0.1, false),
        vector(0.01, true),
    );
    let excluded = |e: &FlatEntry| e.is_vector();
    let owners = layout.row_owners(&device);
    let decay = layout.row_column(|e| !excluded(e), 1.0, 0.0, &device);
    let adapted = layout.per_entry(|e| !excluded(e), 1.0, 0.0, &device);
    let rules = [
        Rule::Sgd(SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            nesterov: false,
            weight_decay: 1e-3,
            exclude_bias_and_norm: true,
        }),
        Rule::Sgd(SgdConfig {
            momentum: 0.5,
            nesterov: true,
            ..Default::default()
        }),
        Rule::Lars(LarsConfig {
            momentum: 0.9,
            weight_decay: 1e-3,
            eta: 0.02,
            exclude_bias_and_norm: true,
        }),
        Rule::AdamW(AdamWConfig {
            weight_decay: 0.05,
            exclude_bias_and_norm: true,
            ..Default::default()
        }),
    ];
    let values = |t: Option<Tensor<2>>| {
        t.map(|t| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        })
    };
    for rule in &rules {
        for with_state in [false, true] {
            // AdamW's bias corrections as device values (the default betas), or from `steps`.
            let steps = if with_state { 3 } else { 0 };
            let corrections = |on_device: bool| {
                let t = steps + 1;
                let c = |beta: f64| {
                    let v = 1.0 - beta.powi(t);
                    Tensor::<2>::from_data(TensorData::new(vec![v as f32], [1, 1]), &device)
                };
                on_device.then(|| (c(0.9), c(0.999)))
            };
            let run = |cpu: CpuKernelSet, device_corrections: bool| {
                install(KernelPolicy {
                    cpu,
                    ..KernelPolicy::default()
                });
                let lr = 0.05;
                let out = rule.apply(FlatUpdate {
                    param: p.clone(),
                    grad: g.clone(),
                    lr: Tensor::from_data(TensorData::new(vec![lr as f32], [1, 1]), &device),
                    lr_value: lr,
                    decay: &decay,
                    adapted: &adapted,
                    layout: &layout,
                    owners: &owners,
                    first: with_state.then(|| first.clone()),
                    second: with_state.then(|| second.clone()),
                    steps: steps as u64,
                    corrections: corrections(device_corrections),
                });
                install(KernelPolicy::default());
                [
                    values(Some(out.param)),
                    values(out.first),
                    values(out.second),
                ]
            };
            let fused = run(CpuKernelSet::All, false);
            let (ops, ops_on_device) = (
                run(CpuKernelSet::Burn, false),
                run(CpuKernelSet::Burn, true),
            );
            let pairs = fused
                .iter()
                .zip(&ops)
                .chain(fused.iter().zip(&ops_on_device));
            for (what, (a, b)) in ["param", "first", "second"].iter().cycle().zip(pairs) {
                assert_eq!(a.is_some(), b.is_some(), "{} {what}", rule.name());
                let (Some(a), Some(b)) = (a, b) else { continue };
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * scale,
                        "{} {what}[{i}] (state {with_state}): {u} vs {v}",
                        rule.name()
                    );
                }
            }
        }
    }
}
