//! The install guard: a `DO` block run first in the install's transaction, which fails with a
//! message naming the problem and the fix when the table is missing, lacks a named column, is
//! not keyed by the spec's key, or when the condition does not compile against the table,
//! reads anything but the audited row, or calls a volatile function. Nothing is installed when
//! it fails.
//!
//! Only the table's name is resolved through the caller's `search_path`; every check then runs
//! with the path the trigger functions run with (`pg_catalog, pg_temp`), so no object on the
//! caller's path is called — and a condition compiles here exactly as it will run.

use super::TriggerSpec;
use super::row::condition_for;
use crate::ident::{Ident, text_literal};
use crate::sql::shape::Operation;

/// Built-in functions a condition may not call: they run SQL given as text, read files or
/// large objects, or read settings the writer controls — any of which would let something
/// else than the row decide what is logged, and run it as the log's owner.
const DENIED: [&str; 24] = [
    "ts_rewrite",
    "ts_stat",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "current_setting",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "lo_get",
    "lo_import",
    "lo_export",
];

/// The temporary view the condition is compiled into, to read what it depends on.
const CONDITION_VIEW: &str = "pg_audit_condition_check";

/// Pins the search path for the rest of a `DO` block, saving the caller's in `caller_path`.
pub(super) const PIN_PATH: &str = "caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);";

/// Puts the caller's search path back at the end of a `DO` block.
pub(super) const RESTORE_PATH: &str =
    "PERFORM pg_catalog.set_config('search_path', caller_path, true);";

/// The guard's body.
pub(super) fn check_body(spec: &TriggerSpec) -> String {
    let table_lit = spec.table().literal();
    let columns = spec
        .named_columns()
        .iter()
        .map(|n| text_literal(n))
        .collect::<Vec<_>>()
        .join(", ");
    let key_list = spec
        .primary_key()
        .iter()
        .map(Ident::literal)
        .collect::<Vec<_>>()
        .join(", ");
    let condition = condition_check(spec);
    let reserved = super::body::ROW_ALIASES
        .iter()
        .map(|n| text_literal(n))
        .collect::<Vec<_>>()
        .join(", ");
    let key_text = text_literal(
        &spec
            .primary_key()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    format!(
        r#"
DECLARE
    tbl regclass := pg_catalog.to_regclass({table_lit});
    caller_path text;
    shown text;
    missing text;
    actual text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'pg-audit: table % does not exist; create it (run the application''s own migrations) before installing its audit triggers', {table_lit};
    END IF;
    -- The table as the caller names it, for messages.
    shown := tbl::text;
    {PIN_PATH}
    SELECT pg_catalog.string_agg(i.inhrelid::regclass::text, ', ') INTO missing
      FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
     WHERE i.inhparent = tbl AND NOT c.relispartition;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: table % has inheritance children (%), whose writes its triggers would not see', shown, missing
            USING HINT = 'Audit each child table on its own, or make the children partitions of a partitioned table.';
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') INTO missing
      FROM pg_catalog.unnest(ARRAY[{columns}]::text[]) AS c
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: table % has no column %', shown, missing
            USING HINT = 'Column names are case-sensitive and taken as written; correct the audit configuration or the table.';
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ') INTO missing
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY (ARRAY[{reserved}]::name[]);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: table % has a column named %, a name pg-audit''s trigger function gives whole rows', shown, missing
            USING HINT = 'Rename the column: the function would read it in place of the row.';
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_index AS i
         WHERE i.indrelid = tbl AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
           AND (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname::text)
                  FROM pg_catalog.pg_attribute AS a
                 WHERE a.attrelid = tbl AND a.attnum = ANY (i.indkey))
             = (SELECT pg_catalog.array_agg(k ORDER BY k) FROM pg_catalog.unnest(ARRAY[{key_list}]::text[]) AS k)
    ) THEN
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n) INTO actual
          FROM pg_catalog.pg_index AS i
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = tbl AND i.indisprimary;
        IF actual IS NULL THEN
            RAISE EXCEPTION 'pg-audit: table % has no primary key or unique index on (%)', shown, {key_text}
                USING HINT = 'The log identifies rows by their key: add a primary key to the table, or audit it by the columns of a unique index.';
        ELSE
            RAISE EXCEPTION 'pg-audit: (%) is not a key of table %', {key_text}, shown
                USING HINT = pg_catalog.format('Its primary key is (%s): give that as the audit key.', actual);
        END IF;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ') INTO missing
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attnotnull
       AND a.attname = ANY (ARRAY[{key_list}]::text[]);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: key column % of table % may be NULL, so rows without a key could not be told apart in the log', missing, shown
            USING HINT = 'Audit the table by its primary key, or by the columns of a unique index that are NOT NULL.';
    END IF;{condition}
    {RESTORE_PATH}
END
"#
    )
}

/// The guard's part for the condition: compiled into a temporary view over the table, twice
/// (as `NEW` and as `OLD`), then its dependencies read back. Empty without a condition.
fn condition_check(spec: &TriggerSpec) -> String {
    let Some(condition) = spec.condition() else {
        return String::new();
    };
    let rendered = condition_for(spec, Operation::Update, "pg_audit_new", "pg_audit_old")
        .expect("a condition applies to UPDATE");
    let as_written = text_literal(condition.as_str());
    let denied = DENIED
        .iter()
        .map(|n| text_literal(n))
        .collect::<Vec<_>>()
        .join(", ");
    let select = text_literal(&format!("SELECT ({rendered}) AS c FROM ONLY "));
    format!(
        r#"
    -- The condition, compiled against the table as the triggers will run it.
    BEGIN
        EXECUTE 'CREATE TEMPORARY VIEW {CONDITION_VIEW} AS ' || {select} || tbl::text || ' AS pg_audit_new, ONLY ' || tbl::text || ' AS pg_audit_old';
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pg-audit: the condition % does not compile against table %: %', {as_written}, shown, SQLERRM
            USING HINT = 'A condition is an SQL boolean over NEW.column and OLD.column; its functions and operators are found in pg_catalog.';
    END;
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO actual
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = 'pg_temp.{CONDITION_VIEW}'::regclass AND a.attname = 'c';
    IF actual <> 'boolean' THEN
        RAISE EXCEPTION 'pg-audit: the condition % is of type %, not boolean', {as_written}, actual;
    END IF;
    SELECT pg_catalog.string_agg(DISTINCT d.refobjid::regclass::text, ', ') INTO missing
      FROM pg_catalog.pg_rewrite AS r
      JOIN pg_catalog.pg_depend AS d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
     WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass
       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> tbl AND d.refobjid <> r.ev_class;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: the condition % reads %; a condition may read only the audited row', {as_written}, missing
            USING HINT = 'Write it over NEW.column and OLD.column alone: a table it read could change which rows are logged.';
    END IF;
    -- Built-in objects are not recorded as dependencies: any function or operator listed is
    -- one a role could replace, and the trigger function would run it as the log's owner.
    SELECT pg_catalog.string_agg(DISTINCT pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0), ', ') INTO missing
      FROM pg_catalog.pg_rewrite AS r
      JOIN pg_catalog.pg_depend AS d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
     WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass
       AND d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_operator'::regclass);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: the condition % calls %; a condition may call only built-in functions and operators', {as_written}, missing
            USING HINT = 'The trigger function runs as the log''s owner: a function another role can replace would run as the owner.';
    END IF;
    -- Every function the compiled condition calls, read from its query tree: built-in ones
    -- are not dependencies, and a name could be any of its overloads.
    SELECT pg_catalog.string_agg(DISTINCT p.oid::regprocedure::text, ', ') INTO missing
      FROM pg_catalog.pg_rewrite AS r
     CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::text, ':(funcid|opno) ([0-9]+)', 'g') AS m
      LEFT JOIN pg_catalog.pg_operator AS o ON m[1] = 'opno' AND o.oid = m[2]::oid
      JOIN pg_catalog.pg_proc AS p ON p.oid = CASE WHEN m[1] = 'funcid' THEN m[2]::oid ELSE o.oprcode::oid END
     WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass
       AND (p.pronamespace <> 'pg_catalog'::regnamespace OR p.proname = ANY (ARRAY[{denied}]::name[]));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: the condition % calls %, which reads more than the row', {as_written}, missing
            USING HINT = 'A condition may not run SQL given as text (ts_rewrite, query_to_xml, ...) or read settings a writer could set (current_setting).';
    END IF;
    SELECT pg_catalog.string_agg(DISTINCT p.oid::regprocedure::text, ', ') INTO missing
      FROM pg_catalog.pg_rewrite AS r
     CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::text, ':(funcid|opno) ([0-9]+)', 'g') AS m
      LEFT JOIN pg_catalog.pg_operator AS o ON m[1] = 'opno' AND o.oid = m[2]::oid
      JOIN pg_catalog.pg_proc AS p ON p.oid = CASE WHEN m[1] = 'funcid' THEN m[2]::oid ELSE o.oprcode::oid END
     WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass AND p.provolatile = 'v';
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: the condition % calls volatile %; a condition must decide the same way for the same row', {as_written}, missing
            USING HINT = 'Use stable or immutable functions: now() rather than clock_timestamp(), no random() or nextval().';
    END IF;
    DROP VIEW pg_temp.{CONDITION_VIEW};"#
    )
}
