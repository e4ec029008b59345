//! Context-carrying transactions on any Diesel `PgConnection`, pooled or not: the sync driver
//! of [`crate::transaction`]'s protocol.

use diesel::connection::{AnsiTransactionManager, SimpleConnection as _, TransactionManager as _};
use diesel::pg::PgConnection;
use diesel::prelude::*;

use crate::AuditContext;
use crate::observe;
use crate::transaction::{
    Setting, begin_sql, enter_savepoint, finish, nested, read_setting_query, top_context,
};

/// Transactions whose audit rows carry a context. Implemented for [`PgConnection`], and so
/// usable on pooled connections (an r2d2 `PooledConnection` derefs to one).
///
/// At the top level the context is sent together with `BEGIN`, in the same round trip, so an
/// audited transaction costs no more round trips than a plain one. Settings are
/// transaction-local (`set_config(..., true)`): the next transaction on the connection carries
/// none of it, whether it commits or rolls back.
///
/// **Nesting.** Inside an open transaction (yours, Diesel's, or an outer helper's), a helper
/// opens a savepoint, nests its context inside the one in force (see [`AuditContext`]: fields
/// override, change reasons chain), runs the closure, and restores the outer context
/// afterwards; when the closure fails, the savepoint's rollback restores it. This costs one
/// round trip more than a plain savepoint to read the context in force, and two more when
/// the nested context differs from it.
///
/// The context is validated before anything is sent: a NUL byte or an over-long value fails
/// with [`crate::InvalidContext`] (as `diesel::result::Error::QueryBuilderError`) and the closure
/// does not run.
pub trait AuditConnectionExt {
    /// Runs `f` in a transaction whose changes are logged with `ctx` nested inside the ambient
    /// context ([`crate::ambient::current`]).
    fn with_audit_context<T, E, F>(&mut self, ctx: &AuditContext, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>;

    /// Runs `f` in a transaction whose changes are logged with this change reason.
    fn with_change_reason<T, E, F>(&mut self, reason: &str, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.with_audit_context(&AuditContext::new().change_reason(reason), f)
    }

    /// Runs `f` in a transaction carrying the ambient context.
    fn audited_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.with_audit_context(&AuditContext::new(), f)
    }
}

impl AuditConnectionExt for PgConnection {
    fn with_audit_context<T, E, F>(&mut self, ctx: &AuditContext, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        let top = top_context(ctx);
        let begin = begin_sql(&top)?;
        let span = observe::transaction_span(&top);
        let _entered = span.enter();
        let result = match AnsiTransactionManager::begin_transaction_sql(self, &begin) {
            Ok(()) => {
                observe::record_nested(&span, false);
                let result = f(self);
                finish(self, result)
            }
            Err(diesel::result::Error::AlreadyInTransaction) => {
                observe::record_nested(&span, true);
                AnsiTransactionManager::begin_transaction(self)?;
                let result = in_savepoint(self, ctx, f);
                finish(self, result)
            }
            Err(e) => Err(e.into()),
        };
        observe::record_outcome(&span, result.is_ok());
        result
    }
}

/// Inside a savepoint: nest `ctx` in the context in force, run `f`, put the outer one back.
fn in_savepoint<T, E, F>(conn: &mut PgConnection, ctx: &AuditContext, f: F) -> Result<T, E>
where
    F: FnOnce(&mut PgConnection) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    let outer = read_setting_query()
        .get_result::<Setting>(conn)?
        .into_value();
    let inner = nested(outer.as_deref(), ctx);
    let (savepoint, set) = enter_savepoint(outer, &inner)?;
    if let Some(set) = set {
        conn.batch_execute(&set)?;
    }
    let value = f(conn)?;
    if let Some(restore) = savepoint.leave() {
        conn.batch_execute(&restore)?;
    }
    Ok(value)
}
