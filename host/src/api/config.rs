//! `config(#{ defaults })` in scripts: the defaults merged with `--set key=value`.

use rhai::plugin::*;
use rhai::{Dynamic, Map};

use crate::error::{Error, Result};

/// Run configuration.
#[export_module]
pub mod config_api {
    use rhai::{Dynamic, Map};

    use crate::api::args::{RhaiResult, run};
    use crate::session;

    use super::resolve;

    /// The kind of device the run is on, `"cpu"`, `"cuda"` or `"cubecl-cpu"` (the GPU code
    /// path compiled for the CPU, which takes the CPU presets), so a recipe can pick defaults.
    /// Under `sslhost check --preset KIND`, that kind, whatever the device.
    ///
    /// ```rhai
    /// let on_gpu = device_kind() == "cuda";
    /// ```
    pub fn device_kind() -> String {
        session::preset_kind().name().to_string()
    }

    /// What convolutions and linear layers multiply in, `"f32"` or `"bf16"` (`--precision`;
    /// bf16 on CUDA by default). Weights, gradients and losses are f32 either way.
    ///
    /// ```rhai
    /// print(`matrix products in ${precision()}`);
    /// ```
    pub fn precision() -> String {
        crate::kernels::current().precision.name().to_string()
    }

    /// What a ResNet's activations between layers are stored in: `"f32"`, or the products'
    /// half type when `SSLHOST_HALF_ACTIVATIONS=1` (as `torch.autocast`; batch norm still
    /// computes in f32).
    ///
    /// ```rhai
    /// print(`activations in ${activations()}`);
    /// ```
    pub fn activations() -> String {
        crate::kernels::current().activations_name().to_string()
    }

    /// Which batch norm training runs: `"cpu"` (the host's fused CPU kernels), `"rows"` or
    /// `"nhwc"` (the GPU variants over contiguous rows of an NCHW or NHWC view), `"cudnn"`
    /// (cuDNN's, with the convolutions; `SSLHOST_GPU_BATCH_NORM=rows|nhwc|cudnn`) or `"burn"`
    /// (burn's own op).
    ///
    /// ```rhai
    /// print(`batch norm: ${batch_norm_kernel()}`);
    /// ```
    pub fn batch_norm_kernel() -> String {
        crate::kernels::batch_norm_kernel(&session::device()).to_string()
    }

    /// The script's configuration: `defaults` with every `--set key=value` from the command
    /// line applied. A `--set` key that is not in `defaults`, or a value that does not parse
    /// as the default's type (int, float, bool, string), is an error.
    ///
    /// ```rhai
    /// let cfg = config(#{ batch_size: 256, epochs: 100, data: "fashion-mnist" });
    /// let total = cfg.epochs * 10;
    /// ```
    #[rhai_fn(return_raw)]
    pub fn config(defaults: Map) -> RhaiResult<Map> {
        run(|| {
            let (overrides, saved, force) =
                session::with(|s| (s.overrides.clone(), s.saved_config.clone(), s.force));
            let defaults = match &saved {
                Some(saved) => super::with_saved(defaults, saved)?,
                None => defaults,
            };
            let resolved = resolve(defaults, &overrides)?;
            let json = serde_json::to_value(Dynamic::from_map(resolved.clone()))
                .map_err(|e| crate::error::Error::Other(format!("config: {e}")))?;
            if let Some(saved) = &saved
                && super::check_resumed(saved, &json, force)?
            {
                // The run record says what the resumed run runs with.
                let step = session::with(|s| s.resume_step.unwrap_or(s.start_step));
                if let Some(replaced) =
                    crate::train::current::with_dir(|d| d.replace_config(&json, step))
                {
                    replaced?;
                }
            }
            if session::with(|s| s.print_config) {
                // `--print-config`: nothing has run yet and no run directory exists.
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
                std::process::exit(0);
            }
            session::with(|s| s.config = Some(json));
            Ok(resolved)
        })
    }
}

/// Applies `key=value` overrides to `defaults`, parsing each value as its default's type:
/// integers; numbers (finite only); bools as `true`/`false`/`1`/`0` in any case; strings with
/// one pair of surrounding quotes taken off; lists as `[a, b, ..]` of their elements' type.
/// Keys and values are trimmed. A dotted key (`optim.lr`) sets a key of a nested map.
pub fn resolve(mut defaults: Map, overrides: &[(String, String)]) -> Result<Map> {
    for (key, text) in overrides {
        let (key, text) = (key.trim(), text.trim());
        set_path(&mut defaults, key, "", text)?;
    }
    Ok(defaults)
}

/// Sets `path` (dotted, relative to `map`, which sits at `prefix` in the whole config) to
/// `text` parsed as its default's type.
fn set_path(map: &mut Map, path: &str, prefix: &str, text: &str) -> Result<()> {
    let full = format!("{prefix}{path}");
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let known = |map: &Map| {
        let mut keys: Vec<String> = map.keys().map(|k| format!("{prefix}{k}")).collect();
        keys.sort();
        keys.join(", ")
    };
    let Some(old) = map.get_mut(head) else {
        return Err(Error::Invalid(format!(
            "--set {full}={text}: `{prefix}{head}` is not a config key (known: {})",
            known(map)
        )));
    };
    match rest {
        Some(rest) => {
            let inner_prefix = format!("{prefix}{head}.");
            let Some(mut inner) = old.write_lock::<Map>() else {
                return Err(Error::Invalid(format!(
                    "--set {full}={text}: `{prefix}{head}` is {}, not a map of keys",
                    old.type_name()
                )));
            };
            set_path(&mut inner, rest, &inner_prefix, text)
        }
        None => {
            if old.is_map() {
                return Err(Error::Invalid(format!(
                    "--set {full}={text}: `{full}` is a map; set its keys one by one \
                     (`--set {full}.KEY=VALUE`)"
                )));
            }
            let new = parse_like(old, text).map_err(|ty| {
                Error::Invalid(format!(
                    "--set {full}={text}: `{full}` is {ty} (default {old}), and `{text}` is not"
                ))
            })?;
            *old = new;
            Ok(())
        }
    }
}

/// `text` as a value of `like`'s type; the type's description when it does not parse.
fn parse_like(like: &Dynamic, text: &str) -> std::result::Result<Dynamic, String> {
    if like.is_int() {
        text.parse::<i64>()
            .map(Dynamic::from)
            .map_err(|_| "an integer".into())
    } else if like.is_float() {
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Dynamic::from(x)),
            _ => Err("a finite number".into()),
        }
    } else if like.is_bool() {
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Dynamic::from(true)),
            "false" | "0" => Ok(Dynamic::from(false)),
            _ => Err("true or false (or 1 or 0)".into()),
        }
    } else if like.is_string() {
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| text.strip_prefix(*q)?.strip_suffix(*q))
            .unwrap_or(text);
        Ok(Dynamic::from(unquoted.to_string()))
    } else if let Some(items) = like.read_lock::<rhai::Array>() {
        let inner = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| "a list `[a, b, ..]`".to_string())?;
        // Elements take the type of the default's first element (numbers if it is empty).
        let element = items.first().cloned().unwrap_or(Dynamic::from(0.0_f64));
        if inner.trim().is_empty() {
            return Ok(Dynamic::from_array(Vec::new()));
        }
        inner
            .split(',')
            .map(|part| parse_like(&element, part.trim()))
            .collect::<std::result::Result<rhai::Array, String>>()
            .map(Dynamic::from_array)
            .map_err(|ty| format!("a list whose elements are each {ty}"))
    } else {
        Err(format!(
            "{} (only int, float, bool, string and list keys can be set)",
            like.type_name()
        ))
    }
}

/// A resumed run's saved configuration over the recipe's defaults: the run continues with
/// the values it started with. Keys the recipe no longer has are ignored.
pub fn with_saved(mut defaults: Map, saved: &serde_json::Value) -> Result<Map> {
    let Some(saved) = saved.as_object() else {
        return Ok(defaults);
    };
    for (key, value) in saved {
        let Some(old) = defaults.get_mut(key.as_str()) else {
            continue;
        };
        // A nested map takes the saved values key by key (keys added since stay).
        if let (Some(mut inner), serde_json::Value::Object(_)) = (old.write_lock::<Map>(), value) {
            let merged = with_saved(std::mem::take(&mut *inner), value)?;
            *inner = merged;
            continue;
        }
        let restored: Dynamic = rhai::serde::to_dynamic(value)
            .map_err(|e| Error::Invalid(format!("saved config `{key}`: {e}")))?;
        *old = restored;
    }
    Ok(defaults)
}

/// Config keys that change a run's data order or its model: a resumed run may change them
/// only with `--force`.
pub const RESUME_LOCKED: &[&str] = &[
    "data",
    "limit",
    "batch_size",
    "seed",
    "depth",
    "widths",
    "blocks",
];

/// Compares a resumed run's configuration with the one its checkpoint was written under: a
/// warning lists the keys that differ, and a changed key of [`RESUME_LOCKED`] is an error
/// unless `force`. Whether anything differs.
pub fn check_resumed(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    force: bool,
) -> Result<bool> {
    let (Some(saved), Some(now)) = (saved.as_object(), now.as_object()) else {
        return Ok(false);
    };
    let mut changed: Vec<(&str, String)> = now
        .iter()
        .filter_map(|(k, v)| {
            let old = saved.get(k)?;
            (old != v).then(|| (k.as_str(), format!("{k} {old} -> {v}")))
        })
        .collect();
    changed.sort();
    if changed.is_empty() {
        return Ok(false);
    }
    let locked: Vec<&str> = changed
        .iter()
        .filter(|(k, _)| RESUME_LOCKED.contains(k))
        .map(|(_, what)| what.as_str())
        .collect();
    if !locked.is_empty() && !force {
        return Err(Error::Invalid(format!(
            "resuming with {} would continue with another data order or model than the \
             checkpoint's; drop those --set values, or pass --force to resume anyway",
            locked.join(", ")
        )));
    }
    let all: Vec<&str> = changed.iter().map(|(_, what)| what.as_str()).collect();
    tracing::warn!("resuming with changed settings: {}", all.join(", "));
    Ok(true)
}
