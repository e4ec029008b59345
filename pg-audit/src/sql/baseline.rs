//! The baseline: one `SNAPSHOT` entry per row a table held when `pg-audit baseline` read it,
//! so rows never changed since auditing began have a history, a state at any time and a place
//! in the table as of a time, without reading the live table.
//!
//! A baseline runs in batches, each its own short transaction: a page of the table in key
//! order, locked `FOR SHARE` only while its entries are written (a writer of one of those rows
//! waits for that batch, not for the baseline), its entries, and the progress row in
//! `<log>_baselines` (the last key written), from which an interrupted baseline resumes. The
//! lock orders each row's snapshot against its changes: a change committed before the batch
//! read the row has the lower id, one made after it the higher.
//!
//! A finished baseline tells readers that every row of the table since it began has a record
//! in the log, so the table as of a time needs no scan of the live table.

use crate::ident::text_literal;
use crate::sql::names::LogNames;
use crate::sql::shape::{Operation, record_key_expr, written_columns};
use crate::sql::trigger::TriggerSpec;

/// The progress table, part of the log's DDL.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let baselines = names.baselines_table();
    format!(
        "CREATE TABLE IF NOT EXISTS {baselines} (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at timestamptz,
    last_key jsonb,
    rows bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (schema_name, table_name)
);
COMMENT ON TABLE {baselines} IS {comment};
REVOKE ALL ON TABLE {baselines} FROM PUBLIC;
",
        comment = text_literal(
            "pg-audit baselines: each table whose rows were written to the log as SNAPSHOT entries, how far it went, and when it finished"
        ),
    )
}

/// The progress of a table's baseline: `last_key` (the key object's text, NULL before the
/// first batch), `rows`, `finished` (bool), `started_at`, `finished_at`; no row when none
/// began. Parameters `$1` the schema, `$2` the table.
pub(crate) fn progress_sql(names: &LogNames) -> String {
    format!(
        "SELECT b.last_key::text AS last_key, b.rows, b.finished_at IS NOT NULL AS finished, b.started_at, b.finished_at
  FROM {} AS b
 WHERE b.schema_name OPERATOR(pg_catalog.=) $1 AND b.table_name OPERATOR(pg_catalog.=) $2",
        names.baselines_table()
    )
}

/// Begins a table's baseline (`$1` schema, `$2` table), or, with `again`, begins it anew
/// (a finished baseline is otherwise kept).
pub(crate) fn begin_sql(names: &LogNames, again: bool) -> String {
    let conflict = if again {
        "DO UPDATE SET started_at = pg_catalog.now(), finished_at = NULL, last_key = NULL, rows = 0"
    } else {
        "DO NOTHING"
    };
    format!(
        "INSERT INTO {} (schema_name, table_name) VALUES ($1, $2)
ON CONFLICT (schema_name, table_name) {conflict}",
        names.baselines_table()
    )
}

/// Records a batch (`$1` schema, `$2` table, `$3` the last key written as JSON text, NULL
/// when the batch was empty, `$4` the rows it wrote, `$5` whether the table is done).
pub(crate) fn step_sql(names: &LogNames) -> String {
    format!(
        "UPDATE {} AS b
   SET last_key = coalesce($3::pg_catalog.jsonb, b.last_key), rows = b.rows OPERATOR(pg_catalog.+) $4,
       finished_at = CASE WHEN $5 THEN pg_catalog.now() END
 WHERE b.schema_name OPERATOR(pg_catalog.=) $1 AND b.table_name OPERATOR(pg_catalog.=) $2",
        names.baselines_table()
    )
}

/// Forgets a table's baseline (its uninstall): PL/pgSQL, safe on a log from before baselines.
pub(crate) fn forget_plpgsql(names: &LogNames, table_lit: &str) -> String {
    let baselines = names.baselines_table();
    format!(
        "IF pg_catalog.to_regclass({baselines_lit}) IS NOT NULL THEN
        DELETE FROM {baselines} AS b
         USING pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
         WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
           AND b.schema_name OPERATOR(pg_catalog.=) n.nspname::text AND b.table_name OPERATOR(pg_catalog.=) c.relname::text;
    END IF;",
        baselines_lit = text_literal(&baselines.to_string()),
    )
}

/// One batch of `spec`'s table's baseline into `names`'s log: the next `$2` rows in key order
/// after the key `$1` (JSON text; NULL, and read as such, when `first`), locked `FOR SHARE`, each
/// written as a `SNAPSHOT` entry unless the table's condition leaves it out (as an insert of
/// it would), with the context `$3` (JSON text). Returns `rows` (read), `written` and
/// `last_key` (the last row's key object as text; NULL when no row was left).
///
/// Run with the search path the triggers run with, as the log's owner.
pub(crate) fn batch_sql(spec: &TriggerSpec, names: &LogNames, first: bool) -> String {
    const ROW: &str = "pg_audit_row";
    let table = spec.table();
    let key_columns = |alias: &str| {
        spec.primary_key()
            .iter()
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The key after which the page starts, each column a scalar subquery read once: the
    // comparison is then an index condition, and each batch starts where the last ended
    // (joined to the row instead, the walk started from the table's first key every time).
    let after = if first {
        "\n         WHERE $1::text IS NULL".to_owned()
    } else {
        let bound: Vec<String> = spec
            .primary_key()
            .iter()
            .map(|c| {
                format!(
                    "(SELECT pg_audit_after.{c} FROM pg_catalog.jsonb_populate_record(NULL::{table}, $1::text::pg_catalog.jsonb) AS pg_audit_after)"
                )
            })
            .collect();
        format!(
            "\n         WHERE ROW({}) OPERATOR(pg_catalog.>) ROW({})",
            key_columns(ROW),
            bound.join(", ")
        )
    };
    let from = format!("{table} AS {ROW}");
    let key = crate::sql::trigger::key_json(spec, ROW);
    let values = crate::sql::trigger::values_json(spec, ROW, &names.function("masked"));
    let condition = crate::sql::trigger::condition_for(spec, Operation::Snapshot, ROW, ROW)
        .map(|c| format!("\n         WHERE ({c})"))
        .unwrap_or_default();
    let schema_lit = text_literal(
        table
            .schema
            .as_ref()
            .expect("a baseline's table is schema-qualified")
            .as_str(),
    );
    let table_lit = text_literal(table.name.as_str());
    let columns: Vec<&str> = written_columns().map(|c| c.name).collect();
    let values_list: Vec<String> = written_columns()
        .map(|c| match c.name {
            "operation" => text_literal(Operation::Snapshot.keyword()),
            "schema_name" => schema_lit.clone(),
            "table_name" => table_lit.clone(),
            "record_key" => record_key_expr(&schema_lit, &table_lit, "c.record_pk"),
            "record_pk" => "c.record_pk".to_owned(),
            "new_values" => "c.new_values".to_owned(),
            "context" => "$3::text::pg_catalog.jsonb::pg_catalog.json".to_owned(),
            "old_values" | "old_record_pk" | "old_record_key" => "NULL".to_owned(),
            other => panic!("log column `{other}` has no value in a snapshot"),
        })
        .collect();
    format!(
        "WITH pg_audit_rows AS (
        SELECT {ROW}.* FROM {from}{after}
         ORDER BY {order}
         LIMIT $2
           FOR SHARE OF {ROW}),
     written AS (
        INSERT INTO {log} ({columns})
        SELECT {values_list}
          FROM (SELECT {key} AS record_pk, {values} AS new_values
                  FROM pg_audit_rows AS {ROW}{condition}
                OFFSET 0) AS c
        RETURNING 1)
SELECT (SELECT pg_catalog.count(*) FROM pg_audit_rows) AS rows,
       (SELECT pg_catalog.count(*) FROM written) AS written,
       (SELECT ({key})::text FROM pg_audit_rows AS {ROW} ORDER BY {order_desc} LIMIT 1) AS last_key",
        order = key_columns(ROW),
        order_desc = spec
            .primary_key()
            .iter()
            .map(|c| format!("{ROW}.{c} DESC"))
            .collect::<Vec<_>>()
            .join(", "),
        log = names.table(),
        columns = columns.join(", "),
        values_list = values_list.join(", "),
    )
}
