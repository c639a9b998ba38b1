//! Plain Burn models: layers, ResNets, MLPs, and the shared network handle scripts use.

pub mod architecture;
pub mod flat;
pub mod layers;
pub mod mlp;
pub mod net;
pub mod params;
pub mod queue;
pub mod resnet;
pub mod torchvision;

pub use architecture::Architecture;
pub use mlp::MlpConfig;
pub use net::SharedNet;
pub use queue::Queue;
pub use resnet::ResNetConfig;
