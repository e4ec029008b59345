//! SQL generation: the log's shape, the log table with its partitions, the triggers that fill
//! it, and the record of what was installed that the drift check reads.

pub mod archive;
pub mod capture;
pub mod catalog;
pub mod condition;
pub mod drift;
pub mod log;
pub mod seal;
pub mod shape;
pub mod trigger;

use crate::ident::dollar_quote;

/// `CREATE OR REPLACE FUNCTION` for every function pg-audit installs: `signature` (name and
/// arguments), `returns`, `language` (with volatility), and `body`, which runs with the
/// `search_path` pinned to `pg_catalog, pg_temp`, so an object on the caller's search path is
/// never called in its place. Trigger functions are `SECURITY DEFINER` (they write the log the
/// writer may not); the others run as their caller.
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
        "CREATE OR REPLACE FUNCTION {signature}\nRETURNS {returns}\nLANGUAGE {language}{definer}\nSET search_path = pg_catalog, pg_temp\nAS {};",
        dollar_quote(body)
    )
}
