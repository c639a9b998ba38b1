//! The API reference and editor definitions, generated from the doc comments the engine holds
//! (`sslhost docs`): one Markdown page per host module and per stdlib file, an index, and the
//! `.d.rhai` definition files the Rhai language server reads. The same comments give the
//! examples that `tests/doc_examples.rs` runs, so a page never shows an example that fails.
//!
//! An example is a fenced block opened with ```` ```rhai ````; ```` ```rhai no_run ```` marks
//! one that needs files a user brings (a checkpoint, CIFAR-10): it is compiled, not run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rhai::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::files::write_atomic;

/// What rhai's metadata JSON says of a module (the fields the reference uses).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    doc: String,
    #[serde(default)]
    custom_types: Vec<TypeMetadata>,
    #[serde(default)]
    functions: Vec<FnMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMetadata {
    type_name: String,
    display_name: String,
    #[serde(default)]
    doc_comments: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FnMetadata {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    params: Vec<ParamMetadata>,
    #[serde(default)]
    return_type: String,
    #[serde(default)]
    doc_comments: Vec<String>,
}

#[derive(Deserialize)]
struct ParamMetadata {
    name: Option<String>,
    #[serde(rename = "type")]
    typ: Option<String>,
}

/// One page of the reference: a host module or a stdlib file.
pub struct Page {
    /// File stem of the page and the name a reader looks for (`tensor`, `stdlib-losses`).
    pub name: String,
    /// The module's own doc text.
    pub doc: String,
    /// Script types the module defines: name and doc text.
    pub types: Vec<(String, String)>,
    /// Functions in the order of their names, overloads together.
    pub functions: Vec<Function>,
}

/// One function (one overload) with its documentation.
pub struct Function {
    /// The name scripts call (`shape` for the property getter `get$shape`).
    pub name: String,
    /// A function, an operator, or a property's getter or setter.
    pub kind: FnKind,
    /// Parameters as `name: Type` (`name` alone where the type is any value).
    pub params: Vec<String>,
    /// The type returned (`()` for none, `?` for any value).
    pub returns: String,
    /// Written in Rhai (the stdlib): untyped.
    pub script: bool,
    /// The doc text without its examples.
    pub text: String,
    /// The ```rhai examples in the doc text.
    pub examples: Vec<Example>,
}

/// How a script reaches a function.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FnKind {
    /// `name(args)` or `x.name(args)`.
    Function,
    /// `a + b` and the other operators.
    Operator,
    /// `x.name`.
    Getter,
    /// `x.name = value`.
    Setter,
}

impl Function {
    /// How a script calls it: `slice(a: Tensor, dim: int, start: int, end: int) -> Tensor`,
    /// `x.shape -> Array` for a property.
    pub fn signature(&self) -> String {
        let arrow = match self.returns.as_str() {
            _ if self.script => String::new(),
            "()" => String::new(),
            r => format!(" -> {r}"),
        };
        let receiver = || {
            let p = self.params.first().map(String::as_str).unwrap_or("x");
            p.split(':').next().unwrap_or(p).trim().to_string()
        };
        match self.kind {
            FnKind::Getter => format!("{}.{}{arrow}", receiver(), self.name),
            FnKind::Setter => {
                let value = self.params.get(1).cloned().unwrap_or_default();
                format!("{}.{} = {value}", receiver(), self.name)
            }
            _ => format!("{}({}){arrow}", self.name, self.params.join(", ")),
        }
    }

    /// The declaration in the language server's definition syntax, with its doc text.
    pub fn definition(&self) -> String {
        let mut out = String::new();
        for line in self.text.lines() {
            out += format!("/// {line}").trim_end();
            out += "\n";
        }
        // Untyped parameters (script functions) take any value.
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| match p.contains(':') {
                true => p.clone(),
                false => format!("{p}: ?"),
            })
            .collect();
        let params = params.join(", ");
        let ret = &self.returns;
        out += &match self.kind {
            FnKind::Function => format!("fn {}({params}) -> {ret};", self.name),
            FnKind::Operator => format!("op {}({params}) -> {ret};", self.name),
            FnKind::Getter => format!("fn get {}({params}) -> {ret};", self.name),
            FnKind::Setter => format!("fn set {}({params});", self.name),
        };
        out
    }
}

/// A ```rhai block of a doc comment.
pub struct Example {
    /// The script text.
    pub code: String,
    /// False for ```rhai no_run: compiled only (it needs files a user brings).
    pub run: bool,
}

/// Every page: the host modules in the order they are registered, then the stdlib files.
pub fn pages() -> Result<Vec<Page>> {
    let mut metadata = Vec::new();
    for (name, module) in crate::api::modules() {
        let mut engine = Engine::new_raw();
        engine.register_global_module(module.into());
        let json = engine
            .gen_fn_metadata_to_json(false)
            .map_err(|e| Error::Other(format!("reading the metadata of {name}: {e}")))?;
        metadata.push((name.to_string(), parse(name, &json)?));
    }
    for (module, embedded) in crate::engine::STDLIB {
        let (file, text) = crate::engine::stdlib_text(module, embedded);
        let engine = Engine::new_raw();
        let ast = engine.compile(&text).map_err(|e| Error::file(&file, e))?;
        let json = engine
            .gen_fn_metadata_with_ast_to_json(&ast, false)
            .map_err(|e| Error::file(&file, e))?;
        metadata.push((module.replace('/', "-"), parse(module, &json)?));
    }
    // Signatures name the Rust types (`DynTensor`); scripts know them by their script names.
    let names: HashMap<String, String> = metadata
        .iter()
        .flat_map(|(_, m)| &m.custom_types)
        .map(|t| {
            let last = t.type_name.rsplit("::").next().unwrap_or(&t.type_name);
            (
                last.trim_end_matches('>').to_string(),
                t.display_name.clone(),
            )
        })
        .collect();
    Ok(metadata
        .into_iter()
        .map(|(name, meta)| page(name, meta, &names))
        .collect())
}

fn parse(name: &str, json: &str) -> Result<Metadata> {
    serde_json::from_str(json).map_err(|e| Error::Other(format!("the metadata of {name}: {e}")))
}

fn page(name: String, meta: Metadata, names: &HashMap<String, String>) -> Page {
    let types = meta
        .custom_types
        .iter()
        .map(|t| (t.display_name.clone(), doc_text(&t.doc_comments).0))
        .collect();
    let mut functions: Vec<Function> = meta.functions.iter().map(|f| function(f, names)).collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    Page {
        name,
        doc: strip_comment_marks(meta.doc.lines()).trim().to_string(),
        types,
        functions,
    }
}

fn function(f: &FnMetadata, names: &HashMap<String, String>) -> Function {
    let (text, examples) = doc_text(&f.doc_comments);
    let params: Vec<String> = f
        .params
        .iter()
        .map(|p| match (&p.name, &p.typ) {
            (Some(n), Some(t)) => format!("{n}: {}", script_type(t, names)),
            (Some(n), None) => n.clone(),
            (None, Some(t)) => script_type(t, names),
            (None, None) => "_".to_string(),
        })
        .collect();
    // Script functions declare no types: they return any value.
    let returns = match script_type(&f.return_type, names) {
        _ if f.kind == "script" => "?".to_string(),
        r if r.is_empty() => "()".to_string(),
        r => r,
    };
    let (name, kind) = if let Some(prop) = f.name.strip_prefix("get$") {
        (prop.to_string(), FnKind::Getter)
    } else if let Some(prop) = f.name.strip_prefix("set$") {
        (prop.to_string(), FnKind::Setter)
    } else if f
        .name
        .starts_with(|c: char| !c.is_alphanumeric() && c != '_')
    {
        (f.name.clone(), FnKind::Operator)
    } else {
        (f.name.clone(), FnKind::Function)
    };
    Function {
        name,
        kind,
        params,
        returns,
        script: f.kind == "script",
        text,
        examples,
    }
}

/// A Rust type as a script author names it: `int`, `float`, `Array`, `Tensor`.
fn script_type(rust: &str, names: &HashMap<String, String>) -> String {
    let t = rust.trim().replace(' ', "");
    let t = t.strip_prefix("&mut").unwrap_or(&t);
    let t = t.strip_prefix('&').unwrap_or(t);
    for wrapper in ["RhaiResult<", "Result<", "Option<"] {
        if let Some(inner) = t.strip_prefix(wrapper).and_then(|s| s.strip_suffix('>')) {
            let inner = inner.split(",Box<EvalAltResult>").next().unwrap_or(inner);
            return script_type(inner, names);
        }
    }
    let last = t.rsplit("::").next().unwrap_or(t);
    match last {
        "i64" | "INT" | "usize" | "u64" | "i32" => "int".into(),
        "f64" | "FLOAT" | "f32" => "float".into(),
        "str" | "String" | "ImmutableString" => "String".into(),
        "Dynamic" => "?".into(),
        other => names
            .get(other)
            .cloned()
            .unwrap_or_else(|| other.to_string()),
    }
}

/// Doc comment lines without their `///` or `/** */` marks.
fn strip_comment_marks<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for line in lines {
        let l = line.trim_start();
        let l = l
            .strip_prefix("///")
            .or_else(|| l.strip_prefix("//!"))
            .or_else(|| l.strip_prefix("/**"))
            .unwrap_or(l);
        let l = l.strip_suffix("*/").unwrap_or(l);
        let l = l.strip_prefix(' ').unwrap_or(l);
        out.push_str(l.trim_end());
        out.push('\n');
    }
    out
}

/// A doc comment's text (examples left in, as the page shows them) and its ```rhai examples.
fn doc_text(comments: &[String]) -> (String, Vec<Example>) {
    let text = strip_comment_marks(comments.iter().flat_map(|c| c.lines()));
    let mut examples = Vec::new();
    let mut current: Option<Example> = None;
    for line in text.lines() {
        let fence = line.trim();
        match current.as_mut() {
            None if fence.starts_with("```rhai") => {
                let run = !fence["```rhai".len()..].contains("no_run");
                current = Some(Example {
                    code: String::new(),
                    run,
                });
            }
            Some(_) if fence == "```" => examples.extend(current.take()),
            Some(ex) => {
                ex.code.push_str(line);
                ex.code.push('\n');
            }
            None => {}
        }
    }
    (text.trim().to_string(), examples)
}

/// A page as Markdown: the module text, its types, then each function's signature, text and
/// example.
pub fn markdown(page: &Page) -> String {
    let mut md = format!("# {}\n\n", page.name);
    if !page.doc.is_empty() {
        md += &format!("{}\n\n", page.doc);
    }
    if !page.types.is_empty() {
        md += "## Types\n\n";
        for (name, doc) in &page.types {
            md += &format!("- `{name}`: {}\n", doc.replace('\n', " "));
        }
        md += "\n";
    }
    md += "## Functions\n\n";
    let mut last = "";
    for f in &page.functions {
        if f.name != last {
            md += &format!("### {}\n\n", f.name);
            last = &f.name;
        }
        md += &format!("`{}`\n\n", f.signature());
        if !f.text.is_empty() {
            // Fences as a Markdown viewer highlights them.
            md += &f.text.replace("```rhai no_run", "```rhai");
            md += "\n\n";
        }
    }
    md
}

/// What `sslhost docs` wrote.
pub struct Written {
    /// The folder.
    pub out: PathBuf,
    /// Pages written (index excluded).
    pub pages: usize,
    /// Functions documented.
    pub functions: usize,
    /// Definition files written.
    pub definitions: usize,
}

/// Writes the reference into `out`: `index.md`, a page per module, and `definitions/*.d.rhai`
/// (point the Rhai language server's `definitions` setting there).
pub fn write(out: &Path) -> Result<Written> {
    if out.exists() && !out.is_dir() {
        return Err(Error::file(
            out,
            "is a file: `docs --out` needs a folder (created if missing)",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, format!("cannot create: {e}")))?;
    let pages = pages()?;
    let mut index = String::from(
        "# sslhost script API\n\nGenerated by `sslhost docs` from the doc comments of the host \
         modules and the stdlib; every example on these pages is run by the tests.\n\n",
    );
    let mut functions = 0;
    for page in &pages {
        let file = out.join(format!("{}.md", page.name));
        write_atomic(&file, markdown(page).as_bytes())?;
        functions += page.functions.len();
        let summary = page
            .doc
            .split("\n\n")
            .next()
            .unwrap_or("")
            .replace('\n', " ");
        index += &format!(
            "- [{}]({}.md): {} ({} functions)\n",
            page.name,
            page.name,
            summary,
            page.functions.len()
        );
    }
    write_atomic(&out.join("index.md"), index.as_bytes())?;

    // The language server's files: Rhai's own for its standard library, then ours.
    let defs = out.join("definitions");
    let std_engine = Engine::new();
    let standard = std_engine.definitions().with_headers(true);
    let mut ours = String::from("module static;\n\n");
    for f in pages.iter().flat_map(|p| &p.functions) {
        ours += &f.definition();
        ours += "\n\n";
    }
    let files = [
        ("__builtin__.d.rhai", standard.builtin_functions()),
        (
            "__builtin-operators__.d.rhai",
            standard.builtin_functions_operators(),
        ),
        ("__static__.d.rhai", standard.static_module()),
        ("sslhost.d.rhai", ours),
    ];
    for (name, text) in &files {
        write_atomic(&defs.join(name), text.as_bytes())?;
    }
    let count = files.len();
    Ok(Written {
        out: out.to_path_buf(),
        pages: pages.len(),
        functions,
        definitions: count,
    })
}
