//! What one record looked like at a time, rebuilt from the log, and what differs between two
//! times.

use std::time::SystemTime;

use pg_audit::{AuditLog, Operation, QualifiedName};
use serde_json::Value;

use super::Read;
use super::history::{key_change, record_sql};
use super::record::{check_key, record_query};
use super::renames::SchemaChanges;
use crate::log::driver::{Driver, first};
use crate::log::{AuditEntry, Diff, changed_columns};

/// The audited columns of the record of `table` keyed `key` as they were at `at` (see
/// `AuditReader::state_at`).
pub async fn state_at<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    at: SystemTime,
) -> Read<Option<Value>, D> {
    // Newest key first, back across the UPDATEs that changed it.
    let (mut key, mut upper) = (key.clone(), None);
    loop {
        let query = record_query(
            record_sql(
                log,
                "WHERE l.changed_at OPERATOR(pg_catalog.<=) $5
                  ORDER BY l.changed_at DESC, l.id DESC
                  LIMIT 1",
            ),
            table,
            &key,
        )
        .bind(upper)
        .bind(at);
        let last: Option<AuditEntry> = first(conn.load(query).await?);
        if let Some(mut last) = last {
            SchemaChanges::of(log, conn, table).await?.follow(&mut last);
            // An UPDATE that took the record away from this key ends it under the key.
            return Ok(Some(last)
                .filter(|e| e.old_record_pk.as_ref() != Some(&key))
                .and_then(|e| e.new_values));
        }
        match key_change(log, conn, table, &key, upper).await? {
            Some((change, before)) => (key, upper) = (before, Some(change)),
            None => {
                // A record whose first entry is a snapshot stood as the snapshot read it
                // before then too (the log saw no change of it).
                let query = record_query(
                    record_sql(
                        log,
                        "WHERE l.changed_at OPERATOR(pg_catalog.>) $5
                          ORDER BY l.changed_at, l.id
                          LIMIT 1",
                    ),
                    table,
                    &key,
                )
                .bind(upper)
                .bind(at);
                let mut next: Option<AuditEntry> = first(conn.load(query).await?);
                match &mut next {
                    Some(e) => SchemaChanges::of(log, conn, table).await?.follow(e),
                    // Never seen under any key: a key that cannot name a record is said.
                    None if upper.is_none() => check_key(log, conn, table, &key).await?,
                    None => {}
                }
                return Ok(next
                    .filter(|e| e.operation == Operation::Snapshot)
                    .and_then(|e| e.new_values));
            }
        }
    }
}

/// The record at `from` and at `to`, and the columns that differ.
pub async fn diff<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    from: SystemTime,
    to: SystemTime,
) -> Read<Diff, D> {
    let before = state_at(log, conn, table, key, from).await?;
    let after = state_at(log, conn, table, key, to).await?;
    let changed = changed_columns(before.as_ref(), after.as_ref());
    Ok(Diff {
        before,
        after,
        changed,
    })
}
