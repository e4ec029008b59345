//! How the reader's queries name a record: its table resolved (as the triggers resolve it,
//! else by its install record), a key as a JSON object, and the parameters bound.

use pg_audit::{AuditLog, Ident, QualifiedName};
use serde_json::Value;

use super::Read;
use crate::log::row::{Query, log_row};
use crate::log::{Driver, ReadError};

/// `r`: the table's schema and name, from parameters $1 (the schema, or NULL) and $2 (the
/// name). An unqualified name is the table the search path finds, else the one audited table
/// of that name in `log`'s install records, else in the current schema (`public` in a session
/// with pg-audit's settings pinned, whose path holds only `pg_catalog`).
pub(super) fn resolve_table(log: &AuditLog) -> String {
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
pub(super) fn table_query(sql: String, table: &QualifiedName) -> Query {
    Query::new(sql)
        .bind(table.schema.as_ref().map(Ident::as_str))
        .bind(table.name.as_str())
}

/// `sql`, a query of [`super::history::record_sql`]'s form, with the record's parameters bound.
pub(super) fn record_query(sql: String, table: &QualifiedName, key: &Value) -> Query {
    table_query(sql, table).bind(key)
}

/// A name read back from the log or the catalog as an identifier of `kind`.
pub(super) fn read_ident<E>(
    name: impl Into<String>,
    kind: &'static str,
) -> Result<Ident, ReadError<E>> {
    Ident::with_kind(name, kind).map_err(ReadError::Name)
}

/// Called when a question about the record keyed `key` found nothing: the key checked against
/// the key columns recorded at install, so a misspelt, incomplete or non-object key is named
/// rather than answered with nothing. Nothing to check against when the table has no install
/// record (no longer audited).
pub(super) async fn check_key<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
) -> Read<(), D> {
    let expected = recorded_keys(log, conn, table).await?;
    let given: Option<Vec<&String>> = key.as_object().map(|o| o.keys().collect());
    let fits = |columns: &Vec<String>| {
        given
            .as_ref()
            .is_some_and(|g| g.len() == columns.len() && columns.iter().all(|c| g.contains(&c)))
    };
    if expected.is_empty() || expected.iter().any(fits) {
        return Ok(());
    }
    Err(ReadError::BadKey {
        table: table.to_string(),
        key: key.clone(),
        expected,
    })
}

/// The key columns recorded at install for each audited table named `table`, in key order
/// (see `AuditReader::recorded_keys`).
pub async fn recorded_keys<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
) -> Read<Vec<Vec<String>>, D> {
    log_row! {
        struct Key {
            primary_key: Value,
        }
    }
    let keys: Vec<Key> = conn
        .load(
            Query::new(log.recorded_key_sql())
                .bind(table.name.as_str())
                .bind(table.schema.as_ref().map(Ident::as_str)),
        )
        .await?;
    keys.into_iter()
        .map(|k| {
            serde_json::from_value(k.primary_key).map_err(|e| {
                ReadError::Decode(crate::log::row::DecodeError::new(
                    "primary_key",
                    e.to_string(),
                ))
            })
        })
        .collect()
}
