//! The `CREATE TRIGGER` statements: one `AFTER` trigger per audited operation, row-level with
//! `WHEN` filters or statement-level over transition tables ([`super::TriggerLevel`]).

use super::row::{condition_for, tracked_changed};
use super::{Columns, NEW_ROWS, OLD_ROWS, TriggerSpec};
use crate::ident::{Ident, QualifiedName, dollar_quote, text_literal};
use crate::sql::shape::{Operation, tgtype};

/// `CREATE TRIGGER` for `op`, calling `function`.
pub(super) fn create_trigger(
    spec: &TriggerSpec,
    op: Operation,
    function: &QualifiedName,
) -> String {
    let name = op.trigger_name();
    let table = spec.table();
    let kw = op.keyword();
    if op == Operation::Truncate {
        return format!(
            "CREATE TRIGGER {name} AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {function}();"
        );
    }
    if !spec.is_row_level(op) {
        let referencing = match op {
            Operation::Insert => format!("NEW TABLE AS {NEW_ROWS}"),
            Operation::Delete => format!("OLD TABLE AS {OLD_ROWS}"),
            _ => format!("OLD TABLE AS {OLD_ROWS} NEW TABLE AS {NEW_ROWS}"),
        };
        return format!(
            "CREATE TRIGGER {name} AFTER {kw} ON {table}\n    REFERENCING {referencing}\n    FOR EACH STATEMENT\n    EXECUTE FUNCTION {function}();"
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
    let when = if when.is_empty() {
        String::new()
    } else {
        format!("\n    WHEN ({})", when.join(" AND "))
    };
    let create = |event: &str| {
        format!(
            "CREATE TRIGGER {name} AFTER {event} ON {table}\n    FOR EACH ROW{when}\n    EXECUTE FUNCTION {function}();"
        )
    };
    match tracked {
        Some(cols) => {
            let column_list = cols
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            update_of(
                spec,
                cols,
                &create(kw),
                &create(&format!("UPDATE OF {column_list}")),
            )
        }
        None => create(kw),
    }
}

/// Creates the UPDATE trigger with `UPDATE OF` the tracked columns, so an UPDATE whose SET
/// list names none of them skips the trigger at no cost; unless the table has another
/// BEFORE UPDATE row trigger or a tracked column is generated: PostgreSQL then decides
/// `UPDATE OF` from the SET list alone and would miss a change made by the trigger or the
/// generation expression, so the plain form (filtered by `WHEN`) is created instead.
fn update_of(spec: &TriggerSpec, cols: &[Ident], plain: &str, column_list: &str) -> String {
    let table_lit = spec.table().literal();
    let names = cols
        .iter()
        .map(Ident::literal)
        .collect::<Vec<_>>()
        .join(", ");
    let body = format!(
        r#"
DECLARE
    tbl regclass := pg_catalog.to_regclass({table_lit});
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger AS t
                WHERE t.tgrelid OPERATOR(pg_catalog.=) tbl AND NOT t.tgisinternal
                  AND t.tgname OPERATOR(pg_catalog.<>) ALL ({audit_triggers})
                  AND (t.tgtype::int OPERATOR(pg_catalog.&) {bits}) OPERATOR(pg_catalog.=) {bits})
       OR EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                   WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attgenerated OPERATOR(pg_catalog.<>) ''
                     AND a.attname OPERATOR(pg_catalog.=) ANY (ARRAY[{names}]::name[])) THEN
        RAISE NOTICE 'pg-audit: % has a BEFORE UPDATE trigger or a generated tracked column; its UPDATE trigger fires on every UPDATE', tbl;
        EXECUTE {};
    ELSE
        EXECUTE {};
    END IF;
END
"#,
        text_literal(plain),
        text_literal(column_list),
        audit_triggers = Operation::trigger_names_array(),
        bits = tgtype::BEFORE_UPDATE_ROW,
    );
    format!("DO {};", dollar_quote(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::log::AuditLog;
    use crate::sql::trigger::{TriggerLevel, TriggerSpecBuilder};
    use pretty_assertions::assert_eq;

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
        // UPDATE OF the tracked columns, unless the table's other triggers make it unsafe.
        assert!(update.contains(
            "AFTER UPDATE OF \"name\", \"email\" ON \"public\".\"users\"\n    FOR EACH ROW\n    WHEN (pg_catalog.record_image_ne(ROW(OLD.\"name\", OLD.\"email\"), ROW(NEW.\"name\", NEW.\"email\")) AND (NEW.active  ))"
        ), "{update}");
        assert!(
            update.contains("AFTER UPDATE ON \"public\".\"users\""),
            "{update}"
        );
        // On DELETE the condition reads the deleted row.
        assert!(
            create_trigger(&spec, Operation::Delete, &function).contains("WHEN ((OLD.active  ))")
        );
        // All columns: no WHEN, the function compares the rows.
        let all = users().level(TriggerLevel::Row).build().unwrap();
        assert_eq!(
            create_trigger(&all, Operation::Update, &function),
            format!(
                "CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE ON \"public\".\"users\"\n    FOR EACH ROW\n    EXECUTE FUNCTION {function}();"
            )
        );
    }

    #[test]
    fn statement_level_triggers_reference_transition_tables() {
        let spec = users().level(TriggerLevel::Statement).build().unwrap();
        let function = spec.function_name(&AuditLog::new());
        assert_eq!(
            create_trigger(&spec, Operation::Update, &function),
            format!(
                "CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE ON \"public\".\"users\"
    REFERENCING OLD TABLE AS pg_audit_old_rows NEW TABLE AS pg_audit_new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION {function}();"
            )
        );
    }
}
