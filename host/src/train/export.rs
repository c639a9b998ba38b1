//! `sslhost export`: a trained ResNet taken out of a checkpoint with torchvision's names and
//! shapes, so that `torchvision.models.resnet18()` (with the same stem) loads it with
//! `strict=True` except `fc`.
//!
//! A checkpoint may hold several networks with a ResNet inside (BYOL's `online` and
//! `target`); each is named by its checkpoint key (`online`), or by the key and the ResNet's
//! place in it (`online.0`, the first part of a sequence).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::checkpoint::{self, Loaded, VERSION};
use super::tensor_file::{self, NamedTensor, Values};
use crate::error::{Error, Result};
use crate::models::resnet::ResNetConfig;
use crate::models::{Architecture, torchvision};

/// The format tag of an exported backbone.
pub const FORMAT: &str = "sslhost-torchvision-resnet-1";

/// A ResNet inside a checkpoint.
#[derive(Debug, Clone)]
pub struct Backbone {
    /// The checkpoint key of the network holding it (`online`).
    pub key: String,
    /// Its place in that network (`""`, or `"0"` for the first part of a sequence).
    pub prefix: String,
    /// Its configuration.
    pub config: ResNetConfig,
}

impl Backbone {
    /// The name `--net` takes: `online.0`, or `online` for a ResNet saved on its own.
    pub fn name(&self) -> String {
        if self.prefix.is_empty() {
            self.key.clone()
        } else {
            format!("{}.{}", self.key, self.prefix)
        }
    }

    fn tensor_prefix(&self) -> String {
        if self.prefix.is_empty() {
            format!("{}/", self.key)
        } else {
            format!("{}/{}.", self.key, self.prefix)
        }
    }
}

/// The checkpoint file of `path`: a run directory's last checkpoint, or the file itself.
pub fn checkpoint_file(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let file = path.join("checkpoints").join("last.safetensors");
        if !file.is_file() {
            return Err(Error::file(
                path,
                "this run directory has no checkpoint (checkpoints/last.safetensors): the \
                 run ended before its first checkpoint",
            ));
        }
        Ok(file)
    } else if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(Error::file(path, "no such run directory or file"))
    }
}

/// The ResNets a checkpoint holds: from the saved architectures (version 2), else found by
/// their tensors' names (version 1; a CIFAR stem's stride cannot be seen there and is taken
/// as 1).
pub fn backbones(loaded: &Loaded) -> Result<Vec<Backbone>> {
    if !loaded.networks.is_empty() {
        return Ok(loaded
            .networks
            .iter()
            .flat_map(|(key, arch)| {
                arch.resnets().into_iter().map(|(prefix, config)| Backbone {
                    key: key.clone(),
                    prefix,
                    config,
                })
            })
            .collect());
    }
    let mut found = Vec::new();
    for name in loaded.names() {
        let Some((key, rest)) = name.split_once('/') else {
            continue;
        };
        let Some(prefix) = rest.strip_suffix("layer1.0.conv1.weight") else {
            continue;
        };
        if loaded
            .tensor(&format!("{key}/{prefix}conv1.weight"))
            .is_none()
        {
            continue;
        }
        let prefix = prefix.trim_end_matches('.').to_string();
        let mut b = Backbone {
            key: key.to_string(),
            prefix,
            config: ResNetConfig::new(18),
        };
        b.config = torchvision::infer_resnet(&shapes(loaded, &b))?;
        found.push(b);
    }
    found.sort_by_key(|b| b.name());
    Ok(found)
}

/// Each tensor of `b` by its name relative to the ResNet, at torchvision's rank.
fn shapes(loaded: &Loaded, b: &Backbone) -> BTreeMap<String, Vec<usize>> {
    relative(loaded, b)
        .map(|(name, t)| {
            let shape = at_rank(&t.shape, torchvision::rank(&name));
            (name, shape)
        })
        .collect()
}

fn relative<'a>(
    loaded: &'a Loaded,
    b: &Backbone,
) -> impl Iterator<Item = (String, &'a NamedTensor)> + 'a {
    let prefix = b.tensor_prefix();
    loaded.names().filter_map(move |name| {
        let rest = name.strip_prefix(&prefix)?;
        Some((rest.to_string(), loaded.tensor(name)?))
    })
}

/// `shape` without the leading ones that version 1 files padded it with.
fn at_rank(shape: &[usize], rank: usize) -> Vec<usize> {
    let extra = shape.len().saturating_sub(rank);
    if shape[..extra].iter().all(|&d| d == 1) {
        shape[extra..].to_vec()
    } else {
        shape.to_vec()
    }
}

/// The checkpoint keys of the network a method trains, looked for in this order when
/// several hold a ResNet (the momentum copies, `target` and `teacher`, are not).
const TRAINED_KEYS: [&str; 2] = ["online", "student"];

/// The ResNet `net` names in `loaded` (`None`: the only one, else the trained network's:
/// `online`'s, or `student`'s as DINO names it). An unknown name, or a network without a
/// ResNet, is an error listing the ResNets there are.
pub fn choose(loaded: &Loaded, net: Option<&str>) -> Result<Backbone> {
    let all = backbones(loaded)?;
    let names = || {
        all.iter()
            .map(|b| format!("`{}`", b.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if all.is_empty() {
        return Err(Error::file(
            loaded.path(),
            "the checkpoint holds no ResNet (export and eval take ResNet backbones)",
        ));
    }
    let pick = match net {
        None if all.len() == 1 => all.first(),
        None => TRAINED_KEYS
            .iter()
            .find_map(|key| all.iter().find(|b| b.key == *key)),
        Some(n) => {
            let by_key: Vec<_> = all.iter().filter(|b| b.key == n).collect();
            all.iter().find(|b| b.name() == n).or(if by_key.len() == 1 {
                Some(by_key[0])
            } else {
                None
            })
        }
    };
    if let Some(b) = pick {
        return Ok(b.clone());
    }
    let what = match net {
        None => "several networks hold a ResNet: choose one with --net".to_string(),
        Some(n) => match loaded.networks.get(n) {
            Some(Architecture::Resnet(_)) | None => format!("no ResNet named `{n}`"),
            Some(other) => format!(
                "`{n}` is {}, not a ResNet (export and eval take ResNet backbones)",
                kind(other)
            ),
        },
    };
    Err(Error::file(
        loaded.path(),
        format!("{what}; the ResNets there are: {}", names()),
    ))
}

fn kind(a: &Architecture) -> &'static str {
    match a {
        Architecture::Resnet(_) => "a ResNet",
        Architecture::Mlp(_) => "an MLP",
        Architecture::Linear(_) => "a linear layer",
        Architecture::Sequential(_) => "a sequence without a ResNet",
    }
}

/// The tensors of `b` with torchvision's names and shapes, `num_batches_tracked` included
/// (set to the steps trained, which torchvision reads only in a batch norm without momentum).
pub fn torchvision_tensors(loaded: &Loaded, b: &Backbone) -> Vec<NamedTensor> {
    let mut out: Vec<NamedTensor> = relative(loaded, b)
        .map(|(name, t)| {
            let name = torchvision::to_torchvision(&name);
            NamedTensor {
                shape: at_rank(&t.shape, torchvision::rank(&name)),
                name,
                values: t.values.clone(),
            }
        })
        .collect();
    let bns = torchvision::batch_norms(out.iter().map(|t| t.name.as_str()));
    out.extend(bns.into_iter().map(|bn| NamedTensor {
        name: format!("{bn}.num_batches_tracked"),
        shape: vec![],
        values: Values::I64(vec![loaded.next_step as i64]),
    }));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    /// The network exported (`online.0`).
    pub net: String,
    /// Its configuration.
    pub config: ResNetConfig,
    /// The torchvision model it loads into, when it has torchvision's shape.
    pub torchvision_model: Option<String>,
    /// Tensors written.
    pub tensors: usize,
    /// The training steps behind it.
    pub steps: u64,
}

/// Writes the ResNet `net` of the checkpoint at `source` (a run directory or a file) to
/// `out` in torchvision's layout, with its architecture, the run's config and recipe and
/// this sslhost's version in the metadata.
pub fn export(source: &Path, net: Option<&str>, out: &Path) -> Result<Exported> {
    let file = checkpoint_file(source)?;
    if out.is_dir() {
        return Err(Error::file(out, "is a directory; give the file to write"));
    }
    if same_file(&file, out) {
        return Err(Error::file(
            out,
            "is the checkpoint being exported; write elsewhere",
        ));
    }
    let loaded = checkpoint::load(&file)?;
    let b = choose(&loaded, net)?;
    let tensors = torchvision_tensors(&loaded, &b);
    let model = torchvision::model_name(&b.config);
    let mut metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        (
            "architecture".to_string(),
            Architecture::Resnet(b.config.clone()).to_json(),
        ),
        (
            "stem".to_string(),
            if b.config.cifar_stem {
                "cifar"
            } else {
                "imagenet"
            }
            .to_string(),
        ),
        (
            "torchvision_model".to_string(),
            model
                .clone()
                .unwrap_or_else(|| "none (custom widths or blocks)".into()),
        ),
        ("sslhost_version".to_string(), VERSION.to_string()),
        (
            "source".to_string(),
            format!("{} ({})", file.display(), b.name()),
        ),
        ("steps".to_string(), loaded.next_step.to_string()),
    ]);
    if let Some(config) = &loaded.config {
        metadata.insert("config".into(), config.to_string());
    }
    // The recipe beside the checkpoint, for provenance.
    let run_dir = file.parent().and_then(Path::parent);
    if let Some(recipe) = run_dir.and_then(|d| std::fs::read_to_string(d.join("recipe.rhai")).ok())
    {
        metadata.insert("recipe".into(), recipe);
    }
    tensor_file::write(out, &tensors, &metadata)?;
    Ok(Exported {
        net: b.name(),
        config: b.config,
        torchvision_model: model,
        tensors: tensors.len(),
        steps: loaded.next_step,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A trained ResNet read back, and where it came from.
pub struct LoadedBackbone {
    /// The network, in training mode.
    pub net: crate::models::SharedNet,
    /// Its configuration.
    pub config: ResNetConfig,
    /// The file its weights came from.
    pub file: PathBuf,
    /// Which network it was in a checkpoint (`online.0`); `None` for a backbone file.
    pub name: Option<String>,
    /// The training steps behind it, when recorded.
    pub steps: Option<u64>,
    /// The resolved config of the run that trained it, when recorded.
    pub run_config: Option<serde_json::Value>,
}

/// A ResNet with trained weights, from a run directory or checkpoint (its network `net`,
/// as [`choose`] takes it), or from a file in torchvision's layout: one `sslhost export`
/// wrote, or a torchvision state dict saved with `safetensors.torch.save_file` (`fc` and
/// `num_batches_tracked` are ignored). The architecture comes from the file's metadata, else
/// from the weights' shapes; `stem_stride` sets a CIFAR stem's stride, which weights cannot
/// show. Returns the network and its configuration.
pub fn load_backbone(
    path: &Path,
    net: Option<&str>,
    stem_stride: Option<usize>,
    device: &burn::tensor::Device,
) -> Result<LoadedBackbone> {
    let is_checkpoint = |p: &Path| {
        tensor_file::read_metadata(p).map(|m| {
            m.get("format")
                .is_some_and(|f| f.starts_with("sslhost-checkpoint"))
        })
    };
    let (tensors, mut config, file, name, steps, run_config) =
        if path.is_dir() || is_checkpoint(path)? {
            let file = checkpoint_file(path)?;
            let loaded = checkpoint::load(&file)?;
            let b = choose(&loaded, net)?;
            let run_config = loaded.config.clone().or_else(|| saved_config(&file));
            let tensors = torchvision_tensors(&loaded, &b);
            (
                tensors,
                b.config.clone(),
                file,
                Some(b.name()),
                Some(loaded.next_step),
                run_config,
            )
        } else {
            let (tensors, meta) = tensor_file::read(path)?;
            let steps = meta.get("steps").and_then(|s| s.parse().ok());
            let run_config = meta
                .get("config")
                .and_then(|c| serde_json::from_str(c).ok());
            let config = match meta.get("architecture") {
                Some(text) => match Architecture::from_json(text)? {
                    Architecture::Resnet(c) => c,
                    _ => return Err(Error::file(path, "its architecture is not a ResNet")),
                },
                None => {
                    let shapes = tensors
                        .iter()
                        .map(|t| (t.name.clone(), t.shape.clone()))
                        .collect();
                    torchvision::infer_resnet(&shapes).map_err(|e| Error::file(path, e))?
                }
            };
            (tensors, config, path.to_path_buf(), None, steps, run_config)
        };
    if let Some(s) = stem_stride {
        config.stem_stride = s;
    }
    let mut rng = crate::tensor::HostRng::new(0);
    let backbone = crate::models::SharedNet::resnet(&config, &mut rng, device)?;
    let mut values = std::collections::HashMap::new();
    for t in tensors {
        if t.name.starts_with("fc.") || t.name.ends_with("num_batches_tracked") {
            continue;
        }
        let Values::F32(v) = t.values else {
            return Err(Error::file(
                &file,
                format!("`{}` is not a float tensor", t.name),
            ));
        };
        if !(1..=4).contains(&t.shape.len()) {
            return Err(Error::file(
                &file,
                format!("`{}` has shape {:?}", t.name, t.shape),
            ));
        }
        let stored = burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(v, crate::tensor::padded(&t.shape)),
            device,
        );
        values.insert(
            torchvision::from_torchvision(&t.name),
            crate::tensor::DynTensor::from_float4(stored, t.shape.len()),
        );
    }
    backbone.load(&values).map_err(|e| Error::file(&file, e))?;
    Ok(LoadedBackbone {
        net: backbone,
        config,
        file,
        name,
        steps,
        run_config,
    })
}

/// The `config.json` of the run directory holding checkpoint `file` (version 1 checkpoints
/// do not record the config).
fn saved_config(file: &Path) -> Option<serde_json::Value> {
    let run_dir = file.parent()?.parent()?;
    let text = std::fs::read_to_string(run_dir.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}
