//! `sslhost eval`: a trained backbone's kNN and offline linear accuracy on a labelled
//! dataset, written to `eval.json` beside the checkpoint or file.
//!
//! The backbone's features of the train and test splits are computed once (evaluation mode,
//! the whole image resized to the recipe's view size and normalised as the recipes' evaluation
//! view does), then serve every kNN and the linear classifier.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use super::export::{self, LoadedBackbone};
use super::knn::{self, KnnConfig};
use super::linear_eval::{self, LinearEvalConfig, LinearEvalResult};
use crate::augment::{Augment, RandomResizedCrop, Transform};
use crate::data::{self, DatasetOptions, Locations, Split};
use crate::error::{Error, Result};
use crate::tensor::{DynTensor, HostRng};

/// What to evaluate, on what, and how.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// A run directory, a checkpoint, an exported backbone or a torchvision state dict.
    pub source: PathBuf,
    /// Which network of a checkpoint (see [`export::choose`]).
    pub net: Option<String>,
    /// The labelled dataset (a name or a folder); default: the run's `data`.
    pub dataset: Option<String>,
    /// Where dataset files are looked for first (`--data`).
    pub data_root: Option<PathBuf>,
    /// The first N images of each split (default: the run's `limit`; 0 = all).
    pub limit: Option<usize>,
    /// The side images are resized to (default: the run's `size`, else the dataset's).
    pub size: Option<usize>,
    /// The kNN neighbourhoods to score (empty: no kNN).
    pub knn_k: Vec<usize>,
    /// The linear protocol (`None`: no linear evaluation).
    pub linear: Option<LinearEvalConfig>,
    /// Seed of the linear classifier's shuffles.
    pub seed: u64,
}

/// One kNN score.
#[derive(Debug, Clone, Serialize)]
pub struct KnnScore {
    /// Neighbours that vote.
    pub k: usize,
    /// Temperature of the weights.
    pub temperature: f64,
    /// Top-1 on the test split.
    pub top1: f64,
}

/// The linear evaluation's protocol and result.
#[derive(Debug, Clone, Serialize)]
pub struct LinearScore {
    /// The protocol.
    pub protocol: LinearEvalConfig,
    /// What it reached.
    #[serde(flatten)]
    pub result: LinearEvalResult,
}

/// What `eval.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The file the weights came from.
    pub weights: String,
    /// The network in a checkpoint (`online.0`).
    pub net: Option<String>,
    /// Training steps behind the weights, when recorded.
    pub steps: Option<u64>,
    /// The dataset, as `dataset(..)` names it, and where it was read from.
    pub dataset: String,
    /// Where its files came from.
    pub dataset_source: String,
    /// Images of the train and test splits used.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// The side images were resized to.
    pub image_size: usize,
    /// Feature width.
    pub features: usize,
    /// kNN scores (weighted vote, cosine similarity).
    pub knn: Vec<KnnScore>,
    /// The offline linear evaluation.
    pub linear: Option<LinearScore>,
    /// Seconds for the features, the kNN and the linear classifier together.
    pub seconds: f64,
    /// The sslhost that evaluated.
    pub sslhost_version: String,
}

/// Runs the evaluation and writes `eval.json`; the report and the path written.
pub fn evaluate(req: &EvalRequest, device: &Device) -> Result<(EvalReport, PathBuf)> {
    let started = Instant::now();
    let backbone = export::load_backbone(&req.source, req.net.as_deref(), None, device)?;
    let run = |key: &str| {
        backbone
            .run_config
            .as_ref()
            .and_then(|c| c.get(key).cloned())
    };
    let dataset = match (&req.dataset, run("data")) {
        (Some(d), _) => d.clone(),
        (None, Some(serde_json::Value::String(d))) => d,
        _ => {
            return Err(Error::Invalid(format!(
                "{}: no run config names the dataset; give the labelled dataset with \
                 --eval-data NAME_OR_FOLDER",
                req.source.display()
            )));
        }
    };
    let limit = match req.limit {
        Some(l) => l,
        None => run("limit").and_then(|v| v.as_u64()).unwrap_or(0) as usize,
    };
    let channels = backbone.config.in_channels;
    let open = |split| {
        let opts = DatasetOptions {
            split,
            rgb: channels == 3,
            limit: (limit > 0).then_some(limit),
            ..DatasetOptions::default()
        };
        data::open(&dataset, &opts, &Locations::new(req.data_root.clone()))
    };
    let (train, test) = (open(Split::Train)?, open(Split::Test)?);
    if train.channels() != channels {
        return Err(Error::Invalid(format!(
            "dataset {dataset} has {} channels; the backbone takes {channels}",
            train.channels()
        )));
    }
    if !train.labelled() || !test.labelled() {
        return Err(Error::Invalid(format!(
            "dataset {dataset} has no labels (a folder of images without class sub-folders): \
             evaluation needs a labelled dataset; name one with --eval-data"
        )));
    }
    if train.classes() != test.classes() || train.classes() < 2 {
        return Err(Error::Invalid(format!(
            "dataset {dataset}: evaluation needs labels of 2+ classes in both splits, got {} \
             and {}",
            train.classes(),
            test.classes()
        )));
    }
    let size = match (req.size, run("size").and_then(|v| v.as_u64())) {
        (Some(s), _) => s,
        (None, Some(s)) => s as usize,
        (None, None) => train.height(),
    };
    let view = Transform::new(vec![
        Augment::RandomResizedCrop(RandomResizedCrop {
            size: [size, size],
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
        }),
        Augment::Normalize {
            mean: vec![0.5],
            std: vec![0.5],
        },
    ])?;
    let (tr, te) = features(&backbone, &train, &test, &view, device)?;
    let features = tr.0.dims()[1];

    let mut knn = Vec::new();
    if !req.knn_k.is_empty() {
        let (tr_f, te_f) = (
            crate::tensor::unit_rows(tr.0.clone()),
            crate::tensor::unit_rows(te.0.clone()),
        );
        for &k in &req.knn_k {
            if k >= train.len() {
                tracing::warn!(
                    "kNN at k={k} skipped: the train split has only {} images",
                    train.len()
                );
                continue;
            }
            let config = KnnConfig {
                k,
                ..KnnConfig::default()
            };
            let top1 = knn::accuracy((&tr_f, &tr.1), (&te_f, &te.1), train.classes(), &config)?;
            knn.push(KnnScore {
                k,
                temperature: config.temperature,
                top1,
            });
        }
    }
    let linear = match &req.linear {
        Some(protocol) => {
            let mut rng = HostRng::new(req.seed);
            let result = linear_eval::linear_eval(
                (&tr.0, &tr.1),
                (&te.0, &te.1),
                train.classes(),
                protocol,
                &mut rng,
            )?;
            Some(LinearScore {
                protocol: protocol.clone(),
                result,
            })
        }
        None => None,
    };
    let report = EvalReport {
        weights: backbone.file.display().to_string(),
        net: backbone.name.clone(),
        steps: backbone.steps,
        dataset: train.name().to_string(),
        dataset_source: train.source().to_string(),
        train_images: train.len(),
        test_images: test.len(),
        image_size: size,
        features,
        knn,
        linear,
        seconds: started.elapsed().as_secs_f64(),
        sslhost_version: super::checkpoint::VERSION.to_string(),
    };
    let out = report_path(&req.source, &backbone.file);
    let text = serde_json::to_string_pretty(&report).expect("plain data") + "\n";
    crate::files::write_atomic(&out, text.as_bytes())?;
    Ok((report, out))
}

/// Features `[N, D]` and labels of both splits, the backbone in evaluation mode.
#[allow(clippy::type_complexity)]
fn features(
    backbone: &LoadedBackbone,
    train: &data::Dataset,
    test: &data::Dataset,
    view: &Transform,
    device: &Device,
) -> Result<(
    (
        burn::tensor::Tensor<2>,
        burn::tensor::Tensor<1, burn::tensor::Int>,
    ),
    (
        burn::tensor::Tensor<2>,
        burn::tensor::Tensor<1, burn::tensor::Int>,
    ),
)> {
    let encoder = backbone.net.evaluation_copy();
    let mut rng = HostRng::new(0);
    let mut encode = |images: DynTensor| -> Result<DynTensor> {
        let x = view.apply(images.float4("eval")?, &mut rng)?;
        encoder.forward(&DynTensor::from_float4(x, 4).without_autodiff())
    };
    let same_shape = crate::device::gpu_path(device);
    let tr = knn::embed(train, 256, same_shape, device, &mut encode)?;
    let te = knn::embed(test, 256, same_shape, device, &mut encode)?;
    Ok((tr, te))
}

/// `eval.json` in the run directory, or beside the file evaluated.
fn report_path(source: &Path, weights: &Path) -> PathBuf {
    if source.is_dir() {
        source.join("eval.json")
    } else {
        weights.parent().unwrap_or(Path::new(".")).join("eval.json")
    }
}
