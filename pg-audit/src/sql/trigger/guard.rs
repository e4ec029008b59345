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

/// The nodes a condition's compiled expression may hold: the query around it, and
/// computations over the row's values (operators, function calls, casts, `CASE`, `COALESCE`,
/// `NULLIF`, `IS [NOT] NULL`, arrays, rows, subscripts, `current_date` and its kin). Anything
/// else — a subquery, a domain's check (which may call its owner's functions), XML, a
/// session value such as `session_user` — is refused.
const ALLOWED_NODES: [&str; 30] = [
    "QUERY",
    "TARGETENTRY",
    "RANGETBLENTRY",
    "RANGETBLREF",
    "FROMEXPR",
    "ALIAS",
    "VAR",
    "CONST",
    "OPEXPR",
    "FUNCEXPR",
    "BOOLEXPR",
    "NULLTEST",
    "BOOLEANTEST",
    "CASEEXPR",
    "CASEWHEN",
    "CASETESTEXPR",
    "COALESCEEXPR",
    "MINMAXEXPR",
    "NULLIFEXPR",
    "DISTINCTEXPR",
    "SCALARARRAYOPEXPR",
    "ROWCOMPAREEXPR",
    "ROWEXPR",
    "ARRAYEXPR",
    "ARRAYCOERCEEXPR",
    "RELABELTYPE",
    "COERCEVIAIO",
    "COLLATEEXPR",
    "SUBSCRIPTINGREF",
    // Only those of ALLOWED_SQL_VALUE_FUNCTIONS.
    "SQLVALUEFUNCTION",
];

/// The `SQLValueFunction`s a condition may use: `current_date`, `current_time`,
/// `current_timestamp`, `localtime`, `localtimestamp` (with or without precision), whose
/// `TimeZone` the trigger pins; not `current_user`, `session_user`, `current_schema`...
const ALLOWED_SQL_VALUE_FUNCTIONS: std::ops::RangeInclusive<u32> = 0..=8;

/// Stable built-ins whose answer could depend on the session beyond the pinned settings
/// (`lc_time`, `lc_numeric`): refused though their types are date/time ones.
const LOCALE_DEPENDENT: [&str; 4] = ["to_char", "to_date", "to_timestamp", "to_number"];

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
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|n| text_literal(n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let nodes = list(&ALLOWED_NODES);
    let locale = list(&LOCALE_DEPENDENT);
    let datetime = list(&[
        "date",
        "time without time zone",
        "time with time zone",
        "timestamp without time zone",
        "timestamp with time zone",
        "interval",
    ]);
    let plain = list(&[
        "date",
        "time without time zone",
        "time with time zone",
        "timestamp without time zone",
        "timestamp with time zone",
        "interval",
        "text",
        "character varying",
        "character",
        "boolean",
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "real",
        "double precision",
    ]);
    // Every function the compiled condition calls, read from its query tree (built-in ones
    // are not recorded as dependencies): called by name, or behind an operator, alone or in a
    // row comparison's list.
    let calls = format!(
        "SELECT m[1]::oid AS fn
           FROM pg_catalog.pg_rewrite AS r
          CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::text, ':funcid ([0-9]+)', 'g') AS m
          WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass
         UNION
         SELECT o.oprcode::oid
           FROM pg_catalog.pg_rewrite AS r
          CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::text, ':(?:opno|opnos) \\(?o?((?: ?[0-9]+)+)', 'g') AS m
          CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.btrim(m[1]), ' ')) AS x(oid)
           JOIN pg_catalog.pg_operator AS o ON o.oid = x.oid::oid
          WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass"
    );
    let (svf_lo, svf_hi) = (
        ALLOWED_SQL_VALUE_FUNCTIONS.start(),
        ALLOWED_SQL_VALUE_FUNCTIONS.end(),
    );
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
    SELECT pg_catalog.string_agg(DISTINCT p.oid::regprocedure::text, ', ') INTO missing
      FROM ({calls}) AS c JOIN pg_catalog.pg_proc AS p ON p.oid = c.fn
     WHERE p.provolatile = 'v';
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: the condition % calls volatile %; a condition must decide the same way for the same row', {as_written}, missing
            USING HINT = 'Use stable or immutable functions: now() rather than clock_timestamp(), no random() or nextval().';
    END IF;
    -- An allowlist, read from the compiled expression: only computations over the row's
    -- values, which nothing in the writer's session can steer.
    SELECT pg_catalog.string_agg(DISTINCT pg_catalog.lower(m[1]), ', ') INTO missing
      FROM pg_catalog.pg_rewrite AS r
     CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::text, '\{{([A-Z_]+)', 'g') AS m
     WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass AND m[1] <> ALL (ARRAY[{nodes}]);
    SELECT pg_catalog.concat_ws(', ', missing, pg_catalog.string_agg(DISTINCT coalesce((ARRAY['current_role', 'current_user', 'user', 'session_user', 'current_catalog', 'current_schema'])[m[1]::int - 8], m[1]), ', ')) INTO missing
      FROM pg_catalog.pg_rewrite AS r
     CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::text, '\{{SQLVALUEFUNCTION :op ([0-9]+)', 'g') AS m
     WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass AND m[1]::int NOT BETWEEN {svf_lo} AND {svf_hi};
    IF missing <> '' THEN
        RAISE EXCEPTION 'pg-audit: the condition % uses % (a subquery, a session value such as session_user, a domain''s check, XML...); a condition may only compute over the row''s values', {as_written}, missing
            USING HINT = 'Use the row''s columns with comparisons, arithmetic, text, date/time and JSON operators and functions.';
    END IF;
    SELECT pg_catalog.string_agg(DISTINCT t.oid::regtype::text, ', ') INTO missing
      FROM pg_catalog.pg_rewrite AS r
     CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::text, ':[a-z]*type ([0-9]+)', 'g') AS m
      JOIN pg_catalog.pg_type AS t ON t.oid = m[1]::oid
     WHERE r.ev_class = 'pg_temp.{CONDITION_VIEW}'::regclass
       AND t.typnamespace = 'pg_catalog'::regnamespace AND t.typname ~ '^_?reg';
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: the condition % uses type %, whose values are looked up in the catalog and the search path', {as_written}, missing
            USING HINT = 'Compare the row''s values themselves.';
    END IF;
    SELECT pg_catalog.string_agg(DISTINCT p.oid::regprocedure::text, ', ') INTO missing
      FROM ({calls}) AS c JOIN pg_catalog.pg_proc AS p ON p.oid = c.fn
     WHERE NOT (p.pronamespace = 'pg_catalog'::regnamespace AND p.proname !~ '^pg_'
                AND (p.provolatile = 'i'
                     -- Stable over date/time: only the pinned TimeZone and DateStyle decide.
                     OR (p.provolatile = 's' AND p.proname <> ALL (ARRAY[{locale}]::name[])
                         AND (SELECT pg_catalog.bool_and(a.t = ANY (ARRAY[{plain}]::regtype[]))
                                     AND pg_catalog.bool_or(a.t = ANY (ARRAY[{datetime}]::regtype[]))
                                FROM pg_catalog.unnest(p.proargtypes::oid[] || p.prorettype) AS a(t)))));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: the condition % calls %, which does not compute over the row''s values alone', {as_written}, missing
            USING HINT = 'A condition may call built-in functions that compute over their arguments (comparison, arithmetic, text, date/time, JSON): not ones that read settings, the catalog or the session (current_setting, to_regclass, pg_*).';
    END IF;
    DROP VIEW pg_temp.{CONDITION_VIEW};"#
    )
}
