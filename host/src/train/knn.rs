//! Weighted k-nearest-neighbour accuracy of embeddings: the monitor of self-supervised runs.
//!
//! Each test embedding votes with its `k` most cosine-similar training embeddings, each
//! neighbour weighted by `exp(similarity / temperature)` (Wu et al. 2018, as solo-learn and
//! lightly monitor runs); the class with the largest total weight is the prediction.

use burn::tensor::{Device, Int, Tensor};
use rayon::prelude::*;

use crate::augment::Transform;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::SharedNet;
use crate::tensor::{DynTensor, HostRng, unit_rows};

/// Settings of the kNN monitor.
#[derive(Clone, Debug)]
pub struct KnnConfig {
    /// Neighbours that vote (200 in the SSL literature).
    pub k: usize,
    /// Temperature of the vote weights (0.1).
    pub temperature: f64,
    /// Images encoded (and test rows compared) per batch.
    pub batch_size: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        KnnConfig {
            k: 200,
            temperature: 0.1,
            batch_size: 256,
        }
    }
}

/// One kNN evaluation: the embeddings of `encoder` (or the raw pixels, flattened, without
/// one) of `test` against `train`, with `transform` applied to the images first.
#[derive(Clone, Copy)]
pub struct KnnTask<'a> {
    /// The encoder, or `None` for the raw pixels.
    pub encoder: Option<&'a SharedNet>,
    /// The images that vote.
    pub train: &'a Dataset,
    /// The images whose labels are predicted.
    pub test: &'a Dataset,
    /// The vote's settings.
    pub config: &'a KnnConfig,
    /// The view applied to every image before encoding.
    pub transform: Option<&'a Transform>,
}

/// The kNN monitor of a run: [`evaluate`] as a recipe calls it every few epochs. The raw
/// pixels' accuracy (the anchor printed beside the encoder's) depends only on the splits and
/// the settings, so it is computed once and remembered; a dataset without labels is skipped
/// with one log line a run rather than failing the run.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    anchors: std::collections::HashMap<String, f64>,
    said_unlabelled: bool,
}

impl Monitor {
    /// [`evaluate`]'s accuracy, or `None` when a split has no labels.
    pub fn accuracy(
        &mut self,
        task: KnnTask,
        device: &Device,
        rng: &mut HostRng,
    ) -> Result<Option<f64>> {
        let (train, test) = (task.train, task.test);
        if !train.labelled() || !test.labelled() {
            if !std::mem::replace(&mut self.said_unlabelled, true) {
                let name = if train.labelled() {
                    test.name()
                } else {
                    train.name()
                };
                tracing::info!("kNN monitor skipped: dataset {name} has no labels");
            }
            return Ok(None);
        }
        let key = task.encoder.is_none().then(|| {
            format!(
                "{}:{}|{}:{}|{:?}|{:?}",
                train.name(),
                train.len(),
                test.name(),
                test.len(),
                task.config,
                task.transform
            )
        });
        if let Some(hit) = key.as_ref().and_then(|k| self.anchors.get(k)) {
            return Ok(Some(*hit));
        }
        let accuracy = evaluate(task, device, rng)?;
        if let Some(key) = key {
            self.anchors.insert(key, accuracy);
        }
        Ok(Some(accuracy))
    }
}

/// Weighted kNN top-1 accuracy of `task`. The encoder runs as an evaluation copy (running
/// statistics, no autodiff graph kept per batch); it is untouched. `k` must be smaller than
/// the train set.
pub fn evaluate(task: KnnTask, device: &Device, rng: &mut HostRng) -> Result<f64> {
    let KnnTask {
        encoder,
        train,
        test,
        config,
        transform,
    } = task;
    if config.k >= train.len() {
        return Err(Error::Invalid(format!(
            "knn_accuracy: k = {} needs a train set larger than k, which has {} images \
             (every test image would vote with the whole set)",
            config.k,
            train.len()
        )));
    }
    if !train.labelled() || !test.labelled() {
        return Err(Error::Invalid(format!(
            "knn_accuracy: dataset {} has no labels to vote with",
            if train.labelled() {
                test.name()
            } else {
                train.name()
            }
        )));
    }
    if train.classes() != test.classes() {
        return Err(Error::Invalid(format!(
            "knn_accuracy: train has {} classes, test {}",
            train.classes(),
            test.classes()
        )));
    }
    let te = features(encoder, test, config.batch_size, transform, device, rng)?;
    let te_f = unit_rows(te.0);
    if encoder.is_none() {
        // Raw pixels are wide (2352 values for a 28x28 RGB image): the train set's would be
        // 560 MB of Fashion-MNIST, held twice (the rows and their unit rows).
        let test = (&te_f, &te.1);
        return streamed_accuracy(train, test, config, transform, RAW_CHUNK, device, rng);
    }
    let tr = features(encoder, train, config.batch_size, transform, device, rng)?;
    let tr_f = unit_rows(tr.0);
    accuracy((&tr_f, &tr.1), (&te_f, &te.1), train.classes(), config)
}

/// Train images read at a time by [`streamed_accuracy`].
const RAW_CHUNK: usize = 1024;

/// The weighted kNN vote of `test`'s unit rows among `train`'s raw pixels (flattened, at
/// unit length), without holding the train set's pixels: they are read `chunk` images at a
/// time, and each test row keeps the `k` most similar training rows seen so far. The same
/// neighbours, votes and prediction as [`accuracy`] (ties aside); memory is the test rows,
/// one chunk and `k` candidates a test row.
fn streamed_accuracy(
    train: &Dataset,
    test: (&Tensor<2>, &Tensor<1, Int>),
    config: &KnnConfig,
    transform: Option<&Transform>,
    chunk: usize,
    device: &Device,
    rng: &mut HostRng,
) -> Result<f64> {
    let (test_f, test_y) = test;
    let n_test = test_f.dims()[0];
    let k = config.k.min(train.len()).max(1);
    // Each test row's k best (similarity, label) so far: k entries a row, merged with a
    // chunk's candidates in one scratch vector a thread.
    let mut best: Vec<Vec<(f32, i32)>> = vec![Vec::with_capacity(k); n_test];
    for start in (0..train.len()).step_by(chunk.max(1)) {
        let end = (start + chunk).min(train.len());
        let (images, labels) = train.tensors(start, end, device)?;
        let rows = pixel_rows(prepared(images, transform, rng)?)?;
        let rows = unit_rows(rows.float_rank::<2>("knn")?.inner());
        if rows.dims()[1] != test_f.dims()[1] {
            return Err(Error::Shape(format!(
                "knn: train images have {} values, test images {}",
                rows.dims()[1],
                test_f.dims()[1]
            )));
        }
        let sim = crate::tensor::float_values(crate::kernels::linear(test_f.clone(), rows))?;
        let labels = crate::tensor::int_values(labels.int_rank::<1>("knn")?.inner())?;
        let labels: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
        best.par_iter_mut()
            .zip(sim.par_chunks(end - start))
            .for_each_init(Vec::new, |scratch, (kept, row)| {
                scratch.clear();
                scratch.extend_from_slice(kept);
                scratch.extend(row.iter().copied().zip(labels.iter().copied()));
                if scratch.len() > k {
                    scratch.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                }
                kept.clear();
                kept.extend_from_slice(&scratch[..scratch.len().min(k)]);
            });
    }
    let truth = crate::tensor::int_values(test_y.clone())?;
    let classes = train.classes();
    let correct = best
        .par_iter()
        .zip(&truth)
        .filter(|(kept, t)| {
            let neighbours = kept.iter().map(|&(s, label)| (s, i64::from(label)));
            weighted_vote(neighbours, classes, config.temperature) as i64 == **t
        })
        .count();
    Ok(correct as f64 / n_test as f64)
}

/// The class of the largest total weight `exp(similarity / temperature)` over `neighbours`
/// (similarity, label); the first of equal totals, as argmax gives. Labels outside
/// `0..classes` do not vote.
fn weighted_vote(
    neighbours: impl Iterator<Item = (f32, i64)>,
    classes: usize,
    temperature: f64,
) -> usize {
    let mut scores = vec![0.0f64; classes];
    for (similarity, label) in neighbours {
        if let Some(score) = usize::try_from(label).ok().and_then(|l| scores.get_mut(l)) {
            *score += (f64::from(similarity) / temperature).exp();
        }
    }
    let mut best = 0;
    for (c, &score) in scores.iter().enumerate() {
        if score > scores[best] {
            best = c;
        }
    }
    best
}

/// `encoder`'s features `[N, D]` of every image of `dataset` (or the raw pixels, flattened,
/// without an encoder) and the labels `[N]`, `transform` applied to the images first. The
/// encoder runs as an evaluation copy (running statistics, no autodiff graph); it is
/// untouched.
pub fn features(
    encoder: Option<&SharedNet>,
    dataset: &Dataset,
    batch_size: usize,
    transform: Option<&Transform>,
    device: &Device,
    rng: &mut HostRng,
) -> Result<(Tensor<2>, Tensor<1, Int>)> {
    // A tracked forward over a whole dataset would hold every activation until a backward.
    let encoder = encoder.map(|e| e.evaluation_copy());
    let mut encode = |images: DynTensor| -> Result<DynTensor> {
        let images = prepared(images, transform, rng)?;
        match &encoder {
            Some(e) => e.forward(&images),
            None => pixel_rows(images),
        }
    };
    // One input shape on a GPU (its kernels are tuned per shape); the CPU needs none.
    let same_shape = crate::device::gpu_path(device);
    embed(dataset, batch_size, same_shape, device, &mut encode)
}

/// Images `[B, C, H, W]` as an encoder or the raw-pixel vote reads them: `transform`
/// applied, without autodiff.
fn prepared(
    images: DynTensor,
    transform: Option<&Transform>,
    rng: &mut HostRng,
) -> Result<DynTensor> {
    let images = match transform {
        Some(t) => DynTensor::from_float4(t.apply(images.float4("knn")?, rng)?, 4),
        None => images,
    };
    Ok(images.without_autodiff())
}

/// Images `[B, C, H, W]` as rows of raw pixels `[B, C * H * W]`.
fn pixel_rows(images: DynTensor) -> Result<DynTensor> {
    let n = images.shape()[0] as i64;
    images.reshape(&[n, -1])
}

/// Embeddings of a whole dataset: `encode` maps images `[B, C, H, W]` to features `[B, D]`.
/// Rows come back as the encoder gave them, on plain (non-autodiff) tensors.
///
/// With `same_shape`, every batch `encode` sees has `batch_size` images: a short last batch
/// is widened backwards over images already encoded, and only its new rows are kept. A GPU
/// backend compiles and autotunes its kernels per input shape (about 100 s for ResNet-18 on
/// CUDA), so a short last batch would pay that again twice (train and test) for a handful
/// of images. `encode` must treat images independently (an evaluation copy does).
pub fn embed(
    dataset: &Dataset,
    batch_size: usize,
    same_shape: bool,
    device: &Device,
    encode: &mut dyn FnMut(DynTensor) -> Result<DynTensor>,
) -> Result<(Tensor<2>, Tensor<1, Int>)> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let n = dataset.len();
    let batch_size = batch_size.max(1);
    for start in (0..n).step_by(batch_size) {
        let (from, end) = batch_rows(start, n, batch_size, same_shape);
        let (images, y) = dataset.tensors(from, end, device)?;
        let f = encode(images)?;
        let s = f.shape();
        if s.len() != 2 || s[0] != end - from {
            return Err(Error::Shape(format!(
                "knn: the encoder must map a batch of {} images to [{}, D], got {s:?}",
                end - from,
                end - from
            )));
        }
        // The batch's new rows: start..end.
        let (skip, new) = (start - from, end - start);
        let f = f
            .float_rank::<2>("knn")?
            .inner()
            .detach()
            .narrow(0, skip, new);
        features.push(f);
        labels.push(y.int_rank::<1>("knn")?.inner().narrow(0, skip, new));
    }
    if features.is_empty() {
        return Err(Error::Invalid(format!(
            "knn: dataset {} is empty",
            dataset.name()
        )));
    }
    Ok((Tensor::cat(features, 0), Tensor::cat(labels, 0)))
}

/// The rows `from..end` of the batch that starts at `start` among `n`: `start..end`, or with
/// `same_shape` (and `n >= batch_size`) a short last batch widened backwards to `batch_size`
/// rows, so that every batch has one shape. Only rows `start..end` are new.
fn batch_rows(start: usize, n: usize, batch_size: usize, same_shape: bool) -> (usize, usize) {
    let end = (start + batch_size).min(n);
    if same_shape && n >= batch_size {
        (end - batch_size, end)
    } else {
        (start, end)
    }
}

/// Top-1 accuracy of the weighted kNN vote of `test` embeddings among `train` embeddings
/// (rows of unit length: the vote's similarity is their dot product, the cosine).
pub fn accuracy(
    train: (&Tensor<2>, &Tensor<1, Int>),
    test: (&Tensor<2>, &Tensor<1, Int>),
    classes: usize,
    config: &KnnConfig,
) -> Result<f64> {
    // On the CPU, a partial selection on the host (O(n) per row) beats a full sort of every
    // row, which is how the backend's top-k works (it took most of a 10-minute run's kNN).
    let on_host = !crate::device::gpu_path(&train.0.device());
    vote(train, test, classes, config, on_host)
}

/// The kNN vote with the top-k taken on the host or on the device.
fn vote(
    train: (&Tensor<2>, &Tensor<1, Int>),
    test: (&Tensor<2>, &Tensor<1, Int>),
    classes: usize,
    config: &KnnConfig,
    on_host: bool,
) -> Result<f64> {
    let (train_f, train_y) = train;
    let (test_f, test_y) = test;
    let [n_train, d] = train_f.dims();
    let [n_test, d2] = test_f.dims();
    if d != d2 {
        return Err(Error::Shape(format!(
            "knn: train features have {d} dims, test features {d2}"
        )));
    }
    if config.k == 0 || config.temperature <= 0.0 {
        return Err(Error::Invalid(format!(
            "knn: k must be >= 1 and temperature > 0, got k {} and temperature {}",
            config.k, config.temperature
        )));
    }
    let k = config.k.min(n_train);
    let host_labels = if on_host {
        Some(crate::tensor::int_values(train_y.clone())?)
    } else {
        None
    };
    let mut correct = 0i64;
    let batch_size = config.batch_size.max(1);
    for start in (0..n_test).step_by(batch_size) {
        // On the device every batch has the same shape (as in `embed`): a short last batch
        // is widened backwards, and only its new rows are counted.
        let (from, end) = batch_rows(start, n_test, batch_size, !on_host);
        let (b, rows) = (end - start, end - from);
        // test · trainᵀ as a linear layer with the train rows as its weight: on the CPU one
        // GEMM that reads `train` in place, where a matmul with a transposed view copied the
        // 60000 x D bank on every batch (8% of a preset's kNN).
        let sim = crate::kernels::linear(test_f.clone().narrow(0, from, rows), train_f.clone());
        let truth = test_y.clone().narrow(0, from, rows);
        correct += match &host_labels {
            Some(labels) => {
                let sim = crate::tensor::float_values(sim)?;
                let truth = crate::tensor::int_values(truth)?;
                let votes = Votes {
                    labels,
                    classes,
                    k,
                    temperature: config.temperature,
                };
                // One partial selection per row, the rows over the pool's threads.
                sim.par_chunks(n_train)
                    .zip(&truth)
                    .filter(|(row, t)| votes.predict(row) as i64 == **t)
                    .count() as i64
            }
            None => {
                let (top_sim, top_idx) = sim.topk_with_indices(k, 1);
                let neighbour_labels = train_y
                    .clone()
                    .select(0, top_idx.reshape([rows * k]))
                    .reshape([rows, k]);
                let votes: Tensor<3> = neighbour_labels.one_hot::<3>(classes).float();
                let weights = top_sim
                    .div_scalar(config.temperature)
                    .exp()
                    .reshape([rows, k, 1]);
                let scores = votes.mul(weights).sum_dim(1).reshape([rows, classes]);
                let predicted = scores.argmax(1).reshape([rows]);
                let hits = predicted.equal(truth).int();
                hits.narrow(0, start - from, b).sum().into_scalar::<i64>()
            }
        };
    }
    Ok(correct as f64 / n_test as f64)
}

/// The weighted vote of one test row's `k` most similar training rows, on the host.
struct Votes<'a> {
    labels: &'a [i64],
    classes: usize,
    k: usize,
    temperature: f64,
}

impl Votes<'_> {
    /// The predicted class for one row of similarities to every training embedding.
    fn predict(&self, similarities: &[f32]) -> usize {
        let mut order: Vec<u32> = (0..similarities.len() as u32).collect();
        let by_similarity =
            |a: &u32, b: &u32| similarities[*b as usize].total_cmp(&similarities[*a as usize]);
        if self.k < order.len() {
            order.select_nth_unstable_by(self.k - 1, by_similarity);
        }
        let neighbours = order[..self.k]
            .iter()
            .map(|&i| (similarities[i as usize], self.labels[i as usize]));
        weighted_vote(neighbours, self.classes, self.temperature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn feats(rows: &[[f32; 2]], device: &Device) -> Tensor<2> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), 2]), device);
        let norm = t.clone().powf_scalar(2.0).sum_dim(1).sqrt();
        t.div(norm)
    }

    fn labels(v: &[i64], device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    #[test]
    fn same_shape_batches_embed_the_same_rows() {
        let device = Device::flex();
        // 10 images of 1x1x2 pixels, batches of 4: the last batch holds 2 images.
        let pixels: Vec<u8> = (0..20u8).map(|v| v * 7 % 23).collect();
        let labels: Vec<i64> = (0..10).map(|i| i % 3).collect();
        let data = Dataset::from_memory(
            "tiny",
            "test",
            pixels,
            [1, 1, 2],
            labels.clone(),
            crate::data::numbered_classes(3),
        )
        .unwrap();
        let run = |same_shape: bool| {
            let mut sizes = Vec::new();
            let mut encode = |images: DynTensor| {
                sizes.push(images.shape()[0]);
                let n = images.shape()[0] as i64;
                images.reshape(&[n, -1])
            };
            let (f, y) = embed(&data, 4, same_shape, &device, &mut encode).unwrap();
            let f = crate::tensor::float_values(f).unwrap();
            let y = crate::tensor::int_values(y).unwrap();
            (f, y, sizes)
        };
        let (f_short, y_short, sizes_short) = run(false);
        let (f_same, y_same, sizes_same) = run(true);
        assert_eq!(sizes_short, [4, 4, 2]);
        assert_eq!(sizes_same, [4, 4, 4]);
        assert_eq!(f_short.len(), 20);
        assert_eq!(f_short, f_same);
        assert_eq!(y_short, labels);
        assert_eq!(y_same, labels);
    }

    #[test]
    fn streamed_raw_pixels_vote_as_the_whole_bank_does() {
        let device = Device::flex();
        // 300 train and 60 test images of 2x3 pixels in 4 classes; chunks of 7 images.
        let image =
            |i: usize| -> Vec<u8> { (0..6).map(|j| ((i * 37 + j * 101) % 251) as u8).collect() };
        let set = |name: &str, n: usize, offset: usize| {
            Dataset::from_memory(
                "tiny",
                name,
                (0..n).flat_map(|i| image(i + offset)).collect(),
                [1, 2, 3],
                (0..n).map(|i| ((i + offset) % 4) as i64).collect(),
                crate::data::numbered_classes(4),
            )
            .unwrap()
        };
        let (train, test) = (set("train", 300, 0), set("test", 60, 1000));
        let mut rng = HostRng::new(0);
        for k in [1, 5, 20] {
            let config = KnnConfig {
                k,
                ..KnnConfig::default()
            };
            let tr = features(None, &train, 64, None, &device, &mut rng).unwrap();
            let te = features(None, &test, 64, None, &device, &mut rng).unwrap();
            let (tr_f, te_f) = (unit_rows(tr.0), unit_rows(te.0));
            let whole = accuracy((&tr_f, &tr.1), (&te_f, &te.1), 4, &config).unwrap();
            let streamed =
                streamed_accuracy(&train, (&te_f, &te.1), &config, None, 7, &device, &mut rng)
                    .unwrap();
            assert_eq!(whole, streamed, "k = {k}");
            assert!(whole > 0.0, "k = {k}");
        }
    }

    #[test]
    fn weighted_votes_pick_the_heavier_class() {
        let device = Device::flex();
        // Class 0 points east, class 1 north; one class-1 point sits close to east.
        let train = feats(
            &[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 0.05]],
            &device,
        );
        let train_y = labels(&[0, 0, 1, 1, 1], &device);
        // Test: east (true 0), north (true 1), north-east leaning north (true 1).
        let test = feats(&[[1.0, 0.02], [0.05, 1.0], [0.6, 1.0]], &device);
        let test_y = labels(&[0, 1, 1], &device);
        let config = KnnConfig {
            k: 3,
            temperature: 0.1,
            batch_size: 2,
        };
        let acc = accuracy((&train, &train_y), (&test, &test_y), 2, &config).unwrap();
        // East: neighbours 0, 0, 1 (the close class-1 point): weights favour class 0 (two
        // votes at similarity ~1). North: 1, 1 and a far 0. North-east: 1, 1 win.
        assert_eq!(acc, 1.0);
        // With k = 1 and a test point nearest to the stray class-1 point, the vote flips.
        let stray = feats(&[[1.0, 0.05]], &device);
        let one = KnnConfig { k: 1, ..config };
        let acc = accuracy(
            (&train, &train_y),
            (&stray, &labels(&[0], &device)),
            2,
            &one,
        )
        .unwrap();
        assert_eq!(acc, 0.0);
    }

    #[test]
    fn host_and_device_votes_agree() {
        let device = Device::flex();
        let mut rng = crate::tensor::HostRng::new(5);
        let unit = |n: usize, rng: &mut crate::tensor::HostRng| {
            let x = rng.randn(&[n, 8], &device).unwrap();
            crate::tensor::unit_rows(x.float_rank::<2>("test").unwrap())
        };
        let train = unit(300, &mut rng);
        let test = unit(120, &mut rng);
        let train_y = labels(&(0..300).map(|i| i % 4).collect::<Vec<_>>(), &device);
        let test_y = labels(&(0..120).map(|i| (i * 7) % 4).collect::<Vec<_>>(), &device);
        for k in [1, 7, 50, 400] {
            let config = KnnConfig {
                k,
                temperature: 0.1,
                batch_size: 64,
            };
            let host = vote((&train, &train_y), (&test, &test_y), 4, &config, true).unwrap();
            let dev = vote((&train, &train_y), (&test, &test_y), 4, &config, false).unwrap();
            assert_eq!(host, dev, "k {k}");
            assert!(host > 0.0 && host < 1.0);
        }
    }
}
