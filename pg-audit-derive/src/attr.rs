//! Parsing `#[pg_audit(...)]`'s arguments into [`Attrs`], recording every mistake.

use pg_audit::{Capture, Condition, Operation};
use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::{Parse, ParseStream, Parser as _};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Ident, LitStr, Token};

use crate::ctxt::Ctxt;
use crate::symbol::{CAPTURE, CONDITION, EXCLUDE_FIELDS, KEYS, MASK, OPERATIONS, TRACK_ONLY};

/// A column as written in a list: a string literal or an identifier, turned into the Diesel
/// column identifier it names, carrying the user's span.
#[derive(Clone)]
pub(crate) struct Column {
    pub(crate) ident: Ident,
}

/// A key with its value and the span of the key, for errors that concern the key itself.
pub(crate) struct Keyed<T> {
    pub(crate) key: Span,
    /// Position among the attribute's keys, to point at the later of two conflicting keys.
    pub(crate) position: usize,
    pub(crate) value: T,
}

#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) track_only: Option<Keyed<Vec<Column>>>,
    pub(crate) exclude_fields: Option<Keyed<Vec<Column>>>,
    pub(crate) mask: Option<Keyed<Vec<Column>>>,
    pub(crate) condition: Option<Keyed<(LitStr, Condition)>>,
    pub(crate) operations: Option<Keyed<Vec<Operation>>>,
    pub(crate) capture: Option<Keyed<Capture>>,
}

/// One element of a list: `"name"` or `name`.
enum Element {
    Str(LitStr),
    Ident(Ident),
}

impl Parse for Element {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            input.parse().map(Element::Str)
        } else if input.peek(Ident) {
            input.parse().map(Element::Ident)
        } else {
            Err(input.error("expected a column name, as a string literal or an identifier"))
        }
    }
}

impl Element {
    fn text(&self) -> String {
        match self {
            Element::Str(lit) => lit.value(),
            Element::Ident(ident) => ident.to_string().trim_start_matches("r#").to_owned(),
        }
    }

    fn span(&self) -> Span {
        match self {
            Element::Str(lit) => lit.span(),
            Element::Ident(ident) => ident.span(),
        }
    }
}

pub(crate) fn parse(args: TokenStream, cx: &mut Ctxt) -> Attrs {
    let mut attrs = Attrs::default();
    let mut position = 0;
    let parser = syn::meta::parser(|meta| {
        position += 1;
        let key = (meta.path.span(), position);
        let name = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match name.as_str() {
            TRACK_ONLY => {
                let value = columns(&meta, TRACK_ONLY, cx)?;
                set(&mut attrs.track_only, key, value, TRACK_ONLY, cx);
            }
            EXCLUDE_FIELDS => {
                let value = columns(&meta, EXCLUDE_FIELDS, cx)?;
                set(&mut attrs.exclude_fields, key, value, EXCLUDE_FIELDS, cx);
            }
            MASK => {
                let value = columns(&meta, MASK, cx)?;
                set(&mut attrs.mask, key, value, MASK, cx);
            }
            CONDITION => {
                let lit: LitStr = meta.value()?.parse()?;
                match Condition::parse(&lit.value()) {
                    Ok(condition) => {
                        set(&mut attrs.condition, key, (lit, condition), CONDITION, cx)
                    }
                    Err(pg_audit::Error::EmptyCondition) => {
                        cx.error(lit.span(), "`condition` is empty; give a SQL boolean such as \"NEW.is_active\", or remove it");
                    }
                    Err(pg_audit::Error::InvalidCondition { reason, .. }) => {
                        cx.error(lit.span(), format!("invalid `condition`: {reason}"));
                    }
                    Err(e) => cx.error(lit.span(), format!("invalid `condition`: {e}")),
                }
            }
            OPERATIONS => {
                let value = operations(&meta, cx)?;
                set(&mut attrs.operations, key, value, OPERATIONS, cx);
            }
            CAPTURE => {
                // `capture = wal` or `capture = "wal"`.
                let element: Element = meta.value()?.parse()?;
                match element.text().parse::<Capture>() {
                    Ok(capture) => set(&mut attrs.capture, key, capture, CAPTURE, cx),
                    Err(_) => cx.error(
                        element.span(),
                        format!(
                            "unknown `capture` `{}`, expected `trigger` (the default: inside the writing transaction) or `wal` (from the write-ahead log, by the capture worker)",
                            element.text()
                        ),
                    ),
                }
            }
            _ => {
                let path = &meta.path;
                let shown = quote::quote!(#path).to_string().replace(' ', "");
                let expected = KEYS.map(|k| format!("`{k}`")).join(", ");
                let mut message =
                    format!("unknown pg_audit attribute `{shown}`, expected one of {expected}");
                if let Some(close) = KEYS.iter().find(|k| edit_distance(k, &shown) <= 2) {
                    message.push_str(&format!("\nhelp: did you mean `{close}`?"));
                }
                cx.error(key.0, message);
                skip_value(&meta)?;
            }
        }
        Ok(())
    });
    if let Err(e) = parser.parse2(args) {
        cx.push(e);
    }
    attrs
}

fn set<T>(
    slot: &mut Option<Keyed<T>>,
    (key, position): (Span, usize),
    value: T,
    name: &str,
    cx: &mut Ctxt,
) {
    if slot.is_some() {
        cx.error(key, format!("duplicate pg_audit attribute `{name}`"));
    } else {
        *slot = Some(Keyed {
            key,
            position,
            value,
        });
    }
}

fn list(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> syn::Result<(Span, Vec<Element>)> {
    let input = meta.value()?;
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!("`{key}` takes a list: `{key} = [{example}]`")));
    }
    let content;
    let bracket = syn::bracketed!(content in input);
    let items = Punctuated::<Element, Token![,]>::parse_terminated(&content)?;
    Ok((bracket.span.join(), items.into_iter().collect()))
}

fn columns(meta: &ParseNestedMeta<'_>, key: &str, cx: &mut Ctxt) -> syn::Result<Vec<Column>> {
    let (span, items) = list(meta, key, "\"name\", \"email\"")?;
    if items.is_empty() {
        cx.error(
            span,
            format!("`{key}` is empty; list at least one column, or remove it"),
        );
    }
    let mut out: Vec<Column> = Vec::with_capacity(items.len());
    for item in items {
        let text = item.text();
        let Ok(ident) = syn::parse_str::<Ident>(&text) else {
            cx.error(
                item.span(),
                format!(
                    "`{text}` is not a column of a Diesel `table!`; name columns as `table!` does"
                ),
            );
            continue;
        };
        let ident = Ident::new(&ident.to_string(), item.span());
        if out.iter().any(|c| c.ident == ident) {
            cx.error(
                item.span(),
                format!("column `{text}` is listed twice in `{key}`"),
            );
            continue;
        }
        out.push(Column { ident });
    }
    Ok(out)
}

fn operations(meta: &ParseNestedMeta<'_>, cx: &mut Ctxt) -> syn::Result<Vec<Operation>> {
    let (span, items) = list(meta, OPERATIONS, "insert, update")?;
    let expected = Operation::ALL
        .map(|op| format!("`{}`", op.name()))
        .join(", ");
    if items.is_empty() {
        cx.error(
            span,
            format!("`operations` is empty; list at least one of {expected}, or remove it"),
        );
    }
    let mut out = Vec::new();
    for item in items {
        let text = item.text();
        match text.parse::<Operation>() {
            Ok(op) if out.contains(&op) => {
                cx.error(item.span(), format!("operation `{text}` is listed twice"));
            }
            Ok(op) => out.push(op),
            Err(_) => cx.error(
                item.span(),
                format!("unknown operation `{text}`, expected one of {expected}"),
            ),
        }
    }
    Ok(out)
}

/// Consumes an unknown key's value so parsing can go on to report later mistakes too.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("track_only", "trak_only"), 1);
        assert_eq!(edit_distance("condition", "conditon"), 1);
        assert_eq!(edit_distance("operations", "xyz"), 10);
    }
}
