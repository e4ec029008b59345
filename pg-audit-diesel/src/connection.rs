//! Context-carrying transactions on any Diesel `PgConnection`, pooled or not.

use diesel::connection::{AnsiTransactionManager, SimpleConnection as _, TransactionManager as _};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use pg_audit::context::SETTING;
use pg_audit::quote_literal;

use crate::audit_context;
use crate::context::{AuditContext, InvalidContext, set_setting_sql};

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
/// afterwards; when the closure fails, the savepoint's rollback restores it. This costs two
/// round trips more than a plain savepoint.
///
/// The context is validated before anything is sent: a NUL byte or an over-long value fails
/// with [`InvalidContext`] (as `diesel::result::Error::QueryBuilderError`) and the closure
/// does not run.
pub trait AuditConnectionExt {
    /// Runs `f` in a transaction whose changes are logged with `ctx` nested inside the ambient
    /// context ([`audit_context::current`]).
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

pub(crate) fn invalid(e: InvalidContext) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(Box::new(e))
}

/// `BEGIN` followed by the context's settings, as one batch.
pub(crate) fn begin_sql(ctx: &AuditContext) -> String {
    match ctx.set_sql(false) {
        Some(set) => format!("BEGIN; {set}"),
        None => "BEGIN".to_owned(),
    }
}

impl AuditConnectionExt for PgConnection {
    fn with_audit_context<T, E, F>(&mut self, ctx: &AuditContext, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        let top = audit_context::current().merged(ctx);
        top.validate().map_err(invalid)?;
        match AnsiTransactionManager::begin_transaction_sql(self, &begin_sql(&top)) {
            Ok(()) => finish_transaction(self, f),
            Err(diesel::result::Error::AlreadyInTransaction) => self.transaction(|conn| {
                let outer = read_settings(conn)?;
                let nested = AuditContext::from_setting(outer.as_deref()).merged(ctx);
                nested.validate().map_err(invalid)?;
                conn.batch_execute(&nested.set_sql(true).expect("all fields"))?;
                let value = f(conn)?;
                conn.batch_execute(&restore_sql(&outer))?;
                Ok(value)
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Commits or rolls back a transaction begun with `begin_transaction_sql`, as Diesel's own
/// `TransactionBuilder::run` does.
pub(crate) fn finish_transaction<C, T, E, F>(conn: &mut C, f: F) -> Result<T, E>
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    match f(conn) {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(user_error) => match AnsiTransactionManager::rollback_transaction(conn) {
            Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(user_error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
    }
}

#[derive(QueryableByName)]
pub(crate) struct Settings {
    #[diesel(sql_type = Nullable<Text>)]
    context: Option<String>,
}

impl Settings {
    /// The query that reads the context setting in force.
    pub(crate) fn query() -> diesel::query_builder::SqlQuery {
        diesel::sql_query(format!(
            "SELECT pg_catalog.current_setting({}, true) AS context",
            quote_literal(SETTING).expect("no NUL")
        ))
    }

    /// The raw value.
    pub(crate) fn into_value(self) -> Option<String> {
        self.context
    }
}

/// The context setting in force, raw.
fn read_settings(conn: &mut PgConnection) -> QueryResult<Option<String>> {
    Settings::query()
        .get_result::<Settings>(conn)
        .map(Settings::into_value)
}

/// Sets the context setting back to exactly this raw value.
pub(crate) fn restore_sql(value: &Option<String>) -> String {
    set_setting_sql(value.as_deref().unwrap_or(""))
}
