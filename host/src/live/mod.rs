//! Live functions: `live("name", args..)` calls the newest accepted version of the recipe's
//! function `name`.
//!
//! The recipe file is watched. When it changes, the new text is compiled and validated at
//! the next step boundary (the first `live` call of a new step), never mid-step:
//! - it must compile (a syntax error is reported with `file:line:col`);
//! - every function called through `live` so far must still exist with the same arity;
//! - each is called once with the arguments of its last call (for functions of a step, also
//!   with the step at 0 and at the end): numbers must be finite, tensors finite too.
//!
//! Only then is it swapped in; a rejected edit is reported and the old version keeps running.
//! Each swap is logged with its step and the accepted text archived, so a run can be explained
//! and resumed. Live functions see only their arguments (Rhai functions cannot see globals).

mod watcher;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Scope};

pub use watcher::{DEBOUNCE, FileWatcher};

use crate::error::{Error, Result, ScriptError};
use crate::tensor::DynTensor;

/// What a live function returned last time, which decides how a new version is probed.
#[derive(Clone, Debug)]
struct Known {
    arity: usize,
    last_args: Vec<Dynamic>,
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
    /// The text of the running version, so saving the file unchanged is not an edit.
    text: Option<String>,
    ast: AST,
    known: HashMap<String, Known>,
    watcher: Option<FileWatcher>,
    polled_step: Option<u64>,
    archive_dir: Option<PathBuf>,
    swaps: Vec<Swap>,
    rejected: usize,
}

thread_local! {
    static LIVE: RefCell<Option<LiveFunctions>> = const { RefCell::new(None) };
}

/// Makes `live` the current registry for this thread (replacing any previous one).
pub fn install(live: LiveFunctions) {
    LIVE.with(|l| *l.borrow_mut() = Some(live));
}

/// Runs `f` on the current registry, if any.
pub fn with<T>(f: impl FnOnce(&mut LiveFunctions) -> T) -> Option<T> {
    LIVE.with(|l| l.borrow_mut().as_mut().map(f))
}

/// Accepted swaps so far (empty without a registry).
pub fn swaps() -> Vec<Swap> {
    with(|l| l.swaps.clone()).unwrap_or_default()
}

impl LiveFunctions {
    /// The functions of `ast`, compiled from the source called `source_name`.
    pub fn new(source_name: &str, ast: &AST) -> Self {
        LiveFunctions {
            source_name: source_name.to_string(),
            text: None,
            ast: ast.clone_functions_only(),
            known: HashMap::new(),
            watcher: None,
            polled_step: None,
            archive_dir: None,
            swaps: Vec::new(),
            rejected: 0,
        }
    }

    /// Remembers the text the running version was compiled from.
    pub fn with_text(mut self, text: &str) -> Self {
        self.text = Some(text.to_string());
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
}

/// Calls the newest version of `name` with `args`; at a new `step`, first takes a pending
/// edit if it validates. `step` is `None` outside a training loop (no swaps then).
pub fn call(
    engine: &Engine,
    name: &str,
    args: Vec<Dynamic>,
    step: Option<u64>,
) -> std::result::Result<Dynamic, Box<EvalAltResult>> {
    let ast = LIVE.with(|l| {
        let mut l = l.borrow_mut();
        let live = l.as_mut()?;
        if let Some(s) = step
            && live.polled_step != Some(s)
        {
            live.polled_step = Some(s);
            live.poll(engine, s);
        }
        Some(live.ast.clone())
    });
    let Some(ast) = ast else {
        return Err(err("live(..) is only available while a recipe runs".into()));
    };
    let arity = args.len();
    let has = ast
        .iter_functions()
        .any(|f| f.name == name && f.params.len() == arity);
    if !has {
        return Err(err(format!(
            "live: the recipe has no function `{name}` taking {arity} argument(s)"
        )));
    }
    let out = call_fn(engine, &ast, name, args.clone())?;
    with(|l| {
        l.known.insert(
            name.to_string(),
            Known {
                arity,
                last_args: args.into_iter().map(detached).collect(),
            },
        )
    });
    Ok(out)
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
        if self.text.as_deref() == Some(text.as_str()) {
            return; // saved again without a change
        }
        match self.validate(engine, &text) {
            Ok(ast) => {
                self.ast = ast;
                self.text = Some(text.clone());
                let archived = self.archive(step, &text);
                let names: Vec<&str> = self.known.keys().map(String::as_str).collect();
                tracing::info!(
                    "live: step {step}: accepted a new version of {} (live: {})",
                    self.source_name,
                    names.join(", ")
                );
                self.swaps.push(Swap { step, archived });
            }
            Err(e) => {
                self.rejected += 1;
                tracing::warn!("live: step {step}: edit rejected, the running version stays\n{e}");
            }
        }
    }

    /// Compiles and probes a new version; the functions-only AST if it is acceptable.
    fn validate(&self, engine: &Engine, text: &str) -> Result<AST> {
        let sources = HashMap::from([(self.source_name.clone(), text.to_string())]);
        let locate = |e: &EvalAltResult| {
            Error::Script(Box::new(ScriptError::from_rhai(
                e,
                &sources,
                &self.source_name,
            )))
        };
        let mut ast = engine.compile(text).map_err(|e| locate(&e.into()))?;
        ast.set_source(self.source_name.as_str());
        let ast = ast.clone_functions_only();
        for (name, known) in &self.known {
            let exists = ast
                .iter_functions()
                .any(|f| f.name == name && f.params.len() == known.arity);
            if !exists {
                return Err(Error::Invalid(format!(
                    "{}: live function `{name}` with {} argument(s) is missing from the new version",
                    self.source_name, known.arity
                )));
            }
            for args in probes(&known.last_args) {
                let out = call_fn(engine, &ast, name, args.clone()).map_err(|e| locate(&e))?;
                check_finite(name, &args, &out)?;
            }
        }
        Ok(ast)
    }

    fn archive(&self, step: u64, text: &str) -> Option<PathBuf> {
        let dir = self.archive_dir.as_ref()?;
        let path = dir.join(format!("step-{step:08}.rhai"));
        match crate::train::tensor_file::write_atomic(&path, text.as_bytes()) {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!("live: could not archive the accepted version: {e}");
                None
            }
        }
    }
}

/// The last arguments, plus, when the first is a step (an integer) and the second a total,
/// the same call at step 0 and at the last step.
fn probes(last: &[Dynamic]) -> Vec<Vec<Dynamic>> {
    let mut out = vec![last.to_vec()];
    if let Some(Ok(_)) = last.first().map(Dynamic::as_int) {
        let mut at_start = last.to_vec();
        at_start[0] = Dynamic::from(0_i64);
        out.push(at_start);
        if let Some(Ok(total)) = last.get(1).map(Dynamic::as_int)
            && total > 0
        {
            let mut at_end = last.to_vec();
            at_end[0] = Dynamic::from(total - 1);
            out.push(at_end);
        }
    }
    out
}

fn check_finite(name: &str, args: &[Dynamic], out: &Dynamic) -> Result<()> {
    let bad = |what: String| {
        Error::NonFinite(format!(
            "live function `{name}` returned {what} for arguments {args:?}"
        ))
    };
    if let Ok(x) = out.as_float() {
        return if x.is_finite() {
            Ok(())
        } else {
            Err(bad(x.to_string()))
        };
    }
    if let Some(t) = out.clone().try_cast::<DynTensor>() {
        return if t.all_finite()? {
            Ok(())
        } else {
            Err(bad("a tensor with NaN or Inf".into()))
        };
    }
    Ok(())
}
