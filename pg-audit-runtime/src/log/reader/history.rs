//! What happened to one record: its entries newest first, followed back across the UPDATEs
//! that changed its key; one entry of it; and the key columns recorded at install.

use pg_audit::sql::shape::{entry_select_list, record_key_expr};
use pg_audit::{AuditLog, QualifiedName};
use serde_json::Value;

use super::Read;
use super::record::{check_key, record_query, resolve_table};
use super::renames::SchemaChanges;
use crate::log::driver::{Driver, first};
use crate::log::row::log_row;
use crate::log::{AuditEntry, Page};

/// The history of the record of `table` whose key is `key`, newest first (see
/// `AuditReader::history_of`).
pub async fn history<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    page: Page,
) -> Read<Vec<AuditEntry>, D> {
    let asked = key;
    let mut entries = Vec::new();
    let (mut key, mut upper) = segment_of(log, conn, table, key, page.before).await?;
    loop {
        let limit = i64::from(page.limit) - entries.len() as i64;
        if limit <= 0 {
            break;
        }
        entries.extend(
            conn.load::<AuditEntry>(
                record_query(history_sql(log), table, &key)
                    .bind(upper)
                    .bind(limit),
            )
            .await?,
        );
        // This key's part is exhausted: on to the key the record had before, if any.
        match key_change(log, conn, table, &key, upper).await? {
            Some((change, before)) => (key, upper) = (before, Some(change)),
            None => break,
        }
    }
    if entries.is_empty() && page.before.is_none() {
        check_key(log, conn, table, asked).await?;
    }
    SchemaChanges::of(log, conn, table)
        .await?
        .follow_all(&mut entries);
    Ok(entries)
}

/// The query [`history`] runs for one key (see
/// `AuditReader::history_sql`).
///
/// Entries come newest first in the order the changes were made: the log's `id`. A record's
/// changes are serialised by its row lock, and an entry's id is taken when its change is made,
/// while `changed_at` is its statement's start, which is earlier for a change that waited for
/// the lock; so ordering by `changed_at` would disagree with the ids that pages continue from.
pub fn history_sql(log: &AuditLog) -> String {
    record_sql(
        log,
        "ORDER BY l.id DESC
              LIMIT $5",
    )
}

/// Entries of one record under one key: parameters `$1` the schema (text, NULL for the search
/// path's), `$2` the table, `$3` the key object (jsonb), `$4` the id to stay below (bigint,
/// NULL for none); `rest` follows the `WHERE` clause (ordering, more conditions with parameters
/// from `$5` on). An entry is the record's under the key when the key is its key after
/// (`record_pk`) or before (`old_record_pk`), and it is not older than the UPDATE that gave the
/// record the key: older entries of the key belong to whatever had it before. Each side goes
/// through its own hash index.
pub(super) fn record_sql(log: &AuditLog, rest: &str) -> String {
    let resolve = resolve_table(log);
    let log = log.table();
    let key = record_key_expr("r.schema_name", "r.table_name", "$3::jsonb");
    let same_table = |alias: &str| {
        format!(
            "{alias}.schema_name OPERATOR(pg_catalog.=) r.schema_name
                   AND {alias}.table_name OPERATOR(pg_catalog.=) r.table_name"
        )
    };
    let (same_c, same_l) = (same_table("c"), same_table("l"));
    let since = format!(
        "l.id OPERATOR(pg_catalog.>=) coalesce((
                    SELECT pg_catalog.max(c.id) FROM {log} AS c
                     WHERE c.record_key OPERATOR(pg_catalog.=) {key} AND {same_c}
                       AND c.record_pk OPERATOR(pg_catalog.=) $3::jsonb AND c.old_record_pk IS NOT NULL
                       AND ($4::bigint IS NULL OR c.id OPERATOR(pg_catalog.<) $4)), 0)
               AND ($4::bigint IS NULL OR l.id OPERATOR(pg_catalog.<) $4)"
    );
    format!(
        "SELECT {columns} FROM (
                SELECT l.* FROM {log} AS l, ({resolve}) AS r
                 WHERE l.record_key OPERATOR(pg_catalog.=) {key} AND {same_l}
                   AND l.record_pk OPERATOR(pg_catalog.=) $3::jsonb AND {since}
                UNION ALL
                SELECT l.* FROM {log} AS l, ({resolve}) AS r
                 WHERE l.old_record_key OPERATOR(pg_catalog.=) {key} AND {same_l}
                   AND l.old_record_pk OPERATOR(pg_catalog.=) $3::jsonb AND {since}
            ) AS l
            {rest}",
        columns = entry_select_list("l"),
    )
}

/// The newest UPDATE below entry `upper` that gave the record of `table` the key `key`: its id
/// and the key before.
pub(super) async fn key_change<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    upper: Option<i64>,
) -> Read<Option<(i64, Value)>, D> {
    let resolve = resolve_table(log);
    log_row! {
        struct Change {
            id: i64,
            old_record_pk: Value,
        }
    }
    let change: Option<Change> = first(
        conn.load(
            record_query(
                format!(
                    "SELECT c.id, c.old_record_pk FROM {log} AS c, ({resolve}) AS r
                  WHERE c.record_key OPERATOR(pg_catalog.=) {key}
                    AND c.schema_name OPERATOR(pg_catalog.=) r.schema_name
                    AND c.table_name OPERATOR(pg_catalog.=) r.table_name
                    AND c.record_pk OPERATOR(pg_catalog.=) $3::jsonb AND c.old_record_pk IS NOT NULL
                    AND ($4::bigint IS NULL OR c.id OPERATOR(pg_catalog.<) $4)
                  ORDER BY c.id DESC LIMIT 1",
                    log = log.table(),
                    key = record_key_expr("r.schema_name", "r.table_name", "$3::jsonb"),
                ),
                table,
                key,
            )
            .bind(upper),
        )
        .await?,
    );
    Ok(change.map(|c| (c.id, c.old_record_pk)))
}

/// The key the record of `table` now keyed `key` had below entry `before` (the key itself
/// unless an UPDATE at or after `before` gave it), with the bound to stay below.
async fn segment_of<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    before: Option<i64>,
) -> Read<(Value, Option<i64>), D> {
    let (mut key, mut upper) = (key.clone(), None);
    let Some(before) = before else {
        return Ok((key, None));
    };
    while let Some((change, old)) = key_change(log, conn, table, &key, upper).await? {
        if change < before {
            break;
        }
        (key, upper) = (old, Some(change));
    }
    Ok((key, Some(upper.map_or(before, |u| u.min(before)))))
}

/// One entry of the record of `table` whose key is `key`, or `None` when `entry` is not in its
/// history.
pub async fn entry_of<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    entry: i64,
) -> Read<Option<AuditEntry>, D> {
    let (key, upper) = segment_of(log, conn, table, key, entry.checked_add(1)).await?;
    let query = record_query(
        record_sql(log, "WHERE l.id OPERATOR(pg_catalog.=) $5"),
        table,
        &key,
    )
    .bind(upper)
    .bind(entry);
    let mut found: Option<AuditEntry> = first(conn.load(query).await?);
    if let Some(e) = &mut found {
        SchemaChanges::of(log, conn, table).await?.follow(e);
    }
    Ok(found)
}
