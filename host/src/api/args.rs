//! Conversions of script arguments: numbers, shapes, option maps, and error wrapping.

use rhai::{Array, Dynamic, EvalAltResult, Map, Position};

use crate::error::{Error, Result};
use crate::guard;
use crate::tensor::{DynTensor, tape};

/// The result type of fallible script functions.
pub type RhaiResult<T> = std::result::Result<T, Box<EvalAltResult>>;

/// Runs `f` with panics caught, converting any error into a Rhai runtime error (the engine
/// fills in the calling position). Its time counts as host time (see [`host_time`]).
///
/// [`host_time`]: crate::profiling::host_time
pub fn run<T>(f: impl FnOnce() -> Result<T>) -> RhaiResult<T> {
    crate::profiling::host_time(|| guard::catch(f).map_err(to_rhai))
}

/// A call that makes a tensor, run as [`run`] runs one and through the step's tape
/// ([`tape::call`]): `inputs` are its tensor arguments, `key` its other arguments (as bits),
/// and `device` computes the result from the inputs.
pub fn taped(
    name: &'static str,
    inputs: &[&DynTensor],
    key: &[u64],
    device: impl Fn(&[DynTensor]) -> Result<DynTensor> + 'static,
) -> RhaiResult<DynTensor> {
    run(|| tape::call(name, inputs, key, device))
}

/// A host error as a Rhai runtime error without a position.
pub fn to_rhai(e: Error) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        e.to_string().into(),
        Position::NONE,
    ))
}

/// A number (integer or float) as `f64`.
pub fn number(v: &Dynamic, what: &str) -> Result<f64> {
    if let Ok(f) = v.as_float() {
        Ok(f)
    } else if let Ok(i) = v.as_int() {
        Ok(i as f64)
    } else {
        Err(Error::Invalid(format!(
            "{what} must be a number, got {}",
            v.type_name()
        )))
    }
}

/// A non-negative integer.
pub fn count(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::Invalid(format!("{what} must be >= 0, got {v}")))
}

/// An array of positive integers (a shape).
pub fn shape(arr: &Array, what: &str) -> Result<Vec<usize>> {
    arr.iter()
        .map(|v| match v.as_int() {
            Ok(i) if i > 0 => Ok(i as usize),
            _ => Err(Error::Invalid(format!(
                "{what} must be an array of positive integers, got {arr:?}"
            ))),
        })
        .collect()
}

/// An array of integers (may be negative, e.g. -1 in `reshape`).
pub fn ints(arr: &Array, what: &str) -> Result<Vec<i64>> {
    arr.iter()
        .map(|v| {
            v.as_int().map_err(|_| {
                Error::Invalid(format!("{what} must be an array of integers, got {arr:?}"))
            })
        })
        .collect()
}

/// An option map whose keys are checked against the allowed ones, so a typo is an error.
pub struct Options<'a> {
    map: &'a Map,
    owner: &'a str,
}

impl<'a> Options<'a> {
    /// Checks that every key of `map` is in `allowed`.
    pub fn new(map: &'a Map, owner: &'a str, allowed: &[&str]) -> Result<Self> {
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(Error::Invalid(format!(
                "{owner}: unknown option `{k}` (known: {})",
                allowed.join(", ")
            )));
        }
        Ok(Options { map, owner })
    }

    /// A boolean option.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().map_err(|t| self.wrong(key, "a bool", t)),
        }
    }

    /// A number option.
    pub fn number(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => number(v, &format!("{}: option `{key}`", self.owner)),
        }
    }

    /// A positive integer option.
    pub fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => match v.as_int() {
                Ok(i) if i > 0 => Ok(i as usize),
                _ => Err(Error::Invalid(format!(
                    "{}: option `{key}` must be a positive integer, got {v}",
                    self.owner
                ))),
            },
        }
    }

    /// A string option, if given.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v
                .clone()
                .into_string()
                .map(Some)
                .map_err(|t| self.wrong(key, "a string", t)),
        }
    }

    /// A positive integer option, if given.
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.map.contains_key(key) {
            true => self.usize(key, 1).map(Some),
            false => Ok(None),
        }
    }

    /// An array-of-positive-integers option.
    pub fn shape(&self, key: &str) -> Result<Option<Vec<usize>>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => {
                let arr = v
                    .read_lock::<Array>()
                    .ok_or_else(|| self.wrong(key, "an array", v.type_name()))?;
                shape(&arr, &format!("{}: option `{key}`", self.owner)).map(Some)
            }
        }
    }

    fn wrong(&self, key: &str, expected: &str, got: &str) -> Error {
        Error::Invalid(format!(
            "{}: option `{key}` must be {expected}, got {got}",
            self.owner
        ))
    }
}
