//! The GPU kernels' extension (`sslhost::kernels::gpu_kernels`) on the CPU: its operations are the
//! reference bodies here, so what is checked is the autodiff wiring a GPU run takes (which
//! tensors are saved, which backward operation gets which gradient, the residual's gradient)
//! against burn's own autodiff, on every ResNet-18 layer shape. The same comparison runs in
//! cubecl's kernels in `tests/gpu_path.rs` and against cuDNN in `sslhost gpu-selftest`.

use burn::tensor::FloatDType;
use sslhost::kernels::gpu_kernels::selftest::{self, MEASURED, Tail};

#[test]
fn every_resnet18_layer_and_gradient_matches_burns_autodiff() {
    let device = sslhost::device::cpu();
    for layer in selftest::resnet18_cifar_layers(2) {
        let distances = selftest::compare(&device, FloatDType::F32, layer);
        let expected = if layer.tail == Tail::AddRelu { 8 } else { 7 };
        assert_eq!(
            distances.len(),
            expected,
            "{layer:?}: every gradient compared"
        );
        for (name, rel) in distances {
            assert!(rel < 1e-4, "{layer:?}: {name} is {rel} off burn's");
        }
    }
}

#[test]
fn half_activations_stay_close_to_burns_in_the_same_type() {
    let device = sslhost::device::cpu();
    let layers = selftest::resnet18_cifar_layers(2);
    // A block's 3x3 with its residual tail, and a strided opening with its shortcut.
    for layer in [layers[2], layers[3], layers[4]] {
        for (name, rel) in selftest::compare(&device, FloatDType::BF16, layer) {
            // Both sides round the same products to bf16 (8 bits of mantissa); batch norm is
            // f32 on both, from the same rounded input.
            assert!(rel < 2e-2, "{layer:?}: {name} in bf16 is {rel} off burn's");
        }
    }
}

#[test]
fn a_missing_gradient_is_a_failure_not_a_pass() {
    assert_eq!(selftest::rel_distance(&[1.0, 2.0], &[]), f32::INFINITY);
    assert!(selftest::rel_distance(&[1.0], &[f32::NAN]).is_nan());
    assert_eq!(selftest::rel_distance(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
    assert_eq!(MEASURED.len(), 8);
}
