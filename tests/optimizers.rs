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
    net.map(None, &mut |name, _, _| {
        let (v, s): (Vec<f32>, &[usize]) = match name {
            "weight" => (vec![0.5, -1.0], &[1, 2]),
            "bias" => (vec![0.25], &[1]),
            other => panic!("unexpected parameter {other}"),
        };
        Some(DynTensor::from_vec(v, s, &device).unwrap())
    });
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

#[test]
fn adamw_two_steps() {
    let net = layer();
    let rule = Rule::AdamW(AdamWConfig {
        weight_decay: 0.1,
        ..Default::default()
    });
    let mut opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
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
