//! The parts of a recipe's text a live edit can change: its function definitions and the
//! rest (the top-level code and the loop body), each compared without comments or layout.
//!
//! Rhai's AST keeps no spans of function definitions, so a small scanner finds them: it
//! skips comments, strings and character literals and matches braces.

/// A function definition in a recipe's text.
#[derive(Debug, Clone, PartialEq)]
pub struct FnDef {
    /// The function's name.
    pub name: String,
    /// Its number of parameters.
    pub arity: usize,
    /// 1-based line of the `fn` keyword.
    pub line: usize,
    /// 1-based column (in characters) of the `fn` keyword.
    pub col: usize,
    /// The definition without comments, whitespace runs made one space.
    pub normalized: String,
}

/// A recipe's text split into its function definitions and the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Outline {
    /// Top-level function definitions, in order.
    pub functions: Vec<FnDef>,
    /// Everything outside function definitions, normalised like [`FnDef::normalized`].
    pub body: String,
}

impl Outline {
    /// The outline of `text`.
    pub fn of(text: &str) -> Self {
        let tokens = Scanner::new(text).tokens();
        let mut functions = Vec::new();
        let mut body = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let is_fn = tokens[i].depth == 0
                && tokens[i].text == "fn"
                && tokens.get(i + 1).is_some_and(|t| t.is_ident());
            if !is_fn {
                body.push(tokens[i].text.as_str());
                i += 1;
                continue;
            }
            // A `private` just before belongs to the definition.
            if body.last() == Some(&"private") {
                body.pop();
            }
            let start = i;
            let mut arity = 0;
            let mut params_open = false;
            let mut seen_param = false;
            let mut end = tokens.len();
            let mut j = i + 2;
            while j < tokens.len() {
                let t = &tokens[j];
                match t.text.as_str() {
                    "(" if !params_open && t.depth == 0 => params_open = true,
                    ")" if params_open && t.depth == 0 => {
                        params_open = false;
                        arity += usize::from(seen_param);
                    }
                    "," if params_open => {
                        arity += 1;
                        seen_param = false;
                    }
                    // The body's closing brace brings the depth back to 0.
                    "}" if t.depth == 0 => {
                        end = j + 1;
                        break;
                    }
                    _ if params_open => seen_param = true,
                    _ => {}
                }
                j += 1;
            }
            functions.push(FnDef {
                name: tokens[i + 1].text.clone(),
                arity,
                line: tokens[start].line,
                col: tokens[start].col,
                normalized: join(tokens[start..end].iter().map(|t| t.text.as_str())),
            });
            i = end;
        }
        Outline {
            functions,
            body: join(body.into_iter()),
        }
    }

    /// The definition of `name` taking `arity` arguments.
    pub fn function(&self, name: &str, arity: usize) -> Option<&FnDef> {
        self.functions
            .iter()
            .find(|f| f.name == name && f.arity == arity)
    }
}

/// 1-based line and column (in characters) of the first `live("name"` in `text`.
pub fn live_call(text: &str, name: &str) -> Option<(usize, usize)> {
    let tokens = Scanner::new(text).tokens();
    let quoted = format!("\"{name}\"");
    tokens.windows(3).find_map(|w| {
        (w[0].text == "live" && w[1].text == "(" && w[2].text == quoted)
            .then_some((w[0].line, w[0].col))
    })
}

fn join<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    parts.collect::<Vec<_>>().join(" ")
}

/// One token: an identifier or number, a string or character literal, or one punctuation
/// character; with the brace depth before it and where it starts.
#[derive(Debug)]
struct Token {
    text: String,
    depth: usize,
    line: usize,
    col: usize,
}

impl Token {
    fn is_ident(&self) -> bool {
        self.text
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
    }
}

struct Scanner<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    col: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            chars: text.chars().peekable(),
            line: 1,
            col: 1,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn tokens(mut self) -> Vec<Token> {
        let mut out = Vec::new();
        let mut depth = 0usize;
        while let Some(&c) = self.chars.peek() {
            let (line, col) = (self.line, self.col);
            if c.is_whitespace() {
                self.bump();
                continue;
            }
            let text = match c {
                '/' => {
                    self.bump();
                    match self.chars.peek() {
                        Some('/') => {
                            while self.chars.peek().is_some_and(|&c| c != '\n') {
                                self.bump();
                            }
                            continue;
                        }
                        Some('*') => {
                            self.block_comment();
                            continue;
                        }
                        _ => "/".to_string(),
                    }
                }
                '"' | '`' | '\'' => self.quoted(c),
                c if c.is_alphanumeric() || c == '_' => {
                    let mut s = String::new();
                    while let Some(&c) = self.chars.peek() {
                        if !(c.is_alphanumeric() || c == '_' || c == '.' && starts_number(&s)) {
                            break;
                        }
                        s.push(c);
                        self.bump();
                    }
                    s
                }
                _ => {
                    self.bump();
                    c.to_string()
                }
            };
            if text == "}" {
                depth = depth.saturating_sub(1);
            }
            out.push(Token {
                depth,
                text: text.clone(),
                line,
                col,
            });
            if text == "{" {
                depth += 1;
            }
        }
        out
    }

    /// After a `/` whose next character is `*`: skips a (nested) block comment.
    fn block_comment(&mut self) {
        self.bump();
        let mut level = 1;
        while level > 0 {
            match self.bump() {
                None => return,
                Some('*') if self.chars.peek() == Some(&'/') => {
                    self.bump();
                    level -= 1;
                }
                Some('/') if self.chars.peek() == Some(&'*') => {
                    self.bump();
                    level += 1;
                }
                _ => {}
            }
        }
    }

    /// A literal quoted by `quote`, escapes included, as written.
    fn quoted(&mut self, quote: char) -> String {
        let mut s = String::new();
        s.push(quote);
        self.bump();
        while let Some(c) = self.bump() {
            s.push(c);
            if c == '\\' {
                if let Some(next) = self.bump() {
                    s.push(next);
                }
            } else if c == quote {
                break;
            }
        }
        s
    }
}

fn starts_number(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"// a recipe
let cfg = config(#{ lr: 0.1 });
/* a block /* nested */ comment with fn fake() { } */
fn lr(step, total) { warmup_cosine(step, total, total / 10, 1.0, 0.0) }
private fn helper() {
    let s = "a string with } and fn x() {";
    `template ${1 + 2} }`
}
fn tau(step,
       total) {
    if step > 3 { 1.0 } else { 0.99 }
}
for b in steps(l, 2) {
    opt.step(loss, live("lr", b.step, total));
}
"#;

    #[test]
    fn functions_and_body_are_found_past_comments_and_strings() {
        let o = Outline::of(RECIPE);
        let names: Vec<_> = o
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.arity, f.line, f.col))
            .collect();
        assert_eq!(
            names,
            [("lr", 2, 4, 1), ("helper", 0, 5, 9), ("tau", 2, 9, 1)]
        );
        assert!(o.body.starts_with("let cfg = config ( # {"), "{}", o.body);
        assert!(o.body.contains("for b in steps"), "{}", o.body);
        assert!(!o.body.contains("helper"), "{}", o.body);
        assert!(!o.body.contains("private"), "{}", o.body);
        assert_eq!(live_call(RECIPE, "lr"), Some((14, 20)));
        assert_eq!(live_call(RECIPE, "tau"), None);
    }

    #[test]
    fn layout_and_comments_do_not_count_as_changes() {
        let a = Outline::of(RECIPE);
        let b = Outline::of(
            &RECIPE
                .replace("// a recipe", "// another comment")
                .replace("(step,\n       total)", "(step, total)"),
        );
        assert_eq!(a, Outline { ..b.clone() }.with_lines_of(&a));
        let c = Outline::of(&RECIPE.replace("0.99", "0.98"));
        assert_ne!(a.function("tau", 2), c.function("tau", 2));
        assert_eq!(a.function("lr", 2), c.function("lr", 2));
        assert_eq!(a.body, c.body);
        let d = Outline::of(&RECIPE.replace("steps(l, 2)", "steps(l, 3)"));
        assert_ne!(a.body, d.body);
        assert_eq!(a.functions, d.functions);
    }

    impl Outline {
        /// The same outline with the positions of `other`'s functions (for comparing texts).
        fn with_lines_of(mut self, other: &Outline) -> Outline {
            for (f, g) in self.functions.iter_mut().zip(&other.functions) {
                f.line = g.line;
                f.col = g.col;
            }
            self
        }
    }
}
