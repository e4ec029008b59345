//! [`AsyncAuditReader`]: the reader's questions on diesel-async's `AsyncPgConnection`, each
//! the same query module function as [`AuditReader`](super::AuditReader)'s, over
//! [`AsyncDriver`] and awaited.

use std::time::SystemTime;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use pg_audit::{AuditLog, QualifiedName};
use serde_json::{Map, Value};

use pg_audit_runtime::log::reader::{self as questions, Activity, Blame, ContextField, TableAt};

use super::model::model_key;
use crate::log::driver::{AsyncDriver, query_error};
use crate::log::{AuditEntry, Diff, Page, TimeRange};
use crate::{AsyncAuditConnectionExt as _, Audited, Error};

/// [`AuditReader`](super::AuditReader) on diesel-async's `AsyncPgConnection` (feature
/// `async`): the same queries, awaited.
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
#[derive(Debug, Clone, Default)]
pub struct AsyncAuditReader {
    log: AuditLog,
}

impl AsyncAuditReader {
    /// A reader of `audit.auditlog`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader of `log`.
    pub fn with_log(log: AuditLog) -> Self {
        AsyncAuditReader { log }
    }

    /// The log it reads.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// [`AuditReader::history`](super::AuditReader::history).
    pub async fn history<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        page: Page,
    ) -> Result<Vec<AuditEntry>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.history_of(conn, &table, &key, page).await?)
    }

    /// [`AuditReader::history_of`](super::AuditReader::history_of).
    pub async fn history_of(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
        page: Page,
    ) -> QueryResult<Vec<AuditEntry>> {
        questions::history(&self.log, &mut AsyncDriver(conn), table, key, page)
            .await
            .map_err(query_error)
    }

    /// [`AuditReader::recorded_keys`](super::AuditReader::recorded_keys).
    pub async fn recorded_keys(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
    ) -> Result<Vec<Vec<String>>, Error> {
        questions::recorded_keys(&self.log, &mut AsyncDriver(conn), table)
            .await
            .map_err(Error::from)
    }

    /// [`AuditReader::activity`](super::AuditReader::activity).
    pub async fn activity(
        &self,
        conn: &mut AsyncPgConnection,
        filter: &Activity,
        page: Page,
    ) -> QueryResult<Vec<AuditEntry>> {
        questions::activity(&self.log, &mut AsyncDriver(conn), filter, page)
            .await
            .map_err(query_error)
    }

    /// [`AuditReader::transaction`](super::AuditReader::transaction).
    pub async fn transaction(
        &self,
        conn: &mut AsyncPgConnection,
        txid: i64,
    ) -> QueryResult<Vec<AuditEntry>> {
        questions::transaction(&self.log, &mut AsyncDriver(conn), txid)
            .await
            .map_err(query_error)
    }

    /// [`AuditReader::request`](super::AuditReader::request).
    pub async fn request(
        &self,
        conn: &mut AsyncPgConnection,
        request_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        let field = ContextField::Request;
        questions::by_context(&self.log, &mut AsyncDriver(conn), field, request_id, range)
            .await
            .map_err(query_error)
    }

    /// [`AuditReader::by_user`](super::AuditReader::by_user).
    pub async fn by_user(
        &self,
        conn: &mut AsyncPgConnection,
        user_id: &str,
        range: TimeRange,
    ) -> QueryResult<Vec<AuditEntry>> {
        let field = ContextField::User;
        questions::by_context(&self.log, &mut AsyncDriver(conn), field, user_id, range)
            .await
            .map_err(query_error)
    }

    /// [`AuditReader::state_at`](super::AuditReader::state_at).
    pub async fn state_at<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        at: SystemTime,
    ) -> Result<Option<Value>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.state_of_at(conn, &table, &key, at).await?)
    }

    /// [`AuditReader::state_of_at`](super::AuditReader::state_of_at).
    pub async fn state_of_at(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
        at: SystemTime,
    ) -> QueryResult<Option<Value>> {
        questions::state_at(&self.log, &mut AsyncDriver(conn), table, key, at)
            .await
            .map_err(query_error)
    }

    /// [`AuditReader::diff`](super::AuditReader::diff).
    pub async fn diff<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Diff, Error> {
        let (table, key) = model_key::<T>(key)?;
        questions::diff(&self.log, &mut AsyncDriver(conn), &table, &key, from, to)
            .await
            .map_err(Error::from)
    }

    /// [`AuditReader::blame`](super::AuditReader::blame).
    pub async fn blame<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
    ) -> Result<Vec<Blame>, Error> {
        let (table, key) = model_key::<T>(key)?;
        Ok(self.blame_of(conn, &table, &key).await?)
    }

    /// [`AuditReader::blame_of`](super::AuditReader::blame_of).
    pub async fn blame_of(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
    ) -> QueryResult<Vec<Blame>> {
        questions::blame(&self.log, &mut AsyncDriver(conn), table, key)
            .await
            .map_err(query_error)
    }

    /// [`AuditReader::table_at`](super::AuditReader::table_at).
    pub async fn table_at(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        at: SystemTime,
        after: Option<&Value>,
        limit: u32,
    ) -> Result<TableAt, Error> {
        let driver = &mut AsyncDriver(conn);
        questions::table_at(&self.log, driver, table, at, after, limit)
            .await
            .map_err(Error::from)
    }

    /// [`AuditReader::revert`](super::AuditReader::revert), in a transaction of
    /// [`AsyncAuditConnectionExt::with_change_reason`](crate::AsyncAuditConnectionExt::with_change_reason).
    pub async fn revert<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        entry: i64,
        reason: &str,
    ) -> Result<(), Error> {
        let (table, key) = model_key::<T>(key)?;
        self.revert_of(conn, &table, &key, entry, reason).await
    }

    /// [`AuditReader::revert_of`](super::AuditReader::revert_of).
    pub async fn revert_of(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
        entry: i64,
        reason: &str,
    ) -> Result<(), Error> {
        let driver = &mut AsyncDriver(conn);
        let target = questions::reverted(&self.log, driver, table, key, entry)
            .await
            .map_err(Error::from)?;
        apply(conn, table, key, target.as_ref(), &Map::new(), reason).await
    }

    /// [`AuditReader::restore`](super::AuditReader::restore).
    pub async fn restore<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        reason: &str,
    ) -> Result<(), Error> {
        self.restore_with::<T>(conn, key, reason, Map::new()).await
    }

    /// [`AuditReader::restore_with`](super::AuditReader::restore_with).
    pub async fn restore_with<T: Audited>(
        &self,
        conn: &mut AsyncPgConnection,
        key: impl serde::Serialize,
        reason: &str,
        values: Map<String, Value>,
    ) -> Result<(), Error> {
        let (table, key) = model_key::<T>(key)?;
        self.restore_of_with(conn, &table, &key, reason, &values)
            .await
    }

    /// [`AuditReader::restore_of`](super::AuditReader::restore_of).
    pub async fn restore_of(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
        reason: &str,
    ) -> Result<(), Error> {
        self.restore_of_with(conn, table, key, reason, &Map::new())
            .await
    }

    async fn restore_of_with(
        &self,
        conn: &mut AsyncPgConnection,
        table: &QualifiedName,
        key: &Value,
        reason: &str,
        values: &Map<String, Value>,
    ) -> Result<(), Error> {
        let deleted = questions::deleted(&self.log, &mut AsyncDriver(conn), table, key)
            .await
            .map_err(Error::from)?;
        apply(conn, table, key, deleted.as_ref(), values, reason).await
    }
}

/// Makes the record with `key` equal to `target` in a transaction of
/// [`AsyncAuditConnectionExt::with_change_reason`](crate::AsyncAuditConnectionExt::with_change_reason)
/// under `reason`.
async fn apply(
    conn: &mut AsyncPgConnection,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
    reason: &str,
) -> Result<(), Error> {
    conn.with_change_reason(reason, async |conn| {
        questions::apply(&mut AsyncDriver(conn), table, key, target, supplied)
            .await
            .map_err(Error::from)
    })
    .await
}
