//! Quoting: the one place where names and literals become SQL text.
//!
//! Every identifier that reaches generated SQL is an [`Ident`], whose `Display` writes it
//! double-quoted with embedded quotes doubled; every embedded string is written by
//! [`quote_literal`]; every function body by [`dollar_quote`]. Nothing else in this crate formats
//! a raw name into SQL.

use std::fmt;

use crate::Error;

/// PostgreSQL's limit on identifier length, in bytes (`NAMEDATALEN - 1`).
pub const MAX_IDENT_LEN: usize = 63;

/// A PostgreSQL identifier: non-empty, at most 63 bytes, no NUL.
///
/// The name is kept exactly as given (no case folding): `Ident::new("Users")` names the table
/// created as `"Users"`, not `users`. `Display` renders it quoted, ready for SQL.
///
/// ```
/// use pg_audit::Ident;
/// let ident = Ident::new(r#"weird "name""#).unwrap();
/// assert_eq!(ident.to_string(), r#""weird ""name""""#);
/// assert_eq!(ident.as_str(), r#"weird "name""#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validates `name` as an identifier. `what` names it in errors ("column", "table", ...).
    pub fn with_kind(name: impl Into<String>, what: &'static str) -> Result<Self, Error> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::EmptyIdentifier { what });
        }
        if name.contains('\0') {
            return Err(Error::NulByte { what });
        }
        if name.len() > MAX_IDENT_LEN {
            return Err(Error::IdentifierTooLong { what, name });
        }
        Ok(Ident(name))
    }

    /// Validates `name` as an identifier.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        Self::with_kind(name, "identifier")
    }

    /// Builds a name pg-audit generates itself from a user-chosen `base` and a fixed `suffix`
    /// (such as `_default`). When the result would exceed 63 bytes, `base` is cut at a character
    /// boundary and a hash of the whole intended name is inserted, so distinct long names stay
    /// distinct and the same input always gives the same name.
    pub fn generated(base: &str, suffix: &str) -> Self {
        let full = format!("{base}{suffix}");
        if full.len() <= MAX_IDENT_LEN {
            return Ident(full);
        }
        let hash = format!("_{:08x}", hash32(&full));
        let keep = floor_char_boundary(base, MAX_IDENT_LEN - hash.len() - suffix.len());
        Ident(format!("{}{hash}{suffix}", &base[..keep]))
    }

    /// The name as PostgreSQL stores it, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's text as a string literal, for catalog lookups (`attname = 'id'`) and JSON
    /// keys (`jsonb_build_object('id', t."id")`); an identifier holds no NUL, so this cannot
    /// fail.
    pub fn literal(&self) -> String {
        text_literal(&self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for (i, part) in self.0.split('"').enumerate() {
            if i > 0 {
                f.write_str("\"\"")?;
            }
            f.write_str(part)?;
        }
        f.write_str("\"")
    }
}

/// A relation name, optionally schema-qualified. Unqualified names resolve through the
/// `search_path` of the session that runs the SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    /// The schema, if any.
    pub schema: Option<Ident>,
    /// The relation's own name.
    pub name: Ident,
}

impl QualifiedName {
    /// A name in `schema`.
    pub fn new(schema: Option<Ident>, name: Ident) -> Self {
        QualifiedName { schema, name }
    }

    /// Parses `schema.name` or `name`, taking each part literally (no case folding, no quotes).
    /// A name containing a dot must be built with [`QualifiedName::new`] instead.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text.split_once('.') {
            Some((schema, name)) => Ok(QualifiedName {
                schema: Some(Ident::with_kind(schema, "schema")?),
                name: Ident::with_kind(name, "table")?,
            }),
            None => Ok(QualifiedName {
                schema: None,
                name: Ident::with_kind(text, "table")?,
            }),
        }
    }

    /// The quoted name as a string literal, for `to_regclass` and messages:
    /// `'"public"."users"'`.
    pub(crate) fn literal(&self) -> String {
        text_literal(&self.to_string())
    }

    /// A name pg-audit creates next to this one, in the same schema (see [`Ident::generated`]).
    pub fn sibling(&self, suffix: &str) -> QualifiedName {
        QualifiedName {
            schema: self.schema.clone(),
            name: Ident::generated(self.name.as_str(), suffix),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{schema}.")?;
        }
        write!(f, "{}", self.name)
    }
}

/// Renders `value` as a SQL string literal that means exactly `value`, whatever the server's
/// `standard_conforming_strings`: quotes are doubled, and a value with backslashes is written as
/// an `E'...'` literal with the backslashes doubled (as PostgreSQL's own `quote_literal` does).
///
/// ```
/// use pg_audit::quote_literal;
/// assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
/// assert_eq!(quote_literal(r"a\b").unwrap(), r"E'a\\b'");
/// assert!(quote_literal("nul\0").is_err());
/// ```
pub fn quote_literal(value: &str) -> Result<String, Error> {
    if value.contains('\0') {
        return Err(Error::NulByte { what: "literal" });
    }
    Ok(text_literal(value))
}

/// [`quote_literal`] for text pg-audit composes itself from [`Ident`]s and fixed words, which
/// holds no NUL by construction, so its uses need no error path.
pub(crate) fn text_literal(value: &str) -> String {
    debug_assert!(!value.contains('\0'), "internal text holds no NUL");
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `text` placed inside a `format()` or `RAISE` template that is itself a plain single-quoted
/// literal pg-audit writes (never an `E''` one: `standard_conforming_strings` is pinned on, so a
/// backslash stands for itself): quotes doubled for the literal, `%` doubled for the template.
pub(crate) fn in_template(text: &str) -> String {
    text.replace('\'', "''").replace('%', "%%")
}

/// Wraps `body` in dollar quotes with a tag that does not occur in it, so any body (including
/// one that itself contains `$$` or `$pg_audit$`) is carried verbatim.
pub fn dollar_quote(body: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = if n == 0 {
            "$pg_audit$".to_owned()
        } else {
            format!("$pg_audit_{n}$")
        };
        // The closing tag is found by scanning body + tag; it must first match at the end.
        let scanned = format!("{body}{tag}");
        if scanned.find(&tag) == Some(body.len()) {
            return format!("{tag}{body}{tag}");
        }
        n += 1;
    }
}

/// FNV-1a, folded to 32 bits: a stable hash for shortening names. Stability across releases
/// matters more than quality here (a changed hash would rename installed objects), so it is
/// written out rather than taken from `std`, whose hashers are not guaranteed stable.
fn hash32(text: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as u32
}

/// A short stable hash of several parts, for names that must be unique per input.
pub(crate) fn short_hash(parts: &[&str]) -> String {
    format!("{:08x}", hash32(&parts.join("\0")))
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_rejects_what_postgres_cannot_hold() {
        assert_eq!(
            Ident::with_kind("", "column"),
            Err(Error::EmptyIdentifier { what: "column" })
        );
        assert_eq!(
            Ident::with_kind("a\0b", "column"),
            Err(Error::NulByte { what: "column" })
        );
        let long = "x".repeat(64);
        assert!(matches!(
            Ident::new(long),
            Err(Error::IdentifierTooLong { .. })
        ));
        // 63 bytes of multi-byte characters is fine; 64 is not.
        assert!(Ident::new("é".repeat(31) + "x").is_ok());
        assert!(Ident::new("é".repeat(32)).is_err());
    }

    #[test]
    fn ident_display_doubles_quotes() {
        assert_eq!(Ident::new("users").unwrap().to_string(), "\"users\"");
        assert_eq!(Ident::new("a\"b").unwrap().to_string(), "\"a\"\"b\"");
        assert_eq!(Ident::new("\"").unwrap().to_string(), "\"\"\"\"");
        assert_eq!(Ident::new("ünï code").unwrap().to_string(), "\"ünï code\"");
    }

    #[test]
    fn qualified_name_parses_and_displays() {
        let q = QualifiedName::parse("billing.subscriptions").unwrap();
        assert_eq!(q.to_string(), "\"billing\".\"subscriptions\"");
        let q = QualifiedName::parse("Users").unwrap();
        assert_eq!(q.to_string(), "\"Users\"");
        assert!(QualifiedName::parse(".x").is_err());
        assert!(QualifiedName::parse("x.").is_err());
    }

    #[test]
    fn generated_names_fit_and_stay_distinct() {
        assert_eq!(
            Ident::generated("auditlog", "_default").as_str(),
            "auditlog_default"
        );
        let a = Ident::generated(&"a".repeat(60), "_default");
        let b = Ident::generated(&("a".repeat(59) + "b"), "_default");
        assert_eq!(a.as_str().len(), 63);
        assert!(a.as_str().ends_with("_default"));
        assert_ne!(a, b);
        assert_eq!(a, Ident::generated(&"a".repeat(60), "_default"));
        // Cutting never splits a character.
        let c = Ident::generated(&"é".repeat(40), "_p20260101");
        assert!(c.as_str().len() <= 63);
    }

    #[test]
    fn literals_round_trip_quotes_backslashes_and_unicode() {
        assert_eq!(quote_literal("").unwrap(), "''");
        assert_eq!(quote_literal("a'b''c").unwrap(), "'a''b''''c'");
        assert_eq!(quote_literal("\\'").unwrap(), "E'\\\\'''");
        assert_eq!(quote_literal("日本 $$ \"x\"").unwrap(), "'日本 $$ \"x\"'");
        assert_eq!(quote_literal("\0"), Err(Error::NulByte { what: "literal" }));
    }

    #[test]
    fn dollar_quote_picks_an_unused_tag() {
        assert_eq!(dollar_quote("select 1"), "$pg_audit$select 1$pg_audit$");
        assert_eq!(
            dollar_quote("x $pg_audit$ y"),
            "$pg_audit_1$x $pg_audit$ y$pg_audit_1$"
        );
        // A body ending in a tag prefix would otherwise close early.
        assert_eq!(
            dollar_quote("x$pg_audit"),
            "$pg_audit_1$x$pg_audit$pg_audit_1$"
        );
    }
}
