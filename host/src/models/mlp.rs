//! Multi-layer perceptrons: the projection and prediction heads of SSL methods.

use burn::module::Module;
use burn::tensor::activation::{gelu, relu};
use burn::tensor::{Device, Tensor};

use super::layers::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use crate::error::{Error, Result};
use crate::tensor::HostRng;

/// Configuration of an [`Mlp`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpConfig {
    /// Widths: input, hidden..., output (at least two entries).
    pub dims: Vec<usize>,
    /// Batch norm after every hidden linear layer.
    pub batch_norm: bool,
    /// Batch norm after the last linear layer too (SimCLR v2, MoCo v3 style).
    pub last_batch_norm: bool,
    /// Whether the linear layers have biases.
    pub bias: bool,
    /// The non-linearity between layers.
    #[serde(default)]
    pub activation: Activation,
}

/// The non-linearity of an [`Mlp`]'s hidden layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(x, 0)`: the projection heads of most methods.
    #[default]
    Relu,
    /// `x * Phi(x)`, the exact form: DINO's head.
    Gelu,
}

impl Activation {
    /// The activation a script names (`"relu"` or `"gelu"`).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(Error::Invalid(format!(
                "unknown activation {other:?}: expected \"relu\" or \"gelu\""
            ))),
        }
    }

    fn apply(self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Activation::Relu => relu(x),
            Activation::Gelu => gelu(x),
        }
    }
}

/// One linear layer with its optional batch norm.
#[derive(Module, Debug)]
pub struct MlpLayer {
    linear: Linear,
    bn: Option<BatchNorm>,
}

/// `Linear -> [BN] -> activation` for each hidden layer, then `Linear -> [BN]`.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<MlpLayer>,
    #[module(skip)]
    activation: Activation,
}

impl MlpConfig {
    /// An MLP with biases and hidden batch norm, no batch norm on the output.
    pub fn new(dims: Vec<usize>) -> Self {
        MlpConfig {
            dims,
            batch_norm: true,
            last_batch_norm: false,
            bias: true,
            activation: Activation::Relu,
        }
    }

    /// Builds the layers.
    pub fn init(&self, rng: &mut HostRng, device: &Device) -> Result<Mlp> {
        if self.dims.len() < 2 || self.dims.contains(&0) {
            return Err(Error::Invalid(format!(
                "mlp needs at least two positive widths [in, .., out], got {:?}",
                self.dims
            )));
        }
        let n = self.dims.len() - 1;
        let layers = self
            .dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let last = i + 1 == n;
                let with_bn = if last {
                    self.last_batch_norm
                } else {
                    self.batch_norm
                };
                MlpLayer {
                    linear: LinearConfig::new(w[0], w[1])
                        .with_bias(self.bias)
                        .init(rng, device),
                    bn: with_bn.then(|| BatchNormConfig::new(w[1]).init(device)),
                }
            })
            .collect();
        Ok(Mlp {
            layers,
            activation: self.activation,
        })
    }
}

impl Mlp {
    /// The configuration that builds an MLP of this one's shape.
    pub fn config(&self) -> MlpConfig {
        let last = self.layers.len() - 1;
        let mut dims = vec![self.d_input()];
        dims.extend(self.layers.iter().map(|l| l.linear.weight.dims()[0]));
        MlpConfig {
            dims,
            batch_norm: self.layers[..last].iter().any(|l| l.bn.is_some()),
            last_batch_norm: self.layers[last].bn.is_some(),
            bias: self.layers[0].linear.bias.is_some(),
            activation: self.activation,
        }
    }

    /// Input width.
    pub fn d_input(&self) -> usize {
        self.layers[0].linear.weight.dims()[1]
    }

    /// Output width.
    pub fn d_output(&self) -> usize {
        self.layers[self.layers.len() - 1].linear.weight.dims()[0]
    }

    /// `[N, in] -> [N, out]`.
    pub fn forward(&mut self, mut x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            x = layer.linear.forward(x);
            let hidden = i + 1 < n;
            x = match (&mut layer.bn, hidden, self.activation) {
                // ReLU fused into the batch norm's pass.
                (Some(bn), true, Activation::Relu) => bn.forward_relu(x),
                (Some(bn), true, activation) => activation.apply(bn.forward(x)),
                (Some(bn), false, _) => bn.forward(x),
                (None, true, activation) => activation.apply(x),
                (None, false, _) => x,
            };
        }
        x
    }
}
