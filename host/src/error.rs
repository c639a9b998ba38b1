//! One error type for the host, and the rendering of script errors as
//! `file:line:col`, the source line and a caret (the engine locates Rhai's errors:
//! `crate::located`).

use std::fmt;
use std::path::PathBuf;

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
    /// A panic (inside Burn or another library), caught and turned into an error.
    #[error("internal error (a bug in sslhost or a library it uses, not in the script): {0}")]
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
}

fn format_frame(f: &Frame) -> String {
    match &f.source {
        Some(s) => format!("{s}:{}:{}", f.line, f.col),
        None => format!("{}:{}", f.line, f.col),
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        write!(f, "  --> {}", self.location())?;
        if let (Some(line), Some(frame)) = (&self.source_line, self.frames.first()) {
            let num = frame.line.to_string();
            let pad = " ".repeat(num.len());
            let (shown, caret) = window(line, frame.col);
            write!(f, "\n {pad} |\n {num} | {shown}\n {pad} | ")?;
            // The caret sits under the column, counting characters (tabs kept as tabs).
            let lead: String = shown
                .chars()
                .take(caret)
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

/// Characters of a source line shown at most; longer lines are cut to a window around the
/// error's column.
const SHOWN_CHARS: usize = 120;

/// The part of `line` to show for an error at 1-based `col`, and the caret's offset in it
/// (in characters).
fn window(line: &str, col: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    let at = col.saturating_sub(1).min(chars.len());
    if chars.len() <= SHOWN_CHARS {
        return (line.to_string(), at);
    }
    let start = at.saturating_sub(SHOWN_CHARS / 2);
    let end = (start + SHOWN_CHARS).min(chars.len());
    let mut shown = String::new();
    if start > 0 {
        shown.push('…');
    }
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push('…');
    }
    (shown, at - start + usize::from(start > 0))
}

/// Rhai counts lines and columns in 16 bits: a position past 65,535 would be reported
/// wrongly, so a script with a longer line, or more lines, is refused with a located error.
pub fn check_positions(source: &str, text: &str) -> std::result::Result<(), ScriptError> {
    const MAX: usize = u16::MAX as usize;
    let too_long = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.chars().count() > MAX);
    let (line, col, message) = if let Some((i, l)) = too_long {
        (
            i + 1,
            1,
            format!(
                "line {} has {} characters; positions are located only within the first \
                 65,535 characters of a line: split it (one element per line) or read the \
                 data from a file",
                i + 1,
                l.chars().count()
            ),
        )
    } else if text.lines().count() > MAX {
        (
            MAX,
            1,
            "the script has more than 65,535 lines, beyond which positions cannot be located: \
             split it into modules (`import`)"
                .to_string(),
        )
    } else {
        return Ok(());
    };
    Err(ScriptError {
        message,
        frames: vec![Frame {
            source: Some(source.to_string()),
            line,
            col,
        }],
        source_line: text.lines().nth(line - 1).map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_shown_as_a_window_with_the_caret_under_the_column() {
        let line = format!("{}BAD{}", "x".repeat(1000), "y".repeat(1000));
        let e = ScriptError {
            message: "here".into(),
            frames: vec![Frame {
                source: Some("s.rhai".into()),
                line: 3,
                col: 1001,
            }],
            source_line: Some(line),
        };
        let text = e.to_string();
        assert!(text.contains("--> s.rhai:3:1001"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let (code, caret) = (lines[3], lines[4]);
        assert!(code.chars().count() < 140, "{code}");
        let at = caret.chars().position(|c| c == '^').unwrap();
        assert_eq!(code.chars().nth(at), Some('B'), "{code}\n{caret}");
    }

    #[test]
    fn lines_beyond_rhais_positions_are_refused() {
        let text = format!("let a = 1;\nlet x = [{}];\n", "1,".repeat(40_000));
        let e = check_positions("s.rhai", &text).unwrap_err();
        assert_eq!(e.location(), "s.rhai:2:1");
        assert!(
            e.message.contains("line 2 has 80011 characters"),
            "{}",
            e.message
        );
        assert!(check_positions("s.rhai", "let a = 1;\n").is_ok());
    }
}
