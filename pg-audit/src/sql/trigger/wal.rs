//! The install of a table captured from the write-ahead log rather than by triggers: the
//! table in the log's publication with its full old rows, and its condition evaluated over
//! captured rows as the triggers would.

use std::fmt::Write as _;

use super::TriggerSpec;
use crate::ident::text_literal;
use crate::sql::capture::membership_plpgsql;
use crate::sql::log::AuditLog;
use crate::sql::shape::Operation;

impl TriggerSpec {
    /// SQL evaluating the table's condition over captured rows as the triggers would: `$1` a
    /// JSON array of objects `{"ord", "op", "new", "old"}` (`new` and `old` as `to_jsonb` of
    /// the row, either may be null); returns the `ord` of each row the condition keeps. `None`
    /// without a condition. Run with the search path the triggers run with.
    pub fn capture_condition_sql(&self) -> Option<String> {
        self.condition()?;
        let table = self.table();
        let arms: Vec<String> = [Operation::Insert, Operation::Update, Operation::Delete]
            .into_iter()
            .filter_map(|op| {
                super::row::condition_for(self, op, "n", "o")
                    .map(|c| format!("WHEN {} THEN ({c})", text_literal(op.keyword())))
            })
            .collect();
        Some(format!(
            "SELECT x.ord
  FROM pg_catalog.json_to_recordset($1::text::pg_catalog.json) AS x(ord bigint, op text, new jsonb, old jsonb)
 CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::{table}, x.new) AS n
 CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::{table}, x.old) AS o
 WHERE CASE x.op {} ELSE true END
 ORDER BY x.ord",
            arms.join(" ")
        ))
    }

    /// The install for [`Capture::Wal`]: the guard's checks, the table's pg-audit triggers and
    /// function dropped (a table moving from triggers to the log's WAL capture), the table
    /// (and its partitions) set to `REPLICA IDENTITY FULL` so UPDATE and DELETE carry the old
    /// row, the table added to the log's publication, and the install record.
    pub(crate) fn wal_install_sql(
        &self,
        log: &AuditLog,
        guard: &str,
        drop_triggers: &str,
    ) -> String {
        let table = self.table();
        let table_lit = table.literal();
        let publication = log.publication();
        let mut sql = String::new();
        let _ = writeln!(
            sql,
            "-- pg-audit: capture from the write-ahead log for {table}"
        );
        let _ = writeln!(sql, "DO {};\n", crate::ident::dollar_quote(guard));
        let _ = writeln!(sql, "{drop_triggers}");
        let _ = writeln!(
            sql,
            "DROP FUNCTION IF EXISTS {}();",
            self.function_name(log)
        );
        let body = format!(
            "
DECLARE
    part regclass;
BEGIN
    IF pg_catalog.current_setting('wal_level') OPERATOR(pg_catalog.<>) 'logical' THEN
        RAISE EXCEPTION 'pg-audit: capturing {table_text} from the write-ahead log needs wal_level = logical; it is %', pg_catalog.current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run ALTER SYSTEM SET wal_level = logical and restart the server (on managed PostgreSQL, turn on logical replication), or capture this table with triggers.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname OPERATOR(pg_catalog.=) {pub_lit}) THEN
        CREATE PUBLICATION {publication} WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);
    END IF;
    -- The install records travel with the changes, so the worker rereads the configuration
    -- at the point of the stream where it changed.
    {add_config}
    {add_table}
    -- UPDATE and DELETE carry the whole old row (and unchanged TOASTed values) only so; a
    -- partition's changes are decoded with the partition's own setting.
    FOR part IN SELECT t.rel FROM (SELECT pg_catalog.to_regclass({table_lit}) AS rel
                                   UNION
                                   SELECT p.relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass({table_lit})) AS p) AS t
                 JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) t.rel
                WHERE c.relreplident OPERATOR(pg_catalog.<>) 'f' LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
        RAISE NOTICE 'pg-audit: % is now REPLICA IDENTITY FULL, so the write-ahead log carries the old row of every UPDATE and DELETE', part;
    END LOOP;
END
",
            pub_lit = publication.literal(),
            add_config = membership_plpgsql(&publication, &log.config_table(), true, "    "),
            add_table = membership_plpgsql(&publication, table, true, "    "),
            table_text = crate::ident::in_template(&table.to_string()),
        );
        let _ = writeln!(sql, "DO {};", crate::ident::dollar_quote(&body));
        let _ = writeln!(
            sql,
            "\n{}",
            self.install_record().insert_wal_sql(log.names(), table)
        );
        let _ = writeln!(
            sql,
            "{}",
            crate::sql::schema::install_sql(log.names(), &table.literal())
        );
        sql
    }

    /// Taking the table out of the log's publication (its replica identity stays FULL: other
    /// consumers may rely on it; `ALTER TABLE ... REPLICA IDENTITY DEFAULT` undoes it).
    pub(crate) fn wal_uninstall_sql(&self, log: &AuditLog) -> String {
        let publication = log.publication();
        format!(
            "DO {};",
            crate::ident::dollar_quote(&format!(
                "
BEGIN
    {}
END
",
                membership_plpgsql(&publication, self.table(), false, "    "),
            ))
        )
    }
}
