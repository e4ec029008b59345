//! Context-carrying transactions on sqlx: the sqlx driver of the transaction-and-context
//! protocol every runtime shares (`pg_audit_runtime::transaction`).

use std::ops::{Deref, DerefMut};
use std::pin::Pin;

use pg_audit_runtime::transaction::{self as protocol, Savepoint};
use pg_audit_runtime::{AuditContext, InvalidContext, observe};
use sqlx::{
    AssertSqlSafe, Connection as _, Executor as _, PgConnection, PgPool, Postgres, Transaction,
};

use crate::migration::emits_context_to_wal;

/// A future that owns what it needs (the context is prepared when it is made).
pub type BoxFuture<'t, T> = Pin<Box<dyn Future<Output = T> + Send + 't>>;

/// An invalid context as the error sqlx's calls return: [`sqlx::Error::Encode`] holding the
/// [`InvalidContext`] (downcast it to read which field).
fn invalid(e: InvalidContext) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(e))
}

/// Starts a transaction on a connection from `pool` whose changes are logged with `ctx` nested
/// inside the ambient context ([`crate::ambient::current`], which the web layer fills for each
/// request). `BEGIN` and the context go in one round trip; the setting is
/// transaction-local, so the connection goes back to the pool carrying nothing, whether the
/// transaction commits, rolls back or is dropped.
///
/// The context is validated first: a NUL byte or an over-long value fails with
/// [`sqlx::Error::Encode`] holding the [`InvalidContext`], and nothing is sent.
pub fn begin_audited(
    pool: &PgPool,
    ctx: &AuditContext,
) -> impl Future<Output = Result<Transaction<'static, Postgres>, sqlx::Error>> + Send + 'static {
    // Prepared before the future runs: the ambient context is the caller's.
    let prepared = prepare_top(ctx);
    let pool = pool.clone();
    async move {
        let (top, begin) = prepared?;
        let tx = pool.begin_with(AssertSqlSafe(begin)).await?;
        observe::transaction_begun(&top);
        Ok(tx)
    }
}

/// Context-carrying transactions on a pool ([`PgPool`]), a connection ([`PgConnection`],
/// pooled or not) and an open transaction ([`Transaction`], [`AuditedTransaction`]).
///
/// - On a pool, or a connection outside a transaction: a transaction begun with the context
///   in the same round trip ([`begin_audited`]).
/// - Inside a transaction sqlx opened (a `BEGIN` sent as a query is invisible to sqlx, whose
///   own `begin()` would send a second one too): a savepoint whose changes carry the context
///   nested in the one in force (fields override, change reasons chain: see
///   [`AuditContext`]). Committing it puts the outer context back before the savepoint is
///   released; rolling it back (or dropping it) undoes its setting with it. This costs one round trip more than a plain savepoint to
///   read the context in force, and two more when the nested context differs.
///
/// ```no_run
/// use pg_audit_sqlx::{AuditContext, AuditedBegin as _};
/// # async fn f(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let mut tx = pool.begin_audited(&AuditContext::new().user_id("42")).await?;
/// sqlx::query("UPDATE products SET price = 10 WHERE id = 1").execute(&mut *tx).await?;
/// {
///     // Logged with user 42 and this reason; the outer context is back after the commit.
///     let mut inner = tx.begin_audited(&AuditContext::new().change_reason("price fix")).await?;
///     sqlx::query("UPDATE products SET price = 9 WHERE id = 1").execute(&mut *inner).await?;
///     inner.commit().await?;
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub trait AuditedBegin<'t>: Sized {
    /// What is begun: a [`Transaction`] on a pool, an [`AuditedTransaction`] otherwise.
    type Begun;

    /// Begins a transaction (or, inside one, a savepoint) whose changes are logged with `ctx`.
    fn begin_audited(self, ctx: &AuditContext) -> BoxFuture<'t, Result<Self::Begun, sqlx::Error>>;

    /// Begins one whose changes are logged with this change reason.
    fn begin_with_change_reason(
        self,
        reason: &str,
    ) -> BoxFuture<'t, Result<Self::Begun, sqlx::Error>> {
        self.begin_audited(&AuditContext::new().change_reason(reason))
    }
}

impl<'t> AuditedBegin<'t> for &'t PgPool {
    type Begun = Transaction<'static, Postgres>;

    fn begin_audited(self, ctx: &AuditContext) -> BoxFuture<'t, Result<Self::Begun, sqlx::Error>> {
        Box::pin(begin_audited(self, ctx))
    }
}

impl<'t> AuditedBegin<'t> for &'t mut PgConnection {
    type Begun = AuditedTransaction<'t>;

    fn begin_audited(self, ctx: &AuditContext) -> BoxFuture<'t, Result<Self::Begun, sqlx::Error>> {
        // Made now: the ambient context is the caller's, not whatever polls the future.
        let explicit = ctx.clone();
        let prepared = prepare_top(ctx);
        Box::pin(async move {
            if self.is_in_transaction() {
                return savepoint(self, &explicit).await;
            }
            let (top, begin) = prepared?;
            let tx = self.begin_with(AssertSqlSafe(begin)).await?;
            observe::transaction_begun(&top);
            Ok(AuditedTransaction { tx, leave: None })
        })
    }
}

impl<'t> AuditedBegin<'t> for &'t mut Transaction<'_, Postgres> {
    type Begun = AuditedTransaction<'t>;

    fn begin_audited(self, ctx: &AuditContext) -> BoxFuture<'t, Result<Self::Begun, sqlx::Error>> {
        let explicit = ctx.clone();
        Box::pin(async move { savepoint(self, &explicit).await })
    }
}

impl<'t> AuditedBegin<'t> for &'t mut AuditedTransaction<'_> {
    type Begun = AuditedTransaction<'t>;

    fn begin_audited(self, ctx: &AuditContext) -> BoxFuture<'t, Result<Self::Begun, sqlx::Error>> {
        let explicit = ctx.clone();
        Box::pin(async move { savepoint(&mut self.tx, &explicit).await })
    }
}

/// A top-level transaction's context (`ctx` in the ambient one) and its `BEGIN`, made before
/// the future is polled, so the ambient context read is the caller's.
fn prepare_top(ctx: &AuditContext) -> Result<(AuditContext, String), sqlx::Error> {
    let top = protocol::top_context(ctx);
    let begin = protocol::begin_sql(&top, emits_context_to_wal()).map_err(invalid)?;
    Ok((top, begin))
}

/// Opens a savepoint on `conn` (inside a transaction) whose changes carry `explicit` nested in
/// the context in force.
async fn savepoint<'t>(
    conn: &'t mut PgConnection,
    explicit: &AuditContext,
) -> Result<AuditedTransaction<'t>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let outer: Option<String> = sqlx::query_scalar(AssertSqlSafe(protocol::read_setting_sql()))
        .fetch_one(&mut *tx)
        .await?;
    let inner = protocol::nested(outer.as_deref(), explicit);
    let (leave, set) = Savepoint::enter(outer, &inner, emits_context_to_wal()).map_err(invalid)?;
    if let Some(set) = set {
        tx.execute(AssertSqlSafe(set)).await?;
    }
    Ok(AuditedTransaction {
        tx,
        leave: Some(leave),
    })
}

/// A transaction or savepoint begun by [`AuditedBegin`] on a connection or inside a
/// transaction: use it as a [`Transaction`] (`&mut *tx` is the connection to run queries on),
/// then [`commit`](Self::commit), which puts the outer context back first when it is a
/// savepoint. Dropping it, or [`rollback`](Self::rollback), rolls it back with its setting.
#[derive(Debug)]
#[must_use = "a transaction rolls back when dropped: commit it"]
pub struct AuditedTransaction<'c> {
    tx: Transaction<'c, Postgres>,
    /// The savepoint's context to leave before it is released; `None` at the top level.
    leave: Option<Savepoint>,
}

impl<'c> AuditedTransaction<'c> {
    /// Commits the transaction, or releases the savepoint after putting the outer context back.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if let Some(restore) = self.leave.take().and_then(Savepoint::leave) {
            self.tx.execute(AssertSqlSafe(restore)).await?;
        }
        self.tx.commit().await
    }

    /// Rolls back the transaction or savepoint, and its context with it.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }

    /// The sqlx transaction, for functions that take one (`&mut Transaction<'_, Postgres>`).
    /// Commit through [`AuditedTransaction::commit`], not the transaction's own.
    pub fn transaction(&mut self) -> &mut Transaction<'c, Postgres> {
        &mut self.tx
    }
}

impl Deref for AuditedTransaction<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for AuditedTransaction<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
