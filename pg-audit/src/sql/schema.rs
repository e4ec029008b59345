//! Schema changes of audited tables, recorded in the log itself as `DDL` entries.
//!
//! Why entries of the log, not a table of their own: they then sit in the table's history in
//! order with its row changes (a reader walking entries by id meets a rename exactly where
//! it happened), and are partitioned, sealed, archived, exported and erased like every other
//! entry. A `DDL` entry has no record key (`record_pk` NULL); its `record_key` is the table's
//! schema key ([`ddl_key_expr`]: the record-key formula over the empty object, which no row's
//! key can be), so a table's schema changes are found through the log's `record_key` index.
//! `old_values` is the table's shape before (`{"table": [schema, name], "columns": {attnum:
//! {"name", "type"}}}`), `new_values` the shape after plus `changes` (each `{"added"}`,
//! `{"dropped"}`, `{"renamed": {"from", "to"}}`, `{"retyped": {"column", "from", "to"}}`,
//! `{"table_renamed": {"from", "to"}}`), `statement` (what the client sent, when the event
//! trigger saw it and no audited table keeps columns out of the log: the text may hold
//! values)
//! and `recorded_by` (`event trigger`, or `install` for a change found by a later install).
//!
//! Columns are followed by their number (`attnum`), which a rename keeps: that is how a
//! rename is told from a drop and an add. The shape last recorded is kept in the install
//! record (`shape`, with the table's oid as `relid`). `<log>_record_schema()` compares it with
//! the catalog, writes an entry for each table that changed and keeps the new shape; the
//! log's event trigger calls it after every `ALTER TABLE` (when a superuser installed the
//! log), every install calls it for its table, and the drift check reports a shape that
//! changed unrecorded.

use crate::ident::text_literal;
use crate::sql::create_function;
use crate::sql::names::LogNames;
use crate::sql::shape::{record_key_expr, written_columns};

/// The keyword of a schema change's entries.
pub const DDL: &str = "DDL";

/// The `record_key` of `schema`.`table`'s schema-change entries (SQL expressions of text).
pub fn ddl_key_expr(schema: &str, table: &str) -> String {
    record_key_expr(schema, table, "'{}'::pg_catalog.jsonb")
}

/// The shape of the relation `rel` (an oid expression) as the install record keeps it; NULL
/// when it no longer exists.
pub(crate) fn shape_expr(rel: &str) -> String {
    format!(
        "(SELECT pg_catalog.jsonb_build_object(
            'table', pg_catalog.jsonb_build_array(n.nspname::text, c.relname::text),
            'columns', coalesce((SELECT pg_catalog.jsonb_object_agg(a.attnum::text, pg_catalog.jsonb_build_object(
                                    'name', a.attname::text, 'type', pg_catalog.format_type(a.atttypid, a.atttypmod)))
                                   FROM pg_catalog.pg_attribute AS a
                                  WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0
                                    AND NOT a.attisdropped), '{{}}'::pg_catalog.jsonb))
           FROM pg_catalog.pg_class AS c
           JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
          WHERE c.oid OPERATOR(pg_catalog.=) {rel})"
    )
}

/// The install record's columns for the shape, and `<log>_record_schema(only_table regclass,
/// via text)`: part of the log's DDL (after the install records).
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let config = names.config_table();
    let log = names.table();
    let function = names.function("record_schema");
    let columns: Vec<&str> = written_columns().map(|c| c.name).collect();
    let values: Vec<String> = written_columns()
        .map(|c| {
            match c.name {
                "operation" => text_literal(DDL),
                "schema_name" => "v_now -> 'table' ->> 0".to_owned(),
                "table_name" => "v_now -> 'table' ->> 1".to_owned(),
                "record_key" => ddl_key_expr("(v_now -> 'table' ->> 0)", "(v_now -> 'table' ->> 1)"),
                "old_values" => "r.shape".to_owned(),
                "new_values" => "v_now OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('changes', v_changes, 'statement', CASE WHEN via OPERATOR(pg_catalog.=) 'event trigger' AND NOT v_withhold THEN pg_catalog.current_query() END, 'recorded_by', via)".to_owned(),
                "context" => "v_context".to_owned(),
                "record_pk" | "old_record_pk" | "old_record_key" => "NULL".to_owned(),
                other => panic!("log column `{other}` has no value in a schema change"),
            }
        })
        .collect();
    let change = |kind: &str, body: &str| {
        format!(
            "v_changes := v_changes OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object({}, {body}));",
            text_literal(kind)
        )
    };
    let body = format!(
        "
DECLARE
    r record;
    v_now jsonb;
    v_changes jsonb;
    k text;
    o jsonb;
    n jsonb;
    written integer := 0;
    v_raw text;
    v_context json;
    -- The statement's text is all the client sent (several statements, their literals): kept
    -- only while no audited table keeps columns out of the log, whose values it could hold.
    v_withhold boolean := EXISTS (SELECT FROM {config} AS c
                                   WHERE c.config OPERATOR(pg_catalog.?) {mask_field}
                                      OR (c.config OPERATOR(pg_catalog.->) {audited_field}) OPERATOR(pg_catalog.?) {exclude_field});
BEGIN
    {read_context}
    FOR r IN SELECT t.table_schema, t.table_name, t.relid, t.shape FROM {config} AS t
              WHERE t.relid IS NOT NULL AND (only_table IS NULL OR t.relid OPERATOR(pg_catalog.=) only_table)
              ORDER BY t.table_schema, t.table_name LOOP
        v_now := {shape};
        CONTINUE WHEN v_now IS NULL OR v_now OPERATOR(pg_catalog.=) r.shape;
        IF r.shape IS NOT NULL THEN
            v_changes := '[]';
            IF (r.shape -> 'table') OPERATOR(pg_catalog.<>) (v_now -> 'table') THEN
                {table_renamed}
            END IF;
            FOR k IN SELECT x.k FROM (SELECT pg_catalog.jsonb_object_keys(r.shape -> 'columns') AS k
                                      UNION SELECT pg_catalog.jsonb_object_keys(v_now -> 'columns')) AS x
                      ORDER BY x.k::integer LOOP
                o := r.shape -> 'columns' -> k;
                n := v_now -> 'columns' -> k;
                IF n IS NULL THEN
                    {dropped}
                ELSIF o IS NULL THEN
                    {added}
                ELSE
                    IF (o ->> 'name') OPERATOR(pg_catalog.<>) (n ->> 'name') THEN
                        {renamed}
                    END IF;
                    IF (o ->> 'type') OPERATOR(pg_catalog.<>) (n ->> 'type') THEN
                        {retyped}
                    END IF;
                END IF;
            END LOOP;
            INSERT INTO {log} ({columns}) VALUES ({values});
            written := written OPERATOR(pg_catalog.+) 1;
        END IF;
        UPDATE {config} AS t SET shape = v_now
         WHERE t.table_schema OPERATOR(pg_catalog.=) r.table_schema AND t.table_name OPERATOR(pg_catalog.=) r.table_name;
    END LOOP;
    RETURN written;
END
",
        read_context = crate::context::read_statements("    "),
        mask_field = text_literal(crate::sql::install::MASK_FIELD),
        audited_field = text_literal(crate::sql::install::AUDITED_FIELD),
        exclude_field = text_literal(crate::sql::install::EXCLUDE_FIELD),
        shape = shape_expr("r.relid"),
        table_renamed = change(
            "table_renamed",
            "pg_catalog.jsonb_build_object('from', r.shape -> 'table', 'to', v_now -> 'table')"
        ),
        dropped = change(
            "dropped",
            "pg_catalog.jsonb_build_object('column', o ->> 'name', 'type', o ->> 'type')"
        ),
        added = change(
            "added",
            "pg_catalog.jsonb_build_object('column', n ->> 'name', 'type', n ->> 'type')"
        ),
        renamed = change(
            "renamed",
            "pg_catalog.jsonb_build_object('from', o ->> 'name', 'to', n ->> 'name')"
        ),
        retyped = change(
            "retyped",
            "pg_catalog.jsonb_build_object('column', n ->> 'name', 'from', o ->> 'type', 'to', n ->> 'type')"
        ),
        columns = columns.join(", "),
        values = values.join(", "),
    );
    format!(
        "ALTER TABLE {config} ADD COLUMN IF NOT EXISTS relid oid;
ALTER TABLE {config} ADD COLUMN IF NOT EXISTS shape jsonb;
{}
",
        create_function(
            &format!(
                "{function}(only_table regclass DEFAULT NULL, via text DEFAULT 'event trigger')"
            ),
            "integer",
            "plpgsql",
            false,
            &body
        )
    )
}

/// SQL an install runs after recording `table` (a text literal of its name): keeps its oid
/// in the install record, then records a schema change since the last install (none the
/// first time, which keeps the shape).
pub(crate) fn install_sql(names: &LogNames, table_lit: &str) -> String {
    let body = format!(
        "
BEGIN
    UPDATE {config} AS r SET relid = c.oid
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
       AND r.table_schema OPERATOR(pg_catalog.=) n.nspname::text AND r.table_name OPERATOR(pg_catalog.=) c.relname::text;
    PERFORM {function}(pg_catalog.to_regclass({table_lit}), 'install');
END
",
        config = names.config_table(),
        function = names.function("record_schema"),
    );
    format!("DO {};", crate::ident::dollar_quote(&body))
}

/// A table's schema changes, oldest first: `id` and `changes` (jsonb); `$1` the schema,
/// `$2` the table (as the entries name it: the table's name when it changed).
pub(crate) fn changes_sql(names: &LogNames) -> String {
    format!(
        "SELECT l.id, l.new_values OPERATOR(pg_catalog.->) 'changes' AS changes FROM {log} AS l
 WHERE l.record_key OPERATOR(pg_catalog.=) {key} AND l.operation OPERATOR(pg_catalog.=) {ddl}
   AND l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
 ORDER BY l.id",
        log = names.table(),
        key = ddl_key_expr("$1::text", "$2::text"),
        ddl = text_literal(DDL),
    )
}
