//! The digest of a log row, computed by the server from one expression ([`row_digest_expr`])
//! that the seals, `verify` and the archive's read-back check all use.
//!
//! A row's digest is a SHA-256 over one digest per column, and for the JSON columns one per
//! top-level key: a redacted value keeps its digest in the redaction log, so the row's digest
//! does not change. NULL columns contribute nothing, so a column added to the log later leaves
//! older rows' digests as they were sealed.
//!
//! A recorded redaction stands in for a value only where `redact` could have erased it: a
//! value of `old_values` or `new_values` that is not a key column, of an entry of the
//! redaction's table and record, among its columns; or the context's `user_id` for a
//! redaction of a user. Anything else recorded (a "redaction" of `record_pk` written by hand)
//! is not taken: the marker then counts as the value, and the entry as changed.

use crate::ident::text_literal;
use crate::sql::names::LogNames;
use crate::sql::shape::{LOG_COLUMNS, LogColumn, REDACTED};

/// The digest of one value (`key` and `value` SQL text expressions) — of a key of a JSON
/// column, and what a redaction records for the value it erases.
pub(crate) fn value_digest_expr(key: &str, value: &str) -> String {
    format!("sha256(convert_to({key}, 'UTF8') || '\\x00'::bytea || convert_to({value}, 'UTF8'))")
}

/// Whether a recorded redaction `r` (of `redacted_values`, with its redaction `d`) of key
/// `e.key` of column `column` of row alias `alias` is one `redact` could have made; `None` for
/// a column no redaction erases.
pub(crate) fn redaction_applies(column: &str, alias: &str, key: &str) -> Option<String> {
    match column {
        "old_values" | "new_values" => Some(format!(
            "d.record_pk IS NOT NULL AND d.table_schema = {alias}.schema_name AND d.table_name = {alias}.table_name
                                                   AND (d.record_pk = {alias}.record_pk OR d.record_pk = {alias}.old_record_pk)
                                                   AND (d.columns IS NULL OR {key} = ANY (d.columns))
                                                   AND NOT coalesce({alias}.record_pk ? {key}, false)
                                                   AND NOT coalesce({alias}.old_record_pk ? {key}, false)"
        )),
        "context" => Some(format!(
            "d.record_pk IS NULL AND d.table_name IS NULL AND {key} = {}",
            text_literal(crate::context::USER_ID)
        )),
        _ => None,
    }
}

/// The digest of JSON column `column` of row alias `alias`: one digest per top-level key in the
/// value's own key order, a redacted key's being the one its redaction recorded (where a
/// redaction may apply, [`redaction_applies`]); NULL when the value is NULL.
fn json_digest_expr(names: &LogNames, column: &LogColumn, alias: &str) -> String {
    let c = format!("{alias}.{}", column.name);
    let name = text_literal(column.name);
    let marker = text_literal(&format!("\"{REDACTED}\""));
    let (each, typeof_, is_marker) = if column.sql_type == "jsonb" {
        (
            "jsonb_each",
            "jsonb_typeof",
            format!("e.value = {marker}::jsonb"),
        )
    } else {
        (
            "json_each",
            "json_typeof",
            format!("e.value::text = {marker}"),
        )
    };
    let vd = value_digest_expr("e.key", "e.value::text");
    let key_digest = match redaction_applies(column.name, alias, "e.key") {
        Some(applies) => format!(
            "CASE WHEN {is_marker}
                                 THEN coalesce((SELECT r.digest FROM {values} AS r
                                                  JOIN {redactions} AS d ON d.redaction_id = r.redaction_id
                                                 WHERE r.entry_id = {alias}.id AND r.column_name = {name} AND r.key = e.key
                                                   AND {applies}), {vd})
                                 ELSE {vd} END",
            values = names.redacted_values_table(),
            redactions = names.redactions_table(),
        ),
        None => vd,
    };
    format!(
        "CASE WHEN {c} IS NULL THEN NULL
      WHEN {typeof_}({c}) <> 'object' THEN {whole}
      ELSE sha256(convert_to({name}, 'UTF8') || '\\x02'::bytea || coalesce((
          SELECT string_agg({key_digest}, ''::bytea ORDER BY e.n)
            FROM {each}({c}) WITH ORDINALITY AS e(key, value, n)), ''::bytea)) END",
        whole = value_digest_expr(&name, &format!("{c}::text")),
    )
}

/// The digest of the row alias `alias` (with the log's columns), as SQL run with the
/// `search_path` pinned (inside the functions below): the scalar columns as one JSON object
/// (NULLs stripped, timestamps in microseconds), then each JSON column's digest.
pub(crate) fn row_digest_expr(names: &LogNames, alias: &str) -> String {
    let scalars: Vec<String> = LOG_COLUMNS
        .iter()
        .filter(|c| !matches!(c.sql_type, "json" | "jsonb"))
        .map(|c| {
            let v = format!("{alias}.{}", c.name);
            let v = if c.sql_type == "timestamptz" {
                format!("(extract(epoch FROM {v}) * 1000000)::bigint")
            } else {
                v
            };
            format!("{}, {v}", text_literal(c.name))
        })
        .collect();
    let mut parts = vec![format!(
        "convert_to(jsonb_strip_nulls(jsonb_build_object({}))::text, 'UTF8')",
        scalars.join(", ")
    )];
    parts.extend(
        LOG_COLUMNS
            .iter()
            .filter(|c| matches!(c.sql_type, "json" | "jsonb"))
            .map(|c| format!("coalesce({}, ''::bytea)", json_digest_expr(names, c, alias))),
    );
    format!("sha256({})", parts.join("\n        || "))
}

/// Where a query takes its rows from, for the functions that run it over a relation they are
/// given: the text is cut there.
pub(crate) const SOURCE: &str = "\u{1}source\u{1}";

/// `query` cut at [`SOURCE`].
pub(crate) fn split_at_source(query: &str) -> (&str, &str) {
    query
        .split_once(SOURCE)
        .expect("the query reads its source")
}

/// The log's column names, comma-separated, in table order.
pub(crate) fn column_list() -> String {
    LOG_COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A query of `columns` over the log's rows and, when `archived` names a table with the log's
/// columns (archived rows loaded back), over those too: what `verify` and its checks read.
/// `filter` (a `WHERE` clause, or empty) applies to each side.
pub(crate) fn live_and_archived(
    names: &LogNames,
    columns: &str,
    archived: Option<&str>,
    filter: &str,
) -> String {
    let mut source = format!("SELECT {columns} FROM {}{filter}", names.table());
    if let Some(t) = archived {
        source.push_str(&format!(" UNION ALL SELECT {columns} FROM {t}{filter}"));
    }
    source
}
