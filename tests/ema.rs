//! `update_momentum` is an exact EMA of every parameter and batch-norm buffer, and a
//! momentum copy owns its own statistics.

use std::collections::HashMap;

use sslhost::models::{MlpConfig, SharedNet};
use sslhost::optim::{Optimizer, Rule, SgdConfig};
use sslhost::tensor::{DynTensor, HostRng};

fn values(net: &SharedNet) -> HashMap<String, Vec<f64>> {
    net.parameters()
        .into_iter()
        .map(|(k, v)| (k, v.to_f64_vec().unwrap()))
        .collect()
}

#[test]
fn every_parameter_and_buffer_follows_the_ema_rule() {
    let device = sslhost::device::cpu();
    let mut rng = HostRng::new(3);
    let net_a = SharedNet::mlp(&MlpConfig::new(vec![4, 8, 3]), &mut rng, &device).unwrap();
    let net_b = SharedNet::mlp(
        &MlpConfig {
            last_batch_norm: true,
            ..MlpConfig::new(vec![3, 5, 2])
        },
        &mut rng,
        &device,
    )
    .unwrap();
    let online = SharedNet::sequential(vec![net_a, net_b]).unwrap();
    let target = online.momentum_copy();
    let before_any_training = values(&target);

    // Move the online weights and running statistics away from the target's.
    let mut opt = Optimizer::new(
        Rule::Sgd(SgdConfig {
            momentum: 0.9,
            ..Default::default()
        }),
        vec![online.clone()],
    )
    .unwrap();
    for _ in 0..3 {
        let x = rng.randn(&[16, 4], &device).unwrap();
        let loss = online
            .forward(&x)
            .unwrap()
            .pow(2.0)
            .unwrap()
            .mean()
            .unwrap();
        opt.step(&loss, 0.5).unwrap();
    }
    // The copy shares nothing: training the online net left the target as it was.
    assert_eq!(values(&target), before_any_training);

    let old = values(&target);
    let on = values(&online);
    let m = 0.9;
    SharedNet::update_momentum(&online, &target, m).unwrap();
    let new = values(&target);

    let buffers = new.keys().filter(|k| k.contains("running_")).count();
    assert_eq!(buffers, 2 * 3, "three batch norms, two buffers each");
    assert_eq!(new.len(), on.len());
    for (name, got) in &new {
        let (o, t) = (&on[name], &old[name]);
        // (A bias right before a batch norm gets a zero gradient, so it may not have moved.)
        if !name.ends_with("linear.bias") {
            assert!(
                o != t,
                "{name}: online and target should differ before the update"
            );
        }
        for i in 0..got.len() {
            let want = m * t[i] + (1.0 - m) * o[i];
            assert!(
                (got[i] - want).abs() < 1e-6,
                "{name}[{i}]: got {}, want {want}",
                got[i]
            );
        }
    }
}

#[test]
fn the_target_takes_no_gradients() {
    let device = sslhost::device::cpu();
    let net = SharedNet::mlp(
        &MlpConfig::new(vec![4, 8, 3]),
        &mut HostRng::new(1),
        &device,
    )
    .unwrap();
    let target = net.momentum_copy();
    let x = DynTensor::from_vec(vec![0.5; 8], &[2, 4], &device).unwrap();
    let out = target.forward(&x).unwrap().sum().unwrap();
    assert!(!out.float4("test").unwrap().is_tracked());
    let mut opt = Optimizer::new(Rule::Sgd(SgdConfig::default()), vec![target]).unwrap();
    let err = opt.step(&out, 0.1).unwrap_err().to_string();
    assert!(
        err.contains("does not depend on any trainable parameter"),
        "{err}"
    );
}
