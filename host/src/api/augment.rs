//! `transform([..])` and the augmentation ops in scripts.

use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};

use crate::api::args;
use crate::augment::{Augment, Transform};
use crate::error::{Error, Result};

/// Augmentations: ops that build a `Transform`, and `t.apply(images)`.
#[export_module]
pub mod augment_api {
    use rhai::{Array, Dynamic, Map};

    use crate::api::args::{self, Options, RhaiResult, run};
    use crate::augment::{ColorJitter, GaussianBlur, RandomResizedCrop};
    use crate::error::Error;
    use crate::session;
    use crate::tensor::DynTensor;

    use super::{ops_list, pair, probability, size_arg};

    /// One augmentation op; combine ops with `transform([..])`.
    pub type Augment = crate::augment::Augment;

    /// A sequence of augmentation ops; `t.apply(images)` makes a batch of views.
    pub type Transform = crate::augment::Transform;

    /// A random crop covering 8%–100% of the image with aspect ratio 3/4–4/3, resized to
    /// `size` (an integer, or `[height, width]`) with antialiased bilinear interpolation, as
    /// torchvision's `RandomResizedCrop`.
    ///
    /// ```rhai
    /// let crop = random_resized_crop(32);
    /// ```
    #[rhai_fn(name = "random_resized_crop", return_raw)]
    pub fn random_resized_crop_default(size: Dynamic) -> RhaiResult<Augment> {
        random_resized_crop(size, Map::new())
    }

    /// A random resized crop with options `scale: [low, high]` (fraction of the area, default
    /// `[0.08, 1.0]`) and `ratio: [low, high]` (width / height, default `[0.75, 1.333]`).
    ///
    /// ```rhai
    /// let crop = random_resized_crop(32, #{ scale: [0.2, 1.0] });
    /// let wide = random_resized_crop([24, 32], #{ scale: [0.5, 1.0], ratio: [1.0, 2.0] });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn random_resized_crop(size: Dynamic, options: Map) -> RhaiResult<Augment> {
        run(|| {
            let owner = "random_resized_crop";
            Options::new(&options, owner, &["scale", "ratio"])?;
            let [h, w] = size_arg(&size, owner)?;
            let mut crop = RandomResizedCrop::new(h);
            crop.size = [h, w];
            crop.scale = pair(&options, owner, "scale", crop.scale)?;
            crop.ratio = pair(&options, owner, "ratio", crop.ratio)?;
            let op = Augment::RandomResizedCrop(crop);
            op.check()?;
            Ok(op)
        })
    }

    /// Flips each image horizontally with probability `p`.
    ///
    /// ```rhai
    /// let flip = hflip(0.5);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn hflip(p: Dynamic) -> RhaiResult<Augment> {
        run(|| {
            Ok(Augment::HorizontalFlip {
                p: probability(&p, "hflip")?,
            })
        })
    }

    /// Colour jitter with torchvision's semantics, applied to every image: brightness,
    /// contrast and saturation factors uniform in `[max(0, 1 − x), 1 + x]`, a hue shift in
    /// `[−hue, hue]` (at most 0.5), the four in a random order per image. A zero skips that
    /// adjustment. On one-channel images saturation and hue do nothing.
    ///
    /// ```rhai
    /// let jitter = color_jitter(0.4, 0.4, 0.2, 0.1);
    /// ```
    #[rhai_fn(name = "color_jitter", return_raw)]
    pub fn color_jitter_default(
        brightness: Dynamic,
        contrast: Dynamic,
        saturation: Dynamic,
        hue: Dynamic,
    ) -> RhaiResult<Augment> {
        color_jitter(brightness, contrast, saturation, hue, Map::new())
    }

    /// Colour jitter applied to each image with probability `p` (option, default 1.0), as
    /// `RandomApply([ColorJitter(..)], p)`.
    ///
    /// ```rhai
    /// let jitter = color_jitter(0.4, 0.4, 0.2, 0.1, #{ p: 0.8 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn color_jitter(
        brightness: Dynamic,
        contrast: Dynamic,
        saturation: Dynamic,
        hue: Dynamic,
        options: Map,
    ) -> RhaiResult<Augment> {
        run(|| {
            let o = Options::new(&options, "color_jitter", &["p"])?;
            let jitter = ColorJitter::new(
                args::number(&brightness, "color_jitter brightness")?,
                args::number(&contrast, "color_jitter contrast")?,
                args::number(&saturation, "color_jitter saturation")?,
                args::number(&hue, "color_jitter hue")?,
            )
            .with_p(o.number("p", 1.0)?);
            let op = Augment::ColorJitter(jitter);
            op.check()?;
            Ok(op)
        })
    }

    /// Replaces each image by its luma (0.2989 R + 0.587 G + 0.114 B) with probability `p`;
    /// the image keeps its channel count. One-channel images are unchanged.
    ///
    /// ```rhai
    /// let grey = grayscale(0.2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn grayscale(p: Dynamic) -> RhaiResult<Augment> {
        run(|| {
            Ok(Augment::Grayscale {
                p: probability(&p, "grayscale")?,
            })
        })
    }

    /// Gaussian blur with options `p` (probability per image, default 0.5), `sigma: [low,
    /// high]` (uniform per image, default `[0.1, 2.0]`) and `kernel_size` (odd; default about
    /// 10% of the image side: 3 at 32 px, 23 at 224 px). Reflect padding, as torchvision.
    ///
    /// ```rhai
    /// let blur = gaussian_blur(#{ p: 1.0 });
    /// let strong = gaussian_blur(#{ p: 0.5, sigma: [1.0, 3.0], kernel_size: 5 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn gaussian_blur(options: Map) -> RhaiResult<Augment> {
        run(|| {
            let owner = "gaussian_blur";
            let o = Options::new(&options, owner, &["p", "sigma", "kernel_size"])?;
            let mut blur = GaussianBlur::new(o.number("p", 0.5)?);
            blur.sigma = pair(&options, owner, "sigma", blur.sigma)?;
            if options.contains_key("kernel_size") {
                blur.kernel_size = Some(o.usize("kernel_size", 1)?);
            }
            let op = Augment::GaussianBlur(blur);
            op.check()?;
            Ok(op)
        })
    }

    /// Solarization: with probability `p` (default 0.5), pixels at or above `threshold`
    /// (default 0.5) become `1 − x`.
    ///
    /// ```rhai
    /// let sol = solarize(#{ p: 0.2 });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn solarize(options: Map) -> RhaiResult<Augment> {
        run(|| {
            let o = Options::new(&options, "solarize", &["p", "threshold"])?;
            let op = Augment::Solarize {
                p: o.number("p", 0.5)?,
                threshold: o.number("threshold", 0.5)?,
            };
            op.check()?;
            Ok(op)
        })
    }

    /// `(x − mean) / std` per channel. Give one value per channel, or a single value for
    /// every channel.
    ///
    /// ```rhai
    /// let norm = normalize([0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]);
    /// let grey_norm = normalize([0.2860], [0.3530]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn normalize(mean: Array, std: Array) -> RhaiResult<Augment> {
        run(|| {
            let numbers = |arr: &Array, what: &str| -> crate::error::Result<Vec<f64>> {
                arr.iter()
                    .map(|v| args::number(v, &format!("normalize {what}")))
                    .collect()
            };
            let op = Augment::Normalize {
                mean: numbers(&mean, "mean")?,
                std: numbers(&std, "std")?,
            };
            op.check()?;
            Ok(op)
        })
    }

    /// Composes ops (and other transforms, which are spliced in) into a transform, applied
    /// in order.
    ///
    /// ```rhai
    /// let t = transform([random_resized_crop(32), hflip(0.5), grayscale(0.2)]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn transform(ops: Array) -> RhaiResult<Transform> {
        run(|| Transform::new(ops_list(&ops)?))
    }

    /// Applies the transform to a batch of images `[N, C, H, W]` (floats in `[0, 1]`; a single
    /// image `[C, H, W]` also works), drawing every image's random parameters from the run's
    /// seeded generator. Returns a new batch of views on the same device.
    ///
    /// ```rhai
    /// let t = transform([random_resized_crop(16), hflip(0.5)]);
    /// let views = t.apply(rand([8, 3, 28, 28]));   // [8, 3, 16, 16]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn apply(t: &mut Transform, images: DynTensor) -> RhaiResult<DynTensor> {
        run(|| {
            let images = crate::tensor::tape::resolve(&images)?;
            let (x, single) = match images.rank() {
                4 => (images.float_rank::<4>("apply")?, false),
                3 => (images.float_rank::<3>("apply")?.unsqueeze_dim::<4>(0), true),
                _ => {
                    return Err(Error::Shape(format!(
                        "apply: images must be [N, C, H, W] or [C, H, W], got shape {:?}",
                        images.shape()
                    )));
                }
            };
            let out = session::with(|s| t.apply(x, &mut s.rng))?;
            Ok(if single {
                DynTensor::from_float(out.squeeze_dim::<3>(0))
            } else {
                DynTensor::from_float(out)
            })
        })
    }

    /// The number of ops in the transform.
    ///
    /// ```rhai
    /// let n = transform([hflip(0.5), grayscale(0.2)]).len();   // 2
    /// ```
    #[rhai_fn(name = "len", pure)]
    pub fn len(t: &mut Transform) -> i64 {
        t.ops().len() as i64
    }

    /// The number of ops in the transform, as a property.
    ///
    /// ```rhai
    /// let n = transform([hflip(0.5)]).len;   // 1
    /// ```
    #[rhai_fn(get = "len", pure)]
    pub fn get_len(t: &mut Transform) -> i64 {
        t.ops().len() as i64
    }

    /// `hflip(0.5)`: the op and its settings.
    ///
    /// ```rhai
    /// print(hflip(0.5));
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn augment_to_string(op: &mut Augment) -> String {
        op.to_string()
    }

    /// `transform([hflip(0.5), ..])`: the ops in order.
    ///
    /// ```rhai
    /// print(byol_view1_transform(32));
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn transform_to_string(t: &mut Transform) -> String {
        t.to_string()
    }
}

/// An output size: an integer (square) or `[height, width]`.
fn size_arg(v: &Dynamic, owner: &str) -> Result<[usize; 2]> {
    let bad = || {
        Error::Invalid(format!(
            "{owner}: size must be a positive integer or [height, width], got {v}"
        ))
    };
    if let Ok(i) = v.as_int() {
        let s = usize::try_from(i).ok().filter(|&s| s > 0).ok_or_else(bad)?;
        return Ok([s, s]);
    }
    if let Some(arr) = v.read_lock::<Array>() {
        let dims = args::shape(&arr, &format!("{owner} size"))?;
        return <[usize; 2]>::try_from(dims).map_err(|_| bad());
    }
    Err(bad())
}

/// A `[low, high]` option of two numbers.
fn pair(map: &Map, owner: &str, key: &str, default: [f64; 2]) -> Result<[f64; 2]> {
    let Some(v) = map.get(key) else {
        return Ok(default);
    };
    let bad = || {
        Error::Invalid(format!(
            "{owner}: option `{key}` must be [low, high], got {v}"
        ))
    };
    let arr = v.read_lock::<Array>().ok_or_else(bad)?;
    if arr.len() != 2 {
        return Err(bad());
    }
    let what = format!("{owner}: option `{key}`");
    Ok([args::number(&arr[0], &what)?, args::number(&arr[1], &what)?])
}

/// A probability argument (INT or FLOAT) in `[0, 1]`.
fn probability(v: &Dynamic, owner: &str) -> Result<f64> {
    let p = args::number(v, &format!("{owner} probability"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Invalid(format!(
            "{owner}: probability must be in [0, 1], got {p}"
        )));
    }
    Ok(p)
}

/// The ops of a `transform([..])` array; transforms in it are spliced in.
fn ops_list(arr: &Array) -> Result<Vec<Augment>> {
    let mut ops = Vec::new();
    for v in arr {
        if let Some(op) = v.read_lock::<Augment>() {
            ops.push(op.clone());
        } else if let Some(t) = v.read_lock::<Transform>() {
            ops.extend(t.ops().iter().cloned());
        } else {
            return Err(Error::Invalid(format!(
                "transform takes an array of augmentation ops (random_resized_crop, hflip, ...), found a {}",
                v.type_name()
            )));
        }
    }
    Ok(ops)
}
