//! One error type for the host, and the rendering of script errors as
//! `file:line:col`, the source line and a caret.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use rhai::{EvalAltResult, Position};

/// Everything that can go wrong in the host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A shape or rank does not fit the operation.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An integer tensor where a float one is needed, or the reverse.
    #[error("dtype mismatch: {0}")]
    Dtype(String),
    /// An argument outside its valid range (a negative size, an unknown option...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A loss or a value that is NaN or infinite where a finite number is needed.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// A panic inside Burn, caught and turned into an error.
    #[error("internal error in the tensor backend: {0}")]
    Backend(String),
    /// A file that could not be read or written.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A script error, already located in its source.
    #[error("{0}")]
    Script(Box<ScriptError>),
    /// Anything else, with its message.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A file error naming the path.
    pub fn file(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// The process exit code for this error: 2 for script errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Script(_) => 2,
            _ => 1,
        }
    }
}

/// Shorthand for results in the host.
pub type Result<T> = std::result::Result<T, Error>;

/// One frame of a script error: where it happened and, if known, in which file.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The source name (a path as given to the engine), if known.
    pub source: Option<String>,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub col: usize,
}

/// A script error located in its source: the innermost position first, then callers.
#[derive(Debug, Clone)]
pub struct ScriptError {
    /// The message of the innermost error.
    pub message: String,
    /// Innermost first: where the error happened, then each call site up to the script.
    pub frames: Vec<Frame>,
    /// The source line of the innermost frame, if the source is known.
    pub source_line: Option<String>,
}

impl ScriptError {
    /// The innermost location as `file:line:col` (or `line:col` when the file is unknown).
    pub fn location(&self) -> String {
        match self.frames.first() {
            Some(f) => format_frame(f),
            None => "<unknown position>".into(),
        }
    }

    /// Builds a located error from a Rhai error, taking source lines from `sources`
    /// (source name -> text). `default_source` names the file of positions that carry none.
    pub fn from_rhai(
        err: &EvalAltResult,
        sources: &HashMap<String, String>,
        default_source: &str,
    ) -> Self {
        let mut frames = Vec::new();
        let mut current = err;
        let mut source = Some(default_source.to_string());
        // Walk from the outermost call into the innermost error.
        loop {
            match current {
                EvalAltResult::ErrorInFunctionCall(_, fn_source, inner, pos) => {
                    push_frame(&mut frames, source.clone(), *pos);
                    if !fn_source.is_empty() {
                        source = Some(fn_source.clone());
                    }
                    current = inner;
                }
                EvalAltResult::ErrorInModule(path, inner, pos) => {
                    push_frame(&mut frames, source.clone(), *pos);
                    source = Some(path.clone());
                    current = inner;
                }
                other => {
                    push_frame(&mut frames, source.clone(), other.position());
                    break;
                }
            }
        }
        frames.reverse();
        let message = innermost_message(current);
        let source_line = frames.first().and_then(|f| {
            let text = sources.get(f.source.as_deref()?)?;
            text.lines().nth(f.line.checked_sub(1)?).map(str::to_string)
        });
        ScriptError {
            message,
            frames,
            source_line,
        }
    }
}

fn push_frame(frames: &mut Vec<Frame>, source: Option<String>, pos: Position) {
    if let (Some(line), col) = (pos.line(), pos.position().unwrap_or(1)) {
        frames.push(Frame { source, line, col });
    }
}

fn format_frame(f: &Frame) -> String {
    match &f.source {
        Some(s) => format!("{s}:{}:{}", f.line, f.col),
        None => format!("{}:{}", f.line, f.col),
    }
}

/// The message of an error without Rhai's trailing position text.
fn innermost_message(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
        EvalAltResult::ErrorParsing(p, _) => format!("syntax error: {p}"),
        other => {
            // Rhai appends " (line L, position C)"; the location is rendered separately.
            let text = other.to_string();
            match text.rfind(" (line ") {
                Some(i) if text.ends_with(')') => text[..i].to_string(),
                _ => text,
            }
        }
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        write!(f, "  --> {}", self.location())?;
        if let (Some(line), Some(frame)) = (&self.source_line, self.frames.first()) {
            let num = frame.line.to_string();
            let pad = " ".repeat(num.len());
            write!(f, "\n {pad} |\n {num} | {line}\n {pad} | ")?;
            // The caret sits under the column, counting characters (tabs kept as tabs).
            let lead: String = line
                .chars()
                .take(frame.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "{lead}^")?;
        }
        for caller in self.frames.iter().skip(1) {
            write!(f, "\n  = called from {}", format_frame(caller))?;
        }
        Ok(())
    }
}
