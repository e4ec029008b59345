//! The page frame, the style sheet, and how values are shown: every audited value, key, table
//! name and context field is hostile input, so text goes through maud's escaping, control and
//! bidirectional-override characters are shown as visible escapes (`\u{202e}`), and links are
//! built from percent-encoded query strings, never from a value.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

/// The style sheet, compiled into the binary: light and dark from the system's preference,
/// readable on a phone.
pub(crate) const STYLE: &str = r#"
:root { color-scheme: light dark; --bg: #fff; --fg: #1d1d1f; --muted: #6b6b70; --line: #d8d8dc;
  --accent: #0b57d0; --old: #fde7e7; --new: #e3f5e6; --warn: #fff4d6; }
@media (prefers-color-scheme: dark) { :root { --bg: #16161a; --fg: #e8e8ec; --muted: #9a9aa3;
  --line: #34343b; --accent: #8ab4f8; --old: #4a1f22; --new: #1d3b24; --warn: #4a3b12; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
header { display: flex; flex-wrap: wrap; gap: .25rem 1rem; align-items: baseline; padding: .6rem 1rem;
  border-bottom: 1px solid var(--line); }
header strong { margin-right: 1rem; }
main { padding: 1rem; max-width: 80rem; }
a { color: var(--accent); }
h1 { font-size: 1.3rem; margin: .2rem 0 1rem; overflow-wrap: anywhere; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35rem .5rem; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; }
td { overflow-wrap: break-word; }
.scroll { overflow-x: auto; }
code, .mono { font-family: ui-monospace, monospace; font-size: .9em; }
.muted { color: var(--muted); }
.old { background: var(--old); } .new { background: var(--new); }
.warn { background: var(--warn); padding: .6rem .8rem; border-radius: .3rem; margin: .5rem 0 1rem; }
.esc { color: var(--muted); border: 1px dotted var(--muted); border-radius: 2px; padding: 0 1px; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: 1rem; }
form label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
input, select, textarea, button { font: inherit; padding: .3rem .4rem; border: 1px solid var(--line);
  border-radius: .25rem; background: var(--bg); color: var(--fg); }
button { cursor: pointer; }
.entry { border: 1px solid var(--line); border-radius: .4rem; padding: .6rem .8rem; margin: .6rem 0; }
.entry h3 { font-size: 1rem; margin: 0 0 .3rem; }
details summary { cursor: pointer; color: var(--muted); }
svg { width: 100%; max-width: 40rem; height: auto; display: block; }
svg rect { fill: var(--accent); }
svg text { fill: var(--muted); font-size: 10px; }
"#;

/// A whole page: navigation, a title, the content.
pub(crate) fn page(base: &str, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (visible(title)) " · pg-audit" }
                link rel="stylesheet" href={ (base) "/assets/style.css" };
            }
            body {
                header {
                    strong { "pg-audit" }
                    a href=(home(base)) { "Activity" }
                    a href={ (base) "/tables" } { "Tables" }
                    a href={ (base) "/partitions" } { "Partitions" }
                }
                main {
                    h1 { (text(title)) }
                    (content)
                }
            }
        }
    }
}

/// Text shown as it is, except characters that would hide or reorder what is around them:
/// control characters, bidirectional overrides and isolates, zero-width characters; these
/// show as a visible escape. maud escapes the rest for HTML.
pub(crate) fn text(value: &str) -> Markup {
    let mut out = String::with_capacity(value.len());
    let mut plain = String::new();
    let flush = |plain: &mut String, out: &mut String| {
        out.push_str(&maud::html! { (plain.as_str()) }.into_string());
        plain.clear();
    };
    for c in value.chars() {
        if is_hidden(c) {
            flush(&mut plain, &mut out);
            out.push_str(&format!(
                "<span class=\"esc\" title=\"hidden character\">\\u{{{:x}}}</span>",
                c as u32
            ));
        } else {
            plain.push(c);
        }
    }
    flush(&mut plain, &mut out);
    PreEscaped(out)
}

/// Characters that change how neighbouring text reads without being seen: controls, and
/// Unicode's default-ignorable code points (zero-width characters, bidirectional controls,
/// the soft hyphen, variation selectors, tag characters, ...), so `alice` and `alice` plus a
/// tag character never look the same.
pub(crate) fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}'..='\u{1160}' | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
            | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// `value` as plain text with hidden characters written as `\u{..}`: for places that hold
/// no markup, such as the page title.
pub(crate) fn visible(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if is_hidden(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The longest value shown whole, in characters; longer ones are cut, saying how much.
const MAX_SHOWN: usize = 2_000;

/// A JSON value as text: strings bare, the rest as JSON.
pub(crate) fn value(v: &Value) -> Markup {
    let shown = |s: &str| {
        let total = s.chars().count();
        if total <= MAX_SHOWN {
            return text(s);
        }
        let cut: String = s.chars().take(MAX_SHOWN).collect();
        html! { (text(&cut)) span.muted { " … (" (total - MAX_SHOWN) " more characters)" } }
    };
    match v {
        Value::String(s) => shown(s),
        Value::Null => html! { span.muted { "NULL" } },
        other => shown(&other.to_string()),
    }
}

/// A record key object as `a=1, b=x`.
pub(crate) fn key(v: &Value) -> Markup {
    text(&pg_audit_diesel::log::key_text(v))
}

/// The activity page: the mount point itself (`/audit`, which `nest` and `nest_service`
/// both route to the admin's `/`; `/audit/` reaches it only under `nest_service`).
pub(crate) fn home(base: &str) -> String {
    if base.is_empty() {
        "/".to_owned()
    } else {
        base.to_owned()
    }
}

/// A link within the admin: `base` + `path` + the query, percent-encoded (`path` `/` is the
/// activity page, [`home`]).
pub(crate) fn href<Q: serde::Serialize>(base: &str, path: &str, query: &Q) -> String {
    let query = serde_urlencoded::to_string(query).unwrap_or_default();
    let page = if path == "/" {
        home(base)
    } else {
        format!("{base}{path}")
    };
    if query.is_empty() {
        page
    } else {
        format!("{page}?{query}")
    }
}

/// A time as `YYYY-MM-DD HH:MM:SS.ffffff UTC`.
pub(crate) fn time(t: std::time::SystemTime) -> Markup {
    html! { span.mono { (pg_audit_diesel::utc_string(t)) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_made_visible() {
        assert_eq!(visible("alice\u{e0041}"), "alice\\u{e0041}");
        assert_eq!(visible("a\u{00ad}b\u{202e}"), "a\\u{ad}b\\u{202e}");
        assert_eq!(visible("née ☕"), "née ☕");
        let long = "x".repeat(MAX_SHOWN + 5);
        assert!(
            value(&Value::String(long))
                .into_string()
                .ends_with("… (5 more characters)</span>")
        );
    }

    #[test]
    fn hostile_text_is_inert() {
        assert_eq!(
            text("<script>alert(1)</script>").into_string(),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            text("\" onmouseover=\"x").into_string(),
            "&quot; onmouseover=&quot;x"
        );
        assert_eq!(
            text("abc\u{202e}fed").into_string(),
            "abc<span class=\"esc\" title=\"hidden character\">\\u{202e}</span>fed"
        );
        assert_eq!(
            href(
                "/audit",
                "/record",
                &[("table", "a&b"), ("key", "{\"id\":1}")]
            ),
            "/audit/record?table=a%26b&key=%7B%22id%22%3A1%7D"
        );
    }
}
