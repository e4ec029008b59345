//! The context helpers for diesel-async's `AsyncPgConnection` (feature `async`), pooled or not
//! (deadpool's, bb8's and mobc's pooled connections deref to one).
//!
//! ```ignore
//! use pg_audit_diesel::AsyncAuditConnectionExt;
//!
//! conn.with_change_reason("User requested password reset", async |conn| {
//!     diesel::update(users::table.find(id)).set(users::password_hash.eq(hash)).execute(conn).await
//! })
//! .await?;
//! ```
//!
//! They behave as [`crate::AuditConnectionExt`]'s: the context goes with `BEGIN` in one round
//! trip, nesting opens a savepoint, and the ambient context ([`crate::audit_context`]) of the
//! task is merged in, so `#[with_change_reason]` on an `async fn` applies to the transactions
//! it opens with these helpers.

use std::future::Future;

use diesel::result::Error;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};

use crate::audit_context;
use crate::connection::{Settings, begin_sql, invalid, restore_sql};
use crate::context::AuditContext;

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

/// Context-carrying transactions on an [`AsyncPgConnection`]; see the module documentation.
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
            let top = audit_context::current().merged(&ctx);
            top.validate().map_err(invalid)?;
            match AnsiTransactionManager::begin_transaction_sql(self, &begin_sql(&top)).await {
                Ok(()) => {
                    let result = f(&mut *self).await;
                    finish(self, result).await
                }
                Err(Error::AlreadyInTransaction) => {
                    AnsiTransactionManager::begin_transaction(self).await?;
                    let result = nested(self, &ctx, f).await;
                    finish(self, result).await
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Inside a savepoint: nest `ctx` in the context in force, run `f`, restore.
async fn nested<R, E, F>(conn: &mut AsyncPgConnection, ctx: &AuditContext, f: F) -> Result<R, E>
where
    for<'r> F: AuditFn<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send>,
    E: From<Error>,
{
    let outer = Settings::query()
        .get_result::<Settings>(conn)
        .await?
        .into_value();
    let inner = AuditContext::from_setting(outer.as_deref()).merged(ctx);
    inner.validate().map_err(invalid)?;
    conn.batch_execute(&inner.set_sql(true).expect("all fields"))
        .await?;
    let value = f(&mut *conn).await?;
    conn.batch_execute(&restore_sql(&outer)).await?;
    Ok(value)
}

/// Commits on success, rolls back on failure (keeping the caller's error), as diesel-async's
/// own transaction helper does.
async fn finish<R, E: From<Error>>(
    conn: &mut AsyncPgConnection,
    result: Result<R, E>,
) -> Result<R, E> {
    match result {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(user_error) => match AnsiTransactionManager::rollback_transaction(conn).await {
            Ok(()) | Err(Error::BrokenTransactionManager) => Err(user_error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
    }
}
