//! Live functions: `live("name", args..)` calls the newest accepted version of the recipe's
//! function `name`.
//!
//! The recipe file is watched. When it changes, the new text is compiled and validated at
//! the next step boundary (the first `live` call of a new step), never mid-step:
//! - it must compile (a syntax error is reported with `file:line:col`);
//! - every function called through `live` so far must still exist with the same arity;
//! - each is probed: a schedule (a function of a step and numbers) at every step of the run,
//!   or on a dense grid of 20,000 steps for longer runs; any other function once, with the
//!   arguments of its last call. Each value must be of the kind the running version returns
//!   (a number, or a tensor of the same shape), finite (numbers in f32's range), and within
//!   the host's limits for what the value feeds: a learning rate (`opt.step`) is ≥ 0, a
//!   momentum (`update_momentum`) in [0, 1].
//!
//! Only then is it swapped in; a rejected edit is reported with `file:line:col` and the old
//! version keeps running. Should an accepted version still fail at some step (an error, or a
//! value that breaks the rules above), it is rolled back to the version before it, the failure
//! is logged with its location, and the step goes on with the older version. An edit outside
//! functions (the loop body, top-level code) is reported as not applied until a restart. Each
//! swap is logged with its step and the accepted text archived, so a run can be explained and
//! resumed. Live functions see only their arguments (Rhai functions cannot see globals).

mod source;
mod watcher;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Scope};

pub use source::Outline;
pub use watcher::{DEBOUNCE, FileWatcher};

use crate::error::{Error, Frame, Result, ScriptError};
use crate::tensor::DynTensor;

/// Steps a schedule is probed at, at most: every step of runs up to this long, an even grid
/// over longer ones (a schedule call costs microseconds, so this is a fraction of a second).
pub const PROBE_STEPS: u64 = 20_000;

/// What the host does with a live function's value, learned from where the value goes, and
/// the limits that follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The learning rate of `opt.step`: finite and ≥ 0.
    LearningRate,
    /// The momentum of `update_momentum`: in [0, 1].
    Momentum,
}

impl Role {
    /// Why `x` is not acceptable in this role, if it is not.
    fn check(self, x: f64) -> Option<&'static str> {
        match self {
            Role::LearningRate if x < 0.0 => Some("a learning rate must be >= 0"),
            Role::Momentum if !(0.0..=1.0).contains(&x) => Some("a momentum must be in [0, 1]"),
            _ => None,
        }
    }
}

/// The kind of value a live function returns; a new version must return the same kind.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Number,
    Tensor(Vec<usize>),
    Other(String),
}

impl Kind {
    fn of(v: &Dynamic) -> Kind {
        if v.as_float().is_ok() || v.as_int().is_ok() {
            Kind::Number
        } else if let Some(t) = v.clone().try_cast::<DynTensor>() {
            Kind::Tensor(t.shape())
        } else {
            Kind::Other(v.type_name().to_string())
        }
    }

    fn describe(&self) -> String {
        match self {
            Kind::Number => "a number".into(),
            Kind::Tensor(s) => format!("a tensor of shape {s:?}"),
            Kind::Other(t) => format!("a value of type {t}"),
        }
    }
}

/// What is known of a function called through `live`.
#[derive(Clone, Debug)]
struct Known {
    arity: usize,
    last_args: Vec<Dynamic>,
    kind: Kind,
    role: Option<Role>,
    /// The number it returned last, and at which step.
    last_number: Option<(Option<u64>, f64)>,
}

/// One accepted version of the recipe's functions.
#[derive(Clone)]
struct Version {
    ast: AST,
    text: String,
    /// The step from which it ran (0 for the version the run started with).
    since: u64,
}

/// One accepted swap.
#[derive(Clone, Debug, PartialEq)]
pub struct Swap {
    /// The step from which the new version ran.
    pub step: u64,
    /// Where the accepted text was archived, if a run directory exists.
    pub archived: Option<PathBuf>,
}

/// The live versions of a recipe's functions.
pub struct LiveFunctions {
    source_name: String,
    /// The running version, then the ones it replaced (newest last), to roll back to.
    current: Version,
    earlier: Vec<Version>,
    /// The text last read from the file, accepted or not: saving it again is not an edit.
    seen_text: Option<String>,
    known: HashMap<String, Known>,
    watcher: Option<FileWatcher>,
    polled_step: Option<u64>,
    /// The step after the run's last one, once the training loop began.
    end_step: Option<u64>,
    archive_dir: Option<PathBuf>,
    swaps: Vec<Swap>,
    rejected: usize,
    rollbacks: usize,
}

/// Makes `live` the registry of the current run context (replacing any previous one).
pub fn install(live: LiveFunctions) {
    crate::context::live(|l| *l.borrow_mut() = Some(live));
}

/// Runs `f` on the current registry, if any.
pub fn with<T>(f: impl FnOnce(&mut LiveFunctions) -> T) -> Option<T> {
    crate::context::live(|l| l.borrow_mut().as_mut().map(f))
}

/// Accepted swaps so far (empty without a registry).
pub fn swaps() -> Vec<Swap> {
    with(|l| l.swaps.clone()).unwrap_or_default()
}

/// Tells the registry that `value` goes where `role` says (`opt.step`'s learning rate,
/// `update_momentum`'s momentum): the live function that returned exactly this number in the
/// current step is from then on held to the role's limits.
pub fn note_use(value: f64, role: Role, step: Option<u64>) {
    with(|l| {
        let mut matching = l.known.values_mut().filter(|k| {
            k.last_number
                .is_some_and(|(s, x)| s == step && x.to_bits() == value.to_bits())
        });
        if let (Some(k), None) = (matching.next(), matching.next()) {
            k.role = Some(role);
        }
    });
}

/// Tells the registry where the training loop ends: schedules are probed up to here.
pub fn set_end_step(end: u64) {
    with(|l| l.end_step = Some(end));
}

impl LiveFunctions {
    /// The functions of `ast`, compiled from the source called `source_name`.
    pub fn new(source_name: &str, ast: &AST) -> Self {
        LiveFunctions {
            source_name: source_name.to_string(),
            current: Version {
                ast: ast.clone_functions_only(),
                text: String::new(),
                since: 0,
            },
            earlier: Vec::new(),
            seen_text: None,
            known: HashMap::new(),
            watcher: None,
            polled_step: None,
            end_step: None,
            archive_dir: None,
            swaps: Vec::new(),
            rejected: 0,
            rollbacks: 0,
        }
    }

    /// Remembers the text the running version was compiled from.
    pub fn with_text(mut self, text: &str) -> Self {
        self.current.text = text.to_string();
        self.seen_text = Some(text.to_string());
        self
    }

    /// Watches `file` for new versions.
    pub fn watch(&mut self, file: &Path) -> Result<()> {
        self.watcher = Some(FileWatcher::new(file)?);
        Ok(())
    }

    /// Archives accepted versions in `dir`.
    pub fn archive_in(&mut self, dir: &Path) {
        self.archive_dir = Some(dir.to_path_buf());
    }

    /// Edits rejected so far.
    pub fn rejected(&self) -> usize {
        self.rejected
    }

    /// Accepted versions rolled back after failing at a step.
    pub fn rollbacks(&self) -> usize {
        self.rollbacks
    }

    /// Takes `text` as a new version of the recipe at `step`, as a save of the watched file
    /// does: validated and swapped in, or rejected with the reason. `Ok(false)` when it
    /// changes no function (an unchanged save, a change of comments or layout, or an edit
    /// outside functions, which is reported as not applied until a restart).
    pub fn offer(&mut self, engine: &Engine, text: &str, step: u64) -> Result<bool> {
        if self.seen_text.as_deref() == Some(text) {
            return Ok(false);
        }
        self.seen_text = Some(text.to_string());
        let old = Outline::of(&self.current.text);
        let new = Outline::of(text);
        if old.body != new.body {
            tracing::warn!(
                "live: step {step}: {} changes code outside functions (the loop body or \
                 top-level code): not applied until restart; only functions called through \
                 live(..) change while a run goes on",
                self.source_name
            );
        }
        let changed: Vec<&str> = new
            .functions
            .iter()
            .filter(|f| {
                old.function(&f.name, f.arity).map(|o| &o.normalized) != Some(&f.normalized)
            })
            .map(|f| f.name.as_str())
            .collect();
        let removed = old
            .functions
            .iter()
            .any(|f| new.function(&f.name, f.arity).is_none());
        if changed.is_empty() && !removed {
            return Ok(false);
        }
        let ast = match self.validate(engine, text) {
            Ok(ast) => ast,
            Err(e) => {
                self.rejected += 1;
                return Err(e);
            }
        };
        let previous = std::mem::replace(
            &mut self.current,
            Version {
                ast,
                text: text.to_string(),
                since: step,
            },
        );
        self.earlier.push(previous);
        let archived = self.archive(step, text);
        let (live, helpers): (Vec<&str>, Vec<&str>) =
            changed.iter().partition(|n| self.known.contains_key(**n));
        let mut what = format!(
            "live: step {step}: accepted a new version of {}",
            self.source_name
        );
        if !live.is_empty() {
            what += &format!("; changed: {}", live.join(", "));
        }
        if !helpers.is_empty() {
            what += &format!(
                "; also changed {} (in effect where live functions call them; the loop body \
                 keeps the version it started with)",
                helpers.join(", ")
            );
        }
        tracing::info!("{what}");
        self.swaps.push(Swap { step, archived });
        Ok(true)
    }
}

/// Calls the newest version of `name` with `args`; at a new `step`, first takes a pending
/// edit if it validates. `step` is `None` outside a training loop (no swaps then).
pub fn call(
    engine: &Engine,
    name: &str,
    args: Vec<Dynamic>,
    step: Option<u64>,
) -> std::result::Result<Dynamic, Box<EvalAltResult>> {
    let Some(()) = crate::context::live(|l| {
        let mut l = l.borrow_mut();
        let live = l.as_mut()?;
        if let Some(s) = step
            && live.polled_step != Some(s)
        {
            live.polled_step = Some(s);
            live.poll(engine, s);
        }
        Some(())
    }) else {
        return Err(err("live(..) is only available while a recipe runs".into()));
    };
    let arity = args.len();
    loop {
        let (ast, can_roll_back) =
            with(|l| (l.current.ast.clone(), !l.earlier.is_empty())).expect("checked above");
        let has = ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity);
        if !has {
            return Err(err(format!(
                "live: the recipe has no function `{name}` taking {arity} argument(s)"
            )));
        }
        let out = call_fn(engine, &ast, name, args.clone());
        if can_roll_back {
            let problem = match &out {
                Ok(v) => with(|l| l.runtime_problem(name, v)).flatten(),
                Err(e) => {
                    Some(with(|l| l.locate(e, &l.current.text).to_string()).unwrap_or_default())
                }
            };
            if let Some(problem) = problem {
                with(|l| l.roll_back(name, step, &problem));
                continue;
            }
        }
        let value = out?;
        with(|l| l.remember(name, &args, &value, step));
        return Ok(value);
    }
}

fn err(msg: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        msg.into(),
        rhai::Position::NONE,
    ))
}

fn call_fn(
    engine: &Engine,
    ast: &AST,
    name: &str,
    args: Vec<Dynamic>,
) -> std::result::Result<Dynamic, Box<EvalAltResult>> {
    let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
    engine.call_fn_with_options::<Dynamic>(options, &mut Scope::new(), ast, name, args)
}

/// Tensors kept as probe arguments must not hold on to the step's autodiff graph.
fn detached(v: Dynamic) -> Dynamic {
    match v.clone().try_cast::<DynTensor>() {
        Some(t) => Dynamic::from(t.detach()),
        None => v,
    }
}

/// A number's value, if `v` is one.
fn number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

impl LiveFunctions {
    fn poll(&mut self, engine: &Engine, step: u64) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        if !w.changed() {
            return;
        }
        let file = w.file().to_path_buf();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                self.rejected += 1;
                tracing::warn!(
                    "live: cannot read {}: {e}; keeping the running version",
                    file.display()
                );
                return;
            }
        };
        if let Err(e) = self.offer(engine, &text, step) {
            tracing::warn!("live: step {step}: edit rejected, the running version stays\n{e}");
        }
    }

    /// Records a successful call: its arguments for later probes, and what it returned.
    fn remember(&mut self, name: &str, args: &[Dynamic], value: &Dynamic, step: Option<u64>) {
        let kind = Kind::of(value);
        let last_number = number(value).map(|x| (step, x));
        let last_args = args.iter().cloned().map(detached).collect();
        match self.known.get_mut(name) {
            Some(k) if k.arity == args.len() => {
                k.last_args = last_args;
                k.kind = kind;
                k.last_number = last_number;
            }
            _ => {
                self.known.insert(
                    name.to_string(),
                    Known {
                        arity: args.len(),
                        last_args,
                        kind,
                        role: None,
                        last_number,
                    },
                );
            }
        }
    }

    /// What is wrong with `value` from a swapped-in version of `name`, checked without
    /// reading the device (a tensor's values are checked when the version is probed).
    fn runtime_problem(&self, name: &str, value: &Dynamic) -> Option<String> {
        let known = self.known.get(name)?;
        let problem = self.value_problem(name, known, value, None, false)?;
        let fn_def = Outline::of(&self.current.text)
            .function(name, known.arity)
            .map(|f| (f.line, f.col));
        Some(self.at(&problem, fn_def, &self.current.text).to_string())
    }

    /// Why `value`, returned by `name` (at `step` when probing a schedule), is not acceptable.
    fn value_problem(
        &self,
        name: &str,
        known: &Known,
        value: &Dynamic,
        step: Option<u64>,
        probing: bool,
    ) -> Option<String> {
        let at = step.map(|s| format!(" at step {s}")).unwrap_or_default();
        let kind = Kind::of(value);
        // A tensor's shape may follow its inputs' (a smaller last batch): while training only
        // its rank must match; probed with the last call's arguments, its shape too.
        let same = match (&kind, &known.kind) {
            (Kind::Tensor(a), Kind::Tensor(b)) if !probing => a.len() == b.len(),
            (a, b) => a == b,
        };
        if !same {
            return Some(format!(
                "live function `{name}` returns {}{at} where the running version returns {}",
                kind.describe(),
                known.kind.describe()
            ));
        }
        let x = number(value)?;
        if !x.is_finite() || x.abs() > f64::from(f32::MAX) {
            return Some(format!(
                "live function `{name}` returns {x}{at}: numbers must be finite (within f32's range)"
            ));
        }
        let role = known.role?;
        role.check(x)
            .map(|why| format!("live function `{name}` returns {x}{at}: {why}"))
    }

    /// A located error at `place` (or the file's start) in `text` with `message`.
    fn at(&self, message: &str, place: Option<(usize, usize)>, text: &str) -> ScriptError {
        let (line, col) = place.unwrap_or((1, 1));
        ScriptError {
            message: message.to_string(),
            frames: vec![Frame {
                source: Some(self.source_name.clone()),
                line,
                col,
            }],
            source_line: text.lines().nth(line - 1).map(str::to_string),
        }
    }

    /// A Rhai error from running a version whose text is `text`, located.
    fn locate(&self, e: &EvalAltResult, text: &str) -> ScriptError {
        let sources = HashMap::from([(self.source_name.clone(), text.to_string())]);
        crate::located::locate(e, &sources, &self.source_name)
    }

    /// Replaces the failing current version with the one before it.
    fn roll_back(&mut self, name: &str, step: Option<u64>, problem: &str) {
        let Some(previous) = self.earlier.pop() else {
            return;
        };
        let failed = std::mem::replace(&mut self.current, previous);
        self.rollbacks += 1;
        let at = step.map(|s| format!("step {s}: ")).unwrap_or_default();
        tracing::warn!(
            "live: {at}`{name}` of the version accepted at step {} failed; rolled back to the \
             version of step {} and training goes on\n{problem}",
            failed.since,
            self.current.since
        );
    }

    /// Compiles and probes a new version; the functions-only AST if it is acceptable.
    fn validate(&self, engine: &Engine, text: &str) -> Result<AST> {
        let script_error = |e: ScriptError| Error::Script(Box::new(e));
        crate::error::check_positions(&self.source_name, text).map_err(script_error)?;
        let mut ast = engine
            .compile(text)
            .map_err(|e| script_error(self.locate(&e.into(), text)))?;
        ast.set_source(self.source_name.as_str());
        let ast = ast.clone_functions_only();
        let outline = Outline::of(text);
        let mut names: Vec<&String> = self.known.keys().collect();
        names.sort();
        for name in names {
            let known = &self.known[name];
            let Some(def) = outline.function(name, known.arity) else {
                let place = source::live_call(text, name);
                return Err(script_error(self.at(
                    &format!(
                        "live function `{name}` with {} argument(s) is missing from the new \
                         version",
                        known.arity
                    ),
                    place,
                    text,
                )));
            };
            for (args, step) in self.probes(known) {
                let out = call_fn(engine, &ast, name, args).map_err(|e| {
                    let mut located = self.locate(&e, text);
                    if let Some(s) = step {
                        located.message = format!("at step {s}: {}", located.message);
                    }
                    script_error(located)
                })?;
                if let Some(problem) = self.value_problem(name, known, &out, step, true) {
                    return Err(script_error(self.at(
                        &problem,
                        Some((def.line, def.col)),
                        text,
                    )));
                }
                if let Some(t) = out.clone().try_cast::<DynTensor>()
                    && !t.all_finite()?
                {
                    return Err(script_error(self.at(
                        &format!("live function `{name}` returns a tensor with NaN or Inf"),
                        Some((def.line, def.col)),
                        text,
                    )));
                }
            }
        }
        Ok(ast)
    }

    /// The calls a new version of a function is probed with: for a schedule (an integer
    /// step first, no tensors), every step of the run or a dense grid; otherwise the last
    /// call. Each with the step it stands for, when it is a schedule.
    fn probes(&self, known: &Known) -> Vec<(Vec<Dynamic>, Option<u64>)> {
        let last = &known.last_args;
        let schedule = last.first().is_some_and(|a| a.as_int().is_ok())
            && !last.iter().any(|a| a.is::<DynTensor>());
        let end = self.end_step.or_else(|| {
            let total = last.get(1)?.as_int().ok()?;
            u64::try_from(total).ok()
        });
        let (true, Some(end)) = (schedule, end.filter(|&e| e > 0)) else {
            return vec![(last.clone(), None)];
        };
        let steps: Vec<u64> = if end <= PROBE_STEPS {
            (0..end).collect()
        } else {
            let mut s: Vec<u64> = (0..PROBE_STEPS)
                .map(|i| (i as u128 * (end - 1) as u128 / (PROBE_STEPS - 1) as u128) as u64)
                .collect();
            s.dedup();
            s
        };
        steps
            .into_iter()
            .map(|s| {
                let mut args = last.clone();
                args[0] = Dynamic::from(s as i64);
                (args, Some(s))
            })
            .collect()
    }

    fn archive(&self, step: u64, text: &str) -> Option<PathBuf> {
        let dir = self.archive_dir.as_ref()?;
        let path = dir.join(format!("step-{step:08}.rhai"));
        match crate::files::write_atomic(&path, text.as_bytes()) {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!("live: could not archive the accepted version: {e}");
                None
            }
        }
    }
}
