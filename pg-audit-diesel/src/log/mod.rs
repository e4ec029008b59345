//! The audit log as Diesel sees it: its `table!`, a typed entry, and the queries that answer
//! "what happened to this record, who did it, why, and what did it look like then".
//!
//! ```no_run
//! # use diesel::prelude::*;
//! # use pg_audit_diesel::pg_audit;
//! # diesel::table! { users (id) { id -> Int4, name -> Text } }
//! # #[pg_audit] #[derive(Queryable)] #[diesel(table_name = users)] pub struct User { pub id: i32 }
//! # fn main() -> Result<(), pg_audit_diesel::Error> {
//! # let mut conn = PgConnection::establish("").unwrap();
//! # let yesterday = std::time::SystemTime::now();
//! use pg_audit_diesel::log::{AuditReader, Page};
//!
//! let reader = AuditReader::new();                       // audit.auditlog
//! let history = reader.history::<User>(&mut conn, 42, Page::first(20))?;
//! for entry in &history {
//!     println!("{:?} by {:?}: {:?}", entry.operation, entry.context.user_id, entry.changes());
//! }
//! let then = reader.state_at::<User>(&mut conn, 42, yesterday)?;     // the row as it was
//! reader.revert::<User>(&mut conn, 42, history[3].id, "Undo vandalism")?;
//! # Ok(()) }
//! ```
//!
#![cfg_attr(
    feature = "async",
    doc = "With the feature `async`, [`AsyncAuditReader`] asks the same on diesel-async's connection."
)]
#![cfg_attr(
    not(feature = "async"),
    doc = "With the feature `async`, `AsyncAuditReader` asks the same on diesel-async's connection."
)]
//!
//! Queries name the log through [`pg_audit::AuditLog`], so a log with another schema or name
//! works the same; [`schema::auditlog`] is the `table!` of the default one, for Diesel's query
//! builder.

mod drift;
mod driver;
pub mod json;
mod paths;
mod reader;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, Json, Jsonb, Nullable, Text, Timestamptz};
use pg_audit::Operation;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::AuditContext;

pub use crate::key::{KeyMismatch, key_object, key_text, parse_key, value_text};
pub use drift::{Drift, drift};
pub use paths::{PathChange, changed_paths};
#[cfg(feature = "async")]
pub use reader::AsyncAuditReader;
pub use reader::{Activity, AuditReader, Blame, RowAt, TableAt};

/// The `table!` of the default audit log, `audit.auditlog`.
pub mod schema {
    diesel::table! {
        /// The audit log: one row per audited change.
        audit.auditlog (id) {
            /// Increasing id.
            id -> Int8,
            /// Start of the statement that made the change (the partition key).
            changed_at -> Timestamptz,
            /// Start of the transaction.
            tx_started_at -> Timestamptz,
            /// Transaction id.
            txid -> Int8,
            /// INSERT, UPDATE, DELETE or TRUNCATE.
            operation -> Text,
            /// Schema of the changed table.
            schema_name -> Text,
            /// Name of the changed table.
            table_name -> Text,
            /// Indexed hash of table and key.
            record_key -> Nullable<Int8>,
            /// The row's key as a JSON object.
            record_pk -> Nullable<Jsonb>,
            /// The audited columns before (UPDATE, DELETE).
            old_values -> Nullable<Jsonb>,
            /// The audited columns after (INSERT, UPDATE).
            new_values -> Nullable<Jsonb>,
            /// The database role that connected.
            db_user -> Text,
            /// The audit context.
            context -> Nullable<Json>,
            /// An UPDATE that changed the key: the key before.
            old_record_pk -> Nullable<Jsonb>,
            /// Indexed hash of table and the key before.
            old_record_key -> Nullable<Int8>,
        }
    }
}

/// A `timestamptz` as a [`SystemTime`], without a date-time crate: PostgreSQL sends
/// microseconds since 2000-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, AsExpression, FromSqlRow)]
#[diesel(sql_type = Timestamptz)]
pub struct LogTime(pub SystemTime);

const PG_EPOCH_SECS: u64 = pg_audit::calendar::PG_EPOCH_UNIX_SECS.unsigned_abs();

impl FromSql<Timestamptz, Pg> for LogTime {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let micros = <i64 as FromSql<BigInt, Pg>>::from_sql(value)?;
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_SECS);
        let offset = Duration::from_micros(micros.unsigned_abs());
        Ok(LogTime(if micros >= 0 {
            epoch + offset
        } else {
            epoch - offset
        }))
    }
}

impl ToSql<Timestamptz, Pg> for LogTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_SECS);
        let micros = match self.0.duration_since(epoch) {
            Ok(d) => i64::try_from(d.as_micros())?,
            Err(e) => -i64::try_from(e.duration().as_micros())?,
        };
        <i64 as ToSql<BigInt, Pg>>::to_sql(&micros, &mut out.reborrow())
    }
}

impl From<LogTime> for SystemTime {
    fn from(t: LogTime) -> SystemTime {
        t.0
    }
}

/// The `operation` column, read into [`Operation`].
#[derive(Debug, FromSqlRow)]
#[doc(hidden)]
pub struct OperationText(Operation);

impl FromSql<Text, Pg> for OperationText {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(value)?;
        Operation::from_logged(&text)
            .map(OperationText)
            .ok_or_else(|| format!("the log holds an unknown operation `{text}`").into())
    }
}

impl From<OperationText> for Operation {
    fn from(o: OperationText) -> Operation {
        o.0
    }
}

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

impl From<json::NullableLogJson> for AuditContext {
    fn from(value: json::NullableLogJson) -> AuditContext {
        AuditContext::from(value.0)
    }
}

/// One audit row, typed.
///
/// It serializes with serde as the CLI's `--json` prints an entry: times as RFC 3339 strings in
/// UTC, the operation as `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`, the context as its JSON
/// object.
#[derive(Debug, Clone, PartialEq, QueryableByName, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing id; also the version to [`AuditReader::revert`] to.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// When the statement that made the change started.
    #[diesel(sql_type = Timestamptz, deserialize_as = LogTime)]
    #[serde(with = "crate::time::serde_rfc3339")]
    pub changed_at: SystemTime,
    /// When its transaction started.
    #[diesel(sql_type = Timestamptz, deserialize_as = LogTime)]
    #[serde(with = "crate::time::serde_rfc3339")]
    pub tx_started_at: SystemTime,
    /// The transaction id.
    #[diesel(sql_type = BigInt)]
    pub txid: i64,
    /// What happened.
    #[diesel(sql_type = Text, deserialize_as = OperationText)]
    #[serde(with = "operation_name")]
    pub operation: Operation,
    /// The changed table's schema.
    #[diesel(sql_type = Text)]
    pub schema_name: String,
    /// The changed table.
    #[diesel(sql_type = Text)]
    pub table_name: String,
    /// The record's key (`None` for TRUNCATE).
    #[diesel(sql_type = Nullable<Jsonb>, deserialize_as = json::NullableLogJson)]
    pub record_pk: Option<Value>,
    /// The audited columns before (UPDATE, DELETE).
    #[diesel(sql_type = Nullable<Jsonb>, deserialize_as = json::NullableLogJson)]
    pub old_values: Option<Value>,
    /// The audited columns after (INSERT, UPDATE).
    #[diesel(sql_type = Nullable<Jsonb>, deserialize_as = json::NullableLogJson)]
    pub new_values: Option<Value>,
    /// The database role that connected.
    #[diesel(sql_type = Text)]
    pub db_user: String,
    /// Who, why and from where (serialized as `null` when empty, as the log stores it).
    #[diesel(sql_type = Nullable<Json>, deserialize_as = json::NullableLogJson)]
    #[serde(with = "context_object")]
    pub context: AuditContext,
    /// An UPDATE that changed the record's key: the key before (`record_pk` is the key after).
    /// Such an entry is the last of the old key's history and the first of the new key's.
    #[diesel(sql_type = Nullable<Jsonb>, deserialize_as = json::NullableLogJson)]
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

#[cfg(test)]
mod tests {
    use diesel::sql_types::{BigInt, Json, Jsonb, Nullable, Text, Timestamptz};
    use diesel::{Column, Expression, QueryDsl};
    use pg_audit::LOG_COLUMNS;

    use super::schema::auditlog;

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

    /// A Diesel SQL type as the engine names it.
    trait SqlName {
        const NAME: &'static str;
        const NULLABLE: bool = false;
    }
    impl SqlName for BigInt {
        const NAME: &'static str = "bigint";
    }
    impl SqlName for Timestamptz {
        const NAME: &'static str = "timestamptz";
    }
    impl SqlName for Text {
        const NAME: &'static str = "text";
    }
    impl SqlName for Jsonb {
        const NAME: &'static str = "jsonb";
    }
    impl SqlName for Json {
        const NAME: &'static str = "json";
    }
    impl<T: SqlName> SqlName for Nullable<T> {
        const NAME: &'static str = T::NAME;
        const NULLABLE: bool = true;
    }

    macro_rules! described {
        ($($column:ident),* $(,)?) => {
            vec![$((
                <auditlog::$column as Column>::NAME,
                <<auditlog::$column as Expression>::SqlType as SqlName>::NAME,
                <<auditlog::$column as Expression>::SqlType as SqlName>::NULLABLE,
            )),*]
        };
    }

    #[test]
    fn the_table_macro_matches_the_engines_log() {
        let engine: Vec<(&str, &str, bool)> = LOG_COLUMNS
            .iter()
            .map(|c| (c.name, c.sql_type, c.nullable))
            .collect();
        let diesel = described!(
            id,
            changed_at,
            tx_started_at,
            txid,
            operation,
            schema_name,
            table_name,
            record_key,
            record_pk,
            old_values,
            new_values,
            db_user,
            context,
            old_record_pk,
            old_record_key,
        );
        let sorted = |mut v: Vec<(&'static str, &'static str, bool)>| {
            v.sort();
            v
        };
        assert_eq!(sorted(diesel), sorted(engine.clone()), "columns and types");
        // The order too: `SELECT *` through the table! reads columns in table order.
        let query = diesel::debug_query::<diesel::pg::Pg, _>(
            &auditlog::table.select(auditlog::all_columns),
        )
        .to_string();
        let names: Vec<&str> = engine.iter().map(|c| c.0).collect();
        let listed: Vec<&str> = query
            .split(" FROM ")
            .next()
            .unwrap()
            .trim_start_matches("SELECT ")
            .split(", ")
            .map(|c| c.rsplit('.').next().unwrap().trim_matches('"'))
            .collect();
        assert_eq!(listed, names);
    }
}
