//! `Net` in scripts: ResNets, MLPs, linear layers, sequences, EMA targets.

use rhai::Array;
use rhai::plugin::*;

use crate::error::{Error, Result};
use crate::models::SharedNet;

/// Networks: build, run, switch modes, copy, average.
#[export_module]
pub mod models_api {
    use rhai::{Array, Dynamic, Map};

    use crate::api::args::{self, Options, RhaiResult, run};
    use crate::error::Error;
    use crate::models::layers::LinearConfig;
    use crate::models::mlp::Activation;
    use crate::models::{MlpConfig, ResNetConfig, SharedNet};
    use crate::session;
    use crate::tensor::{DynTensor, tape};

    use super::net_list;

    /// A network handle; copies of the handle share the network.
    pub type Net = SharedNet;

    /// MoCo's queue of keys (shared: copies of the handle enqueue into the same queue).
    pub type Queue = std::rc::Rc<std::cell::RefCell<crate::models::Queue>>;

    /// A torchvision ResNet (18, 34 or 50) without its classifier: images in, features out.
    ///
    /// ```rhai
    /// let backbone = resnet(18);
    /// ```
    #[rhai_fn(name = "resnet", return_raw)]
    pub fn resnet_default(depth: i64) -> RhaiResult<Net> {
        resnet(depth, Map::new())
    }

    /// A ResNet with options: `cifar_stem` (3x3 stem, no max-pool; default false),
    /// `in_channels` (default 3), `widths` (four stage widths; default [64, 128, 256, 512]),
    /// `blocks` (blocks per stage instead of the depth's; `[1, 1, 1, 1]` is a ResNet-10) and
    /// `stem_stride` (stride of the CIFAR stem; 2 makes every later layer 4x cheaper).
    ///
    /// ```rhai
    /// let backbone = resnet(18, #{ cifar_stem: true });
    /// let small = resnet(18, #{ cifar_stem: true, widths: [16, 32, 64, 128] });
    /// let tiny = resnet(18, #{ cifar_stem: true, stem_stride: 2, blocks: [1, 1, 1, 1] });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn resnet(depth: i64, options: Map) -> RhaiResult<Net> {
        run(|| {
            let o = Options::new(
                &options,
                "resnet",
                &[
                    "cifar_stem",
                    "in_channels",
                    "widths",
                    "blocks",
                    "stem_stride",
                ],
            )?;
            let mut config = ResNetConfig::new(args::count(depth, "resnet depth")?);
            config.cifar_stem = o.bool("cifar_stem", false)?;
            config.in_channels = o.usize("in_channels", 3)?;
            if let Some(w) = o.shape("widths")? {
                config.widths = w.try_into().map_err(|w: Vec<usize>| {
                    Error::Invalid(format!("resnet: widths needs 4 entries, got {}", w.len()))
                })?;
            }
            if let Some(b) = o.shape("blocks")? {
                config.blocks = Some(b.try_into().map_err(|b: Vec<usize>| {
                    Error::Invalid(format!("resnet: blocks needs 4 entries, got {}", b.len()))
                })?);
            }
            config.stem_stride = o.usize("stem_stride", 1)?;
            // The widest convolution's weight: the last stage's 3x3 (x4 for a bottleneck).
            let widest = config.widths[3].saturating_mul(4);
            crate::budget::elements(&[widest, widest, 3, 3], "resnet widths")?;
            session::with(|s| SharedNet::resnet(&config, &mut s.rng, &s.device))
        })
    }

    /// A ResNet with trained weights: from a run directory or a checkpoint file (the ResNet
    /// of its `online` network), or from a backbone in torchvision's layout (`sslhost
    /// export`'s file, or a torchvision `state_dict` saved with `safetensors.torch.save_file`;
    /// `fc` is ignored). The architecture is read from the file, else from the weights.
    ///
    /// ```rhai no_run
    /// let backbone = load_backbone("backbone.safetensors");
    /// ```
    #[rhai_fn(name = "load_backbone", return_raw)]
    pub fn load_backbone_default(path: &str) -> RhaiResult<Net> {
        load_backbone(path, Map::new())
    }

    /// `load_backbone` with options: `net` (which network of a checkpoint: `"target"`,
    /// `"online.0"`; default the only ResNet, else `online`'s or `student`'s) and
    /// `stem_stride` (a CIFAR stem's stride, which the weights of a torchvision file cannot
    /// show; default 1 there, the recorded one in sslhost's files).
    ///
    /// ```rhai no_run
    /// let target = load_backbone("runs/byol-20261204-101500", #{ net: "target" });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn load_backbone(path: &str, options: Map) -> RhaiResult<Net> {
        run(|| {
            let o = Options::new(&options, "load_backbone", &["net", "stem_stride"])?;
            let net = o.string("net")?;
            let stride = o.usize_opt("stem_stride")?;
            let device = session::device();
            let loaded = crate::train::export::load_backbone(
                std::path::Path::new(path),
                net.as_deref(),
                stride,
                &device,
            )?;
            Ok(loaded.net)
        })
    }

    /// An MLP over widths `[in, hidden.., out]` with batch norm after hidden layers.
    ///
    /// ```rhai
    /// let head = mlp([512, 4096, 256]);
    /// ```
    #[rhai_fn(name = "mlp", return_raw)]
    pub fn mlp_default(dims: Array) -> RhaiResult<Net> {
        mlp(dims, Map::new())
    }

    /// An MLP with options `batch_norm` (hidden, default true), `last_batch_norm` (default
    /// false), `bias` (default true) and `activation` (`"relu"`, the default, or `"gelu"`).
    ///
    /// ```rhai
    /// let proj = mlp([512, 2048, 128], #{ last_batch_norm: true });
    /// let dino_head = mlp([512, 2048, 256], #{ batch_norm: false, activation: "gelu" });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn mlp(dims: Array, options: Map) -> RhaiResult<Net> {
        run(|| {
            let allowed = ["batch_norm", "last_batch_norm", "bias", "activation"];
            let o = Options::new(&options, "mlp", &allowed)?;
            let mut config = MlpConfig::new(args::shape(&dims, "mlp widths")?);
            config.batch_norm = o.bool("batch_norm", true)?;
            config.last_batch_norm = o.bool("last_batch_norm", false)?;
            config.bias = o.bool("bias", true)?;
            if let Some(name) = o.string("activation")? {
                config.activation = Activation::parse(&name)?;
            }
            for pair in config.dims.windows(2) {
                crate::budget::elements(pair, "mlp layer weight")?;
            }
            session::with(|s| SharedNet::mlp(&config, &mut s.rng, &s.device))
        })
    }

    /// A linear layer `[N, in] -> [N, out]` with bias.
    ///
    /// ```rhai
    /// let classifier = linear(512, 10);
    /// ```
    #[rhai_fn(name = "linear", return_raw)]
    pub fn linear_default(d_input: i64, d_output: i64) -> RhaiResult<Net> {
        linear(d_input, d_output, Map::new())
    }

    /// A linear layer with options `bias` (default true), `weight_norm` (default false: each
    /// row of the weight taken at unit length at every forward, so unit inputs give cosines:
    /// prototypes) and `learned_gain` (with `weight_norm`, a trained length per row starting
    /// at 1, as PyTorch's `weight_norm`; default true).
    ///
    /// ```rhai
    /// let prototypes = linear(128, 3000, #{ bias: false, weight_norm: true, learned_gain: false });
    /// let scores = prototypes.forward(randn([4, 128]).normalize(1));   // cosines, [4, 3000]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn linear(d_input: i64, d_output: i64, options: Map) -> RhaiResult<Net> {
        run(|| {
            let allowed = ["bias", "weight_norm", "learned_gain"];
            let o = Options::new(&options, "linear", &allowed)?;
            let mut config = LinearConfig::new(
                args::count(d_input, "linear input size")?,
                args::count(d_output, "linear output size")?,
            )
            .with_bias(o.bool("bias", true)?);
            config.weight_norm = o.bool("weight_norm", false)?;
            config.learned_gain = o.bool("learned_gain", config.weight_norm)?;
            if config.learned_gain && !config.weight_norm {
                return Err(Error::Invalid(
                    "linear: learned_gain needs weight_norm: true".into(),
                ));
            }
            crate::budget::elements(&[config.d_input, config.d_output], "linear weight")?;
            session::with(|s| SharedNet::linear(&config, &mut s.rng, &s.device))
        })
    }

    /// Networks applied in order; the parts are shared, not copied.
    ///
    /// ```rhai
    /// let online = sequential([backbone, projector]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn sequential(parts: Array) -> RhaiResult<Net> {
        run(|| SharedNet::sequential(net_list(&parts, "sequential")?))
    }

    /// Runs the network on a batch.
    ///
    /// ```rhai
    /// let z = online.forward(images);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn forward(net: &mut Net, x: DynTensor) -> RhaiResult<DynTensor> {
        let key = [net.id(), net.is_training() as u64];
        let net = net.clone();
        args::taped("forward", &[&x], &key, move |x| net.forward(&x[0]))
    }

    /// Training mode: batch norm uses and updates batch statistics.
    ///
    /// ```rhai
    /// net.train();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn train(net: &mut Net) -> RhaiResult<()> {
        run(|| super::set_training(net, true))
    }

    /// Evaluation mode: batch norm uses running statistics. (`eval` is a reserved word in
    /// Rhai, hence the name.)
    ///
    /// ```rhai
    /// backbone.eval_mode();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn eval_mode(net: &mut Net) -> RhaiResult<()> {
        run(|| super::set_training(net, false))
    }

    /// Training mode (the same as `train`, named to pair with `eval_mode`).
    ///
    /// ```rhai
    /// backbone.train_mode();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn train_mode(net: &mut Net) -> RhaiResult<()> {
        run(|| super::set_training(net, true))
    }

    /// An independent copy that takes no gradients (a momentum target).
    ///
    /// ```rhai
    /// let target = momentum_copy(online);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn momentum_copy(net: &mut Net) -> RhaiResult<Net> {
        run(|| {
            tape::barrier()?;
            Ok(net.momentum_copy())
        })
    }

    /// `target = m * target + (1 - m) * online` for every parameter and batch-norm buffer.
    ///
    /// ```rhai
    /// update_momentum(online, target, 0.99);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn update_momentum(online: Net, target: Net, m: Dynamic) -> RhaiResult<()> {
        run(|| {
            let m = args::number(&m, "update_momentum m")?;
            let step = crate::session::with(|s| s.step);
            crate::live::note_use(m, crate::live::Role::Momentum, step);
            crate::session::note_update();
            tape::effect(
                "update_momentum",
                &[],
                &[online.id(), target.id()],
                |_| SharedNet::update_momentum(&online, &target, m),
                || {
                    SharedNet::stage_momentum(&target, m)?;
                    let (online, target) = (online.clone(), target.clone());
                    Ok(std::rc::Rc::new(move |_: &[DynTensor]| {
                        SharedNet::mix_momentum(&online, &target)
                    }))
                },
            )
        })
    }

    /// Whether optimisers leave the network's parameters as they are. A frozen part takes no
    /// update, no weight decay and no change of its optimiser state, while gradients still
    /// flow through it to the parts before it (DINO's last layer and SwAV's prototypes for
    /// their first steps). True when every part is frozen.
    ///
    /// ```rhai
    /// let head = linear(8, 4);
    /// print(head.frozen);   // false
    /// ```
    #[rhai_fn(get = "frozen", pure)]
    pub fn get_frozen(net: &mut Net) -> bool {
        net.is_frozen()
    }

    /// Freezes (true) or thaws (false) a network and all its parts; set it every step to
    /// freeze for the first N steps.
    ///
    /// ```rhai
    /// let head = linear(8, 4);
    /// head.frozen = true;
    /// ```
    #[rhai_fn(set = "frozen", return_raw)]
    pub fn set_frozen(net: &mut Net, frozen: bool) -> RhaiResult<()> {
        run(|| {
            // Work already answered from a recording runs with the state it was asked with.
            if net.is_frozen() != frozen {
                tape::barrier()?;
            }
            net.set_frozen(frozen);
            Ok(())
        })
    }

    /// Trainable parameter count (batch-norm buffers excluded, as torchvision counts).
    ///
    /// ```rhai
    /// print(backbone.num_params());   // 11176512 for resnet(18)
    /// ```
    pub fn num_params(net: &mut Net) -> i64 {
        net.num_params() as i64
    }

    /// Parameters and buffers by dotted name, detached.
    ///
    /// ```rhai
    /// let w = net.parameters()["conv1.weight"];
    /// ```
    #[rhai_fn(return_raw)]
    pub fn parameters(net: &mut Net) -> RhaiResult<Map> {
        run(|| {
            tape::barrier()?;
            Ok(net
                .parameters()
                .into_iter()
                .map(|(k, v)| (k.into(), Dynamic::from(v)))
                .collect())
        })
    }

    /// MoCo's queue of `size` past keys of `dim` values (random unit vectors at first).
    ///
    /// ```rhai
    /// let q = queue(4096, 128);
    /// let loss = info_nce(q1, k2, q.tensor(), 0.2);
    /// q.enqueue(k2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn queue(size: i64, dim: i64) -> RhaiResult<Queue> {
        run(|| {
            let (size, dim) = (
                args::count(size, "queue size")?,
                args::count(dim, "queue dim")?,
            );
            crate::budget::elements(&[size, dim], "queue")?;
            let q = session::with(|s| crate::models::Queue::new(size, dim, &mut s.rng, &s.device))?;
            Ok(std::rc::Rc::new(std::cell::RefCell::new(q)))
        })
    }

    /// The queued keys `[size, dim]`, newest first.
    ///
    /// ```rhai
    /// let negatives = q.tensor();
    /// ```
    #[rhai_fn(name = "tensor")]
    pub fn queue_tensor(q: &mut Queue) -> DynTensor {
        crate::profiling::host_time(|| q.borrow().tensor())
    }

    /// Adds keys `[n, dim]` at the front, dropping the `n` oldest (keys are detached).
    ///
    /// ```rhai
    /// q.enqueue(cat([k1, k2], 0));
    /// ```
    #[rhai_fn(return_raw)]
    pub fn enqueue(q: &mut Queue, keys: DynTensor) -> RhaiResult<()> {
        crate::session::note_update();
        run(|| tape::effect_on("enqueue", &keys, q, crate::models::Queue::enqueue))
    }

    /// `Queue[4096, 128]`.
    ///
    /// ```rhai
    /// print(q);
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn queue_to_string(q: &mut Queue) -> String {
        format!("Queue{:?}", q.borrow().dims())
    }

    /// `Net(resnet(features 512))`.
    ///
    /// ```rhai
    /// print(backbone);
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn to_string(net: &mut Net) -> String {
        format!("Net({})", net.describe())
    }
}

/// Training (`true`) or evaluation mode; work already answered from a recording runs in the
/// mode it was asked in (`tensor::tape::barrier`).
fn set_training(net: &SharedNet, training: bool) -> Result<()> {
    if net.is_training() != training {
        crate::tensor::tape::barrier()?;
    }
    net.set_training(training);
    Ok(())
}

pub fn net_list(arr: &Array, op: &str) -> Result<Vec<SharedNet>> {
    arr.iter()
        .map(|v| {
            v.clone().try_cast::<SharedNet>().ok_or_else(|| {
                Error::Invalid(format!(
                    "{op} takes an array of networks, found a {}",
                    v.type_name()
                ))
            })
        })
        .collect()
}
