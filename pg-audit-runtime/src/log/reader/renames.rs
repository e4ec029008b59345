//! A record's columns under the names they have now: the table's schema changes (its `DDL`
//! entries, see [`pg_audit::sql::schema`]) read once per question, and each older entry's
//! values renamed column by column, so a history across `RENAME COLUMN` reads as one column.

use pg_audit::{AuditLog, QualifiedName};
use serde_json::Value;

use super::Read;
use super::record::{resolve_table, table_query};
use crate::log::AuditEntry;
use crate::log::driver::Driver;
use crate::log::row::log_row;

/// A table's schema changes since its entries were written: each change's entry id and what it
/// did to which column.
#[derive(Debug, Default, Clone)]
pub(super) struct SchemaChanges {
    changes: Vec<(i64, Change)>,
}

#[derive(Debug, Clone)]
enum Change {
    Renamed { from: String, to: String },
    Dropped { column: String },
    Added { column: String },
}

log_row! {
    struct Row {
        id: i64,
        changes: Value,
    }
}

impl SchemaChanges {
    /// The schema changes of `table` (resolved as every reader query resolves it), oldest first.
    pub(super) async fn of<D: Driver>(
        log: &AuditLog,
        conn: &mut D,
        table: &QualifiedName,
    ) -> Read<SchemaChanges, D> {
        let sql = format!(
            "SELECT c.id, c.changes FROM ({resolve}) AS r
              CROSS JOIN LATERAL ({changes}) AS c",
            resolve = resolve_table(log),
            changes = log
                .schema_changes_sql()
                .replace("$1", "r.schema_name")
                .replace("$2", "r.table_name"),
        );
        let rows: Vec<Row> = conn.load(table_query(sql, table)).await?;
        let mut changes = Vec::new();
        for row in rows {
            for change in row.changes.as_array().into_iter().flatten() {
                let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                if let Some(r) = change.get("renamed")
                    && let (Some(from), Some(to)) = (text(r, "from"), text(r, "to"))
                {
                    changes.push((row.id, Change::Renamed { from, to }));
                } else if let Some(column) = change.get("dropped").and_then(|d| text(d, "column")) {
                    changes.push((row.id, Change::Dropped { column }));
                } else if let Some(column) = change.get("added").and_then(|d| text(d, "column")) {
                    changes.push((row.id, Change::Added { column }));
                }
            }
        }
        Ok(SchemaChanges { changes })
    }

    /// `entry`'s values with its columns under the names they have now.
    pub(super) fn follow(&self, entry: &mut AuditEntry) {
        for values in [&mut entry.old_values, &mut entry.new_values] {
            if let Some(Value::Object(row)) = values {
                for (at, change) in &self.changes {
                    if let Change::Renamed { from, to } = change
                        && *at > entry.id
                        && let Some(v) = row.remove(from)
                    {
                        row.insert(to.clone(), v);
                    }
                }
            }
        }
    }

    /// [`follow`](Self::follow) for each entry.
    pub(super) fn follow_all(&self, entries: &mut [AuditEntry]) {
        if self.changes.is_empty() {
            return;
        }
        for entry in entries {
            self.follow(entry);
        }
    }

    /// The columns of `values` (as [`follow`](Self::follow) names them, as of entry `id`)
    /// that a later change dropped and none added back: what a revert to that entry could not
    /// put back.
    pub(super) fn dropped_since(&self, id: i64, values: &Value) -> Vec<String> {
        let Some(row) = values.as_object() else {
            return Vec::new();
        };
        row.keys()
            .filter(|column| {
                let mut gone = false;
                for (at, change) in &self.changes {
                    if *at <= id {
                        continue;
                    }
                    match change {
                        Change::Dropped { column: c } if c == *column => gone = true,
                        Change::Added { column: c } if c == *column => gone = false,
                        _ => {}
                    }
                }
                gone
            })
            .cloned()
            .collect()
    }
}
