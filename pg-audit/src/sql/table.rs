//! The audit log table: one table, range-partitioned by time, with a DEFAULT partition.

use std::fmt::Write as _;

use crate::Error;
use crate::ident::{Ident, QualifiedName, ident_literal};
use crate::sql::partition::PartitionPeriod;

/// The default schema of the audit log.
pub const DEFAULT_SCHEMA: &str = "audit";
/// The default name of the audit log table.
pub const DEFAULT_TABLE: &str = "auditlog";
/// How many partitions past the current one are created by default.
pub const DEFAULT_PREMAKE: u32 = 3;

/// One column of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogColumn {
    /// The column name.
    pub name: &'static str,
    /// Its SQL type.
    pub sql_type: &'static str,
    /// What it records.
    pub doc: &'static str,
}

/// The audit log's columns, in table order.
pub const LOG_COLUMNS: [LogColumn; 13] = [
    LogColumn {
        name: "id",
        sql_type: "bigint",
        doc: "increasing id; orders rows written in the same statement",
    },
    LogColumn {
        name: "changed_at",
        sql_type: "timestamptz",
        doc: "start of the statement that made the change (the partition key)",
    },
    LogColumn {
        name: "tx_started_at",
        sql_type: "timestamptz",
        doc: "start of the transaction that made the change",
    },
    LogColumn {
        name: "txid",
        sql_type: "bigint",
        doc: "transaction id (`txid_current()`)",
    },
    LogColumn {
        name: "operation",
        sql_type: "text",
        doc: "INSERT, UPDATE, DELETE or TRUNCATE",
    },
    LogColumn {
        name: "schema_name",
        sql_type: "text",
        doc: "schema of the changed table",
    },
    LogColumn {
        name: "table_name",
        sql_type: "text",
        doc: "name of the changed table",
    },
    LogColumn {
        name: "record_key",
        sql_type: "bigint",
        doc: "hash of the table and `record_pk`, the indexed key of a record's history; NULL for TRUNCATE",
    },
    LogColumn {
        name: "record_pk",
        sql_type: "jsonb",
        doc: "primary key of the changed row, as a JSON object `{\"column\": value}`; NULL for TRUNCATE",
    },
    LogColumn {
        name: "old_values",
        sql_type: "jsonb",
        doc: "UPDATE and DELETE: the audited columns of the row before",
    },
    LogColumn {
        name: "new_values",
        sql_type: "jsonb",
        doc: "INSERT and UPDATE: the audited columns of the row after",
    },
    LogColumn {
        name: "db_user",
        sql_type: "text",
        doc: "the database role that connected (`session_user`)",
    },
    LogColumn {
        name: "context",
        sql_type: "json",
        doc: "the `pg_audit.context` setting: user_id, request_id, change_reason, client_addr, source, metadata",
    },
];

/// The SQL expression of the key that indexes a record's history: a hash of the primary-key
/// JSON seeded with a hash of `schema.table`, so one table's record `{"id": 1}` does not share
/// index entries with every other table's.
pub fn record_key_expr(schema: &str, table: &str, record_pk: &str) -> String {
    format!(
        "pg_catalog.jsonb_hash_extended({record_pk}, pg_catalog.hashtext({schema} OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) {table}))"
    )
}

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
                Some(Ident::new(DEFAULT_SCHEMA).expect("valid")),
                Ident::new(DEFAULT_TABLE).expect("valid"),
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

    /// A function pg-audit installs beside the log, named `<log>_<suffix>`.
    pub(crate) fn function(&self, suffix: &str) -> QualifiedName {
        self.table.sibling(&format!("_{suffix}"))
    }

    /// SQL that creates the schema, the log table, its DEFAULT partition, its indexes and its
    /// partition-maintenance functions, then creates the current partition and the next
    /// `premake`. Every statement is idempotent: running it again changes nothing but replaces the
    /// functions.
    pub fn create_sql(&self) -> String {
        let table = &self.table;
        let mut sql = String::new();
        let _ = writeln!(sql, "-- pg-audit: the audit log {table}");
        let _ = writeln!(sql, "CREATE SCHEMA IF NOT EXISTS {};\n", self.schema());
        let _ = writeln!(sql, "CREATE TABLE IF NOT EXISTS {table} (");
        let _ = writeln!(sql, "    \"id\" bigserial NOT NULL,");
        let _ = writeln!(
            sql,
            "    \"changed_at\" timestamptz NOT NULL DEFAULT pg_catalog.statement_timestamp(),"
        );
        let _ = writeln!(
            sql,
            "    \"tx_started_at\" timestamptz NOT NULL DEFAULT pg_catalog.transaction_timestamp(),"
        );
        let _ = writeln!(
            sql,
            "    \"txid\" bigint NOT NULL DEFAULT pg_catalog.txid_current(),"
        );
        let _ = writeln!(sql, "    \"operation\" text NOT NULL,");
        let _ = writeln!(sql, "    \"schema_name\" text NOT NULL,");
        let _ = writeln!(sql, "    \"table_name\" text NOT NULL,");
        let _ = writeln!(sql, "    \"record_key\" bigint,");
        let _ = writeln!(sql, "    \"record_pk\" jsonb,");
        let _ = writeln!(sql, "    \"old_values\" jsonb,");
        let _ = writeln!(sql, "    \"new_values\" jsonb,");
        let _ = writeln!(sql, "    \"db_user\" text NOT NULL DEFAULT session_user,");
        let _ = writeln!(sql, "    \"context\" json");
        let _ = writeln!(sql, ") PARTITION BY RANGE (\"changed_at\");\n");
        let _ = writeln!(
            sql,
            "COMMENT ON TABLE {table} IS {};\n",
            crate::ident::quote_literal(&format!(
                "pg-audit log: one row per audited change; append-only; partitioned {} by changed_at",
                self.period.name()
            ))
            .expect("no NUL")
        );
        let _ = writeln!(
            sql,
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} DEFAULT;\n",
            self.default_partition()
        );
        // Two indexes and no more: every index is maintained on every audited write.
        // History of one record: a hash index on a 64-bit hash of table and key, far cheaper
        // to maintain than a btree on (table_name, record_pk) (see docs/performance.md).
        let _ = writeln!(
            sql,
            "CREATE INDEX IF NOT EXISTS {} ON {table} USING hash (\"record_key\");",
            Ident::generated(table.name.as_str(), "_record_idx")
        );
        // Time ranges: partitions prune whole periods; a BRIN index, tiny and nearly free to
        // maintain on append-only data, narrows within one.
        let _ = writeln!(
            sql,
            "CREATE INDEX IF NOT EXISTS {} ON {table} USING brin (\"changed_at\", \"txid\");\n",
            Ident::generated(table.name.as_str(), "_time_idx")
        );
        sql.push_str(&self.partition_functions_sql());
        sql.push('\n');
        sql.push_str(&self.check_objects_sql());
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
        let _ = writeln!(sql, "\n{};", self.ensure_partitions_sql(self.premake));
        sql
    }

    /// SQL that lets `role` read the log (and list its partitions), and nothing more: it can
    /// neither change audit rows nor run maintenance. Grant this to application roles that
    /// show history; writing audited tables needs no privilege on the log.
    pub fn grant_read_sql(&self, role: &Ident) -> String {
        let mut sql = String::new();
        let _ = writeln!(sql, "GRANT USAGE ON SCHEMA {} TO {role};", self.schema());
        let _ = writeln!(sql, "GRANT SELECT ON TABLE {} TO {role};", self.table);
        let _ = writeln!(
            sql,
            "GRANT EXECUTE ON FUNCTION {}() TO {role};",
            self.function("partitions")
        );
        sql
    }

    /// SQL that drops the log, its partitions and its functions. Drop the audit triggers first
    /// (see [`crate::TriggerSpec::uninstall_sql`]): a trigger left behind would fail every write
    /// to its table.
    pub fn drop_sql(&self) -> String {
        let mut sql = String::new();
        for (name, args) in self.function_signatures() {
            let _ = writeln!(sql, "DROP FUNCTION IF EXISTS {name}({args});");
        }
        let _ = writeln!(sql, "DROP TABLE IF EXISTS {};", self.config_table());
        let _ = writeln!(sql, "DROP TABLE IF EXISTS {};", self.table);
        sql
    }

    /// A literal naming the log table, for use in generated function bodies.
    pub(crate) fn table_literal(&self) -> String {
        crate::ident::quote_literal(&self.table.to_string()).expect("no NUL")
    }

    pub(crate) fn schema_literal(&self) -> String {
        ident_literal(self.schema())
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
}
