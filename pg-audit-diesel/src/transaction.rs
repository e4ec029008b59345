//! Diesel's side of the transaction-and-context protocol (`pg_audit_runtime::transaction`,
//! written once for every runtime): the protocol's SQL with the WAL decision taken from the
//! registry, errors as Diesel's, and the end of a level (commit, or roll back keeping the
//! caller's error). Three paths drive it with their own I/O: the sync helpers
//! ([`crate::AuditConnectionExt`]), the async helpers (feature `async`) and
//! `AuditedConnection` (feature `connection-wrapper`).

use diesel::QueryResult;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager as _};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use pg_audit_runtime::transaction as protocol;
pub(crate) use pg_audit_runtime::transaction::{Savepoint, nested, top_context};

use crate::model::emits_context_to_wal;
use pg_audit_runtime::{AuditContext, InvalidContext};

/// An invalid context as the error Diesel's transaction functions return.
pub(crate) fn invalid(e: InvalidContext) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(Box::new(e))
}

/// Beginning a top-level transaction carrying `ctx`, as one batch for
/// `AnsiTransactionManager::begin_transaction_sql` ([`protocol::begin_sql`]).
pub(crate) fn begin_sql(ctx: &AuditContext) -> QueryResult<String> {
    protocol::begin_sql(ctx, emits_context_to_wal()).map_err(invalid)
}

/// Enters a savepoint whose changes carry `inner`, the setting in force being `outer`
/// ([`Savepoint::enter`]), emitted to the WAL as the registry says.
pub(crate) fn enter_savepoint(
    outer: Option<String>,
    inner: &AuditContext,
) -> QueryResult<(Savepoint, Option<String>)> {
    Savepoint::enter(outer, inner, emits_context_to_wal()).map_err(invalid)
}

/// The raw context setting in force, as one row.
#[derive(QueryableByName)]
pub(crate) struct Setting {
    #[diesel(sql_type = Nullable<Text>)]
    context: Option<String>,
}

impl Setting {
    /// The raw value.
    pub(crate) fn into_value(self) -> Option<String> {
        self.context
    }
}

/// The query reading the context setting in force ([`protocol::read_setting_sql`]).
pub(crate) fn read_setting_query() -> diesel::query_builder::SqlQuery {
    diesel::sql_query(protocol::read_setting_sql())
}

/// The end of a transaction level: `commit` succeeded or failed after `f` returned `Ok`, or
/// `rollback` after it returned the caller's error, which wins over a broken transaction
/// manager (as Diesel's own `transaction` does).
pub(crate) fn outcome<T, E: From<diesel::result::Error>>(
    result: Result<T, E>,
    end: QueryResult<()>,
) -> Result<T, E> {
    match (result, end) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(commit_error)) => Err(commit_error.into()),
        (Err(user_error), Ok(()) | Err(diesel::result::Error::BrokenTransactionManager)) => {
            Err(user_error)
        }
        (Err(_), Err(rollback_error)) => Err(rollback_error.into()),
    }
}

/// Commits when `result` is `Ok`, rolls back otherwise: the sync driver of [`outcome`].
pub(crate) fn finish<C, T, E>(conn: &mut C, result: Result<T, E>) -> Result<T, E>
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
    E: From<diesel::result::Error>,
{
    let end = match result {
        Ok(_) => AnsiTransactionManager::commit_transaction(conn),
        Err(_) => AnsiTransactionManager::rollback_transaction(conn),
    };
    outcome(result, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_error_wins_over_a_broken_rollback() {
        use diesel::result::Error;
        let r: Result<(), Error> =
            outcome(Err(Error::NotFound), Err(Error::BrokenTransactionManager));
        assert!(matches!(r, Err(Error::NotFound)));
        let r: Result<(), Error> = outcome(Ok(()), Err(Error::AlreadyInTransaction));
        assert!(matches!(r, Err(Error::AlreadyInTransaction)));
    }
}
