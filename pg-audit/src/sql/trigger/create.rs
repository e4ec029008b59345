//! The `CREATE TRIGGER` statements: one `AFTER` trigger per audited operation, row-level with
//! `WHEN` filters or statement-level over transition tables ([`super::TriggerLevel`]).

use std::fmt::Write as _;

use super::guard::{PIN_PATH, RESTORE_PATH};
use super::row::{condition_for, tracked_changed};
use super::{Columns, NEW_ROWS, OLD_ROWS, TriggerSpec};
use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::shape::{Operation, tgtype};

/// The body of the `DO` block that drops every audit trigger of the table and creates one per
/// audited operation, calling `function`. The table is resolved through the caller's
/// `search_path`; the triggers are then created with the path the trigger function runs with,
/// so the names in their `WHEN` clauses resolve to `pg_catalog`'s objects, never to one on the
/// caller's path.
pub(super) fn triggers_body(spec: &TriggerSpec, function: &QualifiedName) -> String {
    let mut body = format!(
        "
DECLARE
    tbl regclass := pg_catalog.to_regclass({});
    caller_path text;
BEGIN
    {PIN_PATH}
",
        spec.table().literal()
    );
    for op in Operation::ALL {
        let _ = writeln!(
            body,
            "    EXECUTE {};",
            on_table(
                &format!("DROP TRIGGER IF EXISTS {} ON ", op.trigger_name()),
                ""
            )
        );
    }
    for &op in spec.operations() {
        body.push_str(&create_trigger(spec, op, function));
    }
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

/// The statements creating `op`'s trigger, calling `function`.
fn create_trigger(spec: &TriggerSpec, op: Operation, function: &QualifiedName) -> String {
    let name = op.trigger_name();
    let kw = op.keyword();
    let execute = |event: &str, rest: &str| {
        format!(
            "    EXECUTE {};\n",
            on_table(
                &format!("CREATE TRIGGER {name} AFTER {event} ON "),
                &format!("{rest}\n    EXECUTE FUNCTION {function}()")
            )
        )
    };
    if op == Operation::Truncate {
        return execute("TRUNCATE", " FOR EACH STATEMENT");
    }
    if !spec.is_row_level(op) {
        let referencing = match op {
            Operation::Insert => format!("NEW TABLE AS {NEW_ROWS}"),
            Operation::Delete => format!("OLD TABLE AS {OLD_ROWS}"),
            _ => format!("OLD TABLE AS {OLD_ROWS} NEW TABLE AS {NEW_ROWS}"),
        };
        return execute(
            kw,
            &format!("\n    REFERENCING {referencing}\n    FOR EACH STATEMENT"),
        );
    }
    let tracked = match (op, spec.columns()) {
        (Operation::Update, Columns::TrackOnly(cols)) => Some(cols),
        _ => None,
    };
    let mut when = Vec::new();
    if let Some(cols) = tracked {
        when.push(tracked_changed(cols));
    }
    if let Some(c) = condition_for(spec, op, "NEW", "OLD") {
        when.push(format!("({c})"));
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
                cols,
                &execute(kw, &rest),
                &execute(&format!("UPDATE OF {column_list}"), &rest),
            )
        }
        None => execute(kw, &rest),
    }
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
    fn row_level_update_trigger_filters_in_when() {
        let spec = users()
            .track_only(["name", "email"])
            .condition("NEW.active -- only live users")
            .level(TriggerLevel::Row)
            .build()
            .unwrap();
        let function = spec.function_name(&AuditLog::new());
        let update = create_trigger(&spec, Operation::Update, &function);
        let when = "\n    FOR EACH ROW\n    WHEN (pg_catalog.record_image_ne(ROW(OLD.\"name\", OLD.\"email\"), ROW(NEW.\"name\", NEW.\"email\")) AND (NEW.active  ))";
        // UPDATE OF the tracked columns, unless the table's other triggers make it unsafe.
        assert!(
            update.contains(&format!(
                "EXECUTE 'CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE OF \"name\", \"email\" ON ' OPERATOR(pg_catalog.||) tbl::text OPERATOR(pg_catalog.||) '{when}"
            )),
            "{update}"
        );
        assert!(
            update.contains(&format!(
                "EXECUTE 'CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE ON ' OPERATOR(pg_catalog.||) tbl::text OPERATOR(pg_catalog.||) '{when}"
            )),
            "{update}"
        );
        // On DELETE the condition reads the deleted row.
        assert!(
            create_trigger(&spec, Operation::Delete, &function)
                .contains("FOR EACH ROW\n    WHEN ((OLD.active  ))")
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
