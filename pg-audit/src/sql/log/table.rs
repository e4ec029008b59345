//! The log table itself: its columns, DEFAULT partition and indexes; who may write and read
//! it; and dropping it with everything installed beside it.

use std::fmt::Write as _;

use super::PartitionPeriod;
use crate::ident::{Ident, dollar_quote, text_literal};
use crate::sql::create_function;
use crate::sql::names::LogNames;
use crate::sql::shape::{LOG_COLUMNS, PARTITION_COLUMN};

/// The schema, the log table partitioned by `period` (with the columns added since an earlier
/// release), its DEFAULT partition and its indexes.
pub(crate) fn table_sql(names: &LogNames, period: PartitionPeriod) -> String {
    let table = names.table();
    let mut sql = String::new();
    let _ = writeln!(sql, "-- pg-audit: the audit log {table}");
    let _ = writeln!(sql, "CREATE SCHEMA IF NOT EXISTS {};\n", names.schema());
    let columns: Vec<String> = LOG_COLUMNS
        .iter()
        .map(|c| format!("    {}", c.definition()))
        .collect();
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {table} (\n{}\n) PARTITION BY RANGE (\"{PARTITION_COLUMN}\");",
        columns.join(",\n")
    );
    // A log made by an earlier release gets the columns added since (checked first, so
    // that psql prints no NOTICE for each column already there).
    let added: Vec<String> = LOG_COLUMNS
            .iter()
            .filter(|c| c.added_later)
            .map(|c| {
                format!(
                    "    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid OPERATOR(pg_catalog.=) {lit}::regclass AND a.attname OPERATOR(pg_catalog.=) {name} AND NOT a.attisdropped) THEN
        ALTER TABLE {table} ADD COLUMN {def};
    END IF;",
                    lit = table.literal(),
                    name = text_literal(c.name),
                    def = c.definition()
                )
            })
            .collect();
    let _ = writeln!(
        sql,
        "DO {};\n",
        dollar_quote(&format!("\nBEGIN\n{}\nEND\n", added.join("\n")))
    );
    let _ = writeln!(
        sql,
        "COMMENT ON TABLE {table} IS {};\n",
        text_literal(&format!(
            "pg-audit log: one row per audited change; append-only; partitioned {} by {PARTITION_COLUMN}",
            period.name()
        ))
    );
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} DEFAULT;\n",
        names.default_partition()
    );
    // Three indexes maintained on every audited write, and no more (a fourth, partial one,
    // only for the rare UPDATE that changes a key).
    // History of one record: a hash index on a 64-bit hash of table and key, far cheaper
    // to maintain than a btree on (table_name, record_pk) (see docs/performance.md).
    let _ = writeln!(
        sql,
        "CREATE INDEX IF NOT EXISTS {} ON {table} USING hash (\"record_key\");",
        Ident::generated(table.name.as_str(), "_record_idx")
    );
    // The history of a key an UPDATE changed: only such rows have an entry.
    let _ = writeln!(
        sql,
        "CREATE INDEX IF NOT EXISTS {} ON {table} USING hash (\"old_record_key\") WHERE \"old_record_key\" IS NOT NULL;",
        Ident::generated(table.name.as_str(), "_old_record_idx")
    );
    // Newest first across the whole log (the admin's activity, paged by id): a btree on the
    // id, whose inserts all land on its right edge. Without it that listing sorts every
    // row (2 s at 10 million rows; docs/performance.md).
    let _ = writeln!(
        sql,
        "CREATE INDEX IF NOT EXISTS {} ON {table} (\"id\");",
        Ident::generated(table.name.as_str(), "_id_idx")
    );
    // Time ranges and transactions: partitions prune whole periods; a BRIN index, tiny and
    // nearly free to maintain on append-only data, narrows within one. Autosummarized, so a
    // filled block range is summarized soon rather than at the next VACUUM (until then it
    // matches every lookup).
    let _ = writeln!(
        sql,
        "CREATE INDEX IF NOT EXISTS {} ON {table} USING brin (\"{PARTITION_COLUMN}\", \"txid\") WITH (autosummarize = on);\n",
        Ident::generated(table.name.as_str(), "_time_idx")
    );
    sql
}

/// Append-only: only the owner (the role running this) writes the log, and only through the
/// SECURITY DEFINER trigger functions; nobody else may even run maintenance.
pub(crate) fn append_only_sql(names: &LogNames) -> String {
    let table = names.table();
    let mut sql = String::new();
    let _ = writeln!(sql, "\nREVOKE ALL ON TABLE {table} FROM PUBLIC;");
    let _ = writeln!(
        sql,
        "REVOKE ALL ON TABLE {} FROM PUBLIC;",
        names.config_table()
    );
    for (function, args) in names.functions() {
        let _ = writeln!(
            sql,
            "REVOKE ALL ON FUNCTION {function}({args}) FROM PUBLIC;"
        );
    }
    // Only the owner writes them, whatever the schema's default privileges granted at
    // creation (`ALTER DEFAULT PRIVILEGES ... GRANT INSERT ...`); reads granted with
    // `grant_read_sql` stay.
    let strips: Vec<String> = [
        (table.clone(), true),
        (names.default_partition(), false),
        (names.config_table(), true),
    ]
    .iter()
    .map(|(relation, keep_select)| {
        format!(
            "    PERFORM {}({}::regclass, {keep_select});",
            names.function("strip_grants"),
            relation.literal()
        )
    })
    .collect();
    let _ = writeln!(
        sql,
        "DO {};",
        dollar_quote(&format!("\nBEGIN\n{}\nEND\n", strips.join("\n")))
    );
    sql
}

/// [`crate::AuditLog::grant_read_sql`].
pub(crate) fn grant_read_sql(names: &LogNames, role: &Ident) -> String {
    let mut sql = String::new();
    let _ = writeln!(sql, "GRANT USAGE ON SCHEMA {} TO {role};", names.schema());
    for table in names.readable_tables() {
        let _ = writeln!(sql, "GRANT SELECT ON TABLE {table} TO {role};");
    }
    for (function, args) in names.readable_functions() {
        let _ = writeln!(
            sql,
            "GRANT EXECUTE ON FUNCTION {function}({args}) TO {role};"
        );
    }
    sql
}

/// [`crate::AuditLog::drop_sql`].
pub(crate) fn drop_sql(names: &LogNames) -> String {
    let mut sql = format!("DROP EVENT TRIGGER IF EXISTS {};\n", names.event_trigger());
    // The tables whose append-only triggers call a function dropped below.
    for table in [
        names.archives_table(),
        names.prunes_table(),
        names.seals_table(),
        names.seal_state_table(),
        names.counts_table(),
        names.context_counts_table(),
        names.counts_state_table(),
        names.records_table(),
        names.baselines_table(),
        names.mask_key_table(),
        names.imports_table(),
        names.redacted_values_table(),
        names.redactions_table(),
    ] {
        let _ = writeln!(sql, "DROP TABLE IF EXISTS {table};");
    }
    for (name, args) in names.functions() {
        let _ = writeln!(sql, "DROP FUNCTION IF EXISTS {name}({args});");
    }
    let _ = writeln!(sql, "DROP TABLE IF EXISTS {};", names.config_table());
    let _ = writeln!(sql, "DROP TABLE IF EXISTS {};", names.table());
    sql
}

/// The evidence tables' guard: a trigger on each append-only table
/// ([`LogNames::append_only_tables`]) refusing every change but an insert.
pub(crate) fn append_only_tables_sql(names: &LogNames) -> String {
    let append_only = names.function("append_only");
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{append_only}()"),
            "trigger",
            "plpgsql",
            false,
            "
BEGIN
    RAISE EXCEPTION 'pg-audit: % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Seals and redactions are evidence: they are added to, never changed.';
END
"
        )
    );
    for t in names.append_only_tables() {
        let body = format!(
            "
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                    WHERE tgrelid OPERATOR(pg_catalog.=) {lit}::regclass
                      AND tgname OPERATOR(pg_catalog.=) 'append_only') THEN
        CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {t}
            FOR EACH STATEMENT EXECUTE FUNCTION {append_only}();
    END IF;
END
",
            lit = t.literal()
        );
        let _ = writeln!(sql, "DO {};", crate::ident::dollar_quote(&body));
    }

    sql
}
