//! [`AuditReader`]: the queries over the log, written once as async code over a
//! [`Driver`], and run by the sync API on a `PgConnection` (whose futures are ready at once)
//! and by [`AsyncAuditReader`] on diesel-async's `AsyncPgConnection` (feature `async`).

use std::time::SystemTime;

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
use pg_audit::context::{REQUEST_ID, USER_ID};
use pg_audit::sql::install::{AUDITED_FIELD, EXCLUDE_FIELD, KEY_FIELD, TRACK_ONLY_FIELD};
use pg_audit::sql::shape::{entry_select_list, record_key_expr};
use pg_audit::{AuditLog, Ident, Operation, QualifiedName};
use serde_json::{Map, Value};

#[cfg(feature = "async")]
use diesel_async::AsyncPgConnection;

#[cfg(feature = "async")]
use super::driver::AsyncDriver;
use super::driver::{Driver, SyncDriver, block_ready, first};
use super::{AuditEntry, Diff, LogTime, Page, TimeRange, changed_columns};
use crate::key::key_object;
use crate::{AuditConnectionExt, Audited, Error};

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

    /// The log it reads.
    pub fn log(&self) -> &AuditLog {
        &self.log
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
        block_ready(self.history_in(&mut SyncDriver(conn), table, key, page))
    }

    async fn history_in<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
        page: Page,
    ) -> QueryResult<Vec<AuditEntry>> {
        let mut entries = Vec::new();
        let (mut key, mut upper) = self.segment_of(conn, table, key, page.before).await?;
        loop {
            let limit = i64::from(page.limit) - entries.len() as i64;
            if limit <= 0 {
                break;
            }
            entries.extend(
                conn.load::<AuditEntry>(
                    record_query(self.history_sql(), table, &key)
                        .bind::<Nullable<BigInt>, _>(upper)
                        .bind::<BigInt, _>(limit),
                )
                .await?,
            );
            // This key's part is exhausted: on to the key the record had before, if any.
            match self.key_change(conn, table, &key, upper).await? {
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
        let resolve = resolve_table(&self.log);
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

    /// The newest UPDATE below entry `upper` that gave the record of `table` the key `key`:
    /// its id and the key before.
    async fn key_change<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
        upper: Option<i64>,
    ) -> QueryResult<Option<(i64, Value)>> {
        let resolve = resolve_table(&self.log);
        #[derive(QueryableByName)]
        struct Change {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = Jsonb, deserialize_as = super::json::LogJson)]
            old_record_pk: Value,
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
                        log = self.log.table(),
                        key = record_key_expr("r.schema_name", "r.table_name", "$3::jsonb"),
                    ),
                    table,
                    key,
                )
                .bind::<Nullable<BigInt>, _>(upper),
            )
            .await?,
        );
        Ok(change.map(|c| (c.id, c.old_record_pk)))
    }

    /// The key the record of `table` now keyed `key` had below entry `before` (the key itself
    /// unless an UPDATE at or after `before` gave it), with the bound to stay below.
    async fn segment_of<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
        before: Option<i64>,
    ) -> QueryResult<(Value, Option<i64>)> {
        let (mut key, mut upper) = (key.clone(), None);
        let Some(before) = before else {
            return Ok((key, None));
        };
        while let Some((change, old)) = self.key_change(conn, table, &key, upper).await? {
            if change < before {
                break;
            }
            (key, upper) = (old, Some(change));
        }
        Ok((key, Some(upper.map_or(before, |u| u.min(before)))))
    }

    /// One entry of the record of `table` whose key is `key`, or `None` when `entry` is not in
    /// its history.
    async fn entry_of<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
        entry: i64,
    ) -> QueryResult<Option<AuditEntry>> {
        let (key, upper) = self
            .segment_of(conn, table, key, entry.checked_add(1))
            .await?;
        let query = record_query(
            self.record_sql("WHERE l.id OPERATOR(pg_catalog.=) $5"),
            table,
            &key,
        )
        .bind::<Nullable<BigInt>, _>(upper)
        .bind::<BigInt, _>(entry);
        Ok(first(conn.load(query).await?))
    }

    /// The key columns recorded at install for each audited table named `table` (one entry
    /// per schema when `table` is unqualified and several schemas have one), in key order.
    pub fn recorded_keys(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
    ) -> Result<Vec<Vec<String>>, Error> {
        block_ready(self.recorded_keys_in(&mut SyncDriver(conn), table))
    }

    async fn recorded_keys_in<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
    ) -> Result<Vec<Vec<String>>, Error> {
        #[derive(QueryableByName)]
        struct Key {
            #[diesel(sql_type = Jsonb)]
            primary_key: Value,
        }
        let keys: Vec<Key> = conn
            .load(
                diesel::sql_query(self.log.recorded_key_sql())
                    .into_boxed()
                    .bind::<Text, _>(table.name.as_str())
                    .bind::<Nullable<Text>, _>(table.schema.as_ref().map(Ident::as_str)),
            )
            .await?;
        keys.into_iter()
            .map(|k| {
                serde_json::from_value(k.primary_key).map_err(|e| {
                    Error::Database(diesel::result::Error::DeserializationError(Box::new(e)))
                })
            })
            .collect()
    }

    /// The newest entries across the whole log that pass `filter`, newest first (keyset
    /// paging on the entry id, as [`AuditReader::history`]): the activity listing.
    pub fn activity(
        &self,
        conn: &mut PgConnection,
        filter: &Activity,
        page: Page,
    ) -> QueryResult<Vec<AuditEntry>> {
        // A record of a named table goes through the record-key hash indexes; a key alone
        // (any table) is filtered while walking the id index.
        let (from, key_clause) = if filter.key.is_some() && filter.table.is_some() {
            let key = record_key_expr("r.schema_name", "r.table_name", "$9::jsonb");
            let resolve = resolve_table(&self.log);
            (
                format!(", ({resolve}) AS r"),
                format!(
                    "l.schema_name OPERATOR(pg_catalog.=) r.schema_name
                     AND ((l.record_key OPERATOR(pg_catalog.=) {key} AND l.record_pk OPERATOR(pg_catalog.=) $9)
                       OR (l.old_record_key OPERATOR(pg_catalog.=) {key} AND l.old_record_pk OPERATOR(pg_catalog.=) $9))"
                ),
            )
        } else {
            (
                String::new(),
                "($9::jsonb IS NULL OR l.record_pk OPERATOR(pg_catalog.=) $9 OR l.old_record_pk OPERATOR(pg_catalog.=) $9)"
                    .to_owned(),
            )
        };
        let query = diesel::sql_query(format!(
            "SELECT {} FROM {} AS l{from}
              WHERE ($1::text IS NULL OR l.schema_name OPERATOR(pg_catalog.=) $1)
                AND ($2::text IS NULL OR l.table_name OPERATOR(pg_catalog.=) $2)
                AND ($3::text IS NULL OR l.operation OPERATOR(pg_catalog.=) $3)
                AND ($4::text IS NULL OR (l.context OPERATOR(pg_catalog.->>) 'user_id') OPERATOR(pg_catalog.=) $4)
                AND ($5::text IS NULL OR (l.context OPERATOR(pg_catalog.->>) 'request_id') OPERATOR(pg_catalog.=) $5)
                AND ($6::bigint IS NULL OR l.txid OPERATOR(pg_catalog.=) $6)
                AND ($7::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.>=) $7)
                AND ($8::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.<) $8)
                AND {key_clause}
                AND ($10::bigint IS NULL OR l.id OPERATOR(pg_catalog.<) $10)
              ORDER BY l.id DESC
              LIMIT $11",
            entry_select_list("l"),
            self.log.table()
        ))
        .into_boxed()
        .bind::<Nullable<Text>, _>(filter.schema.as_deref())
        .bind::<Nullable<Text>, _>(filter.table.as_deref())
        .bind::<Nullable<Text>, _>(filter.operation.map(Operation::keyword))
        .bind::<Nullable<Text>, _>(filter.user_id.as_deref())
        .bind::<Nullable<Text>, _>(filter.request_id.as_deref())
        .bind::<Nullable<BigInt>, _>(filter.txid)
        .bind::<Nullable<Timestamptz>, _>(filter.range.from.map(LogTime))
        .bind::<Nullable<Timestamptz>, _>(filter.range.until.map(LogTime))
        .bind::<Nullable<Jsonb>, _>(filter.key.as_ref())
        .bind::<Nullable<BigInt>, _>(page.before)
        .bind::<BigInt, _>(i64::from(page.limit));
        block_ready(SyncDriver(conn).load(query))
    }

    /// Everything one transaction did, in order.
    pub fn transaction(&self, conn: &mut PgConnection, txid: i64) -> QueryResult<Vec<AuditEntry>> {
        block_ready(self.transaction_in(&mut SyncDriver(conn), txid))
    }

    async fn transaction_in<D: Driver>(
        &self,
        conn: &mut D,
        txid: i64,
    ) -> QueryResult<Vec<AuditEntry>> {
        conn.load(
            diesel::sql_query(format!(
                "SELECT {} FROM {} AS l WHERE l.txid OPERATOR(pg_catalog.=) $1 ORDER BY l.id",
                entry_select_list("l"),
                self.log.table()
            ))
            .into_boxed()
            .bind::<BigInt, _>(txid),
        )
        .await
    }

    /// Everything done in one request (its `request_id`), in order.
    pub fn request(
        &self,
        conn: &mut PgConnection,
        request_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        block_ready(self.by_context(&mut SyncDriver(conn), REQUEST_ID, request_id, range))
    }

    /// Everything one user did in a time range, in order.
    pub fn by_user(
        &self,
        conn: &mut PgConnection,
        user_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        block_ready(self.by_context(&mut SyncDriver(conn), USER_ID, user_id, range))
    }

    async fn by_context<D: Driver>(
        &self,
        conn: &mut D,
        field: &str,
        value: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        // The time range prunes partitions and uses the BRIN index; give one on large logs.
        let query = diesel::sql_query(format!(
            "SELECT {} FROM {} AS l
              WHERE (l.context OPERATOR(pg_catalog.->>) $1) OPERATOR(pg_catalog.=) $2
                AND ($3::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.>=) $3)
                AND ($4::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.<) $4)
              ORDER BY l.id",
            entry_select_list("l"),
            self.log.table()
        ))
        .into_boxed()
        .bind::<Text, _>(field)
        .bind::<Text, _>(value)
        .bind::<Nullable<Timestamptz>, _>(range.from.map(LogTime))
        .bind::<Nullable<Timestamptz>, _>(range.until.map(LogTime));
        conn.load(query).await
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
        block_ready(self.state_in(&mut SyncDriver(conn), table, key, at))
    }

    async fn state_in<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
        at: SystemTime,
    ) -> QueryResult<Option<Value>> {
        // Newest key first, back across the UPDATEs that changed it.
        let (mut key, mut upper) = (key.clone(), None);
        loop {
            let query = record_query(
                self.record_sql(
                    "WHERE l.changed_at OPERATOR(pg_catalog.<=) $5
                  ORDER BY l.changed_at DESC, l.id DESC
                  LIMIT 1",
                ),
                table,
                &key,
            )
            .bind::<Nullable<BigInt>, _>(upper)
            .bind::<Timestamptz, _>(LogTime(at));
            let last: Option<AuditEntry> = first(conn.load(query).await?);
            if let Some(last) = last {
                // An UPDATE that took the record away from this key ends it under the key.
                return Ok(Some(last)
                    .filter(|e| e.old_record_pk.as_ref() != Some(&key))
                    .and_then(|e| e.new_values));
            }
            match self.key_change(conn, table, &key, upper).await? {
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
        block_ready(self.diff_in(&mut SyncDriver(conn), &table, &key, from, to))
    }

    async fn diff_in<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Diff, Error> {
        let before = self.state_in(conn, table, key, from).await?;
        let after = self.state_in(conn, table, key, to).await?;
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
        let values = block_ready(self.reverted(&mut SyncDriver(conn), &table, &key, entry))?;
        apply(conn, &table, &key, values.as_ref(), &Map::new(), reason)
    }

    /// [`AuditReader::revert`] for a table and key object (for tools that know no model).
    pub fn revert_of(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        entry: i64,
        reason: &str,
    ) -> Result<(), Error> {
        let values = block_ready(self.reverted(&mut SyncDriver(conn), table, key, entry))?;
        apply(conn, table, key, values.as_ref(), &Map::new(), reason)
    }

    /// [`AuditReader::restore`] for a table and key object.
    pub fn restore_of(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        reason: &str,
    ) -> Result<(), Error> {
        let deleted = block_ready(self.deleted(&mut SyncDriver(conn), table, key))?;
        apply(conn, table, key, deleted.as_ref(), &Map::new(), reason)
    }

    /// The record as it was right after `entry`, with the key it had then (the key may have
    /// changed since): what [`AuditReader::revert`] writes back.
    async fn reverted<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
        entry: i64,
    ) -> Result<Option<Value>, Error> {
        let target = self
            .entry_of(conn, table, key, entry)
            .await?
            .ok_or(Error::NotInHistory {
                entry,
                key: key.clone(),
            })?;
        let mut values = target.new_values;
        if let (Some(Value::Object(row)), Some(Value::Object(then))) =
            (&mut values, &target.record_pk)
        {
            for (column, value) in then {
                row.entry(column.clone()).or_insert_with(|| value.clone());
            }
        }
        Ok(values)
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
        let deleted = block_ready(self.deleted(&mut SyncDriver(conn), &table, &key))?;
        apply(conn, &table, &key, deleted.as_ref(), &values, reason)
    }

    /// For each audited column of model `T`'s record, the entry that last set its value (the
    /// record's current value, or its last one when it is deleted), newest first; see
    /// [`Blame`].
    pub fn blame<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
    ) -> Result<Vec<Blame>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.blame_of(conn, &table, &key)?)
    }

    /// [`AuditReader::blame`] for a table and key object.
    pub fn blame_of(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
    ) -> QueryResult<Vec<Blame>> {
        block_ready(self.blame_in(&mut SyncDriver(conn), table, key))
    }

    async fn blame_in<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
    ) -> QueryResult<Vec<Blame>> {
        let mut blame: Vec<Blame> = Vec::new();
        let mut open: Option<Vec<String>> = None; // columns not yet attributed
        let mut page = Some(Page::first(200));
        while let Some(p) = page {
            let entries = self.history_in(conn, table, key, p).await?;
            page = p.after(&entries);
            for entry in &entries {
                let columns = open.get_or_insert_with(|| {
                    // The newest entry fixes the columns: the values after it, or before a
                    // DELETE.
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
                    Operation::Delete | Operation::Truncate => Vec::new(),
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
        blame.sort_by(|a, b| b.entry.id.cmp(&a.entry.id).then(a.column.cmp(&b.column)));
        Ok(blame)
    }

    /// The rows of `table` as they were at `at` (each row's audited columns), ordered by key
    /// (as JSON text), at most `limit` after the key `after`: from the log for every record it
    /// holds, and from the table itself for rows the log never saw change (which need `SELECT`
    /// on the table; without it they are left out and [`TableAt::current_rows`] says so). A
    /// record's key changes are followed; rows removed by TRUNCATE come back only as far as
    /// the log holds their values.
    pub fn table_at(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        at: SystemTime,
        after: Option<&Value>,
        limit: u32,
    ) -> Result<TableAt, Error> {
        block_ready(self.table_at_in(&mut SyncDriver(conn), table, at, after, limit))
    }

    async fn table_at_in<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        at: SystemTime,
        after: Option<&Value>,
        limit: u32,
    ) -> Result<TableAt, Error> {
        let resolve = resolve_table(&self.log);
        #[derive(QueryableByName)]
        struct Config {
            #[diesel(sql_type = Text)]
            schema_name: String,
            #[diesel(sql_type = Text)]
            table_name: String,
            #[diesel(sql_type = Jsonb)]
            config: Value,
        }
        let config: Config = first(
            conn.load(
                record_query(
                    format!(
                        "SELECT r.schema_name, r.table_name, c.config
                           FROM ({resolve}) AS r
                           JOIN {config} AS c ON c.table_schema OPERATOR(pg_catalog.=) r.schema_name
                                            AND c.table_name OPERATOR(pg_catalog.=) r.table_name
                          WHERE $3::jsonb IS NOT NULL",
                        config = self.log.config_table()
                    ),
                    table,
                    &Value::Null,
                )
                .bind::<Nullable<BigInt>, _>(None::<i64>),
            )
            .await?,
        )
        .ok_or_else(|| Error::NotAudited {
            table: table.to_string(),
        })?;
        let after_text = after.map(Value::to_string);
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Jsonb, deserialize_as = super::json::LogJson)]
            k: Value,
            #[diesel(sql_type = Jsonb, deserialize_as = super::json::LogJson)]
            v: Value,
        }
        let log = self.log.table();
        // Each entry as seen from each key it concerns: the state before it and after it
        // (NULL: no row). A key-changing UPDATE ends the old key's row and starts the new
        // key's.
        let logged: Vec<Row> = conn
            .load(
                diesel::sql_query(format!(
                    "WITH ev AS (
                        SELECT l.record_pk AS k, l.id, l.changed_at,
                               CASE WHEN l.operation IN ('UPDATE', 'DELETE') AND l.old_record_pk IS NULL
                                    THEN l.old_values END AS before,
                               CASE WHEN l.operation IN ('INSERT', 'UPDATE') THEN l.new_values END AS after
                          FROM {log} AS l
                         WHERE l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
                           AND l.record_pk IS NOT NULL
                        UNION ALL
                        SELECT l.old_record_pk, l.id, l.changed_at, l.old_values, NULL
                          FROM {log} AS l
                         WHERE l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
                           AND l.old_record_pk IS NOT NULL),
                     truncated AS (
                        SELECT pg_catalog.max(l.id) AS id FROM {log} AS l
                         WHERE l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
                           AND l.operation OPERATOR(pg_catalog.=) 'TRUNCATE' AND l.changed_at OPERATOR(pg_catalog.<=) $3),
                     last_before AS (
                        SELECT DISTINCT ON (ev.k) ev.k, ev.id, ev.after AS v FROM ev
                         WHERE ev.changed_at OPERATOR(pg_catalog.<=) $3
                         ORDER BY ev.k, ev.id DESC),
                     first_after AS (
                        SELECT DISTINCT ON (ev.k) ev.k, ev.before AS v FROM ev
                         WHERE ev.changed_at OPERATOR(pg_catalog.>) $3
                           AND NOT EXISTS (SELECT FROM last_before AS b WHERE b.k OPERATOR(pg_catalog.=) ev.k)
                         ORDER BY ev.k, ev.id)
                     SELECT s.k, s.v FROM (
                        SELECT b.k, b.v FROM last_before AS b, truncated AS t
                         WHERE t.id IS NULL OR b.id OPERATOR(pg_catalog.>) t.id
                        UNION ALL
                        SELECT a.k, a.v FROM first_after AS a) AS s
                      WHERE s.v IS NOT NULL AND ($4::jsonb IS NULL OR s.k::text OPERATOR(pg_catalog.>) $4::jsonb::text)
                      ORDER BY s.k::text
                      LIMIT $5"
                ))
                .into_boxed()
                .bind::<Text, _>(&config.schema_name)
                .bind::<Text, _>(&config.table_name)
                .bind::<Timestamptz, _>(LogTime(at))
                .bind::<Nullable<Text>, _>(after_text.as_deref())
                .bind::<BigInt, _>(i64::from(limit)),
            )
            .await?;

        // Rows the log never saw: the table's own, restricted to the audited columns.
        let key_columns: Vec<String> =
            serde_json::from_value(config.config.get(KEY_FIELD).cloned().unwrap_or_default())
                .unwrap_or_default();
        let names = |values: &Value| -> Result<Vec<Ident>, Error> {
            serde_json::from_value::<Vec<String>>(values.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| Ident::with_kind(c, "column"))
                .collect::<Result<_, _>>()
                .map_err(|source| Error::Config {
                    model: "history",
                    source,
                })
        };
        let key_idents = names(&Value::from(key_columns.clone()))?;
        let qualified = QualifiedName::new(
            Some(
                Ident::with_kind(config.schema_name.as_str(), "schema").map_err(|source| {
                    Error::Config {
                        model: "history",
                        source,
                    }
                })?,
            ),
            Ident::with_kind(config.table_name.as_str(), "table").map_err(|source| {
                Error::Config {
                    model: "history",
                    source,
                }
            })?,
        );
        let key_expr = format!(
            "pg_catalog.jsonb_build_object({})",
            key_idents
                .iter()
                .map(|c| format!("{}, t.{c}", Ident::literal(c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let audited = config
            .config
            .get(AUDITED_FIELD)
            .cloned()
            .unwrap_or(Value::Null);
        let values_expr = if let Some(track) = audited.get(TRACK_ONLY_FIELD) {
            let cols = names(track)?;
            format!(
                "pg_catalog.jsonb_build_object({})",
                cols.iter()
                    .map(|c| format!("{}, t.{c}", Ident::literal(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else if let Some(excluded) = audited.get(EXCLUDE_FIELD) {
            let cols = names(excluded)?;
            format!(
                "pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) ARRAY[{}]::text[]",
                cols.iter()
                    .map(Ident::literal)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "pg_catalog.to_jsonb(t)".to_owned()
        };
        let current: Result<Vec<Row>, _> = conn
            .load(
                diesel::sql_query(format!(
                    "SELECT s.k, s.v FROM (
                        SELECT {key_expr} AS k, {values_expr} AS v FROM {qualified} AS t) AS s
                      WHERE NOT EXISTS (
                            SELECT FROM {log} AS l
                             WHERE l.record_key OPERATOR(pg_catalog.=) {record_key}
                               AND l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
                               AND (l.record_pk OPERATOR(pg_catalog.=) s.k))
                        AND NOT EXISTS (
                            SELECT FROM {log} AS l
                             WHERE l.old_record_key OPERATOR(pg_catalog.=) {record_key}
                               AND l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
                               AND l.old_record_pk OPERATOR(pg_catalog.=) s.k)
                        AND ($3::jsonb IS NULL OR s.k::text OPERATOR(pg_catalog.>) $3::jsonb::text)
                      ORDER BY s.k::text
                      LIMIT $4",
                    record_key = record_key_expr("$1", "$2", "s.k"),
                ))
                .into_boxed()
                .bind::<Text, _>(&config.schema_name)
                .bind::<Text, _>(&config.table_name)
                .bind::<Nullable<Text>, _>(after_text.as_deref())
                .bind::<BigInt, _>(i64::from(limit)),
            )
            .await;
        let (current, current_rows) = match current {
            Ok(rows) => (rows, true),
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::Unknown,
                info,
            )) if info.message().starts_with("permission denied") => (Vec::new(), false),
            Err(e) => return Err(e.into()),
        };
        let mut rows: Vec<RowAt> = logged
            .into_iter()
            .map(|r| RowAt {
                key: r.k,
                values: r.v,
                from_log: true,
            })
            .chain(current.into_iter().map(|r| RowAt {
                key: r.k,
                values: r.v,
                from_log: false,
            }))
            .collect();
        rows.sort_by_cached_key(|r| r.key.to_string());
        rows.truncate(limit as usize);
        Ok(TableAt { rows, current_rows })
    }

    /// The record as it was when it was last deleted: what [`AuditReader::restore`] writes
    /// back.
    async fn deleted<D: Driver>(
        &self,
        conn: &mut D,
        table: &QualifiedName,
        key: &Value,
    ) -> Result<Option<Value>, Error> {
        let history = self.history_in(conn, table, key, Page::first(1)).await?;
        match history.first() {
            Some(e) if e.operation == Operation::Delete => Ok(e.old_values.clone()),
            Some(_) => Err(Error::NotDeleted { key: key.clone() }),
            None => Err(Error::NoHistory { key: key.clone() }),
        }
    }
}

/// `r`: the table's schema and name, from parameters $1 (the schema, or NULL) and $2 (the
/// name). An unqualified name is the table the search path finds, else the one audited table
/// of that name in `log`'s install records, else in the current schema (`public` in a session
/// with pg-audit's settings pinned, whose path holds only `pg_catalog`).
fn resolve_table(log: &AuditLog) -> String {
    format!(
        "SELECT coalesce($1::text,
                  (SELECT n.nspname::text FROM pg_catalog.pg_class AS c
                     JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                    WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident($2::text))),
                  (SELECT pg_catalog.min(i.table_schema) FROM {config} AS i
                    WHERE i.table_name OPERATOR(pg_catalog.=) $2::text HAVING pg_catalog.count(*) OPERATOR(pg_catalog.=) 1),
                  CASE WHEN pg_catalog.current_schema() OPERATOR(pg_catalog.=) 'pg_catalog' THEN 'public'
                       ELSE pg_catalog.current_schema()::text END) AS schema_name,
              $2::text AS table_name",
        config = log.config_table()
    )
}

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
async fn missing_required<D: Driver>(
    conn: &mut D,
    table: &QualifiedName,
    values: &Value,
) -> Result<Vec<String>, Error> {
    #[derive(QueryableByName)]
    struct Column {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let required: Vec<Column> = conn
        .load(
            diesel::sql_query(
                "SELECT a.attname::text AS name FROM pg_catalog.pg_attribute AS a
          WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::text)
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped AND a.attnotnull
            AND NOT a.atthasdef AND a.attidentity OPERATOR(pg_catalog.=) ''
            AND a.attgenerated OPERATOR(pg_catalog.=) ''
          ORDER BY a.attnum",
            )
            .into_boxed()
            .bind::<Text, _>(table.to_string()),
        )
        .await?;
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
    conn.with_change_reason(reason, |conn| {
        block_ready(apply_in(
            &mut SyncDriver(conn),
            table,
            key,
            target,
            supplied,
        ))
    })
}

/// [`apply`]'s work inside its transaction.
async fn apply_in<D: Driver>(
    conn: &mut D,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
) -> Result<(), Error> {
    {
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
        let resolved: Resolved = first(conn.load(diesel::sql_query(
            "SELECT n.nspname::text AS schema, c.relname::text AS name,
                    pg_catalog.current_setting('search_path') AS path
               FROM (SELECT pg_catalog.to_regclass($1::text) AS oid) AS o
               LEFT JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) o.oid
               LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace",
        )
        .into_boxed()
        .bind::<Text, _>(table.to_string())).await?)
        .ok_or(diesel::result::Error::NotFound)?;
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
        conn.execute(
            diesel::sql_query(
                "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)",
            )
            .into_boxed(),
        )
        .await?;
        apply_pinned(conn, &table, key, target, supplied).await?;
        conn.execute(
            diesel::sql_query("SELECT pg_catalog.set_config('search_path', $1, true)")
                .into_boxed()
                .bind::<Text, _>(resolved.path),
        )
        .await?;
        Ok(())
    }
}

/// [`apply`]'s statements, with the search_path pinned and the table schema-qualified.
async fn apply_pinned<D: Driver>(
    conn: &mut D,
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

    let exists = conn
        .execute(
            diesel::sql_query(format!(
                "SELECT 1 AS one FROM {table} AS t, pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS k WHERE {}",
                matches("k")
            ))
            .into_boxed()
            .bind::<Jsonb, _>(key),
        )
        .await?
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
                let missing = missing_required(conn, table, &values).await?;
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
            conn.execute(query).await?;
        }
        (None, true) => {
            conn.execute(
                diesel::sql_query(format!(
                    "DELETE FROM {table} AS t USING pg_catalog.jsonb_populate_record(NULL::{table}, $1::jsonb) AS k WHERE {}",
                    matches("k")
                ))
                .into_boxed()
                .bind::<Jsonb, _>(key),
            )
            .await?;
        }
        (None, false) => {}
    }
    Ok(())
}

/// [`AuditReader`] on diesel-async's `AsyncPgConnection` (feature `async`): the same queries,
/// awaited.
///
/// ```no_run
/// # async fn f(conn: &mut diesel_async::AsyncPgConnection) -> Result<(), pg_audit_diesel::Error> {
/// use diesel::QueryResult;
/// use pg_audit_diesel::log::{AsyncAuditReader, Page, TimeRange};
///
/// let reader = AsyncAuditReader::new();
/// let changed = reader.by_user(conn, "alice", TimeRange::default()).await?;
/// let one_tx = reader.transaction(conn, changed[0].txid).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "async")]
#[derive(Debug, Clone, Default)]
pub struct AsyncAuditReader {
    reader: AuditReader,
}

#[cfg(feature = "async")]
impl AsyncAuditReader {
    /// A reader of `audit.auditlog`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader of `log`.
    pub fn with_log(log: AuditLog) -> Self {
        AsyncAuditReader {
            reader: AuditReader::with_log(log),
        }
    }

    /// [`AuditReader::history`].
    pub async fn history<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        page: Page,
    ) -> Result<Vec<AuditEntry>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.history_of(conn, &table, &key, page).await?)
    }

    /// [`AuditReader::history_of`].
    pub async fn history_of(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
        page: Page,
    ) -> QueryResult<Vec<AuditEntry>> {
        self.reader
            .history_in(&mut AsyncDriver(conn), table, key, page)
            .await
    }

    /// [`AuditReader::recorded_keys`].
    pub async fn recorded_keys(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
    ) -> Result<Vec<Vec<String>>, Error> {
        self.reader
            .recorded_keys_in(&mut AsyncDriver(conn), table)
            .await
    }

    /// [`AuditReader::transaction`].
    pub async fn transaction(
        &self,
        conn: &mut AsyncPgConnection,
        txid: i64,
    ) -> QueryResult<Vec<AuditEntry>> {
        self.reader
            .transaction_in(&mut AsyncDriver(conn), txid)
            .await
    }

    /// [`AuditReader::request`].
    pub async fn request(
        &self,
        conn: &mut AsyncPgConnection,
        request_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        self.reader
            .by_context(&mut AsyncDriver(conn), REQUEST_ID, request_id, range)
            .await
    }

    /// [`AuditReader::by_user`].
    pub async fn by_user(
        &self,
        conn: &mut AsyncPgConnection,
        user_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        self.reader
            .by_context(&mut AsyncDriver(conn), USER_ID, user_id, range)
            .await
    }

    /// [`AuditReader::state_at`].
    pub async fn state_at<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        at: SystemTime,
    ) -> Result<Option<Value>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.state_of_at(conn, &table, &key, at).await?)
    }

    /// [`AuditReader::state_of_at`].
    pub async fn state_of_at(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
        at: SystemTime,
    ) -> QueryResult<Option<Value>> {
        self.reader
            .state_in(&mut AsyncDriver(conn), table, key, at)
            .await
    }

    /// [`AuditReader::diff`].
    pub async fn diff<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Diff, Error> {
        let (table, key) = model_key::<T>(key)?;
        self.reader
            .diff_in(&mut AsyncDriver(conn), &table, &key, from, to)
            .await
    }

    /// [`AuditReader::blame`].
    pub async fn blame<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
    ) -> Result<Vec<Blame>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.blame_of(conn, &table, &key).await?)
    }

    /// [`AuditReader::blame_of`].
    pub async fn blame_of(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
    ) -> QueryResult<Vec<Blame>> {
        self.reader
            .blame_in(&mut AsyncDriver(conn), table, key)
            .await
    }

    /// [`AuditReader::table_at`].
    pub async fn table_at(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        at: SystemTime,
        after: Option<&Value>,
        limit: u32,
    ) -> Result<TableAt, Error> {
        self.reader
            .table_at_in(&mut AsyncDriver(conn), table, at, after, limit)
            .await
    }

    /// [`AuditReader::revert`], in a transaction of
    /// [`AsyncAuditConnectionExt::with_change_reason`](crate::AsyncAuditConnectionExt::with_change_reason).
    pub async fn revert<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        entry: i64,
        reason: &str,
    ) -> Result<(), Error> {
        let (table, key) = model_key::<T>(key)?;
        let values = self
            .reader
            .reverted(&mut AsyncDriver(conn), &table, &key, entry)
            .await?;
        apply_async(conn, &table, &key, values.as_ref(), &Map::new(), reason).await
    }

    /// [`AuditReader::restore`].
    pub async fn restore<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        reason: &str,
    ) -> Result<(), Error> {
        self.restore_with::<T>(conn, key, reason, Map::new()).await
    }

    /// [`AuditReader::restore_with`].
    pub async fn restore_with<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        reason: &str,
        values: Map<String, Value>,
    ) -> Result<(), Error> {
        let (table, key) = model_key::<T>(key)?;
        let deleted = self
            .reader
            .deleted(&mut AsyncDriver(conn), &table, &key)
            .await?;
        apply_async(conn, &table, &key, deleted.as_ref(), &values, reason).await
    }
}

/// [`apply`] on diesel-async's connection.
#[cfg(feature = "async")]
async fn apply_async(
    conn: &mut AsyncPgConnection,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
    reason: &str,
) -> Result<(), Error> {
    use crate::AsyncAuditConnectionExt as _;
    conn.with_change_reason(reason, async |conn| {
        apply_in(&mut AsyncDriver(conn), table, key, target, supplied).await
    })
    .await
}

/// One column's last change: the entry that set `value` (see [`AuditReader::blame`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Blame {
    /// The column.
    pub column: String,
    /// The value that entry gave it.
    pub value: Value,
    /// The entry.
    pub entry: AuditEntry,
}

/// A page of a table as it was at a time (see [`AuditReader::table_at`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TableAt {
    /// The rows, ordered by key (as JSON text).
    pub rows: Vec<RowAt>,
    /// Whether rows the log never saw change were read from the table (false: the reader
    /// lacks `SELECT` on it, and only rows the log holds are listed).
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

/// What [`AuditReader::activity`] lists: every field that is set narrows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// The changed table's schema.
    pub schema: Option<String>,
    /// The changed table.
    pub table: Option<String>,
    /// The operation.
    pub operation: Option<Operation>,
    /// The context's user id.
    pub user_id: Option<String>,
    /// The context's request id.
    pub request_id: Option<String>,
    /// The transaction.
    pub txid: Option<i64>,
    /// When.
    pub range: TimeRange,
    /// The record's key object (as it was before or after the change).
    pub key: Option<Value>,
}
