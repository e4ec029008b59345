//! What a whole table looked like at a time: the rows the log holds, rebuilt as of then, and
//! the rows the log never saw change, read from the table.
//!
//! [`table_at`] takes four steps: [`audited_table`] finds the table's install record,
//! [`logged_rows`] rebuilds every record the log holds, [`unlogged_rows`] reads the rest from
//! the table, and [`merge`] orders the two into one page.

use std::time::SystemTime;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
use pg_audit::sql::install::{AUDITED_FIELD, EXCLUDE_FIELD, KEY_FIELD, TRACK_ONLY_FIELD};
use pg_audit::sql::shape::record_key_expr;
use pg_audit::{AuditLog, Ident, QualifiedName};
use serde_json::Value;

use super::record::{read_ident, resolve_table, table_query};
use crate::Error;
use crate::log::LogTime;
use crate::log::driver::{Driver, first};

/// A page of a table as it was at a time (see
/// [`AuditReader::table_at`](super::AuditReader::table_at)).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TableAt {
    /// The rows, ordered by key (as JSON text).
    pub rows: Vec<RowAt>,
    /// Whether rows the log never saw change were read from the table (false: the reader
    /// lacks `SELECT` on it, and only rows the log holds are listed).
    pub current_rows: bool,
}

/// One row of a [`TableAt`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowAt {
    /// Its key object.
    pub key: Value,
    /// Its audited columns.
    pub values: Value,
    /// From the log (false: from the table, unchanged since before auditing).
    pub from_log: bool,
}

/// The rows of `table` at `at`, at most `limit` after the key `after`.
pub(super) async fn table_at<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    at: SystemTime,
    after: Option<&Value>,
    limit: u32,
) -> Result<TableAt, Error> {
    let audited = audited_table(log, conn, table).await?;
    let after = after.map(Value::to_string);
    let page = KeyPage {
        after: after.as_deref(),
        limit: i64::from(limit),
    };
    let logged = logged_rows(log, conn, &audited, at, page).await?;
    let unlogged = unlogged_rows(log, conn, &audited, page).await?;
    Ok(merge(logged, unlogged, limit as usize))
}

/// An audited table as its install record has it.
#[derive(QueryableByName)]
struct AuditedTable {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    /// The install record's configuration: its key columns and which columns are audited.
    #[diesel(sql_type = Jsonb)]
    config: Value,
}

/// One row of a page: its key object and its audited columns.
#[derive(QueryableByName)]
struct KeyedRow {
    #[diesel(sql_type = Jsonb, deserialize_as = crate::log::json::LogJson)]
    k: Value,
    #[diesel(sql_type = Jsonb, deserialize_as = crate::log::json::LogJson)]
    v: Value,
}

/// Which rows of the table a step returns: keys after `after` (as JSON text), at most `limit`.
#[derive(Clone, Copy)]
struct KeyPage<'a> {
    after: Option<&'a str>,
    limit: i64,
}

/// Step 1: the install record of `table` (resolved as every reader query resolves it), or
/// [`Error::NotAudited`].
async fn audited_table<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
) -> Result<AuditedTable, Error> {
    let sql = format!(
        "SELECT r.schema_name, r.table_name, c.config
           FROM ({resolve}) AS r
           JOIN {config} AS c ON c.table_schema OPERATOR(pg_catalog.=) r.schema_name
                            AND c.table_name OPERATOR(pg_catalog.=) r.table_name",
        resolve = resolve_table(log),
        config = log.config_table()
    );
    first(conn.load(table_query(sql, table)).await?).ok_or_else(|| Error::NotAudited {
        table: table.to_string(),
    })
}

/// Step 2: every record the log holds, as it was at `at`. Each entry is seen from each key it
/// concerns, with the state before it and after it (NULL: no row); a key-changing UPDATE ends
/// the old key's row and starts the new key's. A record's state is its last entry's at or
/// before `at` (unless a TRUNCATE came after it), else the state before its first entry after
/// `at`.
async fn logged_rows<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    audited: &AuditedTable,
    at: SystemTime,
    page: KeyPage<'_>,
) -> QueryResult<Vec<KeyedRow>> {
    let log = log.table();
    let sql = format!(
        "WITH ev AS (
            SELECT l.record_pk AS k, l.id, l.changed_at,
                   CASE WHEN l.operation IN ('UPDATE', 'DELETE') AND l.old_record_pk IS NULL
                        THEN l.old_values END AS before,
                   CASE WHEN l.operation IN ('INSERT', 'UPDATE') THEN l.new_values END AS after
              FROM {log} AS l
             WHERE l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
               AND l.record_pk IS NOT NULL
            UNION ALL
            SELECT l.old_record_pk, l.id, l.changed_at, l.old_values, NULL
              FROM {log} AS l
             WHERE l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
               AND l.old_record_pk IS NOT NULL),
         truncated AS (
            SELECT pg_catalog.max(l.id) AS id FROM {log} AS l
             WHERE l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
               AND l.operation OPERATOR(pg_catalog.=) 'TRUNCATE' AND l.changed_at OPERATOR(pg_catalog.<=) $3),
         last_before AS (
            SELECT DISTINCT ON (ev.k) ev.k, ev.id, ev.after AS v FROM ev
             WHERE ev.changed_at OPERATOR(pg_catalog.<=) $3
             ORDER BY ev.k, ev.id DESC),
         first_after AS (
            SELECT DISTINCT ON (ev.k) ev.k, ev.before AS v FROM ev
             WHERE ev.changed_at OPERATOR(pg_catalog.>) $3
               AND NOT EXISTS (SELECT FROM last_before AS b WHERE b.k OPERATOR(pg_catalog.=) ev.k)
             ORDER BY ev.k, ev.id)
         SELECT s.k, s.v FROM (
            SELECT b.k, b.v FROM last_before AS b, truncated AS t
             WHERE t.id IS NULL OR b.id OPERATOR(pg_catalog.>) t.id
            UNION ALL
            SELECT a.k, a.v FROM first_after AS a) AS s
          WHERE s.v IS NOT NULL AND ($4::jsonb IS NULL OR s.k::text OPERATOR(pg_catalog.>) $4::jsonb::text)
          ORDER BY s.k::text
          LIMIT $5"
    );
    conn.load(
        diesel::sql_query(sql)
            .into_boxed()
            .bind::<Text, _>(&audited.schema_name)
            .bind::<Text, _>(&audited.table_name)
            .bind::<Timestamptz, _>(LogTime(at))
            .bind::<Nullable<Text>, _>(page.after)
            .bind::<BigInt, _>(page.limit),
    )
    .await
}

/// Step 3: the rows the log never saw, from the table itself and restricted to the audited
/// columns; `None` when the reader may not `SELECT` from the table.
async fn unlogged_rows<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    audited: &AuditedTable,
    page: KeyPage<'_>,
) -> Result<Option<Vec<KeyedRow>>, Error> {
    let sql = format!(
        "SELECT s.k, s.v FROM (
            SELECT {key} AS k, {values} AS v FROM {table} AS t) AS s
          WHERE NOT EXISTS (
                SELECT FROM {log} AS l
                 WHERE l.record_key OPERATOR(pg_catalog.=) {record_key}
                   AND l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
                   AND (l.record_pk OPERATOR(pg_catalog.=) s.k))
            AND NOT EXISTS (
                SELECT FROM {log} AS l
                 WHERE l.old_record_key OPERATOR(pg_catalog.=) {record_key}
                   AND l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
                   AND l.old_record_pk OPERATOR(pg_catalog.=) s.k)
            AND ($3::jsonb IS NULL OR s.k::text OPERATOR(pg_catalog.>) $3::jsonb::text)
          ORDER BY s.k::text
          LIMIT $4",
        key = audited.key_expr()?,
        values = audited.values_expr()?,
        table = audited.name()?,
        log = log.table(),
        record_key = record_key_expr("$1", "$2", "s.k"),
    );
    let rows = conn
        .load(
            diesel::sql_query(sql)
                .into_boxed()
                .bind::<Text, _>(&audited.schema_name)
                .bind::<Text, _>(&audited.table_name)
                .bind::<Nullable<Text>, _>(page.after)
                .bind::<BigInt, _>(page.limit),
        )
        .await;
    match rows {
        Ok(rows) => Ok(Some(rows)),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            info,
        )) if info.message().starts_with("permission denied") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Step 4: the logged and unlogged rows in key order, at most `limit`.
fn merge(logged: Vec<KeyedRow>, unlogged: Option<Vec<KeyedRow>>, limit: usize) -> TableAt {
    let current_rows = unlogged.is_some();
    let row = |from_log: bool| {
        move |r: KeyedRow| RowAt {
            key: r.k,
            values: r.v,
            from_log,
        }
    };
    let mut rows: Vec<RowAt> = logged
        .into_iter()
        .map(row(true))
        .chain(unlogged.into_iter().flatten().map(row(false)))
        .collect();
    rows.sort_by_cached_key(|r| r.key.to_string());
    rows.truncate(limit);
    TableAt { rows, current_rows }
}

impl AuditedTable {
    /// The table, schema-qualified.
    fn name(&self) -> Result<QualifiedName, Error> {
        Ok(QualifiedName::new(
            Some(read_ident(self.schema_name.as_str(), "schema")?),
            read_ident(self.table_name.as_str(), "table")?,
        ))
    }

    /// The key object of the table's row `t`.
    fn key_expr(&self) -> Result<String, Error> {
        let key = columns(self.config.get(KEY_FIELD))?;
        Ok(build_object(&key))
    }

    /// The audited columns of the table's row `t`, as the triggers record them.
    fn values_expr(&self) -> Result<String, Error> {
        let audited = self.config.get(AUDITED_FIELD);
        if let Some(track) = audited.and_then(|a| a.get(TRACK_ONLY_FIELD)) {
            Ok(build_object(&columns(Some(track))?))
        } else if let Some(excluded) = audited.and_then(|a| a.get(EXCLUDE_FIELD)) {
            let names: Vec<String> = columns(Some(excluded))?
                .iter()
                .map(Ident::literal)
                .collect();
            Ok(format!(
                "pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) ARRAY[{}]::text[]",
                names.join(", ")
            ))
        } else {
            Ok("pg_catalog.to_jsonb(t)".to_owned())
        }
    }
}

/// A list of column names in the install record (none when absent or not a list).
fn columns(list: Option<&Value>) -> Result<Vec<Ident>, Error> {
    list.and_then(|l| serde_json::from_value::<Vec<String>>(l.clone()).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|c| read_ident(c, "column"))
        .collect()
}

/// `jsonb_build_object` of the columns of row `t`, each under its name.
fn build_object(columns: &[Ident]) -> String {
    let pairs: Vec<String> = columns
        .iter()
        .map(|c| format!("{}, t.{c}", Ident::literal(c)))
        .collect();
    format!("pg_catalog.jsonb_build_object({})", pairs.join(", "))
}
