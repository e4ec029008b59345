//! The trigger function's body: one branch per audited operation, each an `INSERT` into the
//! log built by one builder from where the operation's rows come from ([`Rows`]).
//!
//! The `INSERT`'s column list is the log's [`written_columns`], so the log's shape is stated
//! once ([`crate::sql::shape`]); [`LogRow`] gives each of them its value.

use std::fmt::Write as _;

use super::TriggerSpec;
use super::row::{SEED, condition_for, key_json, record_key, values_json};
use crate::ident::QualifiedName;
use crate::sql::log::AuditLog;
use crate::sql::shape::{NEW_ROWS, OLD_ROWS, Operation, record_key_seed_expr, written_columns};

/// The function's body: `DECLARE ... BEGIN IF TG_OP = ... END`.
pub(super) fn function_body(spec: &TriggerSpec, log: &AuditLog) -> String {
    let columns: Vec<&str> = written_columns().map(|c| c.name).collect();
    let insert_into = format!("INSERT INTO {} ({})", log.table(), columns.join(", "));
    let masked = log.names().function("masked");
    // The table's names are read once per call: a partition's triggers pass the audited
    // table's, so its rows are logged under the table's name. The context is read once, before
    // any branch, into `v_context`.
    let mut body = format!(
        "\nDECLARE\n    v_old jsonb;\n    v_new jsonb;\n    v_pk jsonb;\n    v_old_pk jsonb;\n    v_raw text;\n    v_context json;\n    \
         {SCHEMA} text := COALESCE(TG_ARGV[0], TG_TABLE_SCHEMA);\n    \
         {TABLE} text := COALESCE(TG_ARGV[1], TG_TABLE_NAME);\n    \
         {SEED} integer := {};\n{}BEGIN\n    {}\n",
        record_key_seed_expr(SCHEMA, TABLE),
        if spec.condition().is_some() {
            format!("    {ABBREVIATIONS_VAR} text;\n")
        } else {
            String::new()
        }
        .to_owned()
            + if kept_out(spec).is_empty() {
                ""
            } else {
                "    v_missing text;\n"
            },
        crate::context::read_statements("    ")
    );
    body.push_str(&kept_out_guard(spec));
    let mut branches = String::new();
    for (i, &op) in spec.operations().iter().enumerate() {
        let keyword = if i == 0 { "IF" } else { "ELSIF" };
        let statement = Rows::of(spec, op, false).insert(spec, op, &insert_into, &masked);
        let branch = if spec.is_row_level(op) {
            // Row-level as configured; statement-level on a partitioned table, whose
            // partitions are audited by statement-level triggers of their own.
            let row = Rows::of(spec, op, true).insert(spec, op, &insert_into, &masked);
            format!(
                "IF TG_LEVEL OPERATOR(pg_catalog.=) 'ROW' THEN\n        {row}\n        ELSE\n        {statement}\n        END IF;"
            )
        } else {
            statement
        };
        let _ = writeln!(
            branches,
            "    {keyword} TG_OP OPERATOR(pg_catalog.=) '{}' THEN\n        {branch}",
            op.keyword(),
        );
    }
    branches.push_str("    END IF;\n");
    if spec.condition().is_some() {
        // A zone abbreviation in the condition's literals reads the same for every writer.
        branches = crate::session::abbreviations_pinned(ABBREVIATIONS_VAR, &branches);
    }
    body.push_str(&branches);
    body.push_str("    RETURN NULL;\nEND\n");
    body
}

/// The columns the configuration keeps out of the log by name: excluded, and masked.
pub(super) fn kept_out(spec: &TriggerSpec) -> Vec<&crate::ident::Ident> {
    let mut names: Vec<&crate::ident::Ident> = spec.mask().iter().collect();
    if let super::Columns::Exclude(cols) = spec.columns() {
        names.extend(cols);
    }
    names
}

/// PL/pgSQL refusing the write when the table no longer has a column the configuration keeps
/// out by name (renamed since the install): its values would otherwise reach the log in clear
/// under the new name. One catalog probe per call, only for tables with such columns.
fn kept_out_guard(spec: &TriggerSpec) -> String {
    let names = kept_out(spec);
    if names.is_empty() {
        return String::new();
    }
    let list: Vec<String> = names.iter().map(|c| c.literal()).collect();
    format!(
        "    SELECT c.name INTO v_missing FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS c(name)
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID AND a.attname OPERATOR(pg_catalog.=) c.name
                          AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped)
     LIMIT 1;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: %.% has no column %, which its audit keeps out of the log (excluded or masked): renamed or dropped since the audit was installed, its values would reach the log in clear', {SCHEMA}, {TABLE}, v_missing
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Install the table''s audit again with the column''s new name (or without it); writes are refused until then.';
    END IF;
",
        list.join(", ")
    )
}

/// The variable holding the writer's `timezone_abbreviations` while the condition runs.
const ABBREVIATIONS_VAR: &str = "v_abbreviations";

/// Where one operation's log rows come from.
enum Rows {
    /// TRUNCATE: no row; one log row with no key and no values.
    None,
    /// A row-level trigger's `NEW` and `OLD`.
    Trigger,
    /// A statement-level trigger's transition tables: `from` the rows, `filter` the condition
    /// (a `WHERE` clause or nothing), `pair` whether old and new versions are paired (UPDATE).
    Transition {
        from: String,
        filter: String,
        pair: bool,
    },
}

impl Rows {
    /// The rows of `op` at a trigger of the given level.
    fn of(spec: &TriggerSpec, op: Operation, row_level: bool) -> Rows {
        if op == Operation::Truncate {
            return Rows::None;
        }
        if row_level {
            return Rows::Trigger;
        }
        match op {
            Operation::Update => {
                // Transition tables hold the old and new versions of the rows in the same
                // order, so pairing them by position is right even when the key changed.
                let condition = condition_for(spec, op, NEW_ROW, OLD_ROW)
                    .map(|c| format!(" AND ({c})"))
                    .unwrap_or_default();
                Rows::Transition {
                    from: format!(
                        "(SELECT pg_catalog.row_number() OVER () AS ordinal, pg_audit_row AS r FROM {OLD_ROWS} AS pg_audit_row) AS pg_audit_old
                  JOIN (SELECT pg_catalog.row_number() OVER () AS ordinal, pg_audit_row AS r FROM {NEW_ROWS} AS pg_audit_row) AS pg_audit_new
                    ON pg_audit_new.ordinal OPERATOR(pg_catalog.=) pg_audit_old.ordinal"
                    ),
                    filter: format!("\n                 WHERE TRUE{condition}"),
                    pair: true,
                }
            }
            _ => {
                let (rows, alias) = single_rows(op);
                Rows::Transition {
                    from: format!("{rows} AS {alias}"),
                    filter: condition_for(spec, op, alias, alias)
                        .map(|c| format!("\n         WHERE ({c})"))
                        .unwrap_or_default(),
                    pair: false,
                }
            }
        }
    }

    /// The branch's statements: one `INSERT` into the log.
    fn insert(
        &self,
        spec: &TriggerSpec,
        op: Operation,
        insert_into: &str,
        masked: &QualifiedName,
    ) -> String {
        let keyword = format!("'{}'", op.keyword());
        let context = CONTEXT;
        match self {
            Rows::None => {
                let row = LogRow::without_key(&keyword, context);
                format!("{insert_into}\n        VALUES ({});", row.list())
            }
            Rows::Trigger => {
                // The condition, here rather than in the trigger's `WHEN`: with the function's
                // pinned settings, whatever the writer's session set.
                let statement = row_statement(spec, op, insert_into, masked);
                match condition_for(spec, op, "NEW", "OLD") {
                    Some(c) => format!("IF ({c}) THEN\n        {statement}\n        END IF;"),
                    None => statement,
                }
            }
            Rows::Transition { from, filter, pair } => {
                let (key_row, old, new) = if *pair {
                    (
                        NEW_ROW,
                        values_json(spec, OLD_ROW, masked),
                        values_json(spec, NEW_ROW, masked),
                    )
                } else {
                    let (_, alias) = single_rows(op);
                    match op {
                        Operation::Delete => (
                            alias,
                            values_json(spec, alias, masked),
                            "NULL::jsonb".into(),
                        ),
                        _ => (
                            alias,
                            "NULL::jsonb".into(),
                            values_json(spec, alias, masked),
                        ),
                    }
                };
                let row = LogRow {
                    operation: &keyword,
                    record_key: record_key("c.record_pk"),
                    record_pk: "c.record_pk".into(),
                    old_values: "c.old_values".into(),
                    new_values: "c.new_values".into(),
                    context: CONTEXT,
                    old_record: pair.then(|| ("c.old_pk".into(), "c.record_pk".into())),
                };
                let (old_pk, changed) = if *pair {
                    (
                        format!(", {} AS old_pk", key_json(spec, OLD_ROW)),
                        "\n         WHERE c.old_values OPERATOR(pg_catalog.<>) c.new_values OR c.old_pk OPERATOR(pg_catalog.<>) c.record_pk",
                    )
                } else {
                    (String::new(), "")
                };
                // The key is built once per row (OFFSET 0 keeps the subquery from being
                // flattened, which would build it twice).
                format!(
                    "{insert_into}
        SELECT {}
          FROM (SELECT {} AS record_pk, {old} AS old_values, {new} AS new_values{old_pk}
                  FROM {from}{filter}
                OFFSET 0) AS c{changed};",
                    row.list(),
                    key_json(spec, key_row),
                )
            }
        }
    }
}

/// A row-level trigger's `INSERT` of `NEW`/`OLD` for `op` (the caller applies the condition).
fn row_statement(
    spec: &TriggerSpec,
    op: Operation,
    insert_into: &str,
    masked: &QualifiedName,
) -> String {
    let keyword = format!("'{}'", op.keyword());
    let key_row = if op == Operation::Delete {
        "OLD"
    } else {
        "NEW"
    };
    let pk = key_json(spec, key_row);
    let row = |old: &str, new: &str| LogRow {
        operation: &keyword,
        record_key: record_key(&pk),
        record_pk: pk.clone(),
        old_values: old.to_owned(),
        new_values: new.to_owned(),
        context: CONTEXT,
        old_record: None,
    };
    match op {
        // Whole audited rows before and after: cheaper than computing a diff in the trigger
        // (docs/performance.md); readers compute the diff. A JSON-equal pair (an update that
        // changed nothing audited) is not logged, unless the key changed: the entry then
        // carries both keys.
        Operation::Update => format!(
            "v_old := {};
        v_new := {};
        v_pk := {};
        v_old_pk := {};
        IF v_old OPERATOR(pg_catalog.<>) v_new OR v_old_pk OPERATOR(pg_catalog.<>) v_pk THEN
            {insert_into}
            VALUES ({});
        END IF;",
            values_json(spec, "OLD", masked),
            values_json(spec, "NEW", masked),
            key_json(spec, "NEW"),
            key_json(spec, "OLD"),
            LogRow {
                record_key: record_key("v_pk"),
                record_pk: "v_pk".into(),
                old_record: Some(("v_old_pk".into(), "v_pk".into())),
                ..row("v_old", "v_new")
            }
            .list()
        ),
        Operation::Delete => format!(
            "{insert_into}\n        VALUES ({});",
            row(&values_json(spec, "OLD", masked), "NULL").list()
        ),
        _ => format!(
            "{insert_into}\n        VALUES ({});",
            row("NULL", &values_json(spec, "NEW", masked)).list()
        ),
    }
}

/// The variable holding the context, read once per call.
const CONTEXT: &str = "v_context";
/// The variables holding the audited table's schema and name.
pub(super) const SCHEMA: &str = "v_schema";
pub(super) const TABLE: &str = "v_table";

/// The paired rows of a statement-level UPDATE, as row expressions.
/// The aliases the function gives whole rows: a column of the audited table of one of these
/// names would be read in the row's place, so the install refuses such a table.
pub(super) const ROW_ALIASES: [&str; 3] = ["pg_audit_row", "pg_audit_new", "pg_audit_old"];

const NEW_ROW: &str = "(pg_audit_new.r)";
const OLD_ROW: &str = "(pg_audit_old.r)";

/// The transition table and row alias of a statement-level INSERT or DELETE.
fn single_rows(op: Operation) -> (&'static str, &'static str) {
    if op == Operation::Delete {
        (OLD_ROWS, "pg_audit_old")
    } else {
        (NEW_ROWS, "pg_audit_new")
    }
}

/// The values of one log row, by written log column.
struct LogRow<'a> {
    operation: &'a str,
    record_key: String,
    record_pk: String,
    old_values: String,
    new_values: String,
    context: &'a str,
    /// For an UPDATE: the key before and the key after, so that the key before is logged when
    /// it differs.
    old_record: Option<(String, String)>,
}

impl<'a> LogRow<'a> {
    /// A row with no key and no values (TRUNCATE).
    fn without_key(operation: &'a str, context: &'a str) -> LogRow<'a> {
        LogRow {
            operation,
            record_key: "NULL".into(),
            record_pk: "NULL".into(),
            old_values: "NULL".into(),
            new_values: "NULL".into(),
            context,
            old_record: None,
        }
    }

    /// The values in the order of the `INSERT`'s column list.
    fn list(&self) -> String {
        written_columns()
            .map(|c| self.value(c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn value(&self, column: &str) -> String {
        let changed_key = |value: &str| match &self.old_record {
            Some((before, after)) => {
                format!("CASE WHEN {before} OPERATOR(pg_catalog.<>) {after} THEN {value} END")
            }
            None => "NULL".to_owned(),
        };
        let value = match column {
            "operation" => self.operation,
            "schema_name" => SCHEMA,
            "table_name" => TABLE,
            "record_key" => &self.record_key,
            "record_pk" => &self.record_pk,
            "old_values" => &self.old_values,
            "new_values" => &self.new_values,
            "context" => self.context,
            "old_record_pk" => {
                return changed_key(self.old_record.as_ref().map_or("", |(before, _)| before));
            }
            "old_record_key" => {
                return changed_key(
                    &self
                        .old_record
                        .as_ref()
                        .map_or_else(String::new, |(before, _)| record_key(before)),
                );
            }
            // The test below fails first when a column is added to the log's shape.
            other => panic!("log column `{other}` has no value in the trigger"),
        };
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_log_column_has_a_value() {
        let row = LogRow::without_key("'TRUNCATE'", "ctx");
        assert_eq!(
            row.list(),
            "'TRUNCATE', v_schema, v_table, NULL, NULL, NULL, NULL, ctx, NULL, NULL"
        );
    }
}
