//! torchvision's layout of a ResNet's tensors, and the way back: what `sslhost export`
//! writes and what `sslhost eval` reads from an exported (or torchvision-made) file.
//!
//! Our names differ from torchvision's only in the shortcut: `layerK.0.downsample.conv.weight`
//! is torchvision's `layerK.0.downsample.0.weight`, `downsample.bn.*` its `downsample.1.*`.
//! torchvision also keeps a `num_batches_tracked` count in every batch norm, which ours do
//! not (it only matters to a batch norm built with `momentum=None`).

use std::collections::BTreeMap;

use super::resnet::ResNetConfig;
use crate::error::{Error, Result};

/// torchvision's name of our ResNet tensor `name` (relative to the ResNet).
pub fn to_torchvision(name: &str) -> String {
    name.replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.")
}

/// Our name of torchvision's ResNet tensor `name` (ours are left as they are).
pub fn from_torchvision(name: &str) -> String {
    name.replace(".downsample.0.", ".downsample.conv.")
        .replace(".downsample.1.", ".downsample.bn.")
}

/// The rank torchvision gives the ResNet tensor `name` (either naming): 4 for convolution
/// weights, 0 for `num_batches_tracked`, 1 for the batch norms' vectors.
pub fn rank(name: &str) -> usize {
    let module = name.rsplit_once('.').map_or("", |(m, _)| m);
    let last = module.rsplit('.').next().unwrap_or("");
    if name.ends_with("num_batches_tracked") {
        0
    } else if last.starts_with("conv") || module.ends_with("downsample.0") || last == "conv" {
        4
    } else {
        1
    }
}

/// The batch norms of a ResNet, by the prefix of their tensors (`bn1`, `layer1.0.bn2`,
/// `layer2.0.downsample.1`, in torchvision's names), given its tensors' names.
pub fn batch_norms<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter_map(|n| n.strip_suffix(".running_mean"))
        .map(to_torchvision_prefix)
        .collect()
}

fn to_torchvision_prefix(prefix: &str) -> String {
    to_torchvision(&format!("{prefix}.x"))
        .strip_suffix(".x")
        .expect("suffix kept")
        .to_string()
}

/// The configuration of the ResNet whose tensors (names relative to it, either naming) have
/// these shapes: stem, block kind, blocks per stage and widths. What the weights cannot say
/// (the stride of a CIFAR stem) takes its default, 1.
pub fn infer_resnet(shapes: &BTreeMap<String, Vec<usize>>) -> Result<ResNetConfig> {
    let conv1 = shapes
        .get("conv1.weight")
        .ok_or_else(|| Error::Invalid("not a ResNet: it has no `conv1.weight`".into()))?;
    let &[_, in_channels, k, _] = conv1.as_slice() else {
        return Err(Error::Shape(format!(
            "not a ResNet: `conv1.weight` has shape {conv1:?}, not [out, in, k, k]"
        )));
    };
    let mut blocks = [0usize; 4];
    let mut widths = [0usize; 4];
    for stage in 0..4 {
        while shapes.contains_key(&format!(
            "layer{}.{}.conv1.weight",
            stage + 1,
            blocks[stage]
        )) {
            blocks[stage] += 1;
        }
        let first = format!("layer{}.0.conv1.weight", stage + 1);
        widths[stage] = match shapes.get(&first) {
            Some(s) if s.len() == 4 => s[0],
            _ => {
                return Err(Error::Invalid(format!(
                    "not a ResNet of four stages: it has no `{first}`"
                )));
            }
        };
    }
    let bottleneck = shapes.contains_key("layer1.0.conv3.weight");
    let depth = match (bottleneck, blocks) {
        (true, _) => 50,
        (false, [3, 4, 6, 3]) => 34,
        _ => 18,
    };
    let mut config = ResNetConfig::new(depth);
    config.cifar_stem = k == 3;
    config.in_channels = in_channels;
    config.widths = widths;
    let standard = config.layout()?.0;
    config.blocks = (standard != blocks).then_some(blocks);
    Ok(config)
}

/// torchvision's model of this configuration (`resnet18`, ..) when it has torchvision's
/// widths and stage lengths; `None` otherwise (torchvision's classes still build it, see
/// `scripts/check_export.py`).
pub fn model_name(config: &ResNetConfig) -> Option<String> {
    (config.widths == [64, 128, 256, 512] && config.blocks.is_none())
        .then(|| format!("resnet{}", config.depth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranks() {
        let ours = "layer2.0.downsample.conv.weight";
        assert_eq!(to_torchvision(ours), "layer2.0.downsample.0.weight");
        assert_eq!(from_torchvision(&to_torchvision(ours)), ours);
        assert_eq!(
            to_torchvision("layer2.0.downsample.bn.running_var"),
            "layer2.0.downsample.1.running_var"
        );
        assert_eq!(rank(ours), 4);
        assert_eq!(rank("layer2.0.downsample.0.weight"), 4);
        assert_eq!(rank("layer2.0.downsample.1.weight"), 1);
        assert_eq!(rank("layer1.1.conv2.weight"), 4);
        assert_eq!(rank("bn1.running_mean"), 1);
        assert_eq!(rank("bn1.num_batches_tracked"), 0);
        assert_eq!(
            batch_norms([
                "bn1.running_mean",
                "layer2.0.downsample.bn.running_mean",
                "x"
            ]),
            ["bn1", "layer2.0.downsample.1"]
        );
    }
}
