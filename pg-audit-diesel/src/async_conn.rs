//! The context helpers on diesel-async; documented on [`AsyncAuditConnectionExt`].

use std::future::Future;

use diesel::result::Error;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};

use crate::AuditContext;
use crate::observe;
use crate::transaction::{
    Setting, begin_sql, enter_savepoint, nested, outcome, read_setting_query, top_context,
};

/// An async closure taking the connection, whose future can be required to be `Send`
/// (`AsyncFnOnce` alone cannot say so on stable Rust; diesel-async uses the same device).
pub trait AuditFn<T, R>: AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AuditFn<T, R>>::Fut {
    /// The future the closure returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AuditFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// Context-carrying transactions on an [`AsyncPgConnection`].
///
/// # Use
///
/// The context helpers for diesel-async's `AsyncPgConnection` (feature `async`), pooled or not
/// (deadpool's, bb8's and mobc's pooled connections deref to one).
///
/// ```no_run
/// # use diesel::prelude::*;
/// # use diesel_async::{AsyncPgConnection, RunQueryDsl};
/// # diesel::table! { users (id) { id -> Int4, password_hash -> Text } }
/// use pg_audit_diesel::AsyncAuditConnectionExt;
/// # async fn f(conn: &mut AsyncPgConnection, id: i32, hash: String) -> QueryResult<()> {
///
/// conn.with_change_reason("User requested password reset", async |conn| {
///     diesel::update(users::table.find(id)).set(users::password_hash.eq(hash)).execute(conn).await
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// They drive the same protocol as [`crate::AuditConnectionExt`]'s:
/// the context goes with `BEGIN` in one round trip, nesting opens a savepoint, and the ambient
/// context ([`crate::ambient`]) of the
/// task is merged in, so `#[with_change_reason]` on an `async fn` applies to the transactions
/// it opens with these helpers.
pub trait AsyncAuditConnectionExt: Sized {
    /// Runs `f` in a transaction whose changes are logged with `ctx` nested inside the ambient
    /// context.
    fn with_audit_context<'conn, R, E, F>(
        &'conn mut self,
        ctx: &AuditContext,
        f: F,
    ) -> impl Future<Output = Result<R, E>> + Send + use<'conn, Self, R, E, F>
    where
        for<'r> F: AuditFn<&'r mut Self, Result<R, E>, Fut: Send> + Send + 'conn,
        E: From<Error> + Send + 'conn,
        R: Send + 'conn;

    /// Runs `f` in a transaction whose changes are logged with this change reason.
    fn with_change_reason<'conn, R, E, F>(
        &'conn mut self,
        reason: &str,
        f: F,
    ) -> impl Future<Output = Result<R, E>> + Send + use<'conn, Self, R, E, F>
    where
        for<'r> F: AuditFn<&'r mut Self, Result<R, E>, Fut: Send> + Send + 'conn,
        E: From<Error> + Send + 'conn,
        R: Send + 'conn,
    {
        self.with_audit_context(&AuditContext::new().change_reason(reason), f)
    }

    /// Runs `f` in a transaction carrying the ambient context.
    fn audited_transaction<'conn, R, E, F>(
        &'conn mut self,
        f: F,
    ) -> impl Future<Output = Result<R, E>> + Send + use<'conn, Self, R, E, F>
    where
        for<'r> F: AuditFn<&'r mut Self, Result<R, E>, Fut: Send> + Send + 'conn,
        E: From<Error> + Send + 'conn,
        R: Send + 'conn,
    {
        self.with_audit_context(&AuditContext::new(), f)
    }
}

impl AsyncAuditConnectionExt for AsyncPgConnection {
    fn with_audit_context<'conn, R, E, F>(
        &'conn mut self,
        ctx: &AuditContext,
        f: F,
    ) -> impl Future<Output = Result<R, E>> + Send + use<'conn, R, E, F>
    where
        for<'r> F: AuditFn<&'r mut Self, Result<R, E>, Fut: Send> + Send + 'conn,
        E: From<Error> + Send + 'conn,
        R: Send + 'conn,
    {
        let ctx = ctx.clone();
        async move {
            // Read when first polled: inside the caller's scope.
            let top = top_context(&ctx);
            let begin = begin_sql(&top)?;
            let span = observe::transaction_span(&top);
            let run = async {
                match AnsiTransactionManager::begin_transaction_sql(self, &begin).await {
                    Ok(()) => {
                        observe::record_nested(&span, false);
                        let result = f(&mut *self).await;
                        finish(self, result).await
                    }
                    Err(Error::AlreadyInTransaction) => {
                        observe::record_nested(&span, true);
                        AnsiTransactionManager::begin_transaction(self).await?;
                        let result = in_savepoint(self, &ctx, f).await;
                        finish(self, result).await
                    }
                    Err(e) => Err(e.into()),
                }
            };
            let result = observe::instrument(span.clone(), run).await;
            observe::record_outcome(&span, result.is_ok());
            result
        }
    }
}

/// Inside a savepoint: nest `ctx` in the context in force, run `f`, put the outer one back.
async fn in_savepoint<R, E, F>(
    conn: &mut AsyncPgConnection,
    ctx: &AuditContext,
    f: F,
) -> Result<R, E>
where
    for<'r> F: AuditFn<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send>,
    E: From<Error>,
{
    let outer = read_setting_query()
        .get_result::<Setting>(conn)
        .await?
        .into_value();
    let inner = nested(outer.as_deref(), ctx);
    let (savepoint, set) = enter_savepoint(outer, &inner)?;
    if let Some(set) = set {
        conn.batch_execute(&set).await?;
    }
    let value = f(&mut *conn).await?;
    if let Some(restore) = savepoint.leave() {
        conn.batch_execute(&restore).await?;
    }
    Ok(value)
}

/// Commits when `result` is `Ok`, rolls back otherwise: the async driver of
/// [`crate::transaction`]'s last step.
async fn finish<R, E: From<Error>>(
    conn: &mut AsyncPgConnection,
    result: Result<R, E>,
) -> Result<R, E> {
    let end = match result {
        Ok(_) => AnsiTransactionManager::commit_transaction(conn).await,
        Err(_) => AnsiTransactionManager::rollback_transaction(conn).await,
    };
    outcome(result, end)
}
