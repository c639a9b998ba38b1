//! The three layers every model here is built from: convolution, linear and batch norm.
//!
//! Weights use PyTorch's layouts and initialisations, so parameter counts, names and the
//! first steps of training match torchvision. Random initial values come from the host
//! generator, so a seed gives the same network on every device.

use burn::module::{Flag, Module, Param, ParamId};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use crate::kernels::{NormEpilogue, precision};
use crate::tensor::HostRng;

fn param<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// A buffer: saved, copied and averaged with the weights, but never trained.
fn buffer(value: Tensor<1>) -> Param<Tensor<1>> {
    Param::initialized(ParamId::new(), value.set_require_grad(false))
}

/// Configuration of a [`Conv2d`] without bias (every conv here is followed by batch norm).
#[derive(Debug, Clone)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

/// A 2-D convolution, weight `[out, in, k, k]`.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// Weight `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    stride: usize,
    padding: usize,
}

impl Conv2dConfig {
    /// A conv config with stride 1 and "same" padding for odd kernels.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: kernel / 2,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the padding.
    pub fn with_padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    /// Kaiming-normal weights, fan-out mode, as torchvision's ResNet.
    pub fn init(&self, rng: &mut HostRng, device: &Device) -> Conv2d {
        let shape = [
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ];
        let fan_out = self.out_channels * self.kernel * self.kernel;
        let std = (2.0 / fan_out as f64).sqrt();
        Conv2d {
            weight: param(rng.normal_vec(shape.iter().product(), std), shape, device),
            stride: self.stride,
            padding: self.padding,
        }
    }
}

impl Conv2d {
    /// The stride on both axes.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// `[N, in, H, W] -> [N, out, H', W']`, in f32 or, under half activations, in the half
    /// type (see [`precision`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (stride, padding) = (self.stride, self.padding);
        precision::activation_op(x, self.weight.val(), |x, w| {
            crate::kernels::conv2d(x, w, stride, padding)
        })
    }
}

/// Configuration of a [`Linear`] layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the layer adds a bias.
    pub bias: bool,
    /// Weight normalisation (Salimans & Kingma, 2016): each row of the weight is divided by
    /// its length at every forward, so for unit inputs the outputs are cosines (prototypes).
    #[serde(default)]
    pub weight_norm: bool,
    /// With `weight_norm`, a trained length per row (PyTorch's `weight_g`), starting at 1.
    #[serde(default)]
    pub learned_gain: bool,
}

/// `y = x Wᵀ + b`, weight `[out, in]` as in PyTorch; with weight normalisation
/// `W = diag(g) V / |V|` row by row, `V` stored as `weight`.
#[derive(Module, Debug)]
pub struct Linear {
    /// Weight `[out, in]` (the direction `V` under weight normalisation).
    pub weight: Param<Tensor<2>>,
    /// Bias `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Trained row lengths `[out]` of a weight-normalised layer with a learned gain.
    pub gain: Option<Param<Tensor<1>>>,
    #[module(skip)]
    weight_norm: bool,
}

impl LinearConfig {
    /// A linear layer config with bias.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        LinearConfig {
            d_input,
            d_output,
            bias: true,
            weight_norm: false,
            learned_gain: false,
        }
    }

    /// Sets whether the layer has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// PyTorch's default: weight and bias uniform in `±1/sqrt(d_input)`.
    pub fn init(&self, rng: &mut HostRng, device: &Device) -> Linear {
        let bound = 1.0 / (self.d_input as f64).sqrt();
        let shape = [self.d_output, self.d_input];
        let weight = param(
            rng.uniform_vec(self.d_output * self.d_input, -bound, bound),
            shape,
            device,
        );
        let bias = self.bias.then(|| {
            param(
                rng.uniform_vec(self.d_output, -bound, bound),
                [self.d_output],
                device,
            )
        });
        let gain = (self.weight_norm && self.learned_gain)
            .then(|| param(vec![1.0; self.d_output], [self.d_output], device));
        Linear {
            weight,
            bias,
            gain,
            weight_norm: self.weight_norm,
        }
    }
}

impl Linear {
    /// The configuration that builds a layer of this one's shape.
    pub fn config(&self) -> LinearConfig {
        let [d_output, d_input] = self.weight.dims();
        LinearConfig {
            weight_norm: self.weight_norm,
            learned_gain: self.gain.is_some(),
            ..LinearConfig::new(d_input, d_output).with_bias(self.bias.is_some())
        }
    }

    /// The weight the layer applies `[out, in]`: the stored one, or under weight
    /// normalisation its rows at unit length (times the gain).
    pub fn effective_weight(&self) -> Tensor<2> {
        let w = self.weight.val();
        if !self.weight_norm {
            return w;
        }
        // A zero row stays zero rather than dividing by zero.
        let length = w.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        let unit = w.div(length);
        match &self.gain {
            Some(g) => unit.mul(g.val().unsqueeze_dim(1)),
            None => unit,
        }
    }

    /// `[N, in] -> [N, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = precision::matrix_op(x, self.effective_weight(), crate::kernels::linear);
        match &self.bias {
            Some(b) => y.add(b.val().unsqueeze()),
            None => y,
        }
    }
}

/// Configuration of a [`BatchNorm`] layer.
#[derive(Debug, Clone)]
pub struct BatchNormConfig {
    /// Channels (dim 1 of the input).
    pub num_features: usize,
    /// Added to the variance.
    pub epsilon: f64,
    /// Weight of the new batch statistics in the running averages (PyTorch's convention).
    pub momentum: f64,
}

/// Batch normalisation over dim 1 of `[N, C]` or `[N, C, H, W]`, with PyTorch's semantics:
/// running variance is unbiased, `running = (1 - momentum) * running + momentum * batch`.
///
/// The running statistics are ordinary (non-trainable) parameters, so cloning a layer gives
/// the clone its own statistics, and EMA, checkpoints and exports see them by name.
#[derive(Module, Debug)]
pub struct BatchNorm {
    /// Scale `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Running mean `[C]` (buffer).
    pub running_mean: Param<Tensor<1>>,
    /// Running unbiased variance `[C]` (buffer).
    pub running_var: Param<Tensor<1>>,
    /// Training mode: batch statistics and running-average updates.
    pub training: Param<Flag>,
    momentum: f64,
    epsilon: f64,
}

impl BatchNormConfig {
    /// PyTorch's defaults: epsilon 1e-5, momentum 0.1.
    pub fn new(num_features: usize) -> Self {
        BatchNormConfig {
            num_features,
            epsilon: 1e-5,
            momentum: 0.1,
        }
    }

    /// Weight one, bias zero, running mean zero, running variance one.
    pub fn init(&self, device: &Device) -> BatchNorm {
        let c = self.num_features;
        BatchNorm {
            weight: Param::from_tensor(Tensor::ones([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: buffer(Tensor::zeros([c], device)),
            running_var: buffer(Tensor::ones([c], device)),
            training: Param::from_bool(true),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

impl BatchNorm {
    /// `[N, C, ..] -> [N, C, ..]`; in training mode also updates the running statistics.
    pub fn forward<const D: usize>(&mut self, x: Tensor<D>) -> Tensor<D> {
        self.forward_then(x, NormEpilogue::None)
    }

    /// `relu(bn(x))`, in one pass over the activations when training on the CPU.
    pub fn forward_relu<const D: usize>(&mut self, x: Tensor<D>) -> Tensor<D> {
        self.forward_then(x, NormEpilogue::Relu)
    }

    /// `relu(bn(x) + residual)`, in one pass over the activations when training on the CPU.
    pub fn forward_add_relu<const D: usize>(
        &mut self,
        x: Tensor<D>,
        residual: Tensor<D>,
    ) -> Tensor<D> {
        self.forward_then(x, NormEpilogue::AddRelu(residual))
    }

    /// The layer and its epilogue, in training through the kernels' dispatch
    /// ([`crate::kernels::batch_norm_train`]). A half input (half activations: see
    /// [`precision`]) is normalised in f32 and handed on in its own type, and the epilogue runs
    /// in that type (as autocast's ReLU), so that what autodiff keeps for the backward is half
    /// too.
    fn forward_then<const D: usize>(&mut self, x: Tensor<D>, then: NormEpilogue<D>) -> Tensor<D> {
        if !self.training.is_enabled() {
            // The running statistics, in f32.
            let dtype = x.dtype();
            let y = burn::tensor::module::batch_norm(
                x.cast(FloatDType::F32),
                self.weight.val(),
                self.bias.val(),
                self.running_mean.val(),
                self.running_var.val(),
                self.epsilon,
            );
            return then.apply(y.cast(dtype));
        }
        let dims = x.dims();
        let out = crate::kernels::batch_norm_train(
            x,
            self.weight.val(),
            self.bias.val(),
            self.epsilon,
            then,
        );
        self.update_running(out.mean, out.variance, &dims);
        out.output
    }

    /// Moves the running statistics towards the batch's `mean` and biased `variance` of an
    /// input of `dims` `[N, C, ..]` (made unbiased over its values a channel, as PyTorch).
    fn update_running(&mut self, mean: Tensor<1>, variance: Tensor<1>, dims: &[usize]) {
        let count = dims.iter().product::<usize>() / dims[1];
        let m = self.momentum;
        let unbiased = if count > 1 {
            count as f64 / (count as f64 - 1.0)
        } else {
            1.0
        };
        let mean = mean.detach();
        let var = variance.detach().mul_scalar(unbiased);
        // Into their own buffers while a step is recorded.
        let moved = |r: Tensor<1>, batch: Tensor<1>| {
            let new = r.clone().mul_scalar(1.0 - m).add(batch.mul_scalar(m));
            crate::kernels::views::replace(&r, new)
        };
        self.running_mean = self.running_mean.clone().map(|r| moved(r, mean));
        self.running_var = self.running_var.clone().map(|r| moved(r, var));
    }
}
