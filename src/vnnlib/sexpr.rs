//! SMT-LIB s-expressions: the tokenizer (`;` comments, `|quoted symbols|`, `"strings"`) and
//! the reader, each form tagged with the line it starts on so that errors can point at it.

use crate::error::{Error, Result};
use std::fmt::Write as _;

/// Nesting deeper than this is refused: real properties nest a handful of levels, and the
/// formula walk is recursive.
pub(crate) const MAX_DEPTH: usize = 256;

/// An atom (symbol, number, quoted symbol or string, as spelled) or a parenthesised list.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SExpr<'a> {
    Atom { text: &'a str, line: usize },
    List { items: Vec<SExpr<'a>>, line: usize },
}

impl<'a> SExpr<'a> {
    /// The line (from 1) the form starts on.
    pub(crate) fn line(&self) -> usize {
        match self {
            SExpr::Atom { line, .. } | SExpr::List { line, .. } => *line,
        }
    }

    pub(crate) fn atom(&self) -> Option<&'a str> {
        match self {
            SExpr::Atom { text, .. } => Some(text),
            SExpr::List { .. } => None,
        }
    }

    /// The form as written (one line, single spaces), cut to about 60 characters: for messages.
    pub(crate) fn show(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        shorten(&out, 60)
    }

    fn render(&self, out: &mut String) {
        // Past the cut the rest would be thrown away.
        if out.len() > 64 {
            return;
        }
        match self {
            SExpr::Atom { text, .. } => out.push_str(text),
            SExpr::List { items, .. } => {
                out.push('(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    item.render(out);
                }
                out.push(')');
            }
        }
    }
}

/// `text` cut to at most `max` characters, "…" marking the cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

fn error(line: usize, message: impl std::fmt::Display) -> Error {
    let mut text = String::new();
    let _ = write!(text, "line {line}: {message}");
    Error::Invalid(text)
}

/// Reads every top-level form of `text`; each must be a list (a command).
pub(crate) fn read(text: &str) -> Result<Vec<SExpr<'_>>> {
    let bytes = text.as_bytes();
    let mut line = 1;
    let mut at = 0;
    let mut top = Vec::new();
    // The lists still open: the line each started on and the items read so far.
    let mut open: Vec<(usize, Vec<SExpr>)> = Vec::new();
    while at < bytes.len() {
        let b = bytes[at];
        match b {
            b'\n' => {
                line += 1;
                at += 1;
            }
            b' ' | b'\t' | b'\r' | b'\x0c' => at += 1,
            b';' => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            b'(' => {
                if open.len() >= MAX_DEPTH {
                    return Err(error(
                        line,
                        format!("parentheses nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                open.push((line, Vec::new()));
                at += 1;
            }
            b')' => {
                let Some((start, items)) = open.pop() else {
                    return Err(error(
                        line,
                        "unbalanced parentheses: ')' without a matching '('",
                    ));
                };
                let list = SExpr::List { items, line: start };
                match open.last_mut() {
                    Some((_, parent)) => parent.push(list),
                    None => top.push(list),
                }
                at += 1;
            }
            _ => {
                let start_line = line;
                let start = at;
                at = match b {
                    b'|' | b'"' => quoted_end(bytes, at, &mut line)
                        .ok_or_else(|| unterminated(text, start, start_line))?,
                    _ => {
                        let mut end = at;
                        while end < bytes.len()
                            && !matches!(
                                bytes[end],
                                b' ' | b'\t'
                                    | b'\r'
                                    | b'\n'
                                    | b'\x0c'
                                    | b'('
                                    | b')'
                                    | b';'
                                    | b'"'
                                    | b'|'
                            )
                        {
                            end += 1;
                        }
                        end
                    }
                };
                // Token boundaries are ASCII bytes, so the slice is on character boundaries.
                let token = &text[start..at];
                match open.last_mut() {
                    Some((_, items)) => items.push(SExpr::Atom {
                        text: token,
                        line: start_line,
                    }),
                    None => {
                        return Err(error(
                            start_line,
                            format!(
                                "stray token '{}' outside any command (commands are \
                                 parenthesised)",
                                shorten(token, 40)
                            ),
                        ))
                    }
                }
            }
        }
    }
    if let Some((start, _)) = open.first() {
        return Err(error(
            *start,
            "unbalanced parentheses: the '(' opened here is never closed",
        ));
    }
    Ok(top)
}

/// The end (one past the closing delimiter) of the `|symbol|` or `"string"` starting at `at`;
/// in strings `""` stands for a quote. Counts the lines it spans.
fn quoted_end(bytes: &[u8], at: usize, line: &mut usize) -> Option<usize> {
    let close = bytes[at];
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => *line += 1,
            c if c == close => {
                if close == b'"' && bytes.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn unterminated(text: &str, start: usize, line: usize) -> Error {
    let what = if text.as_bytes()[start] == b'|' {
        "quoted symbol"
    } else {
        "string"
    };
    let rest: String = text[start..].chars().take(20).collect();
    error(
        line,
        format!("unterminated {what} '{}'", shorten(&rest, 19)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        read(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_lists_lines_and_comments() {
        let forms = read("; header\r\n(a (b 1.5)) ; tail\n\n(c |x y| \"s\"\"t\")").unwrap();
        assert_eq!(forms.len(), 2);
        assert_eq!(forms[0].line(), 2);
        assert_eq!(forms[1].line(), 4);
        assert_eq!(forms[0].show(), "(a (b 1.5))");
        assert_eq!(forms[1].show(), "(c |x y| \"s\"\"t\")");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        assert!(message("(a\n(b)").contains("line 1: unbalanced parentheses"));
        assert!(message("(a)\n\n(b))").contains("line 3: unbalanced parentheses: ')'"));
        assert!(message("(a)\nfoo").contains("line 2: stray token 'foo'"));
        assert!(message("(a |x\n\n").contains("line 1: unterminated quoted symbol"));
        assert!(message(&"(".repeat(1000)).contains("nested deeper"));
        assert!(read("").unwrap().is_empty());
    }

    #[test]
    fn long_forms_are_cut() {
        let long = format!("({})", "x ".repeat(100));
        let shown = read(&long).unwrap()[0].show();
        assert!(shown.ends_with('…') && shown.chars().count() == 61);
    }
}
