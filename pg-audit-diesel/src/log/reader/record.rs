//! How the reader's queries name a record: its table resolved (as the triggers resolve it,
//! else by its install record), a model's key as a JSON object, and the parameters bound.

use diesel::sql_types::{Jsonb, Nullable, Text};
use pg_audit::{AuditLog, Ident, QualifiedName};
use serde_json::Value;

use crate::key::key_object;
use crate::log::driver::Query;
use crate::{Audited, Error};

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
pub(super) fn table_query(sql: String, table: &QualifiedName) -> Query<'_> {
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<Nullable<Text>, _>(table.schema.as_ref().map(Ident::as_str))
        .bind::<Text, _>(table.name.as_str())
}

/// `sql`, a query of [`super::history::record_sql`]'s form, with the record's parameters bound.
pub(super) fn record_query<'a>(sql: String, table: &'a QualifiedName, key: &'a Value) -> Query<'a> {
    table_query(sql, table).bind::<Jsonb, _>(key)
}

/// A name read back from the log or the catalog as an identifier of `kind`.
pub(super) fn read_ident(name: impl Into<String>, kind: &'static str) -> Result<Ident, Error> {
    Ident::with_kind(name, kind).map_err(|source| Error::Config {
        model: "history",
        source,
    })
}

/// The model's table and the key object for `key`.
pub(super) fn model_key<T: Audited>(
    key: impl serde::Serialize,
) -> Result<(QualifiedName, Value), Error> {
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
