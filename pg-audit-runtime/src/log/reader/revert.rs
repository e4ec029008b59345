//! Putting a record back: as it was right after an entry (revert) or as it was when it was
//! last deleted (restore), through ordinary audited statements.

use pg_audit::{AuditLog, Ident, Operation, QualifiedName};
use serde_json::{Map, Value};

use super::Read;
use super::history::{entry_of, history};
use super::record::{check_key, read_ident, resolve_table, table_query};
use super::renames::SchemaChanges;
use crate::log::Page;
use crate::log::ReadError;
use crate::log::driver::{Driver, first};
use crate::log::row::{Query, log_row};

/// The record as it was right after `entry`, with the key it had then (the key may have
/// changed since): what a revert writes back.
pub async fn reverted<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    entry: i64,
) -> Read<Option<Value>, D> {
    let Some(target) = entry_of(log, conn, table, key, entry).await? else {
        check_key(log, conn, table, key).await?;
        return Err(ReadError::NotInHistory {
            entry,
            key: key.clone(),
        });
    };
    let dropped = match &target.new_values {
        Some(values) => SchemaChanges::of(log, conn, table)
            .await?
            .dropped_since(entry, values),
        None => Vec::new(),
    };
    if !dropped.is_empty() {
        return Err(ReadError::SchemaChanged {
            entry,
            table: table.to_string(),
            columns: dropped,
        });
    }
    let mut values = target.new_values;
    if let (Some(Value::Object(row)), Some(Value::Object(then))) = (&mut values, &target.record_pk)
    {
        for (column, value) in then {
            row.entry(column.clone()).or_insert_with(|| value.clone());
        }
    }
    unmasked(log, conn, table, values).await
}

/// `values` without the table's masked columns, whose digests the log holds instead of the
/// values: a revert leaves them as they are, and a restore needs them supplied.
async fn unmasked<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    mut values: Option<Value>,
) -> Read<Option<Value>, D> {
    log_row! {
        struct Masked {
            name: String,
        }
    }
    let sql = format!(
        "SELECT m.name FROM ({resolve}) AS r
           JOIN {config} AS c ON c.table_schema OPERATOR(pg_catalog.=) r.schema_name
                            AND c.table_name OPERATOR(pg_catalog.=) r.table_name
          CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(
                CASE WHEN pg_catalog.jsonb_typeof(c.config OPERATOR(pg_catalog.->) {field}) OPERATOR(pg_catalog.=) 'array'
                     THEN c.config OPERATOR(pg_catalog.->) {field} ELSE '[]' END) AS m(name)",
        resolve = resolve_table(log),
        config = log.config_table(),
        field = pg_audit::quote_literal(pg_audit::sql::install::MASK_FIELD).expect("a constant"),
    );
    let masked: Vec<Masked> = conn.load(table_query(sql, table)).await?;
    if let Some(Value::Object(row)) = &mut values {
        for m in masked {
            row.remove(&m.name);
        }
    }
    Ok(values)
}

/// The record as it was when it was last deleted: what a restore writes back.
pub async fn deleted<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
) -> Read<Option<Value>, D> {
    let newest = history(log, conn, table, key, Page::first(1)).await?;
    match newest.first() {
        Some(e) if e.operation == Operation::Delete => {
            Ok(unmasked(log, conn, table, e.old_values.clone()).await?)
        }
        Some(_) => Err(ReadError::NotDeleted { key: key.clone() }),
        None => Err(ReadError::NoHistory { key: key.clone() }),
    }
}

/// Makes the record with `key` equal to `target` (`None`: absent), taking `supplied` for
/// columns a re-inserted row needs and the log lacks. Runs inside the caller's transaction,
/// which carries the reason.
///
/// The table's own name is resolved through the caller's `search_path`; then every statement
/// runs with the path the triggers run with, so the key columns' `=` cannot be an operator an
/// untrusted schema on the caller's path planted (the reader may run as the log's owner), and
/// the caller's path is put back after.
pub async fn apply<D: Driver>(
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
) -> Read<(), D> {
    let (table, path) = resolve_then_pin(conn, table).await?;
    apply_pinned(conn, &table, key, target, supplied).await?;
    conn.execute(Query::new("SELECT pg_catalog.set_config('search_path', $1, true)").bind(path))
        .await?;
    Ok(())
}

/// `table` schema-qualified as the caller's `search_path` finds it, and that path; the path is
/// then pinned for the transaction.
async fn resolve_then_pin<D: Driver>(
    conn: &mut D,
    table: &QualifiedName,
) -> Read<(QualifiedName, String), D> {
    log_row! {
        struct Resolved {
            schema: Option<String>,
            name: Option<String>,
            path: String,
        }
    }
    let resolved: Resolved = first(
        conn.load(
            Query::new(
                "SELECT n.nspname::text AS schema, c.relname::text AS name,
                    pg_catalog.current_setting('search_path') AS path
               FROM (SELECT pg_catalog.to_regclass($1::text) AS oid) AS o
               LEFT JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) o.oid
               LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace",
            )
            .bind(table.to_string()),
        )
        .await?,
    )
    .ok_or_else(|| ReadError::NoTable {
        table: table.to_string(),
    })?;
    let table = match (resolved.schema, resolved.name) {
        (Some(schema), Some(name)) => QualifiedName::new(
            Some(read_ident(schema, "schema")?),
            read_ident(name, "table")?,
        ),
        _ => table.clone(),
    };
    conn.execute(Query::new(
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)",
    ))
    .await?;
    Ok((table, resolved.path))
}

/// [`apply`]'s statements, with the search_path pinned and the table schema-qualified.
async fn apply_pinned<D: Driver>(
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
) -> Read<(), D> {
    let key_columns = column_names(key)?;
    let matches = |alias: &str| {
        key_columns
            .iter()
            .map(|c| format!("t.{c} = {alias}.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let exists = conn
        .execute(
            Query::new(format!(
                "SELECT 1 AS one FROM {table} AS t, pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS k WHERE {}",
                matches("k")
            ))
            .bind(key),
        )
        .await?
        > 0;
    let Some(target) = target else {
        if exists {
            conn.execute(
                Query::new(format!(
                    "DELETE FROM {table} AS t USING pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS k WHERE {}",
                    matches("k")
                ))
                .bind(key),
            )
            .await?;
        }
        return Ok(());
    };
    let values = &target_row(target, key, (!exists).then_some(supplied));
    if exists {
        // Key columns are set only where the target's key differs (a revert across a key
        // change), so identity columns are left alone otherwise.
        let set: Vec<String> = column_names(values)?
            .iter()
            .filter(|c| !key_columns.contains(c) || values.get(c.as_str()) != key.get(c.as_str()))
            .map(|c| format!("{c} = r.{c}"))
            .collect();
        if set.is_empty() {
            return Ok(()); // only the key is audited, and the row has it
        }
        // The row is found by its key now (`k`), which the target may change.
        let sql = format!(
            "UPDATE {table} AS t SET {} FROM pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS r,
                            pg_catalog.jsonb_populate_record(NULL::{table}, $2::jsonb) AS k WHERE {}",
            set.join(", "),
            matches("k")
        );
        let query = Query::new(sql).bind(values).bind(key);
        conn.execute(query).await?;
    } else {
        // What the log does not hold and the table requires: refuse now, before anything is
        // written, rather than fail on PostgreSQL's not-null error.
        let missing = missing_required(conn, table, values).await?;
        if !missing.is_empty() {
            return Err(ReadError::MissingValues {
                table: table.to_string(),
                columns: missing,
            });
        }
        let columns = column_names(values)?;
        let list: Vec<String> = columns.iter().map(ToString::to_string).collect();
        let from_r: Vec<String> = columns.iter().map(|c| format!("r.{c}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS r",
            list.join(", "),
            from_r.join(", ")
        );
        conn.execute(Query::new(sql).bind(values)).await?;
    }
    Ok(())
}

/// The row to write: `target`, with the key's columns where the log lacks them (a re-inserted
/// row takes its key from the history even when the key columns are not audited, rather than
/// a new one from a sequence) and, for a row to re-insert, the caller's values for the rest it
/// lacks.
fn target_row(target: &Value, key: &Value, supplied: Option<&Map<String, Value>>) -> Value {
    let mut values = target.clone();
    if let (Value::Object(row), Some(key)) = (&mut values, key.as_object()) {
        for (column, value) in key.iter().chain(supplied.into_iter().flatten()) {
            row.entry(column.clone()).or_insert_with(|| value.clone());
        }
    }
    values
}

/// The keys of a JSON object of column values, as column names.
fn column_names<E>(object: &Value) -> Result<Vec<Ident>, ReadError<E>> {
    object.as_object().map_or(Ok(Vec::new()), |o| {
        o.keys().map(|k| read_ident(k.as_str(), "column")).collect()
    })
}

/// The columns of `table` that are `NOT NULL` without a default (nor identity, nor generated)
/// and have no value in `values`.
async fn missing_required<D: Driver>(
    conn: &mut D,
    table: &QualifiedName,
    values: &Value,
) -> Read<Vec<String>, D> {
    log_row! {
        struct Column {
            name: String,
        }
    }
    let required: Vec<Column> = conn
        .load(
            Query::new(
                "SELECT a.attname::text AS name FROM pg_catalog.pg_attribute AS a
          WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::text)
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped AND a.attnotnull
            AND NOT a.atthasdef AND a.attidentity OPERATOR(pg_catalog.=) ''
            AND a.attgenerated OPERATOR(pg_catalog.=) ''
          ORDER BY a.attnum",
            )
            .bind(table.to_string()),
        )
        .await?;
    Ok(required
        .into_iter()
        .map(|c| c.name)
        .filter(|name| values.get(name).is_none_or(Value::is_null))
        .collect())
}
