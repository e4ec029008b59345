//! The audit log as Diesel sees it: its `table!`, a typed entry, and the queries that answer
//! "what happened to this record, who did it, why, and what did it look like then".
//!
//! ```ignore
//! use pg_audit_diesel::log::{AuditReader, Page};
//!
//! let reader = AuditReader::new();                       // audit.auditlog
//! let history = reader.history::<User>(&mut conn, 42, Page::first(20))?;
//! for entry in &history {
//!     println!("{:?} by {:?}: {:?}", entry.operation, entry.context.user_id.as_deref(), entry.changes());
//! }
//! let then = reader.state_at::<User>(&mut conn, 42, yesterday)?;     // the row as it was
//! reader.revert::<User>(&mut conn, 42, history[3].id, "Undo vandalism")?;
//! ```
//!
//! Queries name the log through [`pg_audit::AuditLog`], so a log with another schema or name
//! works the same; [`schema::auditlog`] is the `table!` of the default one, for Diesel's query
//! builder.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, Json, Jsonb, Nullable, Text, Timestamptz};
use pg_audit::sql::shape::{entry_select_list, record_key_expr};
use pg_audit::{AuditLog, Ident, Operation, QualifiedName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{AuditConnectionExt, AuditContext, Audited, Error};

pub use crate::key::{KeyMismatch, key_object, key_text, parse_key, value_text};

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

const PG_EPOCH_SECS: u64 = 946_684_800;

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
        Ok(OperationText(text.parse()?))
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
        text.parse().map_err(D::Error::custom)
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

impl From<Option<Value>> for AuditContext {
    fn from(value: Option<Value>) -> AuditContext {
        AuditContext::from_setting(value.map(|v| v.to_string()).as_deref())
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
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub record_pk: Option<Value>,
    /// The audited columns before (UPDATE, DELETE).
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub old_values: Option<Value>,
    /// The audited columns after (INSERT, UPDATE).
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub new_values: Option<Value>,
    /// The database role that connected.
    #[diesel(sql_type = Text)]
    pub db_user: String,
    /// Who, why and from where (serialized as `null` when empty, as the log stores it).
    #[diesel(sql_type = Nullable<Json>, deserialize_as = Option<Value>)]
    #[serde(with = "context_object")]
    pub context: AuditContext,
    /// An UPDATE that changed the record's key: the key before (`record_pk` is the key after).
    /// Such an entry is the last of the old key's history and the first of the new key's.
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub old_record_pk: Option<Value>,
}

impl AuditEntry {
    /// The audited columns this change touched, with their values before and after (`Null`
    /// where there was no row): for an UPDATE the columns that differ, for an INSERT or DELETE
    /// every audited column.
    pub fn changes(&self) -> BTreeMap<String, (Value, Value)> {
        changed_columns(self.old_values.as_ref(), self.new_values.as_ref())
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

/// Reads the audit log. Cheap to build; holds only the log's name.
#[derive(Debug, Clone, Default)]
pub struct AuditReader {
    log: AuditLog,
}

impl AuditReader {
    /// A reader of `audit.auditlog`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader of `log`.
    pub fn with_log(log: AuditLog) -> Self {
        AuditReader { log }
    }

    /// The history of model `T`'s record with primary key `key` (a value, or a tuple for a
    /// composite key, in key order), newest first.
    pub fn history<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
        page: Page,
    ) -> Result<Vec<AuditEntry>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.history_of(conn, &table, &key, page)?)
    }

    /// The history of the record of `table` whose key is the JSON object `key`
    /// (`{"id": 42}`), newest first, followed back across UPDATEs that changed its key: an
    /// entry that changed the key is the first of the new key's history and the last of the
    /// old key's. Goes through the log's `record_key` and `old_record_key` indexes.
    pub fn history_of(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        page: Page,
    ) -> QueryResult<Vec<AuditEntry>> {
        let mut entries = Vec::new();
        let (mut key, mut upper) = self.segment_of(conn, table, key, page.before)?;
        loop {
            let limit = i64::from(page.limit) - entries.len() as i64;
            if limit <= 0 {
                break;
            }
            entries.extend(
                record_query(self.history_sql(), table, &key)
                    .bind::<Nullable<BigInt>, _>(upper)
                    .bind::<BigInt, _>(limit)
                    .load::<AuditEntry>(conn)?,
            );
            // This key's part is exhausted: on to the key the record had before, if any.
            match self.key_change(conn, table, &key, upper)? {
                Some((change, before)) => (key, upper) = (before, Some(change)),
                None => break,
            }
        }
        Ok(entries)
    }

    /// The query [`AuditReader::history_of`] runs for one key, to `EXPLAIN` it: parameters
    /// `$1` the schema (text, NULL for the search path's), `$2` the table, `$3` the key object
    /// (jsonb), `$4` the id to page before (bigint, NULL for the first page), `$5` the limit.
    /// It returns the entries since the key was given to the record (if an UPDATE gave it).
    ///
    /// Entries come newest first in the order the changes were made: the log's `id`. A
    /// record's changes are serialised by its row lock, and an entry's id is taken when its
    /// change is made, while `changed_at` is its statement's start, which is earlier for a
    /// change that waited for the lock; so ordering by `changed_at` would disagree with the
    /// ids that pages continue from.
    pub fn history_sql(&self) -> String {
        self.record_sql(
            "ORDER BY l.id DESC
              LIMIT $5",
        )
    }

    /// Entries of one record under one key: parameters `$1` the schema (text, NULL for the
    /// search path's), `$2` the table, `$3` the key object (jsonb), `$4` the id to stay below
    /// (bigint, NULL for none); `rest` follows the `WHERE` clause (ordering, more conditions
    /// with parameters from `$5` on). An entry is the record's under the key when the key is
    /// its key after (`record_pk`) or before (`old_record_pk`), and it is not older than the
    /// UPDATE that gave the record the key: older entries of the key belong to whatever had it
    /// before. Each side goes through its own hash index.
    fn record_sql(&self, rest: &str) -> String {
        let log = self.log.table();
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
                SELECT l.* FROM {log} AS l, ({RESOLVE_TABLE}) AS r
                 WHERE l.record_key OPERATOR(pg_catalog.=) {key} AND {same_l}
                   AND l.record_pk OPERATOR(pg_catalog.=) $3::jsonb AND {since}
                UNION ALL
                SELECT l.* FROM {log} AS l, ({RESOLVE_TABLE}) AS r
                 WHERE l.old_record_key OPERATOR(pg_catalog.=) {key} AND {same_l}
                   AND l.old_record_pk OPERATOR(pg_catalog.=) $3::jsonb AND {since}
            ) AS l
            {rest}",
            columns = entry_select_list("l"),
        )
    }

    /// The newest UPDATE below entry `upper` that gave the record of `table` the key `key`:
    /// its id and the key before.
    fn key_change(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        upper: Option<i64>,
    ) -> QueryResult<Option<(i64, Value)>> {
        #[derive(QueryableByName)]
        struct Change {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Jsonb)]
            old_record_pk: Value,
        }
        let change: Option<Change> = record_query(
            format!(
                "SELECT c.id, c.old_record_pk FROM {log} AS c, ({RESOLVE_TABLE}) AS r
                  WHERE c.record_key OPERATOR(pg_catalog.=) {key}
                    AND c.schema_name OPERATOR(pg_catalog.=) r.schema_name
                    AND c.table_name OPERATOR(pg_catalog.=) r.table_name
                    AND c.record_pk OPERATOR(pg_catalog.=) $3::jsonb AND c.old_record_pk IS NOT NULL
                    AND ($4::bigint IS NULL OR c.id OPERATOR(pg_catalog.<) $4)
                  ORDER BY c.id DESC LIMIT 1",
                log = self.log.table(),
                key = record_key_expr("r.schema_name", "r.table_name", "$3::jsonb"),
            ),
            table,
            key,
        )
        .bind::<Nullable<BigInt>, _>(upper)
        .get_result(conn)
        .optional()?;
        Ok(change.map(|c| (c.id, c.old_record_pk)))
    }

    /// The key the record of `table` now keyed `key` had below entry `before` (the key itself
    /// unless an UPDATE at or after `before` gave it), with the bound to stay below.
    fn segment_of(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        before: Option<i64>,
    ) -> QueryResult<(Value, Option<i64>)> {
        let (mut key, mut upper) = (key.clone(), None);
        let Some(before) = before else {
            return Ok((key, None));
        };
        while let Some((change, old)) = self.key_change(conn, table, &key, upper)? {
            if change < before {
                break;
            }
            (key, upper) = (old, Some(change));
        }
        Ok((key, Some(upper.map_or(before, |u| u.min(before)))))
    }

    /// One entry of the record of `table` whose key is `key`, or `None` when `entry` is not in
    /// its history.
    fn entry_of(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        entry: i64,
    ) -> QueryResult<Option<AuditEntry>> {
        let (key, upper) = self.segment_of(conn, table, key, entry.checked_add(1))?;
        record_query(
            self.record_sql("WHERE l.id OPERATOR(pg_catalog.=) $5"),
            table,
            &key,
        )
        .bind::<Nullable<BigInt>, _>(upper)
        .bind::<BigInt, _>(entry)
        .get_result(conn)
        .optional()
    }

    /// The key columns recorded at install for each audited table named `table` (one entry
    /// per schema when `table` is unqualified and several schemas have one), in key order.
    pub fn recorded_keys(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
    ) -> Result<Vec<Vec<String>>, Error> {
        #[derive(QueryableByName)]
        struct Key {
            #[diesel(sql_type = Jsonb)]
            primary_key: Value,
        }
        let keys: Vec<Key> = diesel::sql_query(self.log.recorded_key_sql())
            .bind::<Text, _>(table.name.as_str())
            .bind::<Nullable<Text>, _>(table.schema.as_ref().map(Ident::as_str))
            .load(conn)?;
        keys.into_iter()
            .map(|k| {
                serde_json::from_value(k.primary_key).map_err(|e| {
                    Error::Database(diesel::result::Error::DeserializationError(Box::new(e)))
                })
            })
            .collect()
    }

    /// Everything one transaction did, in order.
    pub fn transaction(&self, conn: &mut PgConnection, txid: i64) -> QueryResult<Vec<AuditEntry>> {
        diesel::sql_query(format!(
            "SELECT {} FROM {} AS l WHERE l.txid OPERATOR(pg_catalog.=) $1 ORDER BY l.id",
            entry_select_list("l"),
            self.log.table()
        ))
        .bind::<BigInt, _>(txid)
        .load(conn)
    }

    /// Everything done in one request (its `request_id`), in order.
    pub fn request(
        &self,
        conn: &mut PgConnection,
        request_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        self.by_context(conn, "request_id", request_id, range)
    }

    /// Everything one user did in a time range, in order.
    pub fn by_user(
        &self,
        conn: &mut PgConnection,
        user_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        self.by_context(conn, "user_id", user_id, range)
    }

    fn by_context(
        &self,
        conn: &mut PgConnection,
        field: &str,
        value: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        // The time range prunes partitions and uses the BRIN index; give one on large logs.
        diesel::sql_query(format!(
            "SELECT {} FROM {} AS l
              WHERE (l.context OPERATOR(pg_catalog.->>) $1) OPERATOR(pg_catalog.=) $2
                AND ($3::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.>=) $3)
                AND ($4::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.<) $4)
              ORDER BY l.id",
            entry_select_list("l"),
            self.log.table()
        ))
        .bind::<Text, _>(field)
        .bind::<Text, _>(value)
        .bind::<Nullable<Timestamptz>, _>(range.from.map(LogTime))
        .bind::<Nullable<Timestamptz>, _>(range.until.map(LogTime))
        .load(conn)
    }

    /// Model `T`'s record with key `key` as it was at `at` (its audited columns), rebuilt from
    /// the log; `None` if it did not exist then, or its history starts later.
    pub fn state_at<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
        at: SystemTime,
    ) -> Result<Option<Value>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.state_of_at(conn, &table, &key, at)?)
    }

    /// [`AuditReader::state_at`] for a table and key object.
    pub fn state_of_at(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        at: SystemTime,
    ) -> QueryResult<Option<Value>> {
        // Newest key first, back across the UPDATEs that changed it.
        let (mut key, mut upper) = (key.clone(), None);
        loop {
            let last: Option<AuditEntry> = record_query(
                self.record_sql(
                    "WHERE l.changed_at OPERATOR(pg_catalog.<=) $5
                  ORDER BY l.changed_at DESC, l.id DESC
                  LIMIT 1",
                ),
                table,
                &key,
            )
            .bind::<Nullable<BigInt>, _>(upper)
            .bind::<Timestamptz, _>(LogTime(at))
            .get_result(conn)
            .optional()?;
            if let Some(last) = last {
                // An UPDATE that took the record away from this key ends it under the key.
                return Ok(Some(last)
                    .filter(|e| e.old_record_pk.as_ref() != Some(&key))
                    .and_then(|e| e.new_values));
            }
            match self.key_change(conn, table, &key, upper)? {
                Some((change, before)) => (key, upper) = (before, Some(change)),
                None => return Ok(None),
            }
        }
    }

    /// Model `T`'s record at `from` and at `to`, and the columns that differ.
    pub fn diff<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Diff, Error> {
        let (table, key) = model_key::<T>(key)?;
        let before = self.state_of_at(conn, &table, &key, from)?;
        let after = self.state_of_at(conn, &table, &key, to)?;
        let changed = changed_columns(before.as_ref(), after.as_ref());
        Ok(Diff {
            before,
            after,
            changed,
        })
    }

    /// Puts model `T`'s record back as it was right after audit entry `entry` (an id from its
    /// history): updated, re-inserted or deleted as needed, in a transaction whose audit rows
    /// carry `reason`. Only audited columns are set; others keep their values (or their
    /// defaults, when the row is re-inserted).
    pub fn revert<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
        entry: i64,
        reason: &str,
    ) -> Result<(), Error> {
        let (table, key) = model_key::<T>(key)?;
        let target = self
            .entry_of(conn, &table, &key, entry)?
            .ok_or(Error::NotInHistory {
                entry,
                key: key.clone(),
            })?;
        // The record as it was then, with the key it had then (the key may have changed since).
        let mut values = target.new_values;
        if let (Some(Value::Object(row)), Some(Value::Object(then))) =
            (&mut values, &target.record_pk)
        {
            for (column, value) in then {
                row.entry(column.clone()).or_insert_with(|| value.clone());
            }
        }
        apply(conn, &table, &key, values.as_ref(), &Map::new(), reason)
    }

    /// Re-inserts model `T`'s record as it was when it was last deleted, in a transaction whose
    /// audit rows carry `reason`.
    ///
    /// A column the log does not hold (excluded, or not tracked) that is `NOT NULL` without a
    /// default cannot be re-inserted from the log: the restore is refused before anything is
    /// written, with [`Error::MissingValues`] naming the columns; give their values with
    /// [`AuditReader::restore_with`].
    pub fn restore<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
        reason: &str,
    ) -> Result<(), Error> {
        self.restore_with::<T>(conn, key, reason, serde_json::Map::new())
    }

    /// [`AuditReader::restore`], with `values` (column name → value) for the columns the log
    /// does not hold: `json!({"password_hash": "!reset"})`.
    pub fn restore_with<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
        reason: &str,
        values: serde_json::Map<String, Value>,
    ) -> Result<(), Error> {
        let (table, key) = model_key::<T>(key)?;
        let history = self.history_of(conn, &table, &key, Page::first(1))?;
        let deleted = match history.first() {
            Some(e) if e.operation == Operation::Delete => e.old_values.clone(),
            Some(_) => return Err(Error::NotDeleted { key }),
            None => return Err(Error::NoHistory { key }),
        };
        apply(conn, &table, &key, deleted.as_ref(), &values, reason)
    }
}

/// `r`: the table's schema (given, or resolved through the search path, or the current one)
/// and name, from parameters $1 and $2.
const RESOLVE_TABLE: &str = "SELECT coalesce($1::text,
                  (SELECT n.nspname::text FROM pg_catalog.pg_class AS c
                     JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                    WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident($2::text))),
                  pg_catalog.current_schema()::text) AS schema_name,
              $2::text AS table_name";

/// The keys of a JSON object of column values, as column names.
fn column_names(object: &Value) -> Result<Vec<Ident>, Error> {
    object
        .as_object()
        .map_or(Ok(Vec::new()), |o| {
            o.keys()
                .map(|k| Ident::with_kind(k.as_str(), "column"))
                .collect()
        })
        .map_err(|source| Error::Config {
            model: "history",
            source,
        })
}

/// The columns of `table` that are `NOT NULL` without a default (nor identity, nor generated)
/// and have no value in `values`.
fn missing_required(
    conn: &mut PgConnection,
    table: &QualifiedName,
    values: &Value,
) -> Result<Vec<String>, Error> {
    #[derive(QueryableByName)]
    struct Column {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let required: Vec<Column> = diesel::sql_query(
        "SELECT a.attname::text AS name FROM pg_catalog.pg_attribute AS a
          WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::text)
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped AND a.attnotnull
            AND NOT a.atthasdef AND a.attidentity OPERATOR(pg_catalog.=) ''
            AND a.attgenerated OPERATOR(pg_catalog.=) ''
          ORDER BY a.attnum",
    )
    .bind::<Text, _>(table.to_string())
    .load(conn)?;
    Ok(required
        .into_iter()
        .map(|c| c.name)
        .filter(|name| values.get(name).is_none_or(Value::is_null))
        .collect())
}

/// `sql`, a query of [`AuditReader::record_sql`]'s form, with the record's parameters bound.
fn record_query<'a>(
    sql: String,
    table: &'a QualifiedName,
    key: &'a Value,
) -> diesel::query_builder::BoxedSqlQuery<'a, Pg, diesel::query_builder::SqlQuery> {
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<Nullable<Text>, _>(table.schema.as_ref().map(Ident::as_str))
        .bind::<Text, _>(table.name.as_str())
        .bind::<Jsonb, _>(key)
}

/// The model's table and the key object for `key`.
fn model_key<T: Audited>(key: impl serde::Serialize) -> Result<(QualifiedName, Value), Error> {
    let spec = T::trigger_spec()?;
    let columns: Vec<String> = spec
        .primary_key()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    let bad_key = |problem: String| Error::BadKey {
        model: T::MODEL,
        problem,
    };
    let value = serde_json::to_value(key).map_err(|e| bad_key(e.to_string()))?;
    let key = key_object(&columns, value).map_err(|m| bad_key(m.to_string()))?;
    Ok((spec.table().clone(), key))
}

/// Makes the record with `key` equal to `target` (`None`: absent) through ordinary audited
/// statements, under `reason`.
fn apply(
    conn: &mut PgConnection,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
    reason: &str,
) -> Result<(), Error> {
    conn.with_change_reason(reason, |conn| -> Result<(), Error> {
        // The table's own name, resolved through the caller's search_path; then every
        // statement runs with the path the triggers run with, so the key columns' `=` can
        // never be an operator a writer planted on that path (the reader may run as the log's
        // owner).
        #[derive(QueryableByName)]
        struct Resolved {
            #[diesel(sql_type = Nullable<Text>)]
            schema: Option<String>,
            #[diesel(sql_type = Nullable<Text>)]
            name: Option<String>,
            #[diesel(sql_type = Text)]
            path: String,
        }
        let resolved: Resolved = diesel::sql_query(
            "SELECT n.nspname::text AS schema, c.relname::text AS name,
                    pg_catalog.current_setting('search_path') AS path
               FROM (SELECT pg_catalog.to_regclass($1::text) AS oid) AS o
               LEFT JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) o.oid
               LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace",
        )
        .bind::<Text, _>(table.to_string())
        .get_result(conn)?;
        let config = |source| Error::Config {
            model: "history",
            source,
        };
        let table = match (resolved.schema, resolved.name) {
            (Some(schema), Some(name)) => QualifiedName::new(
                Some(Ident::with_kind(schema, "schema").map_err(config)?),
                Ident::with_kind(name, "table").map_err(config)?,
            ),
            _ => table.clone(),
        };
        diesel::connection::SimpleConnection::batch_execute(
            conn,
            "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)",
        )?;
        apply_pinned(conn, &table, key, target, supplied)?;
        diesel::sql_query("SELECT pg_catalog.set_config('search_path', $1, true)")
            .bind::<Text, _>(resolved.path)
            .execute(conn)?;
        Ok(())
    })
}

/// [`apply`]'s statements, with the search_path pinned and the table schema-qualified.
fn apply_pinned(
    conn: &mut PgConnection,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
) -> Result<(), Error> {
    let key_columns = column_names(key)?;
    let matches = |alias: &str| {
        key_columns
            .iter()
            .map(|c| format!("t.{c} = {alias}.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };

    let exists = diesel::sql_query(format!(
        "SELECT 1 AS one FROM {table} AS t, pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS k WHERE {}",
        matches("k")
    ))
    .bind::<Jsonb, _>(key)
    .execute(conn)?
        > 0;
    match (target, exists) {
        (Some(values), exists) => {
            // A re-inserted row takes its key from the history even when the key columns
            // are not audited (track_only), rather than a new one from a sequence.
            let mut values = values.clone();
            if let (Value::Object(row), Some(key)) = (&mut values, key.as_object()) {
                for (column, value) in key {
                    row.entry(column.clone()).or_insert_with(|| value.clone());
                }
                // A re-inserted row takes the caller's values for what the log lacks.
                if !exists {
                    for (column, value) in supplied {
                        row.entry(column.clone()).or_insert_with(|| value.clone());
                    }
                }
            }
            if !exists {
                // What the log does not hold and the table requires: refuse now, before
                // anything is written, rather than fail on PostgreSQL's not-null error.
                let missing = missing_required(conn, table, &values)?;
                if !missing.is_empty() {
                    return Err(Error::MissingValues {
                        table: table.to_string(),
                        columns: missing,
                    });
                }
            }
            let values = &values;
            let columns = column_names(values)?;
            let sql = if exists {
                // Key columns are set only where the target's key differs (a revert across
                // a key change), so identity columns are left alone otherwise.
                let set: Vec<String> = columns
                    .iter()
                    .filter(|c| {
                        !key_columns.contains(c) || values.get(c.as_str()) != key.get(c.as_str())
                    })
                    .map(|c| format!("{c} = r.{c}"))
                    .collect();
                if set.is_empty() {
                    return Ok(()); // only the key is audited, and the row has it
                }
                // The row is found by its key now (`k`), which the target may change.
                format!(
                    "UPDATE {table} AS t SET {} FROM pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS r,
                            pg_catalog.jsonb_populate_record(NULL::{table}, $2::jsonb) AS k WHERE {}",
                    set.join(", "),
                    matches("k")
                )
            } else {
                let list: Vec<String> = columns.iter().map(ToString::to_string).collect();
                let from_r: Vec<String> = columns.iter().map(|c| format!("r.{c}")).collect();
                format!(
                    "INSERT INTO {table} ({}) SELECT {} FROM pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS r",
                    list.join(", "),
                    from_r.join(", ")
                )
            };
            let mut query = diesel::sql_query(sql).into_boxed().bind::<Jsonb, _>(values);
            if exists {
                query = query.bind::<Jsonb, _>(key);
            }
            query.execute(conn)?;
        }
        (None, true) => {
            diesel::sql_query(format!(
                "DELETE FROM {table} AS t USING pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS k WHERE {}",
                matches("k")
            ))
            .bind::<Jsonb, _>(key)
            .execute(conn)?;
        }
        (None, false) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{BigInt, Json, Jsonb, Nullable, Text, Timestamptz};
    use diesel::{Column, Expression, QueryDsl};
    use pg_audit::LOG_COLUMNS;

    use super::schema::auditlog;

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
