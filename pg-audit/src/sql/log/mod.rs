//! The audit log: one table, range-partitioned by time, with a DEFAULT partition, its
//! partition-maintenance functions ([`partition`]) and its drift check
//! ([`crate::sql::drift`]).
//!
//! [`AuditLog`] holds where the log lives and how it is partitioned, and every method that
//! renders SQL about it; the child modules render the function bodies.

use std::fmt::Write as _;

use crate::Error;
use crate::ident::{Ident, QualifiedName, dollar_quote, quote_literal, text_literal};
use crate::sql::drift;
use crate::sql::shape::{LOG_COLUMNS, PARTITION_COLUMN};

pub mod partition;

pub use partition::{PartitionPeriod, Retention};

/// The default schema of the audit log.
pub const DEFAULT_SCHEMA: &str = "audit";
/// The default name of the audit log table.
pub const DEFAULT_TABLE: &str = "auditlog";
/// How many partitions past the current one are created by default.
pub const DEFAULT_PREMAKE: u32 = 3;

/// The audit log: where it lives and how it is partitioned.
///
/// ```
/// use pg_audit::{AuditLog, PartitionPeriod};
/// let log = AuditLog::new().period(PartitionPeriod::Weekly).premake(8);
/// let sql = log.create_sql();
/// assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "audit"."auditlog""#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLog {
    table: QualifiedName,
    period: PartitionPeriod,
    premake: u32,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditLog {
    /// `audit.auditlog`, monthly partitions, three created ahead.
    pub fn new() -> Self {
        AuditLog {
            table: QualifiedName::new(
                Some(Ident::generated(DEFAULT_SCHEMA, "")),
                Ident::generated(DEFAULT_TABLE, ""),
            ),
            period: PartitionPeriod::Monthly,
            premake: DEFAULT_PREMAKE,
        }
    }

    /// An audit log named `name` in `schema`.
    pub fn named(schema: &str, name: &str) -> Result<Self, Error> {
        Ok(AuditLog {
            table: QualifiedName::new(
                Some(Ident::with_kind(schema, "schema")?),
                Ident::with_kind(name, "audit log table")?,
            ),
            ..Self::new()
        })
    }

    /// Sets the partition period (monthly by default).
    pub fn period(mut self, period: PartitionPeriod) -> Self {
        self.period = period;
        self
    }

    /// Sets how many partitions after the current one [`AuditLog::create_sql`] creates.
    pub fn premake(mut self, premake: u32) -> Self {
        self.premake = premake;
        self
    }

    /// The log table's qualified name.
    pub fn table(&self) -> &QualifiedName {
        &self.table
    }

    /// The schema the log and its functions live in.
    pub fn schema(&self) -> &Ident {
        self.table
            .schema
            .as_ref()
            .expect("the audit log is always schema-qualified")
    }

    /// The partition period.
    pub fn partition_period(&self) -> PartitionPeriod {
        self.period
    }

    /// The DEFAULT partition, which takes rows no time partition covers.
    pub fn default_partition(&self) -> QualifiedName {
        self.table.sibling("_default")
    }

    /// The table recording each audited table's installed configuration.
    pub fn config_table(&self) -> QualifiedName {
        self.function("tables")
    }

    /// A function pg-audit installs beside the log, named `<log>_<suffix>`.
    pub(crate) fn function(&self, suffix: &str) -> QualifiedName {
        self.table.sibling(&format!("_{suffix}"))
    }

    /// The maintenance functions' names and argument types, for revoking and dropping them.
    fn function_signatures(&self) -> Vec<(QualifiedName, &'static str)> {
        let mut all = vec![
            (self.function("trigger_definitions"), "regclass"),
            (self.function("adopt_on_ddl"), ""),
            (self.function("adopt_partitions"), "regclass"),
            (self.function("unaudited_partition"), ""),
            (self.function("check"), ""),
            (self.function("strip_grants"), "regclass, boolean"),
            (self.function("prune_partitions"), "interval, boolean, text"),
            (self.function("ensure_partitions"), "integer"),
            (self.function("partitions"), ""),
        ];
        all.extend(crate::sql::seal::function_signatures(self));
        all
    }

    /// The objects the install record and the drift check involve.
    pub(crate) fn objects(&self) -> drift::LogObjects {
        drift::LogObjects {
            log: self.table.clone(),
            config: self.config_table(),
            check: self.function("check"),
            definitions: self.function("trigger_definitions"),
            adopt: self.function("adopt_partitions"),
            functions: self.function_signatures(),
            readable: self.readable_functions().to_vec(),
            publication: self.publication(),
            side_tables: vec![
                self.config_table(),
                self.archives_table(),
                self.seals_table(),
                self.seal_state_table(),
                self.redactions_table(),
                self.redacted_values_table(),
                self.capture_progress_table(),
                self.capture_issues_table(),
            ],
            append_only: vec![
                self.seals_table(),
                self.redactions_table(),
                self.redacted_values_table(),
                self.archives_table(),
            ],
        }
    }

    /// Every function of the log but the check, as this version installs it (read from
    /// [`AuditLog::create_sql`]'s text before the check), for the check to compare with.
    fn expected_functions(&self, ddl: &str) -> Vec<drift::ExpectedFunction> {
        let created = crate::sql::created_functions(ddl);
        let check = self.function("check");
        self.function_signatures()
            .into_iter()
            .filter(|(name, _)| *name != check)
            .map(|(name, args)| {
                let prefix = format!("{name}(");
                let (_, security_definer, body) = created
                    .iter()
                    .find(|(signature, _, _)| signature.starts_with(&prefix))
                    .unwrap_or_else(|| panic!("the log's DDL creates {name}"));
                drift::ExpectedFunction {
                    name,
                    args,
                    body: (*body).to_owned(),
                    security_definer: *security_definer,
                }
            })
            .collect()
    }

    /// The log's DDL up to its check function: the tables, indexes and every other function.
    fn ddl_before_check(&self) -> String {
        let table = &self.table;
        let mut sql = String::new();
        let _ = writeln!(sql, "-- pg-audit: the audit log {table}");
        let _ = writeln!(sql, "CREATE SCHEMA IF NOT EXISTS {};\n", self.schema());
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
                self.period.name()
            ))
        );
        let _ = writeln!(
            sql,
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} DEFAULT;\n",
            self.default_partition()
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
        sql.push_str(&partition::functions_sql(self));
        sql.push('\n');
        sql.push_str(&drift::objects_sql(&self.objects()));
        sql.push('\n');
        sql.push_str(&crate::sql::archive::objects_sql(self));
        sql.push('\n');
        sql.push_str(&crate::sql::seal::objects_sql(self));
        sql.push('\n');
        sql.push_str(&drift::partition_functions_sql(
            &self.config_table(),
            &self.function("unaudited_partition"),
            &self.function("adopt_partitions"),
            &self.function("adopt_on_ddl"),
            &self.event_trigger(),
        ));
        sql
    }

    /// The event trigger that adopts new partitions of audited tables (database-wide, so its
    /// name carries the log's schema and name).
    fn event_trigger(&self) -> Ident {
        Ident::generated(
            &format!(
                "pg_audit_{}_{}",
                self.schema().as_str(),
                self.table.name.as_str()
            ),
            "_partitions",
        )
    }

    /// The prefix of time partitions' names; a partition appends its first day as `YYYYMMDD`.
    fn partition_prefix(&self) -> String {
        const DATE: &str = "00000000";
        let template = Ident::generated(self.table.name.as_str(), &format!("_p{DATE}"));
        template.as_str()[..template.as_str().len() - DATE.len()].to_owned()
    }

    /// SQL that creates the schema, the log table, its DEFAULT partition, its indexes and its
    /// partition-maintenance functions, then creates the current partition and the next
    /// `premake`. Every statement is idempotent: running it again changes nothing but replaces the
    /// functions.
    pub fn create_sql(&self) -> String {
        let mut sql = self.ddl_before_check();
        let expected = self.expected_functions(&sql);
        let _ = writeln!(
            sql,
            "\n{}",
            drift::check_function_sql(&self.objects(), &expected)
        );
        let table = &self.table;
        // Append-only: only the owner (the role running this) writes the log, and only through
        // the SECURITY DEFINER trigger functions; nobody else may even run maintenance.
        let _ = writeln!(sql, "\nREVOKE ALL ON TABLE {table} FROM PUBLIC;");
        let _ = writeln!(
            sql,
            "REVOKE ALL ON TABLE {} FROM PUBLIC;",
            self.config_table()
        );
        for (function, args) in self.function_signatures() {
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
            (self.default_partition(), false),
            (self.config_table(), true),
        ]
        .iter()
        .map(|(relation, keep_select)| {
            format!(
                "    PERFORM {}({}::regclass, {keep_select});",
                self.function("strip_grants"),
                relation.literal()
            )
        })
        .collect();
        let _ = writeln!(
            sql,
            "DO {};",
            dollar_quote(&format!("\nBEGIN\n{}\nEND\n", strips.join("\n")))
        );
        let _ = writeln!(sql, "\n{};", self.ensure_partitions_sql(self.premake));
        sql
    }

    /// SQL that lets `role` read the log — every reader method and every reading command of
    /// the `pg-audit` program: the log, the install records (a table's key), the partition
    /// listing and the drift check — and nothing more: it can neither change audit rows nor
    /// run maintenance. Grant this to application roles that show history; writing audited
    /// tables needs no privilege on the log.
    pub fn grant_read_sql(&self, role: &Ident) -> String {
        let mut sql = String::new();
        let _ = writeln!(sql, "GRANT USAGE ON SCHEMA {} TO {role};", self.schema());
        for table in [
            self.table.clone(),
            self.config_table(),
            self.archives_table(),
            self.seals_table(),
            self.redactions_table(),
            self.redacted_values_table(),
        ] {
            let _ = writeln!(sql, "GRANT SELECT ON TABLE {table} TO {role};");
        }
        for (function, args) in self.readable_functions() {
            let _ = writeln!(
                sql,
                "GRANT EXECUTE ON FUNCTION {function}({args}) TO {role};"
            );
        }
        sql
    }

    /// The functions readers may run, with their argument types: the partition listing, the
    /// drift check, and what `verify` recomputes (it changes nothing).
    fn readable_functions(&self) -> [(QualifiedName, &'static str); 5] {
        [
            (self.function("partitions"), ""),
            (self.function("check"), ""),
            (self.function("seal_of"), "bigint, bigint, bytea, regclass"),
            (self.function("content_of"), "regclass"),
            (self.function("unerased"), "regclass"),
        ]
    }

    /// SQL that drops the log, its partitions and its functions. Drop the audit triggers first
    /// (see [`crate::TriggerSpec::uninstall_sql`]): a trigger left behind would fail every write
    /// to its table.
    pub fn drop_sql(&self) -> String {
        let mut sql = format!("DROP EVENT TRIGGER IF EXISTS {};\n", self.event_trigger());
        // The tables whose append-only triggers call a function dropped below.
        for table in [
            self.archives_table(),
            self.seals_table(),
            self.seal_state_table(),
            self.redacted_values_table(),
            self.redactions_table(),
        ] {
            let _ = writeln!(sql, "DROP TABLE IF EXISTS {table};");
        }
        for (name, args) in self.function_signatures() {
            let _ = writeln!(sql, "DROP FUNCTION IF EXISTS {name}({args});");
        }
        let _ = writeln!(sql, "DROP TABLE IF EXISTS {};", self.config_table());
        let _ = writeln!(sql, "DROP TABLE IF EXISTS {};", self.table);
        sql
    }

    /// SQL that gives every partition of an audited partitioned table that has none its
    /// audit triggers (a partition created or attached since the install, when no event
    /// trigger did it): rows of `table_name`, `partition_name`. Run it as the tables' owner.
    pub fn adopt_partitions_sql(&self) -> String {
        format!("SELECT * FROM {}()", self.function("adopt_partitions"))
    }

    /// SQL that creates the partition of the current period and of the next `ahead` periods
    /// where missing, and returns one row per partition created: `partition_name`,
    /// `range_start`, `range_end`, `moved_rows` (rows moved into it from the DEFAULT partition).
    pub fn ensure_partitions_sql(&self, ahead: u32) -> String {
        format!(
            "SELECT * FROM {}({ahead})",
            self.function("ensure_partitions")
        )
    }

    /// SQL that lists the log's partitions: `partition_name`, `range_start`, `range_end`
    /// (NULL for the DEFAULT partition), `is_default`, `total_bytes`; oldest first, DEFAULT first.
    pub fn list_partitions_sql(&self) -> String {
        format!("SELECT * FROM {}()", self.function("partitions"))
    }

    /// SQL that detaches or drops every partition whose range ended more than `older_than` ago
    /// (a PostgreSQL interval such as `'90 days'` or `'1 year'`, checked by the server), and
    /// returns one row per partition touched: `partition_name`, `range_start`, `range_end`,
    /// `action`, `rows`.
    pub fn prune_partitions_sql(
        &self,
        older_than: &str,
        retention: Retention,
    ) -> Result<String, Error> {
        Ok(format!(
            "SELECT * FROM {}({}::interval, {})",
            self.function("prune_partitions"),
            quote_literal(older_than)?,
            retention == Retention::Drop
        ))
    }

    /// Like [`AuditLog::prune_partitions_sql`], for the one partition `partition` (as
    /// `partition_name` lists it) if it is past the retention period, so a caller can report
    /// progress partition by partition. The DEFAULT partition's old rows are not touched.
    pub fn prune_partition_sql(
        &self,
        older_than: &str,
        retention: Retention,
        partition: &str,
    ) -> Result<String, Error> {
        Ok(format!(
            "SELECT * FROM {}({}::interval, {}, {})",
            self.function("prune_partitions"),
            quote_literal(older_than)?,
            retention == Retention::Drop,
            quote_literal(partition)?
        ))
    }

    /// SQL listing the partitions `prune` detached and left as tables (without `--drop`): the
    /// tables of the log's schema named like its partitions, holding its columns, attached to
    /// nothing. One row each: `partition_name`.
    pub fn detached_partitions_sql(&self) -> String {
        let prefix = self.partition_prefix();
        format!(
            "SELECT c.oid::pg_catalog.regclass::text AS partition_name
  FROM pg_catalog.pg_class AS c
 WHERE c.relnamespace OPERATOR(pg_catalog.=) {schema}::pg_catalog.regnamespace
   AND c.relkind OPERATOR(pg_catalog.=) 'r' AND NOT c.relispartition
   AND pg_catalog.left(c.relname, {n}) OPERATOR(pg_catalog.=) {prefix_lit}
   AND pg_catalog.substr(c.relname, {after}) OPERATOR(pg_catalog.~) '^[0-9]{{8}}$'
   AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND NOT a.attisdropped
           AND a.attname OPERATOR(pg_catalog.=) ANY (ARRAY[{columns}]::name[])) OPERATOR(pg_catalog.=) {count}
 ORDER BY c.relname",
            schema = self.schema().literal(),
            n = prefix.chars().count(),
            after = prefix.chars().count() + 1,
            prefix_lit = text_literal(&prefix),
            columns = LOG_COLUMNS
                .iter()
                .map(|c| text_literal(c.name))
                .collect::<Vec<_>>()
                .join(", "),
            count = LOG_COLUMNS.len(),
        )
    }

    /// SQL listing the problems the drift check finds on any PostgreSQL: rows of
    /// `table_schema`, `table_name`, `problem`; none when every recorded audit trigger, and the
    /// log itself, are as installed (see [`crate::sql::drift`]). It is the check itself, not a
    /// call of `<log>_check()` (a function the log's owner could replace): run it in a session
    /// with [`crate::session::PINNED`]'s settings (one opened with
    /// [`crate::session::startup_options`], or a transaction after
    /// [`crate::session::set_local_sql`]).
    ///
    /// Run it in a transaction after [`AuditLog::check_prelude_sql`]: its estimated cost is
    /// high enough that PostgreSQL would spend seconds compiling it with JIT (10 ms without).
    pub fn check_sql(&self) -> String {
        // The check function among the functions compared: the program never takes its word,
        // but cron and pg_cron users do, so a replaced one is reported.
        let objects = self.objects();
        let mut expected = self.expected_functions(&self.ddl_before_check());
        let check = drift::ExpectedFunction {
            name: self.function("check"),
            args: "",
            body: drift::check_function_body(&objects, &expected),
            security_definer: false,
        };
        expected.push(check);
        drift::check_query(&objects, &expected)
    }

    /// The settings the check's queries run with, for the rest of the transaction: no JIT.
    pub fn check_prelude_sql(&self) -> &'static str {
        drift::CHECK_PRELUDE
    }

    /// The drift check for a server of `server_version_num` (`SHOW server_version_num`): on
    /// PostgreSQL 15 and later, [`AuditLog::check_sql`] and what only 15 can have (grants of
    /// `SET` on `session_replication_role`, row filters and column lists on the log's
    /// publication), with the same columns: `table_schema`, `table_name`, `problem`, sorted.
    /// Run it as [`AuditLog::check_sql`] is run.
    pub fn check_sql_for(&self, server_version_num: i32) -> String {
        let all = self.check_sql();
        if server_version_num < 150_000 {
            return all;
        }
        format!(
            "SELECT c.table_schema, c.table_name, c.problem FROM ({all}) AS c
UNION ALL
SELECT v.table_schema, v.table_name, v.problem FROM ({}) AS v
ORDER BY 1, 2, 3",
            drift::check_v15_query(&self.objects())
        )
    }

    /// SQL returning the key columns recorded at install for a table, as a JSON array in key
    /// order (`primary_key`): parameters `$1` the table name (text), `$2` its schema (text, NULL
    /// for any). One row per audited table of that name.
    pub fn recorded_key_sql(&self) -> String {
        drift::recorded_key_sql(&self.config_table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_deterministically() {
        let name = "a".repeat(63);
        let log = AuditLog::named("audit", &name).unwrap();
        assert!(log.default_partition().name.as_str().len() <= 63);
        assert!(log.default_partition().name.as_str().ends_with("_default"));
        assert_eq!(
            log.default_partition(),
            AuditLog::named("audit", &name).unwrap().default_partition()
        );
        let sql = log.create_sql();
        assert!(sql.contains(&format!("CREATE TABLE IF NOT EXISTS \"audit\".\"{name}\"")));
    }

    #[test]
    fn the_table_has_the_documented_columns() {
        let sql = AuditLog::new().create_sql();
        for column in LOG_COLUMNS {
            assert!(
                sql.contains(&format!("\n    \"{}\" ", column.name)),
                "{}",
                column.name
            );
        }
    }

    #[test]
    fn partition_prefix_leaves_room_for_the_date() {
        assert_eq!(AuditLog::new().partition_prefix(), "auditlog_p");
        let long = AuditLog::named("audit", &"x".repeat(63)).unwrap();
        assert_eq!(long.partition_prefix().len() + 8, 63);
    }

    #[test]
    fn retention_interval_is_quoted() {
        let sql = AuditLog::new()
            .prune_partitions_sql("90 days'; DROP TABLE x; --", Retention::Detach)
            .unwrap();
        assert_eq!(
            sql,
            "SELECT * FROM \"audit\".\"auditlog_prune_partitions\"('90 days''; DROP TABLE x; --'::interval, false)"
        );
    }
}
