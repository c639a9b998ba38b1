//! Rhai's errors located in their sources: the chain of calls from the script down to the
//! failing expression, as frames of `file:line:col`, with the innermost source line. Used by
//! the engine (every script error) and by the live functions (a rejected edit).

use std::collections::HashMap;

use rhai::{EvalAltResult, Position};

use crate::error::{Frame, ScriptError};

/// A Rhai error located in its sources: source lines come from `sources` (source name ->
/// text), and `default_source` names the file of positions that carry none.
pub fn locate(
    err: &EvalAltResult,
    sources: &HashMap<String, String>,
    default_source: &str,
) -> ScriptError {
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

fn push_frame(frames: &mut Vec<Frame>, source: Option<String>, pos: Position) {
    if let (Some(line), col) = (pos.line(), pos.position().unwrap_or(1)) {
        frames.push(Frame { source, line, col });
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
