//! [`AuditReader`]: the reader's questions on a `PgConnection`. Each method names its table and
//! key (from a model, or as given) and runs its query module's function over [`SyncDriver`].

use std::time::SystemTime;

use diesel::QueryResult;
use diesel::pg::PgConnection;
use pg_audit::{AuditLog, QualifiedName};
use serde_json::{Map, Value};

use pg_audit_runtime::log::reader::{self as questions, Activity, Blame, ContextField, TableAt};

use super::model::model_key;
use crate::log::driver::{SyncDriver, block_ready, query_error};
use crate::log::{AuditEntry, Diff, Page, TimeRange};
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
        block_ready(questions::history(
            &self.log,
            &mut SyncDriver(conn),
            table,
            key,
            page,
        ))
        .map_err(query_error)
    }

    /// The query [`AuditReader::history_of`] runs for one key, to `EXPLAIN` it: parameters
    /// `$1` the schema (text, NULL for the search path's), `$2` the table, `$3` the key object
    /// (jsonb), `$4` the id to page before (bigint, NULL for the first page), `$5` the limit.
    /// It returns the entries since the key was given to the record (if an UPDATE gave it),
    /// newest first in the order the changes were made (the log's `id`, which pages continue
    /// from).
    pub fn history_sql(&self) -> String {
        questions::history_sql(&self.log)
    }

    /// The key columns recorded at install for each audited table named `table` (one entry
    /// per schema when `table` is unqualified and several schemas have one), in key order.
    pub fn recorded_keys(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
    ) -> Result<Vec<Vec<String>>, Error> {
        block_ready(questions::recorded_keys(
            &self.log,
            &mut SyncDriver(conn),
            table,
        ))
        .map_err(Error::from)
    }

    /// The newest entries across the whole log that pass `filter`, newest first (keyset
    /// paging on the entry id, as [`AuditReader::history`]): the activity listing.
    pub fn activity(
        &self,
        conn: &mut PgConnection,
        filter: &Activity,
        page: Page,
    ) -> QueryResult<Vec<AuditEntry>> {
        block_ready(questions::activity(
            &self.log,
            &mut SyncDriver(conn),
            filter,
            page,
        ))
        .map_err(query_error)
    }

    /// Everything one transaction did, in order.
    pub fn transaction(&self, conn: &mut PgConnection, txid: i64) -> QueryResult<Vec<AuditEntry>> {
        block_ready(questions::transaction(
            &self.log,
            &mut SyncDriver(conn),
            txid,
        ))
        .map_err(query_error)
    }

    /// Everything done in one request (its `request_id`), in order. The time range prunes
    /// partitions and uses the BRIN index; give one on large logs.
    pub fn request(
        &self,
        conn: &mut PgConnection,
        request_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        block_ready(questions::by_context(
            &self.log,
            &mut SyncDriver(conn),
            ContextField::Request,
            request_id,
            range,
        ))
        .map_err(query_error)
    }

    /// Everything one user did in a time range, in order.
    pub fn by_user(
        &self,
        conn: &mut PgConnection,
        user_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        block_ready(questions::by_context(
            &self.log,
            &mut SyncDriver(conn),
            ContextField::User,
            user_id,
            range,
        ))
        .map_err(query_error)
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
        block_ready(questions::state_at(
            &self.log,
            &mut SyncDriver(conn),
            table,
            key,
            at,
        ))
        .map_err(query_error)
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
        block_ready(questions::diff(
            &self.log,
            &mut SyncDriver(conn),
            &table,
            &key,
            from,
            to,
        ))
        .map_err(Error::from)
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
        self.revert_of(conn, &table, &key, entry, reason)
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
        let target = block_ready(questions::reverted(
            &self.log,
            &mut SyncDriver(conn),
            table,
            key,
            entry,
        ))
        .map_err(Error::from)?;
        apply(conn, table, key, target.as_ref(), &Map::new(), reason)
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
        self.restore_with::<T>(conn, key, reason, Map::new())
    }

    /// [`AuditReader::restore`], with `values` (column name → value) for the columns the log
    /// does not hold: `json!({"password_hash": "!reset"})`.
    pub fn restore_with<T: Audited>(
        &self,
        conn: &mut PgConnection,
        key: impl serde::Serialize,
        reason: &str,
        values: Map<String, Value>,
    ) -> Result<(), Error> {
        let (table, key) = model_key::<T>(key)?;
        self.restore_of_with(conn, &table, &key, reason, &values)
    }

    /// [`AuditReader::restore`] for a table and key object.
    pub fn restore_of(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        reason: &str,
    ) -> Result<(), Error> {
        self.restore_of_with(conn, table, key, reason, &Map::new())
    }

    fn restore_of_with(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        reason: &str,
        values: &Map<String, Value>,
    ) -> Result<(), Error> {
        let deleted = block_ready(questions::deleted(
            &self.log,
            &mut SyncDriver(conn),
            table,
            key,
        ))
        .map_err(Error::from)?;
        apply(conn, table, key, deleted.as_ref(), values, reason)
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
        block_ready(questions::blame(
            &self.log,
            &mut SyncDriver(conn),
            table,
            key,
        ))
        .map_err(query_error)
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
        block_ready(questions::table_at(
            &self.log,
            &mut SyncDriver(conn),
            table,
            at,
            after,
            limit,
        ))
        .map_err(Error::from)
    }
}

/// Makes the record with `key` equal to `target` in a transaction of
/// [`AuditConnectionExt::with_change_reason`] under `reason`.
fn apply(
    conn: &mut PgConnection,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
    reason: &str,
) -> Result<(), Error> {
    conn.with_change_reason(reason, |conn| {
        block_ready(questions::apply(
            &mut SyncDriver(conn),
            table,
            key,
            target,
            supplied,
        ))
        .map_err(Error::from)
    })
}
