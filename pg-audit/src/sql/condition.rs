//! Trigger conditions: a SQL boolean over `NEW` and `OLD`, checked lexically and rewritten per
//! operation.
//!
//! PostgreSQL rejects a trigger `WHEN` clause that mentions `OLD` on INSERT or `NEW` on DELETE,
//! yet a condition such as `NEW.is_active` should also decide whether the deletion of an active
//! row is logged. So a condition is evaluated against the row the operation is about:
//!
//! | operation | `NEW` means          | `OLD` means          |
//! |-----------|----------------------|----------------------|
//! | INSERT    | the inserted row     | the inserted row     |
//! | UPDATE    | the row after        | the row before       |
//! | DELETE    | the deleted row      | the deleted row      |
//!
//! TRUNCATE has no rows and ignores the condition.
//!
//! To rewrite `NEW`/`OLD` safely the condition is split into PostgreSQL's lexical tokens
//! (strings, quoted identifiers, dollar quotes and comments are recognised, so `'NEW.x'` is left
//! alone); the same pass rejects what could break out of the surrounding SQL: unbalanced
//! parentheses, unterminated quotes and `;`.

use std::ops::Range;

use crate::Error;

/// Which trigger row a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowRef {
    /// `NEW`.
    New,
    /// `OLD`.
    Old,
}

/// A `NEW.column` or `OLD.column` reference found in a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    /// `NEW` or `OLD`.
    pub row: RowRef,
    /// The column's name as PostgreSQL resolves it (unquoted names folded to lower case).
    pub column: String,
    /// Where the column name is in the condition text, in bytes.
    pub span: Range<usize>,
}

/// A validated trigger condition.
///
/// ```
/// use pg_audit::{Condition, RowRef};
/// let c = Condition::parse("NEW.is_active AND OLD.\"Plan\" <> 'NEW.x'").unwrap();
/// let cols: Vec<_> = c.column_refs().into_iter().map(|r| (r.row, r.column)).collect();
/// assert_eq!(cols, [(RowRef::New, "is_active".to_owned()), (RowRef::Old, "Plan".to_owned())]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    Word,
    QuotedIdent,
    Literal,
    Punct(char),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    kind: Kind,
    span: Range<usize>,
}

impl Condition {
    /// Checks `text` and keeps it for rendering.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidCondition {
            condition: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.contains('\0') {
            return Err(Error::NulByte { what: "condition" });
        }
        let tokens = tokenize(text).map_err(&invalid)?;
        let mut depth = 0i32;
        for token in &tokens {
            match token.kind {
                Kind::Punct('(') => depth += 1,
                Kind::Punct(')') => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(invalid("`)` without a matching `(`"));
                    }
                }
                Kind::Punct(';') => {
                    return Err(invalid("a condition is one expression; `;` is not allowed"));
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(invalid("`(` without a matching `)`"));
        }
        if tokens
            .iter()
            .all(|t| matches!(t.kind, Kind::Space | Kind::Comment))
        {
            return Err(Error::EmptyCondition);
        }
        Ok(Condition {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The condition as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Every `NEW.column` and `OLD.column` in the condition, in order.
    pub fn column_refs(&self) -> Vec<ColumnRef> {
        let mut refs = Vec::new();
        for i in 0..self.tokens.len() {
            let Some(row) = self.row_ref(i) else { continue };
            let mut rest = self.significant_after(i);
            if rest.next().map(|t| t.kind) != Some(Kind::Punct('.')) {
                continue;
            }
            let Some(col) = rest.next() else { continue };
            let raw = &self.text[col.span.clone()];
            let column = match col.kind {
                Kind::Word => raw.to_ascii_lowercase(),
                Kind::QuotedIdent => raw[1..raw.len() - 1].replace("\"\"", "\""),
                _ => continue,
            };
            refs.push(ColumnRef {
                row,
                column,
                span: col.span.clone(),
            });
        }
        refs
    }

    /// Whether the condition mentions `NEW` or `OLD` at all.
    pub fn mentions(&self, row: RowRef) -> bool {
        (0..self.tokens.len()).any(|i| self.row_ref(i) == Some(row))
    }

    /// The condition with each `NEW`/`OLD` replaced by `name(row)` and comments replaced by a
    /// space (so a trailing `--` comment cannot swallow the SQL that follows).
    pub fn render(&self, name: impl Fn(RowRef) -> String) -> String {
        let mut out = String::with_capacity(self.text.len());
        for (i, token) in self.tokens.iter().enumerate() {
            if let Some(row) = self.row_ref(i) {
                out.push_str(&name(row));
            } else if token.kind == Kind::Comment {
                out.push(' ');
            } else {
                out.push_str(&self.text[token.span.clone()]);
            }
        }
        out
    }

    /// `Some(row)` when token `i` is the trigger row `NEW`/`OLD` (an unquoted word, not a field
    /// of something else as in `t.new`).
    fn row_ref(&self, i: usize) -> Option<RowRef> {
        let token = &self.tokens[i];
        if token.kind != Kind::Word {
            return None;
        }
        let word = &self.text[token.span.clone()];
        let row = if word.eq_ignore_ascii_case("new") {
            RowRef::New
        } else if word.eq_ignore_ascii_case("old") {
            RowRef::Old
        } else {
            return None;
        };
        let after_dot = self.tokens[..i]
            .iter()
            .rev()
            .find(|t| !matches!(t.kind, Kind::Space | Kind::Comment))
            .is_some_and(|t| t.kind == Kind::Punct('.'));
        (!after_dot).then_some(row)
    }

    fn significant_after(&self, i: usize) -> impl Iterator<Item = &Token> {
        self.tokens[i + 1..]
            .iter()
            .filter(|t| !matches!(t.kind, Kind::Space | Kind::Comment))
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// Splits SQL text into tokens following PostgreSQL's lexer closely enough to know what is
/// inside a string, quoted identifier, dollar quote or comment.
fn tokenize(text: &str) -> Result<Vec<Token>, &'static str> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().expect("i is on a char boundary");
        let start = i;
        let kind = if c.is_whitespace() {
            i += c.len_utf8();
            while let Some(c) = text[i..].chars().next().filter(|c| c.is_whitespace()) {
                i += c.len_utf8();
            }
            Kind::Space
        } else if text[i..].starts_with("--") {
            i = text[i..].find('\n').map_or(text.len(), |n| i + n);
            Kind::Comment
        } else if text[i..].starts_with("/*") {
            // Block comments nest in PostgreSQL.
            let mut depth = 0;
            loop {
                if text[i..].starts_with("/*") {
                    depth += 1;
                    i += 2;
                } else if text[i..].starts_with("*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= text.len() {
                    return Err("unterminated `/*` comment");
                } else {
                    i += text[i..].chars().next().map_or(1, char::len_utf8);
                }
            }
            Kind::Comment
        } else if c == '\'' {
            i = end_of_string(text, i, false)?;
            Kind::Literal
        } else if c == '"' {
            i += 1;
            loop {
                match text[i..].find('"') {
                    None => return Err("unterminated quoted identifier"),
                    Some(n) if bytes.get(i + n + 1) == Some(&b'"') => i += n + 2,
                    Some(n) => {
                        i += n + 1;
                        break;
                    }
                }
            }
            Kind::QuotedIdent
        } else if c == '$' {
            let tag_len = text[i + 1..]
                .char_indices()
                .find(|&(n, c)| !(is_ident_start(c) || (n > 0 && c.is_ascii_digit())))
                .filter(|&(_, c)| c == '$')
                .map(|(n, _)| n);
            match tag_len {
                Some(n) => {
                    let tag = &text[i..i + n + 2];
                    let body = i + tag.len();
                    match text[body..].find(tag) {
                        Some(end) => i = body + end + tag.len(),
                        None => return Err("unterminated dollar-quoted string"),
                    }
                    Kind::Literal
                }
                None => {
                    i += 1;
                    Kind::Other
                }
            }
        } else if is_ident_start(c) {
            i += c.len_utf8();
            while let Some(c) = text[i..].chars().next().filter(|&c| is_ident_cont(c)) {
                i += c.len_utf8();
            }
            // E'...' is a string with backslash escapes, not a word followed by a string.
            if bytes.get(i) == Some(&b'\'') && text[start..i].eq_ignore_ascii_case("e") {
                i = end_of_string(text, i, true)?;
                Kind::Literal
            } else {
                Kind::Word
            }
        } else if c.is_ascii_punctuation() {
            i += 1;
            Kind::Punct(c)
        } else {
            i += c.len_utf8();
            Kind::Other
        };
        tokens.push(Token {
            kind,
            span: start..i,
        });
    }
    Ok(tokens)
}

/// The end (exclusive) of the string literal whose opening quote is at `open`.
fn end_of_string(text: &str, open: usize, backslash_escapes: bool) -> Result<usize, &'static str> {
    let bytes = text.as_bytes();
    let mut i = open + 1;
    loop {
        match bytes.get(i) {
            None => return Err("unterminated string literal"),
            Some(b'\\') if backslash_escapes => i += 2,
            Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            Some(b'\'') => return Ok(i + 1),
            Some(_) => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn cols(text: &str) -> Vec<(RowRef, String)> {
        Condition::parse(text)
            .unwrap()
            .column_refs()
            .into_iter()
            .map(|r| (r.row, r.column))
            .collect()
    }

    #[test]
    fn finds_column_references() {
        assert_eq!(
            cols("NEW.is_active = TRUE AND old . \"Mixed\"\"Case\" IS NULL"),
            [
                (RowRef::New, "is_active".to_owned()),
                (RowRef::Old, "Mixed\"Case".to_owned())
            ]
        );
        assert_eq!(
            cols("New.Status <> 'x'"),
            [(RowRef::New, "status".to_owned())]
        );
    }

    #[test]
    fn ignores_new_and_old_inside_strings_comments_and_fields() {
        assert_eq!(
            cols(
                "'NEW.a' = E'\\'NEW.b' AND $t$ OLD.c $t$ = $$NEW.d$$ -- NEW.e\n AND t.new = 1 /* OLD.f /* nested */ */"
            ),
            []
        );
    }

    #[test]
    fn rewrites_rows_and_drops_comments() {
        let c = Condition::parse("NEW.a > OLD.a -- grew").unwrap();
        assert_eq!(
            c.render(|row| match row {
                RowRef::New => "n".to_owned(),
                RowRef::Old => "o".to_owned(),
            }),
            "n.a > o.a  "
        );
        assert!(c.mentions(RowRef::Old));
        assert!(!Condition::parse("NEW.a").unwrap().mentions(RowRef::Old));
    }

    #[test]
    fn rejects_what_could_escape_its_parentheses() {
        let reason = |text: &str| match Condition::parse(text) {
            Err(Error::InvalidCondition { reason, .. }) => reason,
            other => panic!("expected an invalid condition, got {other:?}"),
        };
        assert_eq!(reason("true) OR (true"), "`)` without a matching `(`");
        assert_eq!(reason("(true"), "`(` without a matching `)`");
        assert_eq!(
            reason("true; DROP TABLE x"),
            "a condition is one expression; `;` is not allowed"
        );
        assert_eq!(reason("NEW.a = 'x"), "unterminated string literal");
        assert_eq!(reason("NEW.\"a = 1"), "unterminated quoted identifier");
        assert_eq!(reason("$q$ x"), "unterminated dollar-quoted string");
        assert_eq!(reason("/* x"), "unterminated `/*` comment");
        assert_eq!(reason("E'\\'"), "unterminated string literal");
        assert_eq!(
            Condition::parse("  -- nothing\n"),
            Err(Error::EmptyCondition)
        );
        assert_eq!(Condition::parse(""), Err(Error::EmptyCondition));
        assert_eq!(
            Condition::parse("a\0"),
            Err(Error::NulByte { what: "condition" })
        );
    }

    #[test]
    fn parentheses_inside_strings_do_not_count() {
        assert!(Condition::parse("NEW.a = ')' AND NEW.b = '('").is_ok());
        assert!(Condition::parse("NEW.a = $$;$$").is_ok());
    }
}
