//! The audit context: who, why and from where, carried from the application to the triggers in
//! transaction-local settings.
//!
//! The application sets them with `set_config(name, value, true)` (the `true` makes the value
//! local to the current transaction, so a pooled connection never carries one request's context
//! into the next transaction); the audit log's column defaults read them with
//! `current_setting(name, true)`. An unset or empty setting is stored as NULL.
//!
//! ```sql
//! BEGIN;
//! SELECT set_config('pg_audit.user_id', 'alice', true),
//!        set_config('pg_audit.change_reason', 'ticket #42', true);
//! UPDATE users SET email = 'alice@example.com' WHERE id = 1;
//! COMMIT;
//! ```

/// One context value: its setting name and the audit-log column it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextField {
    /// The transaction-local setting, e.g. `pg_audit.user_id`.
    pub setting: &'static str,
    /// The audit-log column that records it.
    pub column: &'static str,
    /// The column's SQL type.
    pub(crate) sql_type: &'static str,
}

/// The application user who made the change.
pub const USER_ID: ContextField = ContextField {
    setting: "pg_audit.user_id",
    column: "user_id",
    sql_type: "text",
};

/// The request (HTTP request, job, message) the change belongs to.
pub const REQUEST_ID: ContextField = ContextField {
    setting: "pg_audit.request_id",
    column: "request_id",
    sql_type: "text",
};

/// Why the change was made, in words.
pub const CHANGE_REASON: ContextField = ContextField {
    setting: "pg_audit.change_reason",
    column: "change_reason",
    sql_type: "text",
};

/// The address of the end user's client (not of the application server).
pub const CLIENT_ADDR: ContextField = ContextField {
    setting: "pg_audit.client_addr",
    column: "client_addr",
    sql_type: "text",
};

/// What made the change: an application, a job, a command (`http GET /users`, `cron`, ...).
pub const SOURCE: ContextField = ContextField {
    setting: "pg_audit.source",
    column: "source",
    sql_type: "text",
};

/// Free-form JSON. The setting must hold valid JSON: an invalid value fails the audited write
/// (and so the change) rather than dropping the metadata silently.
pub const METADATA: ContextField = ContextField {
    setting: "pg_audit.metadata",
    column: "metadata",
    sql_type: "jsonb",
};

/// Every context field, in audit-log column order.
pub const FIELDS: [ContextField; 6] = [
    USER_ID,
    REQUEST_ID,
    CHANGE_REASON,
    CLIENT_ADDR,
    SOURCE,
    METADATA,
];

impl ContextField {
    /// The SQL expression that reads this setting inside a transaction: NULL when unset or empty.
    pub(crate) fn read_expr(&self) -> String {
        let read = format!(
            "NULLIF(pg_catalog.current_setting({}, true), '')",
            crate::ident::quote_literal(self.setting).expect("setting names hold no NUL")
        );
        match self.sql_type {
            "text" => read,
            other => format!("({read})::{other}"),
        }
    }
}
