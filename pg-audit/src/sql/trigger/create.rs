//! The `CREATE TRIGGER` statements: one `AFTER` trigger per audited operation, row-level with
//! `WHEN` filters or statement-level over transition tables ([`super::TriggerLevel`]).

use std::fmt::Write as _;

use super::guard::{PIN_PATH, RESTORE_PATH};
use super::row::tracked_changed;
use super::{Columns, TriggerSpec};
use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::shape::{Operation, tgtype};

/// The body of the `DO` block that drops every audit trigger of the table and creates one per
/// audited operation, calling `function`. The table is resolved through the caller's
/// `search_path`; the triggers are then created with the path the trigger function runs with,
/// so the names in their `WHEN` clauses resolve to `pg_catalog`'s objects, never to one on the
/// caller's path.
///
/// On a partitioned table every trigger is statement-level: a statement on the table fires
/// them once, with every partition's rows in its transition tables (a row an UPDATE moves
/// between partitions is one old and one new row there), while statements on a partition
/// fire only that partition's own triggers, which the log's `adopt_partitions` creates. A
/// row-level guard calling `guard` is cloned by PostgreSQL onto every partition, present and
/// future; it is disabled on each partition that has its triggers, so a partition created
/// later refuses writes until it has them.
pub(super) fn triggers_body(
    spec: &TriggerSpec,
    function: &QualifiedName,
    guard: &QualifiedName,
) -> String {
    let mut body = format!(
        "
DECLARE
    tbl regclass := pg_catalog.to_regclass({});
    partitioned boolean;
    caller_path text;
    pg_audit_trigger name;
BEGIN
    {PIN_PATH}
    partitioned := (SELECT c.relkind OPERATOR(pg_catalog.=) 'p' FROM pg_catalog.pg_class AS c
                     WHERE c.oid OPERATOR(pg_catalog.=) tbl);
",
        spec.table().literal()
    );
    let _ = writeln!(
        body,
        "    {}",
        Operation::drop_triggers_plpgsql("tbl", &Operation::all_trigger_names_array(), "    ")
    );
    for &op in spec.operations() {
        let statement = statement_trigger(op, function);
        if spec.is_row_level(op) {
            let _ = write!(
                body,
                "    IF partitioned THEN\n    {statement}    ELSE\n{}    END IF;\n",
                row_trigger(spec, op, function)
            );
        } else {
            body.push_str(&statement);
        }
    }
    let _ = writeln!(
        body,
        "    IF partitioned THEN\n        EXECUTE {};\n    END IF;",
        on_table(
            &format!(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON ",
                Operation::guard_trigger_name()
            ),
            &format!(" FOR EACH ROW EXECUTE FUNCTION {guard}()")
        )
    );
    let _ = write!(body, "    {RESTORE_PATH}\nEND\n");
    body
}

/// A statement naming the table: `before`, the table (`tbl`, written schema-qualified under
/// the pinned path), `after`, as an expression for `EXECUTE`.
fn on_table(before: &str, after: &str) -> String {
    let mut expr = format!("{} OPERATOR(pg_catalog.||) tbl::text", text_literal(before));
    if !after.is_empty() {
        let _ = write!(expr, " OPERATOR(pg_catalog.||) {}", text_literal(after));
    }
    expr
}

/// `EXECUTE` of `CREATE TRIGGER name AFTER event ON <table>rest EXECUTE FUNCTION function()`.
fn execute(name: &Ident, event: &str, rest: &str, function: &QualifiedName) -> String {
    format!(
        "    EXECUTE {};\n",
        on_table(
            &format!("CREATE TRIGGER {name} AFTER {event} ON "),
            &format!("{rest}\n    EXECUTE FUNCTION {function}()")
        )
    )
}

/// The statement-level trigger of `op`, over transition tables.
fn statement_trigger(op: Operation, function: &QualifiedName) -> String {
    let referencing = match op.referencing() {
        clause if clause.is_empty() => clause,
        clause => format!("\n    {clause}"),
    };
    execute(
        &op.trigger_name(),
        op.keyword(),
        &format!("{referencing}\n    FOR EACH STATEMENT"),
        function,
    )
}

/// The statements creating `op`'s trigger at its configured level, calling `function`.
#[cfg(test)]
fn create_trigger(spec: &TriggerSpec, op: Operation, function: &QualifiedName) -> String {
    if spec.is_row_level(op) {
        row_trigger(spec, op, function)
    } else {
        statement_trigger(op, function)
    }
}

/// The row-level trigger of `op`, with its `WHEN` filters.
fn row_trigger(spec: &TriggerSpec, op: Operation, function: &QualifiedName) -> String {
    let name = op.trigger_name();
    let kw = op.keyword();
    // An UPDATE of the tracked columns, or of the key: a key change is logged (with both
    // keys) even when the key is not audited.
    let tracked: Option<Vec<Ident>> = match (op, spec.columns()) {
        (Operation::Update, Columns::TrackOnly(cols)) => {
            let mut cols = cols.clone();
            cols.extend(
                spec.primary_key()
                    .iter()
                    .filter(|k| !cols.contains(k))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            Some(cols)
        }
        _ => None,
    };
    // Only what no setting can change: the tracked columns' byte images. A `WHEN` clause
    // runs in the writer's session, with the writer's settings (`TimeZone`, `DateStyle`,
    // `extra_float_digits`...), so the condition is evaluated in the function, whose settings
    // are pinned.
    let mut when = Vec::new();
    if let Some(cols) = &tracked {
        when.push(tracked_changed(cols));
    }
    if let Some(uses) = condition_columns(spec, op) {
        when.push(uses);
    }
    let rest = if when.is_empty() {
        "\n    FOR EACH ROW".to_owned()
    } else {
        format!("\n    FOR EACH ROW\n    WHEN ({})", when.join(" AND "))
    };
    match tracked {
        Some(cols) => {
            let column_list = cols
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            update_of(
                &cols,
                &execute(&name, kw, &rest, function),
                &execute(&name, &format!("UPDATE OF {column_list}"), &rest, function),
            )
        }
        None => execute(&name, kw, &rest, function),
    }
}

/// An always-true `WHEN` term naming the columns `op`'s condition reads, so PostgreSQL
/// refuses to drop one from under the trigger (the trigger depends on the columns its `WHEN`
/// names) rather than every later write failing. Planning folds `… OR true` to `true`: it
/// costs nothing per row, and no setting of the writer's reaches the condition itself.
fn condition_columns(spec: &TriggerSpec, op: Operation) -> Option<String> {
    let row = match op {
        Operation::Insert | Operation::Update => "NEW",
        Operation::Delete => "OLD",
        Operation::Truncate | Operation::Snapshot | Operation::Ddl => return None,
    };
    let mut columns: Vec<String> = Vec::new();
    for r in spec.condition()?.column_refs() {
        let column = Ident::new(r.column).ok()?.to_string();
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    if columns.is_empty() {
        return None;
    }
    let list = columns
        .iter()
        .map(|c| format!("{row}.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!("(ROW({list}) IS NULL OR true)"))
}

/// Creates the UPDATE trigger with `UPDATE OF` the tracked columns, so an UPDATE whose SET
/// list names none of them skips the trigger at no cost; unless the table has another
/// BEFORE UPDATE row trigger or a tracked column is generated: PostgreSQL then decides
/// `UPDATE OF` from the SET list alone and would miss a change made by the trigger or the
/// generation expression, so the plain form (filtered by `WHEN`) is created instead.
fn update_of(cols: &[Ident], plain: &str, column_list: &str) -> String {
    let names = cols
        .iter()
        .map(Ident::literal)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "    IF EXISTS (SELECT FROM pg_catalog.pg_trigger AS t
                WHERE t.tgrelid OPERATOR(pg_catalog.=) tbl AND NOT t.tgisinternal
                  AND t.tgname OPERATOR(pg_catalog.<>) ALL ({audit_triggers})
                  AND (t.tgtype::int OPERATOR(pg_catalog.&) {bits}) OPERATOR(pg_catalog.=) {bits})
       OR EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                   WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attgenerated OPERATOR(pg_catalog.<>) ''
                     AND a.attname OPERATOR(pg_catalog.=) ANY (ARRAY[{names}]::name[])) THEN
        RAISE NOTICE 'pg-audit: % has a BEFORE UPDATE trigger or a generated tracked column; its UPDATE trigger fires on every UPDATE', tbl;
    {plain}    ELSE
    {column_list}    END IF;
",
        audit_triggers = Operation::trigger_names_array(),
        bits = tgtype::BEFORE_UPDATE_ROW,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::log::AuditLog;
    use crate::sql::trigger::{TriggerLevel, TriggerSpecBuilder};

    fn users() -> TriggerSpecBuilder {
        TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
    }

    #[test]
    fn row_level_update_trigger_filters_tracked_columns_in_when() {
        let spec = users()
            .track_only(["name", "email"])
            .condition("NEW.active -- only live users")
            .level(TriggerLevel::Row)
            .build()
            .unwrap();
        let function = spec.function_name(&AuditLog::new());
        let update = create_trigger(&spec, Operation::Update, &function);
        // The condition is not evaluated there (a WHEN clause runs with the writer's settings,
        // so the function, with pinned ones, evaluates it): its columns are only named, so
        // none can be dropped from under the trigger.
        let when = "\n    FOR EACH ROW\n    WHEN (pg_catalog.record_image_ne(ROW(OLD.\"name\", OLD.\"email\", OLD.\"id\"), ROW(NEW.\"name\", NEW.\"email\", NEW.\"id\")) AND (ROW(NEW.\"active\") IS NULL OR true))";
        // UPDATE OF the tracked columns and the key, unless the table's other triggers make it
        // unsafe.
        assert!(
            update.contains(&format!(
                "EXECUTE 'CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE OF \"name\", \"email\", \"id\" ON ' OPERATOR(pg_catalog.||) tbl::text OPERATOR(pg_catalog.||) '{when}"
            )),
            "{update}"
        );
        assert!(
            update.contains(&format!(
                "EXECUTE 'CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE ON ' OPERATOR(pg_catalog.||) tbl::text OPERATOR(pg_catalog.||) '{when}"
            )),
            "{update}"
        );
        assert!(
            create_trigger(&spec, Operation::Delete, &function)
                .contains("WHEN ((ROW(OLD.\"active\") IS NULL OR true))"),
            "the condition is evaluated in the function"
        );
        // On DELETE the function's condition reads the deleted row.
        assert!(
            spec.install_sql(&AuditLog::new())
                .contains("IF (OLD.active  ) THEN")
        );
        // All columns: no WHEN, the function compares the rows.
        let all = users().level(TriggerLevel::Row).build().unwrap();
        assert_eq!(
            create_trigger(&all, Operation::Update, &function),
            format!(
                "    EXECUTE 'CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE ON ' OPERATOR(pg_catalog.||) tbl::text OPERATOR(pg_catalog.||) '\n    FOR EACH ROW\n    EXECUTE FUNCTION {}()';\n",
                function.to_string().replace('\'', "''")
            )
        );
    }

    #[test]
    fn statement_level_triggers_reference_transition_tables() {
        let spec = users().level(TriggerLevel::Statement).build().unwrap();
        let function = spec.function_name(&AuditLog::new());
        assert!(
            create_trigger(&spec, Operation::Update, &function).contains(
                "REFERENCING OLD TABLE AS pg_audit_old_rows NEW TABLE AS pg_audit_new_rows\n    FOR EACH STATEMENT"
            )
        );
    }
}
