//! Which entry set each column's value.

use pg_audit::{AuditLog, Operation, QualifiedName};
use serde_json::Value;

use super::Read;
use super::history::history;
use crate::log::driver::Driver;
use crate::log::{AuditEntry, Page};

/// One column's last change: the entry that set `value` (see
/// `AuditReader::blame`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Blame {
    /// The column.
    pub column: String,
    /// The value that entry gave it.
    pub value: Value,
    /// The entry.
    pub entry: AuditEntry,
}

/// For each audited column of the record, the entry that last set its value, newest first.
pub async fn blame<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
) -> Read<Vec<Blame>, D> {
    let mut blame: Vec<Blame> = Vec::new();
    let mut open: Option<Vec<String>> = None; // columns not yet attributed
    // A snapshot sets nothing: columns no older entry set were as it read them.
    let mut snapshot: Option<AuditEntry> = None;
    let mut page = Some(Page::first(200));
    while let Some(p) = page {
        let entries = history(log, conn, table, key, p).await?;
        page = p.after(&entries);
        for entry in &entries {
            let columns = open.get_or_insert_with(|| {
                // The newest entry fixes the columns: the values after it, or before a DELETE.
                entry
                    .new_values
                    .as_ref()
                    .or(entry.old_values.as_ref())
                    .and_then(Value::as_object)
                    .map(|row| row.keys().cloned().collect())
                    .unwrap_or_default()
            });
            let set: Vec<String> = match entry.operation {
                Operation::Insert => columns.clone(),
                Operation::Update => entry.changes().into_keys().collect(),
                Operation::Delete | Operation::Truncate | Operation::Ddl => Vec::new(),
                Operation::Snapshot => {
                    snapshot = Some(entry.clone());
                    Vec::new()
                }
            };
            columns.retain(|column| {
                if !set.contains(column) {
                    return true;
                }
                let value = entry
                    .new_values
                    .as_ref()
                    .and_then(|row| row.get(column))
                    .cloned()
                    .unwrap_or(Value::Null);
                blame.push(Blame {
                    column: column.clone(),
                    value,
                    entry: entry.clone(),
                });
                false
            });
            if columns.is_empty() {
                page = None;
                break;
            }
        }
    }
    if let (Some(entry), Some(columns)) = (snapshot, open) {
        for column in columns {
            let value = entry
                .new_values
                .as_ref()
                .and_then(|row| row.get(&column))
                .cloned()
                .unwrap_or(Value::Null);
            blame.push(Blame {
                column,
                value,
                entry: entry.clone(),
            });
        }
    }
    blame.sort_by(|a, b| b.entry.id.cmp(&a.entry.id).then(a.column.cmp(&b.column)));
    Ok(blame)
}
