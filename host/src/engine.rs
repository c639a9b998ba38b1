//! The Rhai engine: limits, strict variables, the host package, the stdlib prelude, the module
//! resolver, `print` routed to tracing, and running a script with located errors.
//!
//! The stdlib (`stdlib/*.rhai`) is compiled into the binary and loaded as a prelude: its
//! functions (`byol_loss`, `cosine_schedule`, ...) are global in every script, and a script's
//! own function of the same name takes precedence. A folder `stdlib/` in the working
//! directory overrides the embedded copy file by file, so researchers can edit it without
//! recompiling. Scripts may also `import "stdlib/losses" as losses;` or import their own
//! files relative to the script.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rhai::module_resolvers::{FileModuleResolver, ModuleResolversCollection, StaticModuleResolver};
use rhai::{AST, Dynamic, Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};

use crate::context::RunContext;
use crate::error::{Error, Result};
use crate::guard;
use crate::live::{self, LiveFunctions};
use crate::session::Session;

/// The stdlib files embedded in the binary: (module path, source).
pub const STDLIB: &[(&str, &str)] = &[
    ("stdlib/losses", include_str!("../../stdlib/losses.rhai")),
    ("stdlib/heads", include_str!("../../stdlib/heads.rhai")),
    (
        "stdlib/monitors",
        include_str!("../../stdlib/monitors.rhai"),
    ),
    (
        "stdlib/schedules",
        include_str!("../../stdlib/schedules.rhai"),
    ),
    (
        "stdlib/transforms",
        include_str!("../../stdlib/transforms.rhai"),
    ),
    ("stdlib/presets", include_str!("../../stdlib/presets.rhai")),
];

/// Recursion depth allowed for script functions.
pub const MAX_CALL_LEVELS: usize = 64;
/// Nesting depth of expressions (global, in functions).
pub const MAX_EXPR_DEPTHS: (usize, usize) = (128, 64);

/// Rhai files for `import`, confined to the script's folder and the working directory (the
/// stdlib is embedded): a script cannot run any `.rhai` file of the machine.
struct ConfinedFiles {
    files: FileModuleResolver,
    roots: Vec<PathBuf>,
}

impl ConfinedFiles {
    fn new(base_dir: &Path) -> Self {
        let roots = [base_dir.to_path_buf(), PathBuf::from(".")]
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect();
        ConfinedFiles {
            files: FileModuleResolver::new_with_path(base_dir),
            roots,
        }
    }

    /// The error for an import whose file lies outside the roots, if it does.
    fn outside(
        &self,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Option<Box<EvalAltResult>> {
        let from = source.and_then(|s| Path::new(s).parent());
        let file = self.files.get_file_path(path, from);
        // A file that does not exist is the resolver's to report.
        let real = std::fs::canonicalize(&file).ok()?;
        if self.roots.iter().any(|r| real.starts_with(r)) {
            return None;
        }
        // The resolvers' collection passes on only "not found" and "in module" errors.
        let refusal = EvalAltResult::ErrorRuntime(
            format!(
                "import \"{path}\": {} lies outside the script's folder and the working \
                 directory, where imports are looked for",
                real.display()
            )
            .into(),
            Position::NONE,
        );
        Some(Box::new(EvalAltResult::ErrorInModule(
            path.to_string(),
            refusal.into(),
            pos,
        )))
    }
}

impl ModuleResolver for ConfinedFiles {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> std::result::Result<Shared<Module>, Box<EvalAltResult>> {
        match self.outside(source, path, pos) {
            Some(e) => Err(e),
            None => self.files.resolve(engine, source, path, pos),
        }
    }
}

/// A configured engine plus the texts of every source it compiled, for error rendering.
pub struct ScriptEngine {
    engine: Engine,
    sources: HashMap<String, String>,
}

/// A stdlib file's text: `./stdlib/NAME.rhai` if present, else the embedded copy.
pub(crate) fn stdlib_text(module: &str, embedded: &str) -> (String, String) {
    let file = format!("{module}.rhai");
    match std::fs::read_to_string(&file) {
        Ok(text) => (file, text),
        Err(_) => (file, embedded.to_string()),
    }
}

impl ScriptEngine {
    /// An engine whose relative imports resolve from `base_dir`.
    pub fn new(base_dir: &Path) -> Result<Self> {
        let mut engine = Engine::new();
        engine.set_strict_variables(true);
        engine.set_max_call_levels(MAX_CALL_LEVELS);
        engine.set_max_expr_depths(MAX_EXPR_DEPTHS.0, MAX_EXPR_DEPTHS.1);
        engine.set_max_string_size(16 << 20);
        engine.set_max_array_size(1 << 22);
        engine.set_max_map_size(1 << 16);
        engine.on_print(|s| tracing::info!(target: "script", "{s}"));
        engine.on_debug(|s, src, pos| {
            tracing::debug!(target: "script", "{}:{pos}: {s}", src.unwrap_or("script"))
        });
        crate::api::register(&mut engine);

        let mut sources = HashMap::new();
        let mut statics = StaticModuleResolver::new();
        let mut prelude = Module::new();
        for (module, embedded) in STDLIB {
            let (file, text) = stdlib_text(module, embedded);
            let mut ast = engine
                .compile(&text)
                .map_err(|e| located(&e.into(), &sources_with(&sources, &file, &text), &file))?;
            ast.set_source(file.as_str());
            let m = Module::eval_ast_as_new(Scope::new(), &ast, &engine)
                .map_err(|e| located(&e, &sources_with(&sources, &file, &text), &file))?;
            prelude.combine_flatten(m.clone());
            statics.insert(*module, m);
            sources.insert(file, text);
        }
        engine.register_global_module(prelude.into());

        let mut resolvers = ModuleResolversCollection::new();
        resolvers.push(statics);
        resolvers.push(ConfinedFiles::new(base_dir));
        engine.set_module_resolver(resolvers);
        Ok(ScriptEngine { engine, sources })
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The underlying engine, to register more functions (tools, tests).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Compiles `text` under the source name `name`.
    pub fn compile(&mut self, name: &str, text: &str) -> Result<AST> {
        self.sources.insert(name.to_string(), text.to_string());
        crate::error::check_positions(name, text).map_err(|e| Error::Script(Box::new(e)))?;
        let mut ast = self
            .engine
            .compile(text)
            .map_err(|e| located(&e.into(), &self.sources, name))?;
        ast.set_source(name);
        Ok(ast)
    }

    /// Runs a compiled script to its end; errors come back located in their sources.
    pub fn run(&self, name: &str, ast: &AST) -> Result<Dynamic> {
        let mut scope = Scope::new();
        guard::catch(|| {
            self.engine
                .eval_ast_with_scope::<Dynamic>(&mut scope, ast)
                .map_err(|e| located(&e, &self.sources, name))
        })
    }
}

fn sources_with(
    sources: &HashMap<String, String>,
    name: &str,
    text: &str,
) -> HashMap<String, String> {
    let mut s = sources.clone();
    s.insert(name.to_string(), text.to_string());
    s
}

fn located(err: &EvalAltResult, sources: &HashMap<String, String>, name: &str) -> Error {
    Error::Script(Box::new(crate::located::locate(err, sources, name)))
}

/// Reads a script file, naming it in the error if that fails.
pub fn read_script(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read script: {e}")))
}

/// The directory relative imports of `path` resolve from.
fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs the script at `path` in a run context of its own holding `session`, watching the file
/// for live edits.
pub fn run_file(path: &Path, session: Session) -> Result<Dynamic> {
    let _entered = RunContext::new(session).enter();
    run_file_here(path)
}

/// Runs the script at `path` in the current run context (`main` enters one that outlives the
/// script: a failure's checkpoint and the curves come after), watching the file for live
/// edits.
pub fn run_file_here(path: &Path) -> Result<Dynamic> {
    let text = read_script(path)?;
    run_text(
        &path.display().to_string(),
        &text,
        &base_dir(path),
        Some(path),
    )
}

/// Runs script text under the source name `name` (no file watched) in a run context of its
/// own holding `session`.
pub fn run_source(name: &str, text: &str, base: &Path, session: Session) -> Result<Dynamic> {
    let _entered = RunContext::new(session).enter();
    run_text(name, text, base, None)
}

/// Compiles and runs `text` in the current run context, with its live functions.
fn run_text(name: &str, text: &str, base: &Path, watch: Option<&Path>) -> Result<Dynamic> {
    let mut engine = ScriptEngine::new(base)?;
    let ast = engine.compile(name, text)?;
    let mut live = LiveFunctions::new(name, &ast).with_text(text);
    if let Some(file) = watch
        && let Err(e) = live.watch(file)
    {
        tracing::warn!("live edits are off: {e}");
    }
    // A resumed run's directory exists already: accepted edits are archived there too.
    if let Some(dir) = crate::train::current::dir_path() {
        live.archive_in(&dir.join("live"));
    }
    live::install(live);
    engine.run(name, &ast)
}

/// `sslhost check`: compiles the script and runs it on tiny data: datasets cut to a few
/// hundred samples, small batches, two steps of every training loop, no run directory.
pub fn check_file(path: &Path, session: Session) -> Result<()> {
    let text = read_script(path)?;
    check_source(&path.display().to_string(), &text, &base_dir(path), session)
}

/// [`check_file`] on script text under the source name `name`, imports resolved from `base`.
pub fn check_source(name: &str, text: &str, base: &Path, mut session: Session) -> Result<()> {
    session.check = true;
    let _entered = RunContext::new(session).enter();
    let _ = run_text(name, text, base, None)?;
    Ok(())
}
