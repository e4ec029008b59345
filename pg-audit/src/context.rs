//! The audit context: who, why and from where, carried from the application to the triggers in
//! one transaction-local setting.
//!
//! The application sets [`SETTING`] to a JSON object with `set_config(name, value, true)` (the
//! `true` makes it local to the current transaction, so a pooled connection never carries one
//! request's context into the next transaction); the triggers copy it into the log's `context`
//! column. Unset or empty, the column is NULL.
//!
//! ```sql
//! BEGIN;
//! SELECT set_config('pg_audit.context',
//!                   json_build_object('user_id', 'alice', 'change_reason', 'ticket #42')::text,
//!                   true);
//! UPDATE users SET email = 'alice@example.com' WHERE id = 1;
//! COMMIT;
//! ```
//!
//! One setting rather than one per field because setting is on every audited transaction's
//! path: one `set_config` costs about a sixth of six (see `docs/performance.md`). The value must
//! be a JSON object: anything else fails the audited write, so a change never goes unlogged
//! because of its context.

/// The transaction-local setting holding the context, as a JSON object.
pub const SETTING: &str = "pg_audit.context";

/// The application user who made the change.
pub const USER_ID: &str = "user_id";
/// The request (HTTP request, job, message) the change belongs to.
pub const REQUEST_ID: &str = "request_id";
/// Why the change was made, in words.
pub const CHANGE_REASON: &str = "change_reason";
/// The address of the end user's client (not of the application server).
pub const CLIENT_ADDR: &str = "client_addr";
/// What made the change: an application, a job, a command (`http GET /users`, `cron`, ...).
pub const SOURCE: &str = "source";
/// Free-form JSON.
pub const METADATA: &str = "metadata";

/// Every key of the context object, in documentation order.
pub const KEYS: [&str; 6] = [
    USER_ID,
    REQUEST_ID,
    CHANGE_REASON,
    CLIENT_ADDR,
    SOURCE,
    METADATA,
];

/// The SQL expression that reads the context in a trigger: the setting as `json`, NULL when
/// unset or empty.
pub(crate) fn read_expr() -> String {
    format!(
        "NULLIF(pg_catalog.current_setting({}, true), '')::pg_catalog.json",
        crate::ident::text_literal(SETTING)
    )
}
