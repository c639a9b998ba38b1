//! The CPU convolution (im2col + GEMM with its own backward) against burn's: same outputs and
//! the same gradients through autodiff, for the kernel shapes the ResNets use.

use burn::tensor::activation::relu;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use sslhost::kernels::{NormEpilogue, batch_norm_train, conv2d};
use sslhost::tensor::HostRng;

fn tensor(rng: &mut HostRng, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let values = rng.normal_vec(shape.iter().product(), 1.0);
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "{what}[{i}]: ours {a}, burn {b}"
        );
    }
}

/// (batch, c_in, side, c_out, kernel, stride, padding): a stem, 3x3 blocks (small planes and
/// 16x16, which read their taps differently; Winograd's: 64 channels at 16x16 for all three
/// passes, at 8x8 and an odd 9x9 side for the forward and input gradient, 256 at 4x4; the
/// direct kernels': up to 32 channels, and a 3-channel stem into 64, at 16x16 and 32x32; the
/// channels-in-lanes direct kernel's: 64 channels at 8x8 and 256 at 4x4, 32 at 4x4 in its
/// narrow tile, and the strided 3x3s that open a stage, 32 → 64 (its weight gradient too) and
/// 64 → 128, their input gradients by im2col alone), strided 3x3, 1x1 shortcuts, and late 2x2
/// stages where a group holds many images.
const CASES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (4, 1, 28, 8, 3, 2, 1),
    (3, 3, 16, 8, 7, 2, 3),
    (5, 8, 9, 12, 3, 1, 1),
    (2, 4, 16, 8, 3, 1, 1),
    (6, 8, 8, 16, 3, 2, 1),
    (6, 8, 8, 16, 1, 2, 0),
    (33, 16, 2, 16, 3, 1, 1),
    (2, 4, 5, 4, 1, 1, 0),
    (2, 64, 16, 64, 3, 1, 1),
    (3, 64, 8, 64, 3, 1, 1),
    (2, 64, 9, 72, 3, 1, 1),
    (2, 256, 4, 256, 3, 1, 1),
    (2, 16, 32, 16, 3, 1, 1),
    (3, 3, 32, 64, 3, 1, 1),
    (3, 32, 4, 32, 3, 1, 1),
    (2, 32, 14, 64, 3, 2, 1),
    (2, 64, 8, 128, 3, 2, 1),
];

#[test]
fn forward_and_gradients_match_burn() {
    let device = Device::flex().autodiff();
    let mut rng = HostRng::new(3);
    for &(batch, c_in, side, c_out, k, stride, pad) in CASES {
        let case = format!("{batch}x{c_in}x{side} k{k} s{stride} p{pad} -> {c_out}");
        let x = tensor(&mut rng, [batch, c_in, side, side], &device);
        let w = tensor(&mut rng, [c_out, c_in, k, k], &device);
        let options = ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);

        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let w = w.clone().require_grad();
            let y = if ours {
                conv2d(x.clone(), w.clone(), stride, pad)
            } else {
                burn_conv2d(x.clone(), w.clone(), None, options.clone())
            };
            // A fixed, uneven weighting of the outputs so every gradient entry differs.
            let weights = y.clone().detach().cos();
            let grads = (y.clone() * weights).sum().backward();
            let dx = x.grad(&grads).expect("input gradient");
            let dw = w.grad(&grads).expect("weight gradient");
            (values(y.inner()), dx.into_data(), dw.into_data())
        };
        let (y, dx, dw) = run(true);
        let (y_ref, dx_ref, dw_ref) = run(false);
        assert_close(&format!("{case} output"), &y, &y_ref);
        assert_close(
            &format!("{case} input gradient"),
            &dx.try_to_vec::<f32>().unwrap(),
            &dx_ref.try_to_vec::<f32>().unwrap(),
        );
        assert_close(
            &format!("{case} weight gradient"),
            &dw.try_to_vec::<f32>().unwrap(),
            &dw_ref.try_to_vec::<f32>().unwrap(),
        );
    }
}

#[test]
fn inference_without_autodiff_matches_burn() {
    let device = Device::flex();
    let mut rng = HostRng::new(5);
    let x = tensor(&mut rng, [3, 4, 10, 10], &device);
    let w = tensor(&mut rng, [6, 4, 3, 3], &device);
    let options = ConvOptions::new([2; 2], [1; 2], [1, 1], 1);
    let ours = values(conv2d(x.clone(), w.clone(), 2, 1));
    let theirs = values(burn_conv2d(x, w, None, options));
    assert_close("inference", &ours, &theirs);
}

/// A frozen weight (a momentum encoder) and an input that needs its gradient.
#[test]
fn only_the_tensors_that_require_grad_get_one() {
    let device = Device::flex().autodiff();
    let mut rng = HostRng::new(9);
    let x = tensor(&mut rng, [2, 3, 6, 6], &device).require_grad();
    let w = tensor(&mut rng, [4, 3, 3, 3], &device);
    let grads = conv2d(x.clone(), w.clone(), 1, 1).sum().backward();
    assert!(x.grad(&grads).is_some());
    assert!(w.grad(&grads).is_none());
}

/// Batch norm in training mode: output, statistics and all three gradients, for image
/// activations `[N, C, H, W]` and projector activations `[N, C]`.
#[test]
fn batch_norm_matches_burn() {
    let device = Device::flex().autodiff();
    let mut rng = HostRng::new(11);
    let image = tensor(&mut rng, [6, 5, 7, 7], &device)
        .mul_scalar(3.0)
        .add_scalar(1.0);
    let vectors: Tensor<2> = tensor(&mut rng, [16, 12, 1, 1], &device).flatten(1, 3);
    for epilogue in [Epilogue::None, Epilogue::Relu, Epilogue::AddRelu] {
        check_batch_norm("[N, C, H, W]", image.clone(), epilogue, &mut rng);
        check_batch_norm("[N, C]", vectors.clone(), epilogue, &mut rng);
    }
}

/// What follows the normalisation: [`NormEpilogue`] without its tensor.
#[derive(Debug, Clone, Copy)]
enum Epilogue {
    None,
    Relu,
    AddRelu,
}

fn check_batch_norm<const D: usize>(
    what: &str,
    x: Tensor<D>,
    epilogue: Epilogue,
    rng: &mut HostRng,
) {
    let what = format!("{what} {epilogue:?}");
    let device = x.device();
    let channels = x.dims()[1];
    let residual: Tensor<D> = Tensor::from_data(
        TensorData::new(rng.normal_vec(x.dims().iter().product(), 1.0), x.dims()),
        &device,
    );
    let gamma: Tensor<1> = Tensor::from_data(
        TensorData::new(rng.normal_vec(channels, 1.0), [channels]),
        &device,
    );
    let beta: Tensor<1> = Tensor::from_data(
        TensorData::new(rng.normal_vec(channels, 1.0), [channels]),
        &device,
    );
    let weights: Tensor<D> = Tensor::from_data(
        TensorData::new(rng.normal_vec(x.dims().iter().product(), 1.0), x.dims()),
        &device,
    );
    let run = |ours: bool| {
        let (x, gamma, beta, residual) = (
            x.clone().require_grad(),
            gamma.clone().require_grad(),
            beta.clone().require_grad(),
            residual.clone().require_grad(),
        );
        let out = if ours {
            let then = match epilogue {
                Epilogue::None => NormEpilogue::None,
                Epilogue::Relu => NormEpilogue::Relu,
                Epilogue::AddRelu => NormEpilogue::AddRelu(residual.clone()),
            };
            batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, then)
        } else {
            let mut out = burn::tensor::module::batch_norm_train(
                x.clone(),
                gamma.clone(),
                beta.clone(),
                1e-5,
            );
            out.output = match epilogue {
                Epilogue::None => out.output,
                Epilogue::Relu => relu(out.output),
                Epilogue::AddRelu => relu(out.output + residual.clone()),
            };
            out
        };
        // Fixed weights, so the loss's gradient is not zero where a ReLU zeroed the output.
        let weights = weights.clone();
        let grads = (out.output.clone() * weights).sum().backward();
        let flat = |t: Tensor<D>| t.into_data().try_to_vec::<f32>().unwrap();
        let flat1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        [
            flat(out.output.inner()),
            flat1(out.mean.inner()),
            flat1(out.variance.inner()),
            x.grad(&grads)
                .expect("input gradient")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            gamma
                .grad(&grads)
                .expect("gamma gradient")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            beta.grad(&grads)
                .expect("beta gradient")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            match epilogue {
                Epilogue::AddRelu => residual
                    .grad(&grads)
                    .expect("residual gradient")
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
                _ => Vec::new(),
            },
        ]
    };
    let (ours, theirs) = (run(true), run(false));
    for (name, (a, b)) in [
        "output",
        "mean",
        "variance",
        "input gradient",
        "gamma gradient",
        "beta gradient",
        "residual gradient",
    ]
    .iter()
    .zip(ours.iter().zip(&theirs))
    {
        assert_close(&format!("batch norm {what} {name}"), a, b);
    }
}

/// The linear layer's product against burn's `x.matmul(w.transpose())`: output and both
/// gradients, with the layer applied twice in one graph (two views) so the weight's two
/// gradients are added.
#[test]
fn linear_matches_burn() {
    let device = Device::flex().autodiff();
    let mut rng = HostRng::new(5);
    // The second is large enough for the GEMMs that split over threads.
    for (rows, d_in, d_out) in [(3, 4, 5), (64, 400, 300)] {
        let matrix = |rng: &mut HostRng, r: usize, c: usize| -> Tensor<2> {
            Tensor::from_data(TensorData::new(rng.normal_vec(r * c, 1.0), [r, c]), &device)
        };
        let (a, b) = (matrix(&mut rng, rows, d_in), matrix(&mut rng, rows, d_in));
        let w = matrix(&mut rng, d_out, d_in);
        let weights = matrix(&mut rng, rows, d_out);
        let run = |ours: bool| {
            let (a, b, w) = (
                a.clone().require_grad(),
                b.clone().require_grad(),
                w.clone().require_grad(),
            );
            let apply = |x: Tensor<2>| {
                if ours {
                    sslhost::kernels::linear(x, w.clone())
                } else {
                    x.matmul(w.clone().transpose())
                }
            };
            let (ya, yb) = (apply(a.clone()), apply(b.clone()));
            let grads = ((ya.clone() + yb * 0.5) * weights.clone()).sum().backward();
            [
                values(ya.inner()),
                values(a.grad(&grads).expect("input gradient")),
                values(w.grad(&grads).expect("weight gradient")),
            ]
        };
        let (ours, theirs) = (run(true), run(false));
        for (name, (o, t)) in ["output", "input gradient", "weight gradient"]
            .iter()
            .zip(ours.iter().zip(&theirs))
        {
            assert_close(&format!("linear [{rows}, {d_in}] -> {d_out} {name}"), o, t);
        }
    }
}
