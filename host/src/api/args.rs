//! Conversions of script arguments: numbers, shapes, option maps, and error wrapping.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rhai::{Array, Dynamic, EvalAltResult, Map, Position};

use crate::error::{Error, Result};
use crate::guard;

/// The result type of fallible script functions.
pub type RhaiResult<T> = std::result::Result<T, Box<EvalAltResult>>;

/// Runs `f` with panics caught, converting any error into a Rhai runtime error (the engine
/// fills in the calling position). Its time counts as host time (see [`host_time`]).
pub fn run<T>(f: impl FnOnce() -> Result<T>) -> RhaiResult<T> {
    host_time(|| guard::catch(f).map_err(to_rhai))
}

/// Whether [`host_time`] measures (`sslhost bench` and `host_timing(true)` turn it on).
static HOST_TIMING: AtomicBool = AtomicBool::new(false);
/// Nanoseconds spent inside host functions while measuring.
static HOST_NANOS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds spent freeing large blocks outside host functions (see [`timed_release`]).
static RELEASE_NANOS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// How many host functions are running on this thread (a host function may call back
    /// into the script, which calls another one: only the outermost is counted).
    static HOST_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Whether this is the thread that turned the accounting on (the script's thread).
    static TIMED_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Turns the accounting of time spent inside host functions on or off; the calling thread
/// is the one whose script is measured.
pub fn set_host_timing(on: bool) {
    TIMED_THREAD.with(|t| t.set(on));
    HOST_TIMING.store(on, Ordering::Relaxed);
}

/// Nanoseconds of [`host_nanos`] spent freeing tensor memory when the script dropped the
/// last handle to it (a variable going out of scope), outside any host function.
pub fn release_nanos() -> u64 {
    RELEASE_NANOS.load(Ordering::Relaxed)
}

/// Frees a block through `free`, counting the time as host time when the accounting is on,
/// the block is large (a tensor's buffer: scripts allocate nothing that size themselves)
/// and the script's thread frees it outside any host function, i.e. when a script
/// variable holding the last handle to a tensor goes out of scope. Called by the
/// allocator, so it allocates nothing.
pub fn timed_release(size: usize, free: impl FnOnce()) {
    /// Smallest block counted: 4 KiB (a script's own values are far smaller).
    const LARGE: usize = 4 << 10;
    let counted = size >= LARGE
        && HOST_TIMING.load(Ordering::Relaxed)
        && TIMED_THREAD.try_with(Cell::get).unwrap_or(false)
        && HOST_DEPTH.try_with(Cell::get).unwrap_or(1) == 0;
    if !counted {
        return free();
    }
    let start = Instant::now();
    free();
    let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    HOST_NANOS.fetch_add(ns, Ordering::Relaxed);
    RELEASE_NANOS.fetch_add(ns, Ordering::Relaxed);
}

/// Nanoseconds spent inside host functions since the accounting was turned on: the rest of
/// a step's wall time is the Rhai layer's (dispatch, argument conversion, script logic).
pub fn host_nanos() -> u64 {
    HOST_NANOS.load(Ordering::Relaxed)
}

/// Runs `f`, adding its wall time to [`host_nanos`] when the accounting is on. Nesting-aware:
/// a host function called while another is running is already inside the outer one's time.
/// Off, it costs one relaxed load.
pub fn host_time<T>(f: impl FnOnce() -> T) -> T {
    if !HOST_TIMING.load(Ordering::Relaxed) {
        return f();
    }
    /// Leaves the nesting level (and adds the time) even if `f` unwinds.
    struct Level(Option<Instant>);
    impl Drop for Level {
        fn drop(&mut self) {
            HOST_DEPTH.with(|d| d.set(d.get() - 1));
            if let Some(start) = self.0 {
                let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                HOST_NANOS.fetch_add(ns, Ordering::Relaxed);
            }
        }
    }
    let outermost = HOST_DEPTH.with(|d| {
        let depth = d.get();
        d.set(depth + 1);
        depth == 0
    });
    let _level = Level(outermost.then(Instant::now));
    f()
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
