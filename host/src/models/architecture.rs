//! What a network is, as data: saved beside its weights (checkpoints, exported backbones) so
//! that `sslhost eval` and `sslhost export` can rebuild or describe it without the recipe.
//!
//! Stored as JSON, one key per kind: `{"resnet": {"depth": 18, "cifar_stem": true, ..}}`,
//! `{"sequential": [{"resnet": ..}, {"mlp": ..}]}`.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::layers::LinearConfig;
use super::mlp::MlpConfig;
use super::net::SharedNet;
use super::resnet::ResNetConfig;
use crate::error::{Error, Result};
use crate::tensor::HostRng;

/// The shape of a network, without its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// A ResNet backbone.
    Resnet(ResNetConfig),
    /// A multi-layer perceptron.
    Mlp(MlpConfig),
    /// One linear layer.
    Linear(LinearConfig),
    /// Networks applied one after another.
    Sequential(Vec<Architecture>),
}

impl Architecture {
    /// Builds a freshly initialised network of this shape.
    pub fn build(&self, rng: &mut HostRng, device: &Device) -> Result<SharedNet> {
        match self {
            Architecture::Resnet(c) => SharedNet::resnet(c, rng, device),
            Architecture::Mlp(c) => SharedNet::mlp(c, rng, device),
            Architecture::Linear(c) => SharedNet::linear(c, rng, device),
            Architecture::Sequential(parts) => SharedNet::sequential(
                parts
                    .iter()
                    .map(|p| p.build(rng, device))
                    .collect::<Result<_>>()?,
            ),
        }
    }

    /// The ResNets inside, each with the prefix its parameters' names take (`""` for this
    /// network itself, `"0"` for the first part of a sequence), in visit order.
    pub fn resnets(&self) -> Vec<(String, ResNetConfig)> {
        let mut out = Vec::new();
        self.collect_resnets("", &mut out);
        out
    }

    fn collect_resnets(&self, prefix: &str, out: &mut Vec<(String, ResNetConfig)>) {
        match self {
            Architecture::Resnet(c) => out.push((prefix.to_string(), c.clone())),
            Architecture::Sequential(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    let name = if prefix.is_empty() {
                        i.to_string()
                    } else {
                        format!("{prefix}.{i}")
                    };
                    p.collect_resnets(&name, out);
                }
            }
            Architecture::Mlp(_) | Architecture::Linear(_) => {}
        }
    }

    /// As JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an architecture is plain data")
    }

    /// From JSON text written by [`to_json`](Self::to_json).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("not a network architecture: {e}")))
    }
}
