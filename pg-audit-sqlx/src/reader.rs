//! The log read on sqlx: [`AuditReader`] runs the reader's questions
//! (`pg_audit_runtime::log::reader`, the same functions Diesel's reader runs) on a
//! [`PgConnection`] through [`SqlxDriver`], which binds their parameters and reads their rows'
//! binary values by column.

use std::time::SystemTime;

use pg_audit::{AuditLog, QualifiedName};
use pg_audit_runtime::log::reader::{self as questions, Activity, Blame, ContextField, TableAt};
use pg_audit_runtime::log::row::{DecodeError, FromLogRow, LogRow, Param, Query, Raw, pg_micros};
use pg_audit_runtime::log::{AuditEntry, Diff, Driver, Page, TimeRange};
use serde_json::{Map, Value};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueFormat};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row as _, TypeInfo as _, ValueRef as _};

use crate::transaction::AuditedBegin as _;

/// What the reader's questions fail with on sqlx: the database's error, or what the log says
/// (an entry not in the record's history, a record never deleted, ...).
pub type ReadError = pg_audit_runtime::log::ReadError<sqlx::Error>;

/// The reader's queries on a sqlx connection.
pub struct SqlxDriver<'c>(pub &'c mut PgConnection);

/// A `timestamptz` parameter, sent as PostgreSQL's microseconds (sqlx's own encodings need the
/// `chrono` or `time` features, which pg-audit does not impose).
struct Timestamptz(i64);

impl sqlx::Type<Postgres> for Timestamptz {
    fn type_info() -> PgTypeInfo {
        // A built-in type's OID is fixed: no lookup by name, which a search path could sway.
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(1184))
    }
}

impl sqlx::Encode<'_, Postgres> for Timestamptz {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }
}

/// `query` as sqlx's query, each parameter bound as its SQL type.
fn sqlx_query(query: Query) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query(AssertSqlSafe(query.sql));
    for param in query.params {
        q = match param {
            Param::Text(v) => q.bind(v),
            Param::BigInt(v) => q.bind(v),
            Param::BigIntArray(v) => q.bind(v),
            Param::Jsonb(v) => q.bind(v),
            Param::Timestamptz(v) => q.bind(v.map(|t| Timestamptz(pg_micros(t)))),
        };
    }
    q
}

/// A sqlx row read by column name.
struct Columns<'r>(&'r PgRow);

impl LogRow for Columns<'_> {
    fn visit(
        &self,
        column: &str,
        read: &mut dyn FnMut(Option<Raw<'_>>),
    ) -> Result<(), DecodeError> {
        let value = self
            .0
            .try_get_raw(column)
            .map_err(|e| DecodeError::new(column, e.to_string()))?;
        if value.is_null() {
            read(None);
            return Ok(());
        }
        if value.format() != PgValueFormat::Binary {
            return Err(DecodeError::new(column, "a value sent as text"));
        }
        let info = value.type_info();
        let oid = info
            .oid()
            .ok_or_else(|| DecodeError::new(column, format!("type {} has no OID", info.name())))?;
        let bytes = value
            .as_bytes()
            .map_err(|e| DecodeError::new(column, e.to_string()))?;
        read(Some(Raw { oid: oid.0, bytes }));
        Ok(())
    }
}

impl Driver for SqlxDriver<'_> {
    type Error = sqlx::Error;

    async fn load<U>(&mut self, query: Query) -> Result<Vec<U>, ReadError>
    where
        U: FromLogRow + Send + 'static,
    {
        let rows = sqlx_query(query)
            .fetch_all(&mut *self.0)
            .await
            .map_err(ReadError::Database)?;
        rows.iter()
            .map(|row| U::from_row(&Columns(row)).map_err(ReadError::Decode))
            .collect()
    }

    async fn execute(&mut self, query: Query) -> Result<usize, ReadError> {
        let done = sqlx_query(query)
            .execute(&mut *self.0)
            .await
            .map_err(ReadError::Database)?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    fn permission_denied(error: &sqlx::Error) -> bool {
        error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "42501")
    }
}

/// Reads the audit log on sqlx. Cheap to build; holds only the log's name.
///
/// Every question takes the connection to ask on (`&mut *pool.acquire().await?`, or `&mut *tx`
/// inside a transaction) and names a record by its table and its key as a JSON object
/// (`json!({"id": 42})`, every key column for a composite key). They are the questions
/// Diesel's `AuditReader` asks, with the same queries and the same answers.
///
/// ```no_run
/// use pg_audit_sqlx::AuditReader;
/// use pg_audit_sqlx::log::Page;
/// use pg_audit_sqlx::sql::QualifiedName;
/// # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let reader = AuditReader::new(); // audit.auditlog
/// let users = QualifiedName::parse("users")?;
/// let mut conn = pool.acquire().await?;
/// let history = reader.history(&mut conn, &users, &serde_json::json!({"id": 42}), Page::first(20)).await?;
/// for entry in &history {
///     println!("{} by {:?}: {:?}", entry.operation.keyword(), entry.context.user_id, entry.changes());
/// }
/// reader.revert(&mut conn, &users, &serde_json::json!({"id": 42}), history[1].id, "Undo vandalism").await?;
/// # Ok(()) }
/// ```
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

    /// The history of the record of `table` whose key is the JSON object `key`, newest first,
    /// followed back across UPDATEs that changed its key (an entry that changed the key is the
    /// first of the new key's history and the last of the old key's); columns renamed since
    /// an entry appear under their names now. Keyset-paged: [`Page::after`] gives the next.
    pub async fn history(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        page: Page,
    ) -> Result<Vec<AuditEntry>, ReadError> {
        questions::history(&self.log, &mut SqlxDriver(conn), table, key, page).await
    }

    /// One entry of the record's history, or `None` when `entry` is not in it.
    pub async fn entry(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        entry: i64,
    ) -> Result<Option<AuditEntry>, ReadError> {
        questions::entry_of(&self.log, &mut SqlxDriver(conn), table, key, entry).await
    }

    /// The key columns recorded at install for each audited table named `table` (one list per
    /// schema when `table` is unqualified and several schemas have one), in key order.
    pub async fn recorded_keys(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
    ) -> Result<Vec<Vec<String>>, ReadError> {
        questions::recorded_keys(&self.log, &mut SqlxDriver(conn), table).await
    }

    /// The newest entries across the whole log that pass `filter`, newest first, keyset-paged:
    /// the activity listing.
    pub async fn activity(
        &self,
        conn: &mut PgConnection,
        filter: &Activity,
        page: Page,
    ) -> Result<Vec<AuditEntry>, ReadError> {
        questions::activity(&self.log, &mut SqlxDriver(conn), filter, page).await
    }

    /// Everything one transaction did, in order.
    pub async fn transaction(
        &self,
        conn: &mut PgConnection,
        txid: i64,
    ) -> Result<Vec<AuditEntry>, ReadError> {
        questions::transaction(&self.log, &mut SqlxDriver(conn), txid).await
    }

    /// Everything done in one request (its `request_id`) in a time range, in order.
    pub async fn request(
        &self,
        conn: &mut PgConnection,
        request_id: &str,
        range: TimeRange,
    ) -> Result<Vec<AuditEntry>, ReadError> {
        let field = ContextField::Request;
        questions::by_context(&self.log, &mut SqlxDriver(conn), field, request_id, range).await
    }

    /// Everything one user did in a time range, in order.
    pub async fn by_user(
        &self,
        conn: &mut PgConnection,
        user_id: &str,
        range: TimeRange,
    ) -> Result<Vec<AuditEntry>, ReadError> {
        let field = ContextField::User;
        questions::by_context(&self.log, &mut SqlxDriver(conn), field, user_id, range).await
    }

    /// The record's audited columns as they were at `at`, rebuilt from the log; `None` if it
    /// did not exist then, or its history starts later.
    pub async fn state_at(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        at: SystemTime,
    ) -> Result<Option<Value>, ReadError> {
        questions::state_at(&self.log, &mut SqlxDriver(conn), table, key, at).await
    }

    /// The record at `from` and at `to`, and the columns that differ.
    pub async fn diff(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Diff, ReadError> {
        questions::diff(&self.log, &mut SqlxDriver(conn), table, key, from, to).await
    }

    /// For each audited column of the record, the entry that last set its value, newest first.
    pub async fn blame(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
    ) -> Result<Vec<Blame>, ReadError> {
        questions::blame(&self.log, &mut SqlxDriver(conn), table, key).await
    }

    /// The rows of `table` as they were at `at` (each row's audited columns), ordered by key
    /// (as JSON text), at most `limit` after the key `after` (the last row's key of the
    /// previous page): from the log for every record it holds, and from the table itself for
    /// rows the log never saw change (which need `SELECT` on the table; without it they are
    /// left out and [`TableAt::current_rows`] says so).
    pub async fn table_at(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        at: SystemTime,
        after: Option<&Value>,
        limit: u32,
    ) -> Result<TableAt, ReadError> {
        let driver = &mut SqlxDriver(conn);
        questions::table_at(&self.log, driver, table, at, after, limit).await
    }

    /// Puts the record back as it was right after audit entry `entry` (an id from its
    /// history): updated, re-inserted or deleted as needed, in a transaction (a savepoint
    /// inside one) whose audit rows carry `reason`. Only audited columns are set; others keep
    /// their values (or their defaults, when the row is re-inserted).
    pub async fn revert(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        entry: i64,
        reason: &str,
    ) -> Result<(), ReadError> {
        let target =
            questions::reverted(&self.log, &mut SqlxDriver(conn), table, key, entry).await?;
        apply(conn, table, key, target.as_ref(), &Map::new(), reason).await
    }

    /// Re-inserts the record as it was when it was last deleted, in a transaction whose audit
    /// rows carry `reason`. A column the log does not hold that is `NOT NULL` without a
    /// default is refused before anything is written ([`ReadError::MissingValues`]): give
    /// its value with [`restore_with`](Self::restore_with).
    ///
    /// [`ReadError::MissingValues`]: pg_audit_runtime::log::ReadError::MissingValues
    pub async fn restore(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        reason: &str,
    ) -> Result<(), ReadError> {
        self.restore_with(conn, table, key, reason, &Map::new())
            .await
    }

    /// [`restore`](Self::restore), with `values` (column name → value) for the columns the
    /// log does not hold.
    pub async fn restore_with(
        &self,
        conn: &mut PgConnection,
        table: &QualifiedName,
        key: &Value,
        reason: &str,
        values: &Map<String, Value>,
    ) -> Result<(), ReadError> {
        let deleted = questions::deleted(&self.log, &mut SqlxDriver(conn), table, key).await?;
        apply(conn, table, key, deleted.as_ref(), values, reason).await
    }
}

/// Makes the record with `key` equal to `target` in a transaction (or savepoint) whose audit
/// rows carry `reason`.
async fn apply(
    conn: &mut PgConnection,
    table: &QualifiedName,
    key: &Value,
    target: Option<&Value>,
    supplied: &Map<String, Value>,
    reason: &str,
) -> Result<(), ReadError> {
    let mut tx = conn
        .begin_with_change_reason(reason)
        .await
        .map_err(ReadError::Database)?;
    questions::apply(&mut SqlxDriver(&mut tx), table, key, target, supplied).await?;
    tx.commit().await.map_err(ReadError::Database)
}
