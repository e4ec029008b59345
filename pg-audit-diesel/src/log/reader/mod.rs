//! The reader: the queries over the log, one module per question, each written once as async
//! functions over a [`Driver`](super::driver::Driver) and the log's name. [`AuditReader`]
//! (`sync_api.rs`) runs them on a `PgConnection`, whose futures are ready at once, and
//! [`AsyncAuditReader`] (`async_api.rs`, feature `async`) on diesel-async's
//! `AsyncPgConnection`; both are thin.
//!
//! | module | the question |
//! |---|---|
//! | `history.rs` | what happened to this record (across the UPDATEs that changed its key), and the key columns recorded at install |
//! | `state.rs` | what did it look like at a time, and what differs between two times |
//! | `revert.rs` | put it back as it was after an entry, or as it was when deleted |
//! | `activity.rs` | what happened in the log: filtered, in one transaction, one request, by one user |
//! | `blame.rs` | which entry set each column's value |
//! | `table_at.rs` | what did the whole table look like at a time |

mod activity;
#[cfg(feature = "async")]
mod async_api;
mod blame;
mod history;
mod revert;
mod state;
mod sync_api;
mod table_at;

use diesel::sql_types::{Jsonb, Nullable, Text};
use pg_audit::{AuditLog, Ident, QualifiedName};
use serde_json::Value;

use super::driver::Query;
use crate::key::key_object;
use crate::{Audited, Error};

pub use activity::Activity;
#[cfg(feature = "async")]
pub use async_api::AsyncAuditReader;
pub use blame::Blame;
pub use sync_api::AuditReader;
pub use table_at::{RowAt, TableAt};

/// `r`: the table's schema and name, from parameters $1 (the schema, or NULL) and $2 (the
/// name). An unqualified name is the table the search path finds, else the one audited table
/// of that name in `log`'s install records, else in the current schema (`public` in a session
/// with pg-audit's settings pinned, whose path holds only `pg_catalog`).
fn resolve_table(log: &AuditLog) -> String {
    format!(
        "SELECT coalesce($1::text,
                  (SELECT n.nspname::text FROM pg_catalog.pg_class AS c
                     JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                    WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident($2::text))),
                  (SELECT pg_catalog.min(i.table_schema) FROM {config} AS i
                    WHERE i.table_name OPERATOR(pg_catalog.=) $2::text HAVING pg_catalog.count(*) OPERATOR(pg_catalog.=) 1),
                  CASE WHEN pg_catalog.current_schema() OPERATOR(pg_catalog.=) 'pg_catalog' THEN 'public'
                       ELSE pg_catalog.current_schema()::text END) AS schema_name,
              $2::text AS table_name",
        config = log.config_table()
    )
}

/// `sql`, a query that resolves `table` with [`resolve_table`], with `$1` and `$2` bound.
fn table_query(sql: String, table: &QualifiedName) -> Query<'_> {
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<Nullable<Text>, _>(table.schema.as_ref().map(Ident::as_str))
        .bind::<Text, _>(table.name.as_str())
}

/// `sql`, a query of [`history::record_sql`]'s form, with the record's parameters bound.
fn record_query<'a>(sql: String, table: &'a QualifiedName, key: &'a Value) -> Query<'a> {
    table_query(sql, table).bind::<Jsonb, _>(key)
}

/// A name read back from the log or the catalog as an identifier of `kind`.
fn read_ident(name: impl Into<String>, kind: &'static str) -> Result<Ident, Error> {
    Ident::with_kind(name, kind).map_err(|source| Error::Config {
        model: "history",
        source,
    })
}

/// The model's table and the key object for `key`.
fn model_key<T: Audited>(key: impl serde::Serialize) -> Result<(QualifiedName, Value), Error> {
    let spec = T::trigger_spec()?;
    let columns: Vec<String> = spec
        .primary_key()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    let bad_key = |problem: String| Error::BadKey {
        model: T::MODEL,
        problem,
    };
    let value = serde_json::to_value(key).map_err(|e| bad_key(e.to_string()))?;
    let key = key_object(&columns, value).map_err(|m| bad_key(m.to_string()))?;
    Ok((spec.table().clone(), key))
}
