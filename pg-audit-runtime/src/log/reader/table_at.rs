//! What a whole table looked like at a time: the rows the log holds, rebuilt as of then, and
//! the rows the log never saw change, read from the table.
//!
//! [`table_at`] takes four steps: [`audited_table`] finds the table's install record,
//! [`logged_rows`] walks the log's records in key order and reads each one's state through
//! the log's indexes (never every entry of the table), [`unseen_rows`] reads the rows the log
//! never saw from the table (none after a finished baseline, which put them all in the log),
//! and [`merge`] orders the two into one page.

use std::time::SystemTime;

use pg_audit::sql::install::{AUDITED_FIELD, EXCLUDE_FIELD, KEY_FIELD, TRACK_ONLY_FIELD};
use pg_audit::sql::records::LiveRows;
use pg_audit::{AuditLog, Ident, QualifiedName};
use serde_json::Value;

use super::Read;
use super::activity::counted_through;
use super::record::{read_ident, resolve_table, table_query};
use crate::log::ReadError;
use crate::log::driver::{Driver, first};
use crate::log::row::{Query, log_row};

/// A page of a table as it was at a time (see
/// `AuditReader::table_at`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TableAt {
    /// The rows, ordered by key (the key object's JSON text as PostgreSQL writes it, byte by
    /// byte).
    pub rows: Vec<RowAt>,
    /// Whether the page is the whole table: the rows the log never saw change were read from
    /// the table, or a finished baseline (`pg-audit baseline`) put every row in the log
    /// (false: the reader lacks `SELECT` on the table, and only rows the log holds are
    /// listed).
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
pub async fn table_at<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    at: SystemTime,
    after: Option<&Value>,
    limit: u32,
) -> Read<TableAt, D> {
    let audited = audited_table(log, conn, table).await?;
    let after = after.map(Value::to_string);
    let page = Page {
        after: after.as_deref(),
        limit: i64::from(limit),
        through: counted_through(log, conn).await?,
    };
    let logged = logged_rows(log, conn, &audited, at, page).await?;
    // A finished baseline wrote every row the table held: the log alone has them all.
    let unseen = if audited.baselined {
        Some(Vec::new())
    } else if audited.may_read {
        unseen_rows(log, conn, &audited, page).await?
    } else {
        None
    };
    Ok(merge(logged, unseen, page.limit as usize))
}

log_row! {
    /// An audited table as its install record has it.
    struct AuditedTable {
        schema_name: String,
        table_name: String,
        /// The install record's configuration: its key columns and which columns are audited.
        config: Value,
        /// Whether the reader may use the table's schema and `SELECT` from the table.
        may_read: bool,
        /// Whether a baseline of the table finished (`pg-audit baseline`).
        baselined: bool,
    }
}

log_row! {
    /// One row of a page: its key object's JSON text as PostgreSQL writes it (the page's order),
    /// the key object and the audited columns.
    struct KeyedRow {
        key: String,
        k: Value,
        v: Value,
    }
}

/// Which page: the key after which it starts (as JSON text), the most rows, and how far the
/// log's counts went when it began (its entries past that are read from the log).
#[derive(Clone, Copy)]
struct Page<'a> {
    after: Option<&'a str>,
    limit: i64,
    through: i64,
}

/// Step 1: the install record of `table` (resolved as every reader query resolves it), or
/// [`ReadError::NotAudited`].
async fn audited_table<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
) -> Read<AuditedTable, D> {
    let sql = format!(
        "SELECT r.schema_name, r.table_name, c.config,
                coalesce((SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE')
                                 AND pg_catalog.has_table_privilege(t.oid, 'SELECT')
                            FROM pg_catalog.pg_class AS t
                            JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) t.relnamespace
                           WHERE n.nspname OPERATOR(pg_catalog.=) r.schema_name
                             AND t.relname OPERATOR(pg_catalog.=) r.table_name), false) AS may_read,
                EXISTS (SELECT FROM {baselines} AS b
                         WHERE b.schema_name OPERATOR(pg_catalog.=) r.schema_name
                           AND b.table_name OPERATOR(pg_catalog.=) r.table_name
                           AND b.finished_at IS NOT NULL) AS baselined
           FROM ({resolve}) AS r
           JOIN {config} AS c ON c.table_schema OPERATOR(pg_catalog.=) r.schema_name
                            AND c.table_name OPERATOR(pg_catalog.=) r.table_name",
        resolve = resolve_table(log),
        config = log.config_table(),
        baselines = log.baselines_table(),
    );
    first(conn.load(table_query(sql, table)).await?).ok_or_else(|| ReadError::NotAudited {
        table: table.to_string(),
    })
}

/// Step 2: the records the log holds as they were at `at`, walked in key order from the
/// records the counts keep (`AuditLog::table_at_sql`).
async fn logged_rows<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    audited: &AuditedTable,
    at: SystemTime,
    page: Page<'_>,
) -> Read<Vec<KeyedRow>, D> {
    conn.load(
        Query::new(log.table_at_sql())
            .bind(&audited.schema_name)
            .bind(&audited.table_name)
            .bind(at)
            .bind(page.after)
            .bind(page.limit)
            .bind(page.through),
    )
    .await
}

/// Step 3: the rows the log never saw, from the table itself and restricted to the audited
/// columns; `None` when column privileges keep a column from the reader.
async fn unseen_rows<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    audited: &AuditedTable,
    page: Page<'_>,
) -> Read<Option<Vec<KeyedRow>>, D> {
    let (table, key, values) = (audited.name()?, audited.key_expr()?, audited.values_expr()?);
    let sql = log.unseen_rows_sql(LiveRows {
        table: &table,
        key: &key,
        values: &values,
    });
    let rows = conn
        .load(
            Query::new(sql)
                .bind(&audited.schema_name)
                .bind(&audited.table_name)
                .bind(page.after)
                .bind(page.limit)
                .bind(page.through),
        )
        .await;
    match rows {
        Ok(rows) => Ok(Some(rows)),
        Err(ReadError::Database(e)) if D::permission_denied(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Step 4: the logged and unseen rows in key order (their JSON text as PostgreSQL writes it,
/// byte by byte, as both queries order them), at most `limit`.
fn merge(logged: Vec<KeyedRow>, unseen: Option<Vec<KeyedRow>>, limit: usize) -> TableAt {
    let current_rows = unseen.is_some();
    let row = |from_log: bool| {
        move |r: KeyedRow| {
            (
                r.key,
                RowAt {
                    key: r.k,
                    values: r.v,
                    from_log,
                },
            )
        }
    };
    let mut rows: Vec<(String, RowAt)> = logged
        .into_iter()
        .map(row(true))
        .chain(unseen.into_iter().flatten().map(row(false)))
        .collect();
    rows.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    rows.truncate(limit);
    TableAt {
        rows: rows.into_iter().map(|(_, r)| r).collect(),
        current_rows,
    }
}

impl AuditedTable {
    /// The table, schema-qualified.
    fn name<E>(&self) -> Result<QualifiedName, ReadError<E>> {
        Ok(QualifiedName::new(
            Some(read_ident(self.schema_name.as_str(), "schema")?),
            read_ident(self.table_name.as_str(), "table")?,
        ))
    }

    /// The key object of the table's row `t`.
    fn key_expr<E>(&self) -> Result<String, ReadError<E>> {
        let key = columns(self.config.get(KEY_FIELD))?;
        Ok(build_object(&key))
    }

    /// The audited columns of the table's row `t`, as the triggers record them.
    fn values_expr<E>(&self) -> Result<String, ReadError<E>> {
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
fn columns<E>(list: Option<&Value>) -> Result<Vec<Ident>, ReadError<E>> {
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
