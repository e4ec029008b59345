//! The settings pg-audit's SQL runs under, defined once: every function pg-audit installs
//! pins them (`SET` clauses; one, where only a condition reads it, around the condition), and
//! every session the `pg-audit` program, the admin server and
//! the capture worker open starts with them (connection options), so neither the objects on a
//! role's `search_path` nor the settings of the session that writes or reads decide what runs
//! or what is logged.
//!
//! Two kinds of setting are pinned:
//! - **where names resolve**: `search_path = pg_catalog, pg_temp`, so a function or operator a
//!   role planted in a schema on its path (`public` on PostgreSQL 13 and 14) is never called in
//!   place of the built-in one; and `row_security = off`, so a row-level security policy on
//!   the log makes a query fail rather than silently hide rows from it;
//! - **how values are written and read as text**: `to_jsonb` of a `float8` follows
//!   `extra_float_digits` (at `-15`, 123456.789 is written 100000), of a `timestamptz` the
//!   `TimeZone`, of an `interval` the `IntervalStyle`, of a `bytea` the `bytea_output`, of
//!   `money` the `lc_monetary`; a condition's text and date casts follow `DateStyle`, its
//!   string literals `standard_conforming_strings`, its `= NULL` `transform_null_equals`,
//!   its zone abbreviations (`'… IST'`) `timezone_abbreviations`, its array literals
//!   (`'{NULL}'`) `array_nulls`; names are quoted as `quote_all_identifiers` says.
//!   Pinned, an entry is the same whoever wrote it and whatever their session set.
//!
//! ```
//! let options = pg_audit::session::startup_options();
//! assert!(options.starts_with(r"-c search_path=pg_catalog,\ pg_temp -c row_security=off"));
//! let url = pg_audit::session::pin_conninfo("postgres://app@db/shop?sslmode=require").unwrap();
//! assert!(url.starts_with("postgres://app@db/shop?sslmode=require&options=-c%20search_path"));
//! ```

use crate::Error;
use crate::conninfo::{parse_pairs, percent_decode};

/// Each pinned setting as PostgreSQL names it (the spelling `pg_proc.proconfig` records) and
/// its value, in the order functions declare them.
pub const PINNED: [(&str, &str); 13] = [
    ("search_path", "pg_catalog, pg_temp"),
    ("row_security", "off"),
    ("extra_float_digits", "1"),
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    ("standard_conforming_strings", "on"),
    ("transform_null_equals", "off"),
    ("array_nulls", "on"),
    ("timezone_abbreviations", "Default"),
    ("quote_all_identifiers", "off"),
];

/// The one setting of [`PINNED`] functions do not pin with a `SET` clause:
/// `timezone_abbreviations`. PostgreSQL reads its file from disk each time it is set, ~60 µs
/// and ~500,000 instructions per call: more than the whole trigger. Only a condition reads it
/// (a zone abbreviation in a literal), so a trigger function with a condition sets it around
/// its branches instead ([`abbreviations_pinned`]), and only when the writer's differs.
pub(crate) const ABBREVIATIONS: (&str, &str) = ("timezone_abbreviations", "Default");

/// The settings of [`PINNED`] a function's `SET` clauses pin: all but [`ABBREVIATIONS`].
fn function_pins() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    PINNED.iter().filter(|&&pin| pin != ABBREVIATIONS)
}

/// `name = value` as a `SET` statement or clause writes it.
fn assignment(name: &str, value: &str) -> String {
    // The search path is a list of names, each its own element (quoted whole, it would be one
    // schema named `pg_catalog, pg_temp`); the others are single values.
    let value = if name == "search_path" {
        value.to_owned()
    } else {
        crate::ident::text_literal(value)
    };
    format!("{name} = {value}")
}

/// The `SET` clauses of a function pinning the settings of [`PINNED`] (all but
/// [`ABBREVIATIONS`]).
pub(crate) fn set_clauses() -> String {
    function_pins()
        .map(|&(name, value)| format!("\nSET {}", assignment(name, value)))
        .collect()
}

/// `body` (PL/pgSQL statements) run with [`ABBREVIATIONS`] set, and the writer's value set back
/// after: set only when the writer's differs, so the common case costs one `current_setting`.
/// `variable` is a `text` variable the function declares. The value is set for the transaction
/// (a function's `SET` clauses restore only their own settings), hence setting it back.
pub(crate) fn abbreviations_pinned(variable: &str, body: &str) -> String {
    let (name, value) = ABBREVIATIONS;
    let (name, value) = (
        crate::ident::text_literal(name),
        crate::ident::text_literal(value),
    );
    format!(
        "    {variable} := pg_catalog.current_setting({name});
    IF {variable} OPERATOR(pg_catalog.<>) {value} THEN
        PERFORM pg_catalog.set_config({name}, {value}, true);
    END IF;
{body}    IF {variable} OPERATOR(pg_catalog.<>) {value} THEN
        PERFORM pg_catalog.set_config({name}, {variable}, true);
    END IF;
"
    )
}

/// `SET LOCAL` of every setting of [`PINNED`], for the rest of the current transaction: for a
/// session pg-audit did not open (an application's pool) that runs pg-audit's queries.
pub fn set_local_sql() -> String {
    PINNED
        .iter()
        .map(|&(name, value)| format!("SET LOCAL {};", assignment(name, value)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `proconfig` entries of a function's `SET` clauses (`name=value`), as an SQL `text[]`
/// literal, for the drift check to compare with.
pub(crate) fn proconfig_array() -> String {
    format!(
        "ARRAY[{}]::text[]",
        function_pins()
            .map(|(name, value)| crate::ident::text_literal(&format!("{name}={value}")))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The connection option (`options`, or `PGOPTIONS`) that starts a session with every
/// setting of [`PINNED`]: `-c name=value ...`, spaces in values escaped as PostgreSQL's
/// option splitting reads them.
pub fn startup_options() -> String {
    PINNED
        .iter()
        .map(|(name, value)| {
            let mut option = format!("-c {name}=");
            for c in value.chars() {
                if c == ' ' || c == '\\' {
                    option.push('\\');
                }
                option.push(c);
            }
            option
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `options` merged with [`startup_options`]: the pinned settings come last, so they win
/// over the same settings given earlier.
pub fn merge_options(options: Option<&str>) -> String {
    match options.map(str::trim).filter(|o| !o.is_empty()) {
        Some(given) => format!("{given} {}", startup_options()),
        None => startup_options(),
    }
}

/// A libpq connection string (a `postgres://` URL or `key=value` pairs) with [`PINNED`] added
/// to its `options`, keeping every other part as written. Without `options` of its own, the
/// environment's `PGOPTIONS` (which libpq would otherwise have used) is kept before them.
///
/// An error names what in the string could not be read; libpq would refuse it too.
pub fn pin_conninfo(conninfo: &str) -> Result<String, Error> {
    let from_env = || std::env::var("PGOPTIONS").ok();
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let (base, query) = match conninfo.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (conninfo, None),
        };
        let mut params = Vec::new();
        let mut options = None;
        for param in query.into_iter().flat_map(|q| q.split('&')) {
            if param.is_empty() {
                continue;
            }
            let (key, value) = param.split_once('=').ok_or_else(|| Error::Conninfo {
                reason: format!("the URL parameter `{param}` has no `=`"),
            })?;
            if percent_decode(key)? == "options" {
                options = Some(percent_decode(value)?);
            } else {
                params.push(param.to_owned());
            }
        }
        let options = merge_options(options.or_else(from_env).as_deref());
        params.push(format!("options={}", percent_encode(&options)));
        Ok(format!("{base}?{}", params.join("&")))
    } else {
        let mut pairs = parse_pairs(conninfo)?;
        let options = match pairs.iter().position(|(k, _)| k == "options") {
            Some(i) => Some(pairs.remove(i).1),
            None => from_env(),
        };
        pairs.push(("options".to_owned(), merge_options(options.as_deref())));
        Ok(pairs
            .iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" "))
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_parts_and_merge_options() {
        let ours = percent_encode(&startup_options());
        assert_eq!(
            pin_conninfo("postgres://u:p%40ss@h:5/db").unwrap(),
            format!("postgres://u:p%40ss@h:5/db?options={ours}")
        );
        assert_eq!(
            pin_conninfo("postgresql:///db?host=/tmp&options=-c%20work_mem%3D64MB&sslmode=require")
                .unwrap(),
            format!(
                "postgresql:///db?host=/tmp&sslmode=require&options={}",
                percent_encode(&format!("-c work_mem=64MB {}", startup_options()))
            )
        );
        assert!(pin_conninfo("postgres://h/db?x").is_err());
        assert!(pin_conninfo("postgres://h/db?options=%zz").is_err());
    }

    #[test]
    fn key_value_strings_are_read_as_libpq_reads_them() {
        assert_eq!(
            parse_pairs(r"host = /tmp  dbname='my db' password='it\'s' user=a\ b").unwrap(),
            [
                ("host".to_owned(), "/tmp".to_owned()),
                ("dbname".to_owned(), "my db".to_owned()),
                ("password".to_owned(), "it's".to_owned()),
                ("user".to_owned(), "a b".to_owned()),
            ]
        );
        let pinned = pin_conninfo("dbname=shop options='-c work_mem=1MB'").unwrap();
        assert_eq!(
            parse_pairs(&pinned).unwrap(),
            [
                ("dbname".to_owned(), "shop".to_owned()),
                (
                    "options".to_owned(),
                    format!("-c work_mem=1MB {}", startup_options())
                ),
            ]
        );
        assert!(pin_conninfo("dbname").is_err());
        assert!(pin_conninfo("dbname='x").is_err());
    }

    #[test]
    fn set_local_sets_each_setting() {
        let sql = set_local_sql();
        assert!(sql.starts_with(
            "SET LOCAL search_path = pg_catalog, pg_temp; SET LOCAL row_security = 'off';"
        ));
        assert_eq!(sql.matches("SET LOCAL ").count(), PINNED.len());
    }

    #[test]
    fn options_escape_spaces_as_the_server_splits_them() {
        assert!(startup_options().contains(r"-c DateStyle=ISO,\ MDY"));
        assert_eq!(
            set_clauses().lines().nth(1),
            Some("SET search_path = pg_catalog, pg_temp")
        );
    }
}
