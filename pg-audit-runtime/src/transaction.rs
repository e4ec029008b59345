//! The transaction-and-context protocol, written once for every runtime: begin a transaction
//! with its context in the same round trip, nest with a savepoint that sets the inner context
//! only when it differs, and put the outer context back before the savepoint is released.
//!
//! The protocol decides what SQL runs when; each runtime drives it with its own I/O (Diesel's
//! sync and async helpers and `AuditedConnection`, sqlx's transactions). A rollback needs no
//! step of its own: rolling back a savepoint or a transaction undoes the settings made inside
//! it. Every setting is made by the engine's one statement, [`pg_audit::context::set_sql`].

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use pg_audit::context::SETTING;

use crate::context::{AuditContext, InvalidContext};

/// The context of a top-level transaction: `explicit` nested in the ambient context
/// ([`crate::ambient::current`]), with the current OpenTelemetry trace id when it has none
/// (feature `opentelemetry`).
pub fn top_context(explicit: &AuditContext) -> AuditContext {
    crate::observe::with_current_trace_id(crate::ambient::current().merged(explicit))
}

/// The engine's statement setting the context to the JSON text `json` (`None`: the empty
/// string, which the triggers store as no context), emitting it to the write-ahead log when
/// `emit`. The context is validated before, so it holds no NUL.
fn set_sql(json: Option<&str>, emit: bool) -> String {
    pg_audit::context::set_sql(json.unwrap_or(""), emit).expect("validated: no NUL")
}

/// The context's JSON text, `None` when it is empty.
fn json_text(ctx: &AuditContext) -> Option<String> {
    ctx.to_json().map(|v| v.to_string())
}

/// Beginning a top-level transaction: `BEGIN` followed by the context's setting (none for an
/// empty context), as one batch of the simple query protocol. The context is validated first,
/// so a value PostgreSQL cannot hold fails before anything is sent; `emit` says whether the
/// setting is also emitted to the write-ahead log (decided once per transaction level).
pub fn begin_sql(ctx: &AuditContext, emit: bool) -> Result<String, InvalidContext> {
    ctx.validate()?;
    Ok(match json_text(ctx) {
        Some(json) => format!("BEGIN; {}", set_sql(Some(&json), emit)),
        None => "BEGIN".to_owned(),
    })
}

/// A savepoint's context: entered once the savepoint is open, left before it is released.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "leave the savepoint's context to put the outer one back"]
pub struct Savepoint {
    /// The setting in force outside, raw, when the savepoint set its own.
    restore: Option<Option<String>>,
    /// Whether the savepoint's settings are emitted to the write-ahead log.
    emit: bool,
}

impl Savepoint {
    /// Enters a savepoint whose changes carry `inner`, the setting in force being `outer` (raw,
    /// as [`read_setting_sql`] returns it; [`nested`] makes `inner` from it). Returns the SQL
    /// setting `inner`, or `None` when it is already in force.
    pub fn enter(
        outer: Option<String>,
        inner: &AuditContext,
        emit: bool,
    ) -> Result<(Savepoint, Option<String>), InvalidContext> {
        inner.validate()?;
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
    pub fn leave(self) -> Option<String> {
        let emit = self.emit;
        self.restore.map(|outer| set_sql(outer.as_deref(), emit))
    }
}

/// The context of a savepoint: `explicit` nested in the setting in force, `outer` (raw).
pub fn nested(outer: Option<&str>, explicit: &AuditContext) -> AuditContext {
    AuditContext::from_setting(outer).merged(explicit)
}

/// The query reading the raw context setting in force (one row, one nullable text column
/// named `context`), for [`Savepoint::enter`].
pub fn read_setting_sql() -> String {
    format!(
        "SELECT pg_catalog.current_setting({}, true) AS context",
        pg_audit::quote_literal(SETTING).expect("the setting's name holds no NUL")
    )
}

/// Set by [`emit_context_to_wal`].
static WAL_CONTEXT: AtomicU8 = AtomicU8::new(UNDECIDED);
const UNDECIDED: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

/// Makes every runtime's transactions (Diesel's helpers, `AuditedConnection`, sqlx's
/// `begin_audited`, the web layer's) also emit each transaction's context as a transactional
/// logical message, which the capture worker (`pg-audit-capture`) attaches to the changes it
/// reads from the write-ahead log; or stops them. By default a runtime does when a table it
/// declares (a `#[pg_audit]` model, a table in sqlx's migrations) is captured from the WAL;
/// call this when tables are installed for WAL capture another way (the `pg-audit` program,
/// another service). The message costs a little WAL per transaction that sets a context, and
/// gives a read-only one a transaction id.
pub fn emit_context_to_wal(on: bool) {
    WAL_CONTEXT.store(if on { ON } else { OFF }, Relaxed);
}

/// What [`emit_context_to_wal`] said, if it was called: a runtime's own default applies
/// otherwise.
pub fn emit_context_to_wal_set() -> Option<bool> {
    match WAL_CONTEXT.load(Relaxed) {
        ON => Some(true),
        OFF => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_savepoint_sets_and_restores_only_a_different_context() {
        let outer = AuditContext::new().user_id("u");
        let raw = outer.to_json().map(|v| v.to_string());
        let same = nested(raw.as_deref(), &AuditContext::new());
        let (same, set) = Savepoint::enter(raw.clone(), &same, true).unwrap();
        assert_eq!(set, None);
        assert_eq!(same.leave(), None);

        let inner = nested(raw.as_deref(), &AuditContext::new().change_reason("why"));
        assert_eq!(
            inner,
            outer.merged(&AuditContext::new().change_reason("why"))
        );
        let (savepoint, set) = Savepoint::enter(raw.clone(), &inner, true).unwrap();
        assert_eq!(set, Some(set_sql(json_text(&inner).as_deref(), true)));
        assert_eq!(savepoint.leave(), Some(set_sql(raw.as_deref(), true)));

        // Nothing in force outside: the restore empties the setting.
        let (savepoint, _) = Savepoint::enter(None, &inner, false).unwrap();
        assert_eq!(savepoint.leave(), Some(set_sql(Some(""), false)));
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
        assert_eq!(begin_sql(&AuditContext::new(), true).unwrap(), "BEGIN");
        // An invalid one is refused before anything is sent.
        assert!(begin_sql(&AuditContext::new().user_id("a\0b"), false).is_err());
    }
}
