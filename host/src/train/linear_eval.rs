//! Offline linear evaluation: a linear classifier trained on frozen features, computed once,
//! then its top-1 on the test split.
//!
//! The protocol: features standardised per dimension with the train split's mean and
//! standard deviation (a batch norm without affine, fitted once), a linear layer `[D, C]`
//! from zeros, softmax cross-entropy, SGD with momentum 0.9 (PyTorch's rule) over shuffled
//! mini-batches, the learning rate on a cosine from `lr` to 0 over all steps, L2 weight
//! decay on the weight. The gradient of softmax regression is closed-form, `Xᵀ(softmax(XW +
//! b) − Y) / B`, so no autodiff graph is built.

use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::tensor::HostRng;

/// The protocol's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinearEvalConfig {
    /// Passes over the train features.
    pub epochs: usize,
    /// Peak learning rate (cosine to 0).
    pub lr: f64,
    /// Features per step.
    pub batch_size: usize,
    /// L2 weight decay on the weight (not the bias).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
}

impl Default for LinearEvalConfig {
    /// 100 epochs, lr 0.1, batch 256, no weight decay, momentum 0.9 (solo-learn's linear
    /// protocol on CIFAR, here on features computed once).
    fn default() -> Self {
        LinearEvalConfig {
            epochs: 100,
            lr: 0.1,
            batch_size: 256,
            weight_decay: 0.0,
            momentum: 0.9,
        }
    }
}

/// What the classifier reached.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinearEvalResult {
    /// Top-1 accuracy on the test features.
    pub top1: f64,
    /// Top-1 accuracy on the train features (how well the features separate at all).
    pub train_top1: f64,
    /// Mean cross-entropy over the train features at the end.
    pub train_loss: f64,
}

/// Trains a linear classifier on `train` features `[N, D]` with labels `[N]` in `0..classes`
/// and tests it on `test`; the shuffles are drawn from `rng`.
pub fn linear_eval(
    train: (&Tensor<2>, &Tensor<1, Int>),
    test: (&Tensor<2>, &Tensor<1, Int>),
    classes: usize,
    config: &LinearEvalConfig,
    rng: &mut HostRng,
) -> Result<LinearEvalResult> {
    let [n, d] = train.0.dims();
    let [_, d_test] = test.0.dims();
    if d != d_test {
        return Err(Error::Shape(format!(
            "linear eval: train features have {d} dims, test features {d_test}"
        )));
    }
    if classes < 2 || n == 0 || config.epochs == 0 || config.batch_size == 0 {
        return Err(Error::Invalid(format!(
            "linear eval needs 2+ classes, train features, epochs and a batch size, got \
             {classes} classes, {n} features, {} epochs, batch {}",
            config.epochs, config.batch_size
        )));
    }
    let lr_ok = config.lr > 0.0 && config.lr.is_finite();
    if !lr_ok || !(0.0..1.0).contains(&config.momentum) {
        return Err(Error::Invalid(format!(
            "linear eval: lr must be finite and > 0 and momentum in [0, 1), got {} and {}",
            config.lr, config.momentum
        )));
    }
    let device = train.0.device();
    let mean = train.0.clone().mean_dim(0);
    let std = train
        .0
        .clone()
        .sub(mean.clone())
        .powf_scalar(2.0)
        .mean_dim(0)
        .add_scalar(1e-6)
        .sqrt();
    let standard = |x: &Tensor<2>| x.clone().sub(mean.clone()).div(std.clone());
    let (x_train, x_test) = (standard(train.0), standard(test.0));
    let labels = crate::tensor::int_values(train.1.clone())?;
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        return Err(Error::Invalid(format!(
            "linear eval: label {bad} outside 0..{classes}"
        )));
    }
    let mut onehot = vec![0f32; n * classes];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * classes + l as usize] = 1.0;
    }
    let y_train: Tensor<2> = Tensor::from_data(TensorData::new(onehot, [n, classes]), &device);

    let mut w: Tensor<2> = Tensor::zeros([d, classes], &device);
    let mut b: Tensor<2> = Tensor::zeros([1, classes], &device);
    let (mut vw, mut vb) = (w.zeros_like(), b.zeros_like());
    let steps_per_epoch = n.div_ceil(config.batch_size);
    let total = (config.epochs * steps_per_epoch) as f64;
    let mut step = 0usize;
    for _ in 0..config.epochs {
        let order = permutation(n, rng);
        for chunk in order.chunks(config.batch_size) {
            let idx: Tensor<1, Int> =
                Tensor::from_data(TensorData::new(chunk.to_vec(), [chunk.len()]), &device);
            let x = x_train.clone().select(0, idx.clone());
            let y = y_train.clone().select(0, idx);
            let p = softmax(x.clone().matmul(w.clone()).add(b.clone()), 1);
            let g = p.sub(y).div_scalar(chunk.len() as f64);
            let gw = x
                .transpose()
                .matmul(g.clone())
                .add(w.clone().mul_scalar(config.weight_decay));
            let gb = g.sum_dim(0);
            vw = vw.mul_scalar(config.momentum).add(gw);
            vb = vb.mul_scalar(config.momentum).add(gb);
            let lr = 0.5 * config.lr * (1.0 + (std::f64::consts::PI * step as f64 / total).cos());
            w = w.sub(vw.clone().mul_scalar(lr));
            b = b.sub(vb.clone().mul_scalar(lr));
            step += 1;
        }
    }
    let logits = |x: &Tensor<2>| x.clone().matmul(w.clone()).add(b.clone());
    let train_logits = logits(&x_train);
    let train_loss = {
        let log_p = burn::tensor::activation::log_softmax(train_logits.clone(), 1);
        let picked = log_p.mul(y_train).sum_dim(1).mean();
        -f64::from(crate::tensor::float_values(picked)?[0])
    };
    Ok(LinearEvalResult {
        top1: top1(logits(&x_test), test.1)?,
        train_top1: top1(train_logits, train.1)?,
        train_loss,
    })
}

/// A uniformly random order of `0..n` (Fisher-Yates on the host generator).
fn permutation(n: usize, rng: &mut HostRng) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = ((rng.uniform() * (i + 1) as f64) as usize).min(i);
        order.swap(i, j);
    }
    order
}

/// The share of rows whose largest logit is at their label.
fn top1(logits: Tensor<2>, labels: &Tensor<1, Int>) -> Result<f64> {
    let [n, _] = logits.dims();
    let predicted = logits.argmax(1).reshape([n]);
    let hits = predicted.equal(labels.clone()).int().sum();
    Ok(crate::tensor::int_values(hits)?[0] as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well separated classes in 2-D plus noise dimensions: the classifier must find them.
    #[test]
    fn separable_features_are_classified() {
        let device = crate::device::cpu();
        let mut rng = HostRng::new(3);
        let make = |n: usize, rng: &mut HostRng| {
            let noise = rng.normal_vec(n * 4, 1.0);
            let mut x = Vec::with_capacity(n * 4);
            let mut y = Vec::with_capacity(n);
            for i in 0..n {
                let class = (i % 3) as i64;
                y.push(class);
                for j in 0..4 {
                    let centre = if j == class as usize { 4.0 } else { 0.0 };
                    x.push(centre + noise[i * 4 + j]);
                }
            }
            (
                Tensor::<2>::from_data(TensorData::new(x, [n, 4]), &device),
                Tensor::<1, Int>::from_data(TensorData::new(y, [n]), &device),
            )
        };
        let (xt, yt) = make(300, &mut rng);
        let (xs, ys) = make(90, &mut rng);
        let config = LinearEvalConfig {
            epochs: 20,
            batch_size: 32,
            ..LinearEvalConfig::default()
        };
        let r = linear_eval((&xt, &yt), (&xs, &ys), 3, &config, &mut rng).unwrap();
        assert!(r.top1 > 0.95, "{r:?}");
        assert!(r.train_top1 > 0.95 && r.train_loss < 0.3, "{r:?}");
        // Labels outside the classes are an error, not a panic.
        let bad = Tensor::<1, Int>::from_data(TensorData::new(vec![5i64; 300], [300]), &device);
        assert!(linear_eval((&xt, &bad), (&xs, &ys), 3, &config, &mut rng).is_err());
    }
}
