//! The transaction-and-context protocol, written once: begin a transaction with its context in
//! the same round trip, nest with a savepoint that sets the inner context only when it differs,
//! put the outer context back before the savepoint is released, and finish (commit, or roll
//! back keeping the caller's error).
//!
//! The protocol decides what SQL runs when; the three paths drive it with their own I/O: the
//! sync helpers ([`crate::AuditConnectionExt`]), the async helpers (feature `async`) and
//! `AuditedConnection` (feature `connection-wrapper`). A rollback needs no step of its own:
//! rolling back a savepoint or a transaction undoes the settings made inside it.

use diesel::QueryResult;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager as _};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use pg_audit::context::SETTING;

use crate::context::{AuditContext, InvalidContext};
use crate::model::emits_context_to_wal;

/// The context of a top-level transaction: `explicit` nested in the ambient context, with the
/// current OpenTelemetry trace id when it has none (feature `opentelemetry`).
pub(crate) fn top_context(explicit: &AuditContext) -> AuditContext {
    crate::observe::with_current_trace_id(crate::ambient::current().merged(explicit))
}

/// An invalid context as the error Diesel's transaction functions return.
pub(crate) fn invalid(e: InvalidContext) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(Box::new(e))
}

/// The engine's statement ([`pg_audit::context::set_sql`]) setting the context to the JSON
/// text `json` (`None`: the empty string, which the triggers store as no context), emitting it
/// to the write-ahead log when `emit`. The protocol decides `emit` once per transaction level,
/// from [`emits_context_to_wal`]; the context is validated before, so it holds no NUL.
fn set_sql(json: Option<&str>, emit: bool) -> String {
    pg_audit::context::set_sql(json.unwrap_or(""), emit).expect("validated: no NUL")
}

/// The context's JSON text, `None` when it is empty.
fn json_text(ctx: &AuditContext) -> Option<String> {
    ctx.to_json().map(|v| v.to_string())
}

/// Beginning a top-level transaction: `BEGIN` followed by the context's setting (none for an
/// empty context), as one batch for `AnsiTransactionManager::begin_transaction_sql`. The
/// context is validated first, so a value PostgreSQL cannot hold fails before anything is sent.
pub(crate) fn begin_sql(ctx: &AuditContext) -> QueryResult<String> {
    ctx.validate().map_err(invalid)?;
    Ok(match json_text(ctx) {
        Some(json) => format!("BEGIN; {}", set_sql(Some(&json), emits_context_to_wal())),
        None => "BEGIN".to_owned(),
    })
}

/// A savepoint's context: entered once the savepoint is open, left before it is released.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "leave the savepoint's context to put the outer one back"]
pub(crate) struct Savepoint {
    /// The setting in force outside, raw, when the savepoint set its own.
    restore: Option<Option<String>>,
    /// Whether the savepoint's settings are emitted to the write-ahead log.
    emit: bool,
}

impl Savepoint {
    /// Enters a savepoint whose changes carry `inner`, the setting in force being `outer` (raw,
    /// as [`read_setting_query`] returns it). Returns the SQL setting `inner`, or `None` when
    /// it is already in force.
    pub(crate) fn enter(
        outer: Option<String>,
        inner: &AuditContext,
    ) -> QueryResult<(Savepoint, Option<String>)> {
        inner.validate().map_err(invalid)?;
        let emit = emits_context_to_wal();
        if AuditContext::from_setting(outer.as_deref()) == *inner {
            let restore = None;
            return Ok((Savepoint { restore, emit }, None));
        }
        let set = set_sql(json_text(inner).as_deref(), emit);
        let restore = Some(outer);
        Ok((Savepoint { restore, emit }, Some(set)))
    }

    /// The SQL that puts the outer context back before the savepoint is released (releasing
    /// keeps the settings made inside it), or `None` when the savepoint set nothing.
    pub(crate) fn leave(self) -> Option<String> {
        let emit = self.emit;
        self.restore.map(|outer| set_sql(outer.as_deref(), emit))
    }
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

/// The query reading the context setting in force, for [`Savepoint::enter`].
pub(crate) fn read_setting_query() -> diesel::query_builder::SqlQuery {
    diesel::sql_query(format!(
        "SELECT pg_catalog.current_setting({}, true) AS context",
        pg_audit::quote_literal(SETTING).expect("the setting's name holds no NUL")
    ))
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
    fn a_savepoint_sets_and_restores_only_a_different_context() {
        let outer = AuditContext::new().user_id("u");
        let raw = outer.to_json().map(|v| v.to_string());
        let (same, set) = Savepoint::enter(raw.clone(), &outer).unwrap();
        assert_eq!(set, None);
        assert_eq!(same.leave(), None);

        let emit = emits_context_to_wal();
        let inner = outer.merged(&AuditContext::new().change_reason("why"));
        let (savepoint, set) = Savepoint::enter(raw.clone(), &inner).unwrap();
        assert_eq!(set, Some(set_sql(json_text(&inner).as_deref(), emit)));
        assert_eq!(savepoint.leave(), Some(set_sql(raw.as_deref(), emit)));

        // Nothing in force outside: the restore empties the setting.
        let (savepoint, _) = Savepoint::enter(None, &inner).unwrap();
        assert_eq!(savepoint.leave(), Some(set_sql(Some(""), emit)));
    }

    #[test]
    fn the_context_is_one_json_setting_quoted() {
        use pg_audit::quote_literal;
        let ctx = AuditContext::new().change_reason("it's \\ $$");
        let json = json_text(&ctx).unwrap();
        assert_eq!(json, r#"{"change_reason":"it's \\ $$"}"#);
        assert_eq!(
            set_sql(Some(&json), false),
            format!(
                "SET LOCAL pg_audit.context = {}",
                quote_literal(&json).unwrap()
            )
        );
        assert_eq!(json_text(&AuditContext::new()), None);
        assert_eq!(set_sql(None, false), "SET LOCAL pg_audit.context = ''");
        assert!(set_sql(Some(&json), true).contains("pg_logical_emit_message"));

        // An empty context begins a transaction without a setting.
        assert_eq!(begin_sql(&AuditContext::new()).unwrap(), "BEGIN");
    }

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
