//! ResNet-18/34/50 backbones as in torchvision (v1.5: the stride sits on the 3x3 conv),
//! without the final fully connected layer, plus a CIFAR stem and configurable widths.

use burn::module::Module;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, FloatDType, Tensor};

use super::layers::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig};
use crate::error::{Error, Result};
use crate::tensor::HostRng;

/// Configuration of a [`ResNet`] backbone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResNetConfig {
    /// 18, 34 or 50.
    pub depth: usize,
    /// 3x3 stride-1 first conv and no max-pool (for 32x32 inputs), as in SimCLR's CIFAR setup.
    pub cifar_stem: bool,
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Channels of the four stages (torchvision: 64, 128, 256, 512).
    pub widths: [usize; 4],
    /// Blocks per stage instead of the depth's layout (e.g. `[1, 1, 1, 1]`, a ResNet-10);
    /// the depth still picks basic (18, 34) or bottleneck (50) blocks.
    pub blocks: Option<[usize; 4]>,
    /// Stride of the CIFAR stem's 3x3 conv (1 by default; 2 halves every feature map, a 4x
    /// cheaper network for 28x28 or 32x32 inputs).
    pub stem_stride: usize,
}

/// A residual block: basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1; expansion 4).
#[derive(Module, Debug)]
pub struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Option<Conv2d>,
    bn3: Option<BatchNorm>,
    downsample: Option<Downsample>,
}

/// The 1x1 projection of a block's shortcut when its shape changes.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

/// A ResNet backbone: `[N, C, H, W] -> [N, features]` after global average pooling.
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    layer1: Vec<Block>,
    layer2: Vec<Block>,
    layer3: Vec<Block>,
    layer4: Vec<Block>,
    cifar_stem: bool,
    features: usize,
}

impl ResNetConfig {
    /// A torchvision-shaped ResNet of the given depth with an ImageNet stem.
    pub fn new(depth: usize) -> Self {
        ResNetConfig {
            depth,
            cifar_stem: false,
            in_channels: 3,
            widths: [64, 128, 256, 512],
            blocks: None,
            stem_stride: 1,
        }
    }

    /// Blocks per stage and whether blocks are bottlenecks.
    pub fn layout(&self) -> Result<([usize; 4], bool)> {
        let (blocks, bottleneck) = match self.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            d => {
                return Err(Error::Invalid(format!(
                    "resnet depth must be 18, 34 or 50, got {d}"
                )));
            }
        };
        Ok((self.blocks.unwrap_or(blocks), bottleneck))
    }

    /// The width of the backbone's output.
    pub fn features(&self) -> Result<usize> {
        let (_, bottleneck) = self.layout()?;
        Ok(self.widths[3] * if bottleneck { 4 } else { 1 })
    }

    /// Builds the network with torchvision's initialisation.
    pub fn init(&self, rng: &mut HostRng, device: &Device) -> Result<ResNet> {
        let (blocks, bottleneck) = self.layout()?;
        if self.in_channels == 0 || self.widths.contains(&0) {
            return Err(Error::Invalid(format!(
                "resnet channels must be positive: in_channels {}, widths {:?}",
                self.in_channels, self.widths
            )));
        }
        if blocks.contains(&0) || self.stem_stride == 0 {
            return Err(Error::Invalid(format!(
                "resnet blocks and stem_stride must be positive: blocks {blocks:?}, \
                 stem_stride {}",
                self.stem_stride
            )));
        }
        let stem = if self.cifar_stem {
            Conv2dConfig::new(self.in_channels, self.widths[0], 3).with_stride(self.stem_stride)
        } else {
            Conv2dConfig::new(self.in_channels, self.widths[0], 7).with_stride(2)
        };
        let conv1 = stem.init(rng, device);
        let bn1 = BatchNormConfig::new(self.widths[0]).init(device);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut in_planes = self.widths[0];
        let mut stages = Vec::new();
        for (stage, (&width, &count)) in self.widths.iter().zip(&blocks).enumerate() {
            let mut layer = Vec::new();
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                layer.push(block(in_planes, width, stride, bottleneck, rng, device));
                in_planes = width * expansion;
            }
            stages.push(layer);
        }
        let [layer1, layer2, layer3, layer4]: [Vec<Block>; 4] =
            stages.try_into().expect("four stages");
        Ok(ResNet {
            conv1,
            bn1,
            layer1,
            layer2,
            layer3,
            layer4,
            cifar_stem: self.cifar_stem,
            features: in_planes,
        })
    }
}

fn block(
    in_planes: usize,
    width: usize,
    stride: usize,
    bottleneck: bool,
    rng: &mut HostRng,
    device: &Device,
) -> Block {
    let out = if bottleneck { width * 4 } else { width };
    let downsample = (stride != 1 || in_planes != out).then(|| Downsample {
        conv: Conv2dConfig::new(in_planes, out, 1)
            .with_stride(stride)
            .with_padding(0)
            .init(rng, device),
        bn: BatchNormConfig::new(out).init(device),
    });
    if bottleneck {
        Block {
            conv1: Conv2dConfig::new(in_planes, width, 1).init(rng, device),
            bn1: BatchNormConfig::new(width).init(device),
            conv2: Conv2dConfig::new(width, width, 3)
                .with_stride(stride)
                .init(rng, device),
            bn2: BatchNormConfig::new(width).init(device),
            conv3: Some(Conv2dConfig::new(width, out, 1).init(rng, device)),
            bn3: Some(BatchNormConfig::new(out).init(device)),
            downsample,
        }
    } else {
        Block {
            conv1: Conv2dConfig::new(in_planes, width, 3)
                .with_stride(stride)
                .init(rng, device),
            bn1: BatchNormConfig::new(width).init(device),
            conv2: Conv2dConfig::new(width, width, 3).init(rng, device),
            bn2: BatchNormConfig::new(width).init(device),
            conv3: None,
            bn3: None,
            downsample,
        }
    }
}

impl Block {
    /// `[N, in, H, W] -> [N, out, H/stride, W/stride]`.
    pub fn forward(&mut self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &mut self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone())),
            None => x.clone(),
        };
        let out = self.bn1.forward_relu(self.conv1.forward(x));
        let out = self.conv2.forward(out);
        match (&self.conv3, &mut self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = conv3.forward(self.bn2.forward_relu(out));
                bn3.forward_add_relu(out, identity)
            }
            _ => self.bn2.forward_add_relu(out, identity),
        }
    }
}

impl ResNet {
    /// The configuration that builds a network of this one's shape (the depth is 50 for
    /// bottleneck blocks, 34 or 18 for basic ones; `blocks` is set where the stage lengths
    /// differ from the depth's).
    pub fn config(&self) -> ResNetConfig {
        let stages = [&self.layer1, &self.layer2, &self.layer3, &self.layer4];
        let blocks = stages.map(|l| l.len());
        let bottleneck = self.layer1[0].conv3.is_some();
        let depth = match (bottleneck, blocks) {
            (true, _) => 50,
            (false, [3, 4, 6, 3]) => 34,
            _ => 18,
        };
        let mut config = ResNetConfig::new(depth);
        config.cifar_stem = self.cifar_stem;
        config.in_channels = self.in_channels();
        config.widths = stages.map(|l| l[0].conv1.weight.dims()[0]);
        let standard = config.layout().map(|(b, _)| b).ok();
        config.blocks = (standard != Some(blocks)).then_some(blocks);
        config.stem_stride = if self.cifar_stem {
            self.conv1.stride()
        } else {
            1
        };
        config
    }

    /// The width of the output features.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Input channels the first conv expects.
    pub fn in_channels(&self) -> usize {
        self.conv1.weight.dims()[1]
    }

    /// `[N, C, H, W] -> [N, features]`.
    pub fn forward(&mut self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.bn1.forward_relu(self.conv1.forward(x));
        if !self.cifar_stem {
            let pool = MaxPoolOptions::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]);
            x = burn::tensor::module::max_pool2d(x, pool);
        }
        for layer in [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ] {
            for block in layer.iter_mut() {
                x = block.forward(x);
            }
        }
        let [n, c, _, _] = x.dims();
        // Features leave in f32 whatever the activations were kept in.
        x.cast(FloatDType::F32).mean_dims(&[2, 3]).reshape([n, c])
    }
}
