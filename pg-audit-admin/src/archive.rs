//! A record's entries archived to Parquet (feature `archive`): the catalogue and the record's
//! key read on a pooled connection, the files read by `pg-audit-archive`.

use axum::http::StatusCode;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bytea, Nullable, Text};
use pg_audit::QualifiedName;
use serde_json::Value;

use crate::{PageError, Shared, with_conn};

#[derive(QueryableByName)]
struct File {
    #[diesel(sql_type = Text)]
    partition_name: String,
    #[diesel(sql_type = Text)]
    range_start: String,
    #[diesel(sql_type = Text)]
    range_end: String,
    #[diesel(sql_type = Text)]
    location: String,
    #[diesel(sql_type = BigInt)]
    row_count: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    min_id: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    max_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
    #[diesel(sql_type = Bytea)]
    content_sha256: Vec<u8>,
    #[diesel(sql_type = Text)]
    archived_at: String,
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = BigInt)]
    k: i64,
}

/// The archived entries of one record and how many files the archive holds.
pub(crate) async fn entries(
    state: &Shared,
    table: &QualifiedName,
    key: &Value,
) -> Result<(pg_audit_archive::ArchivedHistory, usize), PageError> {
    let log = state.log.clone();
    let schema = table
        .schema
        .as_ref()
        .map_or("public", |s| s.as_str())
        .to_owned();
    let (name, key_text) = (table.name.as_str().to_owned(), key.to_string());
    let (files, record_key) = with_conn(state, move |conn| {
        let files: Vec<File> = diesel::sql_query(log.list_archives_sql()).load(conn)?;
        let record_key: Key = diesel::sql_query(format!(
            "SELECT ({}) AS k",
            pg_audit_archive::record_key_sql().trim_start_matches("SELECT ")
        ))
        .bind::<Text, _>(schema)
        .bind::<Text, _>(name)
        .bind::<Text, _>(key_text)
        .get_result(conn)?;
        Ok((files, record_key.k))
    })
    .await?;
    let files: Vec<pg_audit_archive::ArchivedFile> = files
        .into_iter()
        .map(|f| pg_audit_archive::ArchivedFile {
            partition_name: f.partition_name,
            range_start: f.range_start,
            range_end: f.range_end,
            location: f.location,
            row_count: f.row_count,
            min_id: f.min_id,
            max_id: f.max_id,
            bytes: f.bytes,
            content_sha256: f.content_sha256,
            archived_at: f.archived_at,
        })
        .collect();
    let entries = pg_audit_archive::history_from(&files, record_key, table, key)
        .await
        .map_err(|e| {
            PageError(
                StatusCode::BAD_GATEWAY,
                format!("cannot read the archive: {}", pg_audit_archive::chain(&e)),
            )
        })?;
    Ok((entries, files.len()))
}
