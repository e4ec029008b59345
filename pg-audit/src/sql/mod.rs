//! SQL generation: the log's shape, the log table with its partitions, the triggers that fill
//! it, and the record of what was installed that the drift check reads.

pub mod adopt;
pub mod archive;
pub mod baseline;
pub mod capture;
pub mod catalog;
pub mod check;
pub mod condition;
pub mod counts;
pub(crate) mod digest;
pub(crate) mod horizon;
pub mod import;
pub mod install;
pub mod log;
pub mod mask;
pub(crate) mod names;
pub mod records;
pub mod redact;
pub mod schema;
pub mod seal;
pub mod shape;
pub mod trigger;

use crate::ident::dollar_quote;

/// Each function [`create_function`] rendered into `sql`, in order: its signature as written
/// (name and arguments), whether it is `SECURITY DEFINER`, and its body — read back from the
/// text written above, the one place that writes it.
pub(crate) fn created_functions(sql: &str) -> Vec<(&str, bool, &str)> {
    const START: &str = "CREATE OR REPLACE FUNCTION ";
    let mut out = Vec::new();
    let mut rest = sql;
    while let Some(at) = rest.find(START) {
        rest = &rest[at + START.len()..];
        let signature = &rest[..rest.find("\nRETURNS ").expect("RETURNS follows")];
        let header_end = rest.find("\nAS $").expect("a dollar-quoted body follows");
        let definer = rest[..header_end].contains("\nSECURITY DEFINER");
        rest = &rest[header_end + "\nAS ".len()..];
        let tag_len = rest[1..].find('$').expect("the tag ends") + 2;
        let tag = &rest[..tag_len];
        rest = &rest[tag_len..];
        let end = rest.find(tag).expect("the body ends with its tag");
        out.push((signature, definer, &rest[..end]));
        rest = &rest[end + tag_len..];
    }
    out
}

/// `CREATE OR REPLACE FUNCTION` for every function pg-audit installs: `signature` (name and
/// arguments), `returns`, `language` (with volatility), and `body`, which runs with every
/// setting of [`crate::session::PINNED`]: the `search_path` pinned to `pg_catalog, pg_temp`, so
/// an object on the caller's search path is never called in its place, and the settings that
/// shape values' text, so the caller's session cannot change what is logged. Trigger
/// functions are `SECURITY DEFINER` (they write the log the writer may not); the others run as
/// their caller.
pub(crate) fn create_function(
    signature: &str,
    returns: &str,
    language: &str,
    security_definer: bool,
    body: &str,
) -> String {
    let definer = if security_definer {
        "\nSECURITY DEFINER"
    } else {
        ""
    };
    format!(
        "CREATE OR REPLACE FUNCTION {signature}\nRETURNS {returns}\nLANGUAGE {language}{definer}{}\nAS {};",
        crate::session::set_clauses(),
        dollar_quote(body)
    )
}
