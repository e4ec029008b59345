//! Partitions of audited partitioned tables kept audited: a guard refusing writes to a
//! partition without audit triggers, the function that adopts such partitions, and the event
//! trigger that runs it after DDL.

use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::create_function;
use crate::sql::install::{OPERATIONS_FIELD, TRIGGERS_FIELD};
use crate::sql::names::LogNames;
use crate::sql::shape::Operation;

/// The functions that keep a partitioned table's partitions audited: `guard`, the trigger
/// function of the row-level guard cloned onto every partition, which refuses writes to a
/// partition that has no audit triggers of its own; and `adopt(only_table)`, which gives every
/// such partition of the recorded tables (or of `only_table`, all of them) the statement-level
/// triggers of its table, logging under the table's name, and disables its guard. When a
/// superuser installs the log, an event trigger runs `adopt` after every `CREATE TABLE` and
/// `ALTER TABLE`, so a partition created or attached later is audited from its first write.
pub(crate) fn partition_functions_sql(
    config: &QualifiedName,
    guard: &QualifiedName,
    adopt: &QualifiedName,
    on_ddl: &QualifiedName,
    record_schema: &QualifiedName,
    event_trigger: &Ident,
) -> String {
    let guard_name = Operation::guard_trigger_name();
    let referencing: Vec<String> = Operation::ALL
        .iter()
        .map(|op| {
            format!(
                "WHEN {} THEN {}",
                text_literal(op.keyword()),
                text_literal(&format!(" {}", op.referencing()))
            )
        })
        .collect();
    let drops =
        Operation::drop_triggers_plpgsql("part", &Operation::trigger_names_array(), "            ");
    let guard_body = format!(
        r#"
BEGIN
    RAISE EXCEPTION 'pg-audit: partition %.% of an audited table has no audit triggers yet, so this write would not be logged', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = {hint};
END
"#,
        hint = text_literal(&format!(
            "As the table's owner, run SELECT * FROM {adopt}() (installing the triggers again does it too)."
        ))
    );
    let adopt_body = format!(
        r#"
DECLARE
    r record;
    part regclass;
    op text;
    pg_audit_trigger name;
BEGIN
    -- The DDL below fires the event trigger again: nothing to do then.
    IF pg_catalog.current_setting('pg_audit.adopting', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('pg_audit.adopting', 'on', true);
    FOR r IN SELECT t.table_schema, t.table_name, t.trigger_function, t.config, c.oid AS rel
               FROM {config} AS t
               JOIN pg_catalog.pg_namespace AS n ON n.nspname = t.table_schema
               JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = t.table_name
              WHERE c.relkind = 'p' AND (only_table IS NULL OR c.oid = only_table) LOOP
        -- Every partition when installing; otherwise those missing a trigger of their own, and
        -- leaves whose guard is enabled (attached again, or enabled by hand).
        FOR part IN SELECT p.relid FROM pg_catalog.pg_partition_tree(r.rel) AS p
                     WHERE p.relid <> r.rel
                       AND (only_table IS NOT NULL
                            OR EXISTS (SELECT FROM pg_catalog.jsonb_array_elements_text(r.config -> {triggers}) AS e(name)
                                        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_trigger AS g
                                                           WHERE g.tgrelid = p.relid AND g.tgname = e.name
                                                             AND g.tgparentid = 0))
                            OR EXISTS (SELECT FROM pg_catalog.pg_trigger AS g
                                         JOIN pg_catalog.pg_class AS c ON c.oid = g.tgrelid
                                        WHERE g.tgrelid = p.relid AND g.tgname = {guard_lit}
                                          AND g.tgenabled <> 'D' AND c.relkind <> 'p')) LOOP
            {drops}
            FOR i IN 0 .. pg_catalog.jsonb_array_length(r.config -> {operations}) - 1 LOOP
                op := r.config -> {operations} ->> i;
                EXECUTE pg_catalog.format('CREATE TRIGGER %I AFTER %s ON %s%s FOR EACH STATEMENT EXECUTE FUNCTION %s(%L, %L)',
                                          r.config -> {triggers} ->> i, op, part,
                                          CASE op {referencing} ELSE '' END,
                                          r.trigger_function, r.table_schema, r.table_name);
            END LOOP;
            -- The guard fires on leaves only; left enabled on a partitioned partition, its
            -- clone on a leaf created there later refuses writes until that leaf is adopted.
            IF (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = part) <> 'p' THEN
                EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER %I', part, {guard_lit});
            END IF;
            table_name := pg_catalog.format('%I.%I', r.table_schema, r.table_name);
            partition_name := part::text;
            RETURN NEXT;
        END LOOP;
    END LOOP;
    PERFORM pg_catalog.set_config('pg_audit.adopting', '', true);
END
"#,
        guard_lit = guard_name.literal(),
        drops = drops,
        operations = text_literal(OPERATIONS_FIELD),
        triggers = text_literal(TRIGGERS_FIELD),
        referencing = referencing.join(" "),
    );
    // After a table's DDL: its new partitions adopted, its schema change recorded. A change
    // that cannot be recorded does not undo the application's DDL: it warns, keeps the shape
    // last recorded, and the drift check reports the change until an install records it.
    let on_ddl_body = format!(
        "
BEGIN
    PERFORM {adopt}();
    BEGIN
        PERFORM {record_schema}();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pg-audit: this schema change of an audited table was not recorded in the log: %', SQLERRM
            USING HINT = 'pg-audit check reports it; install the table''s audit again to record it.';
    END;
END
"
    );
    let event_trigger_lit = event_trigger.literal();
    let install_event_trigger = format!(
        "
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger AS e WHERE e.evtname OPERATOR(pg_catalog.=) {event_trigger_lit}) THEN
        CREATE EVENT TRIGGER {event_trigger} ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
            EXECUTE FUNCTION {on_ddl}();
    END IF;
END
"
    );
    format!(
        "{}\n\n{}\n\n{}\n\nDO {};\n",
        create_function(
            &format!("{guard}()"),
            "trigger",
            "plpgsql",
            false,
            &guard_body
        ),
        create_function(
            &format!("{adopt}(only_table regclass DEFAULT NULL)"),
            "TABLE (table_name text, partition_name text)",
            "plpgsql",
            false,
            &adopt_body
        ),
        // Runs as its owner (a superuser: only one can create the event trigger), so that the
        // table owner's DDL can adopt partitions whatever owns the log's functions.
        create_function(
            &format!("{on_ddl}()"),
            "event_trigger",
            "plpgsql",
            true,
            &on_ddl_body
        ),
        crate::ident::dollar_quote(&install_event_trigger)
    )
}

/// [`partition_functions_sql`] for the log of `names`, part of its DDL.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    partition_functions_sql(
        &names.config_table(),
        &names.function("unaudited_partition"),
        &names.function("adopt_partitions"),
        &names.function("adopt_on_ddl"),
        &names.function("record_schema"),
        &names.event_trigger(),
    )
}
