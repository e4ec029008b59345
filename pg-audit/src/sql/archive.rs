//! The archive: partitions written as Parquet files and dropped, and the catalogue that lists
//! the files (`<log>_archives`). The files are written and read by `pg-audit-archive`; here is
//! what the database holds and the SQL that reads rows out and back in.

use std::fmt::Write as _;

use crate::ident::{QualifiedName, text_literal};
use crate::sql::names::LogNames;
use crate::sql::shape::{LOG_COLUMNS, LogColumn};

/// How a log column is stored in an archived file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveType {
    /// A 64-bit integer.
    Int64,
    /// A timestamp in microseconds since 1970-01-01 UTC.
    TimestampMicros,
    /// UTF-8 text; JSON columns as the server prints them.
    Text,
}

impl ArchiveType {
    /// How `column` is archived.
    pub fn of(column: &LogColumn) -> Self {
        match column.sql_type {
            "bigint" => ArchiveType::Int64,
            "timestamptz" => ArchiveType::TimestampMicros,
            _ => ArchiveType::Text,
        }
    }
}

/// A column as the archive reads it out of the database, from row alias `alias`.
fn out_expr(column: &LogColumn, alias: &str) -> String {
    let c = format!("{alias}.{}", column.name);
    match (ArchiveType::of(column), column.sql_type) {
        (ArchiveType::TimestampMicros, _) => {
            format!("(extract(epoch FROM {c}) OPERATOR(pg_catalog.*) 1000000)::bigint")
        }
        (ArchiveType::Text, "text") | (ArchiveType::Int64, _) => c,
        (ArchiveType::Text, _) => format!("{c}::text"),
    }
}

/// A column as loaded back from the staging table's text or integer, from row alias `alias`.
fn in_expr(column: &LogColumn, alias: &str) -> String {
    let c = format!("{alias}.{}", column.name);
    match ArchiveType::of(column) {
        ArchiveType::TimestampMicros => format!(
            "(timestamptz 'epoch' OPERATOR(pg_catalog.+) ({c} OPERATOR(pg_catalog.*) interval '1 microsecond'))"
        ),
        ArchiveType::Int64 => c,
        ArchiveType::Text => format!("{c}::{}", column.sql_type),
    }
}

/// The SQL of [`crate::AuditLog::archive_rows_sql`].
pub(crate) fn archive_rows_sql(relation: &str) -> String {
    let list: Vec<String> = LOG_COLUMNS.iter().map(|c| out_expr(c, "l")).collect();
    format!(
        "SELECT {} FROM {relation} AS l ORDER BY {}",
        list.join(", "),
        file_order("l")
    )
}

/// The SQL of [`crate::AuditLog::export_rows_sql`].
pub(crate) fn export_rows_sql(log: &QualifiedName) -> String {
    let list: Vec<String> = LOG_COLUMNS.iter().map(|c| out_expr(c, "l")).collect();
    format!(
        "SELECT {} FROM {log} AS l
 WHERE l.changed_at OPERATOR(pg_catalog.>=) $1::text::timestamptz AND l.changed_at OPERATOR(pg_catalog.<) $2::text::timestamptz
   AND ($3::text IS NULL OR l.schema_name OPERATOR(pg_catalog.=) $3::text)
   AND ($4::text IS NULL OR l.table_name OPERATOR(pg_catalog.=) $4::text)
   AND ($5::text IS NULL OR (l.context OPERATOR(pg_catalog.->>) 'user_id') OPERATOR(pg_catalog.=) $5::text)
 ORDER BY l.id",
        list.join(", "),
    )
}

/// The order of an archived file's rows, over the rows of `alias`: by record (a record's
/// entries together, for readers that skip row groups by `record_key`), then by id; the order
/// a file's content digest is computed in, so it is computed as the rows stream by. As the
/// files' metadata names it: [`FILE_ORDER`].
pub fn file_order(alias: &str) -> String {
    format!("{alias}.record_key NULLS LAST, {alias}.id")
}

/// The files' order as their metadata (`pg_audit.sorted_by`) names it.
pub const FILE_ORDER: &str = "record_key NULLS LAST, id";

/// The SQL of [`crate::AuditLog::content_digest_sql`].
pub(crate) fn content_digest_sql(names: &LogNames, relation: &str) -> String {
    crate::sql::seal::content_query(names, relation)
}

/// The SQL of [`crate::AuditLog::load_tables_sql`].
pub(crate) fn load_tables_sql(names: &LogNames, stage: &str, target: &str) -> String {
    let stage_columns: Vec<String> = LOG_COLUMNS
        .iter()
        .map(|c| {
            let ty = match ArchiveType::of(c) {
                ArchiveType::Int64 | ArchiveType::TimestampMicros => "bigint",
                ArchiveType::Text => "text",
            };
            format!("{} {ty}", c.name)
        })
        .collect();
    format!(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ({});
             CREATE TEMPORARY TABLE IF NOT EXISTS {target} (LIKE {} INCLUDING DEFAULTS);",
        stage_columns.join(", "),
        names.table()
    )
}

/// The SQL of [`crate::AuditLog::unstage_sql`].
pub(crate) fn unstage_sql(stage: &str, target: &str) -> String {
    let list: Vec<String> = LOG_COLUMNS.iter().map(|c| in_expr(c, "s")).collect();
    format!(
        "INSERT INTO {target} ({}) SELECT {} FROM {stage} AS s; TRUNCATE {stage};",
        crate::sql::digest::column_list(),
        list.join(", ")
    )
}

/// The SQL of [`crate::AuditLog::insert_archive_sql`].
pub(crate) fn insert_archive_sql(names: &LogNames) -> String {
    format!(
        "INSERT INTO {} (partition_name, range_start, range_end, location, row_count, min_id, max_id, bytes, content_sha256)
             VALUES ($1, $2::text::timestamptz, $3::text::timestamptz, $4, $5, $6, $7, $8, $9)",
        names.archives_table()
    )
}

/// The SQL of [`crate::AuditLog::list_archives_sql`].
pub(crate) fn list_archives_sql(names: &LogNames) -> String {
    format!(
        "SELECT partition_name, range_start::text AS range_start, range_end::text AS range_end, location,
                    row_count, min_id, max_id, bytes, content_sha256, archived_at::text AS archived_at
               FROM {} ORDER BY range_start, partition_name",
        names.archives_table()
    )
}

/// The catalogue's DDL, part of the log's.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let archives = names.archives_table();
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {archives} (
    partition_name text PRIMARY KEY,
    range_start timestamptz NOT NULL,
    range_end timestamptz NOT NULL,
    location text NOT NULL,
    row_count bigint NOT NULL,
    min_id bigint,
    max_id bigint,
    bytes bigint NOT NULL,
    content_sha256 bytea NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    archived_by text NOT NULL DEFAULT session_user
);
COMMENT ON TABLE {archives} IS {};
-- Append-only, like the seals (its trigger is made with them).
REVOKE ALL ON TABLE {archives} FROM PUBLIC;",
        text_literal(
            "pg-audit archive: partitions moved to Parquet files; content_sha256 is over the rows' seal digests"
        )
    );
    sql
}
