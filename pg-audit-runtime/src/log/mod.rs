//! The audit log as every runtime reads it: a typed entry, pages and ranges, and the reader —
//! the queries that answer "what happened to this record, who did it, why, and what did it
//! look like then", written once over a [`Driver`] (`reader`), which Diesel's and sqlx's
//! readers run on their connections.

pub mod driver;
mod error;
pub mod json;
mod paths;
pub mod reader;
pub mod row;

use std::collections::BTreeMap;
use std::time::SystemTime;

use pg_audit::Operation;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::AuditContext;

pub use crate::key::{KeyMismatch, key_object, key_text, parse_key, value_text};
pub use driver::{Driver, block_ready};
pub use error::ReadError;
pub use paths::{PathChange, changed_paths};
pub use reader::{Activity, Blame, RowAt, TableAt};

/// Serde for [`Operation`] as its SQL name (`INSERT`, ...).
mod operation_name {
    use pg_audit::Operation;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(op: &Operation, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(op.keyword())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Operation, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Operation::from_logged(&text)
            .ok_or_else(|| D::Error::custom(format!("unknown operation `{text}`")))
    }
}

/// Serde for an entry's context as the log stores it: its JSON object, or `null` when empty.
mod context_object {
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    use crate::AuditContext;

    pub(super) fn serialize<S: Serializer>(ctx: &AuditContext, s: S) -> Result<S::Ok, S::Error> {
        ctx.to_json().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AuditContext, D::Error> {
        Ok(Option::<AuditContext>::deserialize(d)?.unwrap_or_default())
    }
}

/// One audit row, typed.
///
/// It serializes with serde as the CLI's `--json` prints an entry: times as RFC 3339 strings in
/// UTC, the operation as `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`, the context as its JSON
/// object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing id; also the version to revert to.
    pub id: i64,
    /// When the statement that made the change started.
    #[serde(with = "crate::time::serde_rfc3339")]
    pub changed_at: SystemTime,
    /// When its transaction started.
    #[serde(with = "crate::time::serde_rfc3339")]
    pub tx_started_at: SystemTime,
    /// The transaction id.
    pub txid: i64,
    /// What happened.
    #[serde(with = "operation_name")]
    pub operation: Operation,
    /// The changed table's schema.
    pub schema_name: String,
    /// The changed table.
    pub table_name: String,
    /// The record's key (`None` for TRUNCATE).
    pub record_pk: Option<Value>,
    /// The audited columns before (UPDATE, DELETE).
    pub old_values: Option<Value>,
    /// The audited columns after (INSERT, UPDATE).
    pub new_values: Option<Value>,
    /// The database role that connected.
    pub db_user: String,
    /// Who, why and from where (serialized as `null` when empty, as the log stores it).
    #[serde(with = "context_object")]
    pub context: AuditContext,
    /// An UPDATE that changed the record's key: the key before (`record_pk` is the key after).
    /// Such an entry is the last of the old key's history and the first of the new key's.
    pub old_record_pk: Option<Value>,
}

impl AuditEntry {
    /// A schema change entry's changes in words, one per change (`renamed name → full_name`,
    /// `added phone text`, `dropped email`, `retyped email text → varchar(100)`, `table renamed
    /// public.a → public.b`); `None` for any other entry.
    pub fn schema_changes(&self) -> Option<Vec<String>> {
        if self.operation != Operation::Ddl {
            return None;
        }
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| p.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("."),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let changes = self.new_values.as_ref()?.get("changes")?.as_array()?;
        Some(
            changes
                .iter()
                .filter_map(|c| {
                    let (kind, detail) = c.as_object()?.iter().next()?;
                    let f = |k: &str| text(detail.get(k));
                    Some(match kind.as_str() {
                        "renamed" => format!("renamed {} → {}", f("from"), f("to")),
                        "added" => format!("added {} {}", f("column"), f("type")),
                        "dropped" => format!("dropped {}", f("column")),
                        "retyped" => {
                            format!("retyped {} {} → {}", f("column"), f("from"), f("to"))
                        }
                        "table_renamed" => format!("table renamed {} → {}", f("from"), f("to")),
                        other => other.to_owned(),
                    })
                })
                .collect(),
        )
    }

    /// The audited columns this change touched, with their values before and after (`Null`
    /// where there was no row): for an UPDATE the columns that differ, for an INSERT or DELETE
    /// every audited column. An UPDATE whose every changed value was erased since (both sides
    /// `"[redacted]"`) shows those columns: the change happened, its values are gone.
    pub fn changes(&self) -> BTreeMap<String, (Value, Value)> {
        let changed = changed_columns(self.old_values.as_ref(), self.new_values.as_ref());
        if !changed.is_empty() || self.operation != Operation::Update {
            return changed;
        }
        let marker = Value::String(pg_audit::sql::shape::REDACTED.to_owned());
        let (Some(Value::Object(old)), Some(new)) = (&self.old_values, &self.new_values) else {
            return changed;
        };
        old.iter()
            .filter(|(k, v)| **v == marker && new.get(k.as_str()) == Some(&marker))
            .map(|(k, v)| (k.clone(), (v.clone(), v.clone())))
            .collect()
    }
}

/// The columns whose values differ between two versions of a row (`None`: no row).
pub fn changed_columns(
    before: Option<&Value>,
    after: Option<&Value>,
) -> BTreeMap<String, (Value, Value)> {
    let empty = Map::new();
    let before = before.and_then(Value::as_object).unwrap_or(&empty);
    let after = after.and_then(Value::as_object).unwrap_or(&empty);
    before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let value = |side: &Map<String, Value>| side.get(k).cloned().unwrap_or(Value::Null);
            (k.clone(), (value(before), value(after)))
        })
        .collect()
}

/// Which entries of a newest-first listing to return: at most `limit`, older than entry
/// `before` when set (keyset paging: pass the last id of the previous page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// The most entries to return.
    pub limit: u32,
    /// Only entries with a smaller id.
    pub before: Option<i64>,
}

impl Page {
    /// The newest `limit` entries.
    pub fn first(limit: u32) -> Page {
        Page {
            limit,
            before: None,
        }
    }

    /// The page after the one that ended with `entries`, or `None` when that was the last.
    pub fn after(self, entries: &[AuditEntry]) -> Option<Page> {
        (entries.len() == self.limit as usize).then(|| Page {
            limit: self.limit,
            before: entries.last().map(|e| e.id),
        })
    }
}

/// A time range; either end open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    /// From (inclusive).
    pub from: Option<SystemTime>,
    /// Until (exclusive).
    pub until: Option<SystemTime>,
}

/// A record's state at two points in time, and what differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// The record at the first point (`None`: it did not exist, or was not audited yet).
    pub before: Option<Value>,
    /// The record at the second point.
    pub after: Option<Value>,
    /// The columns that differ, with their two values.
    pub changed: BTreeMap<String, (Value, Value)>,
}

impl row::FromLogRow for AuditEntry {
    fn from_row(r: &dyn row::LogRow) -> Result<Self, row::DecodeError> {
        Ok(AuditEntry {
            id: row::get(r, "id")?,
            changed_at: row::get(r, "changed_at")?,
            tx_started_at: row::get(r, "tx_started_at")?,
            txid: row::get(r, "txid")?,
            operation: row::get(r, "operation")?,
            schema_name: row::get(r, "schema_name")?,
            table_name: row::get(r, "table_name")?,
            record_pk: row::get(r, "record_pk")?,
            old_values: row::get(r, "old_values")?,
            new_values: row::get(r, "new_values")?,
            db_user: row::get(r, "db_user")?,
            context: row::get(r, "context")?,
            old_record_pk: row::get(r, "old_record_pk")?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_update_of_erased_values_still_shows_as_a_change() {
        use serde_json::json;
        let entry = |old: serde_json::Value, new: serde_json::Value| super::AuditEntry {
            id: 1,
            changed_at: std::time::SystemTime::UNIX_EPOCH,
            tx_started_at: std::time::SystemTime::UNIX_EPOCH,
            txid: 1,
            operation: pg_audit::Operation::Update,
            schema_name: "public".into(),
            table_name: "users".into(),
            record_pk: Some(json!({"id": 1})),
            old_values: Some(old),
            new_values: Some(new),
            db_user: "app".into(),
            context: crate::AuditContext::new(),
            old_record_pk: None,
        };
        let r = json!("[redacted]");
        // Only erased columns changed: they are shown, values unknown.
        let erased = entry(
            json!({"id": 1, "email": r, "name": "Ann"}),
            json!({"id": 1, "email": r, "name": "Ann"}),
        );
        assert_eq!(erased.changes().keys().collect::<Vec<_>>(), ["email"]);
        // A visible change: the erased column, unchanged as far as anyone can tell, is not.
        let visible = entry(
            json!({"id": 1, "email": r, "name": "Ann"}),
            json!({"id": 1, "email": r, "name": "Anna"}),
        );
        assert_eq!(visible.changes().keys().collect::<Vec<_>>(), ["name"]);
    }
}
