//! Rows an application can make its triggers write that a careless reader could not read: a
//! context with a number out of `f64`'s range, nested 300 deep, with a key twice, with values
//! of the wrong type; values of 400 digits, documents nested 300 deep, text with control and
//! bidirectional characters. Shared by path by the tests that read them back through every
//! reader, command and page (`tests/tests/hostile_rows.rs`, `pg-audit-cli/tests/trust.rs`).

#![allow(dead_code)] // Each test uses its part.

/// The table the rows are written to, audited with every column.
pub(crate) const TABLE: &str =
    "CREATE TABLE public.h (id int PRIMARY KEY, n numeric, doc jsonb, j json, t text)";

/// The application's writes, each transaction with its context.
pub(crate) fn writes() -> String {
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let big = format!("1{}", "0".repeat(400));
    format!(
        r#"BEGIN;
SET LOCAL pg_audit.context = '{{"user_id": "mallory", "request_id": "r-big", "metadata": 1e400}}';
INSERT INTO public.h VALUES (1, {big}, '{{"big": 1e400}}', '{{"a": 1, "a": 2}}', 'plain');
COMMIT;
BEGIN;
SET LOCAL pg_audit.context = '{{"user_id": 5, "request_id": {{"a": 1}}, "change_reason": ["x"], "metadata": {deep}}}';
INSERT INTO public.h VALUES (2, 'NaN', '{{"deep": {deep}}}', '[1e400]', E'bell\u0007 rlo\u202e <script>alert(1)</script>');
UPDATE public.h SET n = -{big}, doc = '{deep}' WHERE id = 1;
COMMIT;
BEGIN;
SET LOCAL pg_audit.context = '{{"user_id": "victim@example.com", "user_id": "other-user", "source": "\u0007", "trace_id": "not-a-trace", "client_addr": "not an address"}}';
UPDATE public.h SET t = repeat('x', 100000), j = '{deep}' WHERE id = 2;
DELETE FROM public.h WHERE id = 1;
COMMIT;"#
    )
}
