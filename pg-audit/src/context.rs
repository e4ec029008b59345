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
/// The W3C trace id (32 lowercase hex digits) of the distributed trace the change belongs to.
pub const TRACE_ID: &str = "trace_id";
/// Free-form JSON.
pub const METADATA: &str = "metadata";

/// Every key of the context object, in documentation order.
pub const KEYS: [&str; 7] = [
    USER_ID,
    REQUEST_ID,
    CHANGE_REASON,
    CLIENT_ADDR,
    SOURCE,
    TRACE_ID,
    METADATA,
];

/// The statement that sets this transaction's context to `json` (a JSON object's text; empty:
/// no context, stored as NULL): `SET LOCAL`, a utility statement, so nothing is planned and no
/// row goes back (measured ~25% cheaper per transaction than `SELECT set_config`); with
/// `emit_to_wal`, one `SELECT` that sets it and emits it as a transactional logical message
/// for the capture worker ([`crate::sql::capture::emit_context_sql`]), which tables captured
/// from the write-ahead log need. Every runtime sets the context through this.
///
/// ```
/// let sql = pg_audit::context::set_sql(r#"{"user_id": "o'brien"}"#, false).unwrap();
/// assert_eq!(sql, r#"SET LOCAL pg_audit.context = '{"user_id": "o''brien"}'"#);
/// assert!(pg_audit::context::set_sql("{}", true).unwrap().contains("pg_logical_emit_message"));
/// ```
///
/// An error when `json` holds a NUL, which no setting can.
pub fn set_sql(json: &str, emit_to_wal: bool) -> Result<String, crate::Error> {
    let quoted = crate::ident::quote_literal(json)?;
    Ok(if emit_to_wal {
        // One statement for both (the `SELECT` is needed for the message anyway).
        format!(
            "SELECT pg_catalog.set_config({}, {quoted}, true), {}",
            crate::ident::text_literal(SETTING),
            crate::sql::capture::emit_context_sql(&quoted)
        )
    } else {
        format!("SET LOCAL {SETTING} = {quoted}")
    })
}

/// The largest context the triggers accept, in bytes of its JSON text.
pub const MAX_LEN: usize = 64 * 1024;

/// PL/pgSQL statements that read the context into `v_context` (json, normalized by `jsonb`:
/// a key given twice keeps its last value; NULL when unset or empty) from `v_raw` (text),
/// refusing — so the write fails and nothing unreadable is stored — a
/// context that is over [`MAX_LEN`], is not JSON, is not a JSON object, or holds `\u0000`,
/// which PostgreSQL's `jsonb` and text cannot hold (every reader that extracts a field of a
/// stored context would fail on it). `indent` starts each line after the first.
pub(crate) fn read_statements(indent: &str) -> String {
    let setting = crate::ident::text_literal(SETTING);
    // The common path: one test for size and `\u0000`, then the jsonb cast readers make when
    // they extract a field, which refuses what they could not read (not JSON, lone surrogates,
    // numbers out of range).
    [
        format!("v_raw := pg_catalog.current_setting({setting}, true);"),
        "IF v_raw OPERATOR(pg_catalog.<>) '' THEN".to_owned(),
        format!(
            "    IF pg_catalog.octet_length(v_raw) OPERATOR(pg_catalog.>) {MAX_LEN} OR pg_catalog.strpos(v_raw, E'\\\\u0000') OPERATOR(pg_catalog.>) 0 THEN"
        ),
        format!("        IF pg_catalog.octet_length(v_raw) OPERATOR(pg_catalog.>) {MAX_LEN} THEN"),
        format!(
            "            RAISE EXCEPTION 'pg-audit: the audit context ({SETTING}) is % bytes long; the limit is {MAX_LEN} bytes', pg_catalog.octet_length(v_raw)"
        ),
        "                USING ERRCODE = 'program_limit_exceeded', HINT = 'Keep large data out of the context: store it elsewhere and put its id in the metadata.';".to_owned(),
        "        END IF;".to_owned(),
        // The text holds the escape: the exact test (a jsonb cast, in a subtransaction) tells
        // `\u0000` from an escaped backslash followed by `u0000`.
        "        BEGIN".to_owned(),
        "            PERFORM v_raw::pg_catalog.jsonb;".to_owned(),
        "        EXCEPTION WHEN untranslatable_character THEN".to_owned(),
        format!(
            "            RAISE EXCEPTION 'pg-audit: the audit context ({SETTING}) holds \\u0000, which PostgreSQL text cannot hold'"
        ),
        "                USING ERRCODE = 'untranslatable_character', HINT = 'Remove NUL characters from the context''s values.';".to_owned(),
        "        END;".to_owned(),
        "    END IF;".to_owned(),
        "    IF pg_catalog.jsonb_typeof(v_raw::pg_catalog.jsonb) OPERATOR(pg_catalog.<>) 'object' THEN".to_owned(),
        format!(
            "        RAISE EXCEPTION 'pg-audit: the audit context ({SETTING}) must be a JSON object, not a JSON %', pg_catalog.jsonb_typeof(v_raw::pg_catalog.jsonb)"
        ),
        "            USING ERRCODE = 'invalid_parameter_value', HINT = 'Set it to an object such as {\"user_id\": \"alice\", \"change_reason\": \"...\"}.';".to_owned(),
        "    END IF;".to_owned(),
        // Stored as `jsonb` writes it: one value per key (the last, which every reader and
        // `->>` would take), so what a redaction erases is exactly what readers see.
        "    v_context := v_raw::pg_catalog.jsonb::pg_catalog.json;".to_owned(),
        "END IF;".to_owned(),
    ]
    .join(&format!("\n{indent}"))
}
