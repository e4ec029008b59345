//! Erasure: a value of the log replaced by a marker, its digest kept in the redaction log so
//! the seals still verify, and the checks that a recorded redaction is one `redact` made and
//! that an erased value stays erased.

use std::fmt::Write as _;

use crate::ident::{in_template, text_literal};
use crate::sql::create_function;
use crate::sql::digest::{
    SOURCE, column_list, live_and_archived, redaction_applies, split_at_source, value_digest_expr,
};
use crate::sql::names::LogNames;
pub use crate::sql::shape::REDACTED;

/// The SQL of [`crate::AuditLog::insert_redaction_sql`].
pub(crate) fn insert_redaction_sql(names: &LogNames) -> String {
    format!(
        "INSERT INTO {} (reason, table_schema, table_name, record_pk, columns, target)
             VALUES ($1, $2, $3, $4::text::jsonb, $5::text[], $6) RETURNING redaction_id",
        names.redactions_table()
    )
}

/// The SQL of [`crate::AuditLog::redact_sql`].
pub(crate) fn redact_sql(names: &LogNames, target: &str) -> String {
    format!(
        "SELECT entry_id FROM {}({}::regclass, $1, $2, $3, $4::text::jsonb, $5::text[], $6)",
        names.function("redact"),
        text_literal(target)
    )
}

/// The SQL of [`crate::AuditLog::unerased_sql`].
pub(crate) fn unerased_sql(names: &LogNames, archived: Option<&str>) -> String {
    unerased_query(
        names,
        &live_and_archived(names, &column_list(), archived, ""),
    )
}

/// The SQL of [`crate::AuditLog::archive_overlaps_sql`].
pub(crate) fn archive_overlaps_sql(names: &LogNames) -> String {
    format!(
        "SELECT EXISTS (SELECT FROM {values} AS r JOIN {archives} AS a ON r.entry_id >= a.min_id AND r.entry_id <= a.max_id) AS erased,
       ARRAY(SELECT l.id FROM {log} AS l JOIN {archives} AS a ON l.id >= a.min_id AND l.id <= a.max_id
              ORDER BY l.id LIMIT 1000) AS live",
        values = names.redacted_values_table(),
        archives = names.archives_table(),
        log = names.table(),
    )
}

/// The SQL of [`crate::AuditLog::erasures_in_sql`].
pub(crate) fn erasures_in_sql(names: &LogNames) -> String {
    format!(
        "SELECT EXISTS (SELECT FROM {} WHERE entry_id >= $1 AND entry_id <= $2)",
        names.redacted_values_table()
    )
}

/// The SQL of [`crate::AuditLog::redaction_counts_sql`].
pub(crate) fn redaction_counts_sql(names: &LogNames) -> String {
    format!(
        "SELECT (SELECT count(*) FROM {}) AS redactions, (SELECT count(*) FROM {}) AS redacted_values",
        names.redactions_table(),
        names.redacted_values_table()
    )
}

/// Whether `redact` could have erased the key `r.key` of column `r.column_name` of the log row
/// `l` (a recorded erasure `r`): a value of the JSON columns that is not a key column, or the
/// context's user id.
fn redact_could_erase() -> String {
    let rules: String = crate::sql::shape::LOG_COLUMNS
        .iter()
        .filter_map(|c| {
            redaction_applies(c.name, "l", "r.key")
                .map(|rule| format!(" WHEN {} THEN ({rule})", text_literal(c.name)))
        })
        .collect();
    format!("coalesce(CASE r.column_name{rules} ELSE false END, false)")
}

/// The SQL of [`crate::AuditLog::unjustified_redactions_sql`].
pub(crate) fn unjustified_redactions_sql(names: &LogNames, archived: Option<&str>) -> String {
    let source = live_and_archived(names, &column_list(), archived, "");
    format!(
        "SELECT r.redaction_id, r.entry_id, r.column_name, r.key
  FROM {values} AS r
  JOIN {redactions} AS d ON d.redaction_id = r.redaction_id
  LEFT JOIN ({source}) AS l ON l.id = r.entry_id
 WHERE l.id IS NOT NULL AND NOT {could}
 ORDER BY r.entry_id, r.column_name, r.key",
        values = names.redacted_values_table(),
        redactions = names.redactions_table(),
        could = redact_could_erase(),
    )
}

/// The SQL of [`crate::AuditLog::applied_redactions_sql`].
pub(crate) fn applied_redactions_sql(names: &LogNames, archived: Option<&str>) -> String {
    let source = live_and_archived(
        names,
        &column_list(),
        archived,
        " WHERE id >= $1 AND id <= $2",
    );
    format!(
        "SELECT r.entry_id, r.column_name, r.key, r.digest
  FROM {values} AS r
  JOIN {redactions} AS d ON d.redaction_id = r.redaction_id
  JOIN ({source}) AS l ON l.id = r.entry_id
 WHERE r.entry_id >= $1 AND r.entry_id <= $2 AND {could}
 ORDER BY r.entry_id, r.column_name, r.key, r.redaction_id",
        values = names.redacted_values_table(),
        redactions = names.redactions_table(),
        could = redact_could_erase(),
    )
}

/// The values a recorded redaction erased that are present again in the rows of `source`.
fn unerased_query(names: &LogNames, source: &str) -> String {
    format!(
        "SELECT r.entry_id, r.column_name, r.key, r.redaction_id
  FROM {values} AS r
  JOIN ({source}) AS l ON l.id = r.entry_id
 WHERE (pg_catalog.to_jsonb(l) -> r.column_name -> r.key) IS DISTINCT FROM {marker}::jsonb
 ORDER BY r.entry_id, r.column_name, r.key",
        values = names.redacted_values_table(),
        marker = text_literal(&format!("\"{REDACTED}\"")),
    )
}

/// The redaction log's tables and functions (the values still erased, the redaction itself),
/// part of the log's DDL.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let table = names.table();
    let redactions = names.redactions_table();
    let values = names.redacted_values_table();
    // Names inside the bodies' `format` templates (a log may be named `a'b%`).
    let values_fmt = in_template(&values.to_string());
    let redact = names.function("redact");
    let marker = text_literal(&format!("\"{REDACTED}\""));
    let columns = column_list();
    let mut sql = String::new();

    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {redactions} (
    redaction_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    redacted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    redacted_by text NOT NULL DEFAULT session_user,
    reason text NOT NULL CHECK (pg_catalog.btrim(reason) <> ''),
    table_schema text,
    table_name text,
    record_pk jsonb,
    columns text[],
    target text NOT NULL
);
COMMENT ON TABLE {redactions} IS 'pg-audit redactions: values erased from the log and its archives; append-only';
CREATE TABLE IF NOT EXISTS {values} (
    redaction_id bigint NOT NULL REFERENCES {redactions},
    entry_id bigint NOT NULL,
    column_name text NOT NULL,
    key text NOT NULL,
    digest bytea NOT NULL,
    PRIMARY KEY (entry_id, column_name, key)
);
"
    );

    // A redaction's digest stands in for the value only while the marker does: a value put
    // back (the digest would match it) is a finding of its own.
    let unerased_body = format!(
        "
DECLARE
    source text := {source};
BEGIN
    IF archived IS NOT NULL THEN
        source := source || ' UNION ALL SELECT {columns} FROM ' || archived::text;
    END IF;
    RETURN QUERY EXECUTE {before} || source || {after};
END
",
        source = text_literal(&format!("SELECT {columns} FROM {table}")),
        before = text_literal(split_at_source(&unerased_query(names, SOURCE)).0),
        after = text_literal(split_at_source(&unerased_query(names, SOURCE)).1),
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!(
                "{}(archived regclass DEFAULT NULL)",
                names.function("unerased")
            ),
            "TABLE (entry_id bigint, column_name text, key text, redaction_id bigint)",
            "plpgsql STABLE",
            false,
            &unerased_body
        )
    );

    let record_key = crate::sql::shape::record_key_expr("tbl_schema", "tbl_name", "pk");
    // The marker and the digest inside the string literals of `format` templates.
    let marker = in_template(&marker);
    let vd = in_template(&value_digest_expr("e.key", "e.value::text"));
    let erase_user_counts = crate::sql::counts::erase_user_sql(names);
    let redact_body = format!(
        "
DECLARE
    filter text;
BEGIN
    IF pk IS NOT NULL THEN
        filter := pg_catalog.format('schema_name = %L AND table_name = %L AND (record_key = %s OR old_record_key = %s) AND (record_pk = %L OR old_record_pk = %L)',
                                    tbl_schema, tbl_name, {record_key}, {record_key}, pk, pk);
        -- The digest of each value about to be erased, kept so the seals still verify.
        EXECUTE pg_catalog.format(
            'INSERT INTO {values_fmt} (redaction_id, entry_id, column_name, key, digest)
             SELECT $1, l.id, v.col, e.key, {vd}
               FROM %s AS l
              CROSS JOIN LATERAL (VALUES (''old_values'', l.old_values), (''new_values'', l.new_values)) AS v(col, data)
              CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(v.data) = ''object'' THEN v.data END) AS e
              WHERE %s
                AND e.value <> {marker}::jsonb
                AND CASE WHEN $2 IS NULL THEN NOT (l.record_pk ? e.key) ELSE e.key = ANY ($2) END
             ON CONFLICT DO NOTHING', target, filter)
          USING redaction, columns;
        RETURN QUERY EXECUTE pg_catalog.format(
            'UPDATE %s AS l
                SET old_values = (SELECT jsonb_object_agg(e.key, CASE WHEN r.key IS NULL THEN e.value ELSE {marker}::jsonb END)
                                    FROM jsonb_each(l.old_values) AS e
                                    LEFT JOIN {values_fmt} AS r ON r.entry_id = l.id AND r.column_name = ''old_values'' AND r.key = e.key),
                    new_values = (SELECT jsonb_object_agg(e.key, CASE WHEN r.key IS NULL THEN e.value ELSE {marker}::jsonb END)
                                    FROM jsonb_each(l.new_values) AS e
                                    LEFT JOIN {values_fmt} AS r ON r.entry_id = l.id AND r.column_name = ''new_values'' AND r.key = e.key)
              WHERE %s
                AND EXISTS (SELECT FROM {values_fmt} AS r
                             WHERE r.entry_id = l.id AND r.column_name IN (''old_values'', ''new_values'')
                               AND (jsonb_typeof(l.old_values) = ''object'' AND l.old_values->r.key <> {marker}::jsonb
                                    OR jsonb_typeof(l.new_values) = ''object'' AND l.new_values->r.key <> {marker}::jsonb))
             RETURNING l.id', target, filter);
    ELSIF user_id IS NOT NULL THEN
        {erase_user_counts}
        EXECUTE pg_catalog.format(
            'INSERT INTO {values_fmt} (redaction_id, entry_id, column_name, key, digest)
             SELECT $1, l.id, ''context'', e.key, {vd}
               FROM %s AS l
              CROSS JOIN LATERAL json_each(CASE WHEN json_typeof(l.context) = ''object'' THEN l.context END) AS e
              WHERE l.context->>''user_id'' = $2 AND e.key = ''user_id''
             ON CONFLICT DO NOTHING', target)
          USING redaction, user_id;
        RETURN QUERY EXECUTE pg_catalog.format(
            'UPDATE %s AS l
                SET context = (SELECT json_object_agg(e.key, CASE WHEN e.key = ''user_id'' THEN {marker}::json ELSE e.value END ORDER BY e.n)
                                 FROM json_each(l.context) WITH ORDINALITY AS e(key, value, n))
              WHERE l.context->>''user_id'' = $1
             RETURNING l.id', target)
          USING user_id;
    ELSE
        RAISE EXCEPTION 'pg-audit: a redaction names a record (table and key) or a user id';
    END IF;
END
"
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!(
                "{redact}(target regclass, redaction bigint, tbl_schema text, tbl_name text, pk jsonb, columns text[], user_id text)"
            ),
            "TABLE (entry_id bigint)",
            "plpgsql",
            false,
            &redact_body
        )
    );
    for t in [&redactions, &values] {
        let _ = writeln!(sql, "REVOKE ALL ON TABLE {t} FROM PUBLIC;");
    }
    sql
}
