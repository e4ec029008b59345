//! The log's shape, defined once: its columns, the record-key formula, the operations with
//! their trigger names, and the trigger-type bits the drift check reads.
//!
//! Everything that writes or reads the log derives from here: the log's DDL, the triggers'
//! `INSERT` column list, the reader's select list and the CLI's JSON. The Diesel `table!` of
//! the log in `pg-audit-diesel` is tested against [`LOG_COLUMNS`].

use std::fmt::Write as _;
use std::str::FromStr;

use crate::Error;
use crate::ident::Ident;

/// How a log column gets its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// By a sequence (`bigserial`).
    Sequence,
    /// By this SQL default expression, evaluated in the writing transaction.
    Default(&'static str),
    /// By the trigger (or the capture worker), which names it in its `INSERT`.
    Writer,
}

/// What a redacted value becomes, in the log and in archived files (a JSON string).
pub const REDACTED: &str = "[redacted]";

/// One column of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogColumn {
    /// The column name.
    pub name: &'static str,
    /// Its SQL type, as `format_type` spells it.
    pub sql_type: &'static str,
    /// Whether it may be NULL.
    pub nullable: bool,
    /// How it gets its value.
    pub filled: Filled,
    /// Whether readers load it into an entry (`record_key` is only an index key, derived from
    /// the table and `record_pk`).
    pub in_entry: bool,
    /// Whether logs installed before it existed get it from `ALTER TABLE ... ADD COLUMN`
    /// (such columns come last, in the order they were added).
    pub added_later: bool,
    /// What it records.
    pub doc: &'static str,
}

/// The audit log's columns, in table order.
pub const LOG_COLUMNS: [LogColumn; 15] = [
    LogColumn {
        name: "id",
        sql_type: "bigint",
        nullable: false,
        filled: Filled::Sequence,
        in_entry: true,
        added_later: false,
        doc: "increasing id; orders rows written in the same statement",
    },
    LogColumn {
        name: "changed_at",
        sql_type: "timestamptz",
        nullable: false,
        filled: Filled::Default("pg_catalog.statement_timestamp()"),
        in_entry: true,
        added_later: false,
        doc: "start of the statement that made the change (the partition key)",
    },
    LogColumn {
        name: "tx_started_at",
        sql_type: "timestamptz",
        nullable: false,
        filled: Filled::Default("pg_catalog.transaction_timestamp()"),
        in_entry: true,
        added_later: false,
        doc: "start of the transaction that made the change",
    },
    LogColumn {
        name: "txid",
        sql_type: "bigint",
        nullable: false,
        filled: Filled::Default("pg_catalog.txid_current()"),
        in_entry: true,
        added_later: false,
        doc: "transaction id (`txid_current()`)",
    },
    LogColumn {
        name: "operation",
        sql_type: "text",
        nullable: false,
        filled: Filled::Writer,
        in_entry: true,
        added_later: false,
        doc: "INSERT, UPDATE, DELETE or TRUNCATE",
    },
    LogColumn {
        name: "schema_name",
        sql_type: "text",
        nullable: false,
        filled: Filled::Writer,
        in_entry: true,
        added_later: false,
        doc: "schema of the changed table",
    },
    LogColumn {
        name: "table_name",
        sql_type: "text",
        nullable: false,
        filled: Filled::Writer,
        in_entry: true,
        added_later: false,
        doc: "name of the changed table",
    },
    LogColumn {
        name: "record_key",
        sql_type: "bigint",
        nullable: true,
        filled: Filled::Writer,
        in_entry: false,
        added_later: false,
        doc: "hash of the table and `record_pk`, the indexed key of a record's history; NULL for TRUNCATE",
    },
    LogColumn {
        name: "record_pk",
        sql_type: "jsonb",
        nullable: true,
        filled: Filled::Writer,
        in_entry: true,
        added_later: false,
        doc: "primary key of the changed row, as a JSON object `{\"column\": value}`; NULL for TRUNCATE",
    },
    LogColumn {
        name: "old_values",
        sql_type: "jsonb",
        nullable: true,
        filled: Filled::Writer,
        in_entry: true,
        added_later: false,
        doc: "UPDATE and DELETE: the audited columns of the row before",
    },
    LogColumn {
        name: "new_values",
        sql_type: "jsonb",
        nullable: true,
        filled: Filled::Writer,
        in_entry: true,
        added_later: false,
        doc: "INSERT and UPDATE: the audited columns of the row after",
    },
    LogColumn {
        name: "db_user",
        sql_type: "text",
        nullable: false,
        filled: Filled::Default("session_user"),
        in_entry: true,
        added_later: false,
        doc: "the database role that connected (`session_user`)",
    },
    LogColumn {
        name: "context",
        sql_type: "json",
        nullable: true,
        filled: Filled::Writer,
        in_entry: true,
        added_later: false,
        doc: "the `pg_audit.context` setting: user_id, request_id, change_reason, client_addr, source, metadata",
    },
    LogColumn {
        name: "old_record_pk",
        sql_type: "jsonb",
        nullable: true,
        filled: Filled::Writer,
        in_entry: true,
        added_later: true,
        doc: "UPDATE that changed the key: the key before (`record_pk` is the key after); NULL otherwise",
    },
    LogColumn {
        name: "old_record_key",
        sql_type: "bigint",
        nullable: true,
        filled: Filled::Writer,
        in_entry: false,
        added_later: true,
        doc: "hash of the table and `old_record_pk`, indexed, so the old key's history finds the change",
    },
];

/// The partition key.
pub const PARTITION_COLUMN: &str = "changed_at";

impl LogColumn {
    /// Its default as `pg_get_expr` prints it with the `search_path` pinned to `pg_catalog`
    /// (what the drift check compares with), for columns filled by a default.
    pub(crate) fn deparsed_default(&self) -> Option<&'static str> {
        match self.filled {
            Filled::Default("pg_catalog.statement_timestamp()") => Some("statement_timestamp()"),
            Filled::Default("pg_catalog.transaction_timestamp()") => {
                Some("transaction_timestamp()")
            }
            Filled::Default("pg_catalog.txid_current()") => Some("txid_current()"),
            Filled::Default("session_user") => Some("SESSION_USER"),
            _ => None,
        }
    }

    /// The column's definition in `CREATE TABLE`.
    pub(crate) fn definition(&self) -> String {
        let mut def = format!("\"{}\" ", self.name);
        match self.filled {
            Filled::Sequence => def.push_str("bigserial"),
            _ => def.push_str(self.sql_type),
        }
        if !self.nullable {
            def.push_str(" NOT NULL");
        }
        if let Filled::Default(expr) = self.filled {
            let _ = write!(def, " DEFAULT {expr}");
        }
        def
    }
}

/// The columns a writer names in its `INSERT` (the others fill themselves), in table order.
pub fn written_columns() -> impl Iterator<Item = &'static LogColumn> {
    LOG_COLUMNS.iter().filter(|c| c.filled == Filled::Writer)
}

/// The columns an entry holds, in table order.
pub fn entry_columns() -> impl Iterator<Item = &'static LogColumn> {
    LOG_COLUMNS.iter().filter(|c| c.in_entry)
}

/// The select list of an entry from the log aliased `alias`: `l.id, l.changed_at, ...`.
pub fn entry_select_list(alias: &str) -> String {
    entry_columns()
        .map(|c| format!("{alias}.{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL expression of the key that indexes a record's history: a hash of the primary-key
/// JSON seeded with a hash of `schema.table`, so one table's record `{"id": 1}` does not share
/// index entries with every other table's. Its arguments are SQL expressions of the schema
/// name, the table name (both text) and the key object (jsonb). Every operator is
/// schema-qualified, so objects on the caller's search path are never called.
pub fn record_key_expr(schema: &str, table: &str, record_pk: &str) -> String {
    record_key_from_seed(&record_key_seed_expr(schema, table), record_pk)
}

/// The seed of a table's record keys: a hash of `schema.table` (an `integer`), computed once per
/// call by the trigger function rather than once per row.
pub(crate) fn record_key_seed_expr(schema: &str, table: &str) -> String {
    format!(
        "pg_catalog.hashtext({schema} OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) {table})"
    )
}

/// A record key from a seed of [`record_key_seed_expr`] and a key object.
pub(crate) fn record_key_from_seed(seed: &str, record_pk: &str) -> String {
    format!("pg_catalog.jsonb_hash_extended({record_pk}, {seed})")
}

/// A change that can be audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `INSERT` (including the insert arm of `INSERT ... ON CONFLICT` and `MERGE`).
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `TRUNCATE`: one log row per statement, with no row values.
    Truncate,
    /// A row as it stood when `pg-audit baseline` read it (`new_values`; no `old_values`): no
    /// trigger writes it. Its state holds before and after it, so a row never changed since
    /// auditing began still has a history, a state at any time and a place in the table as of
    /// a time.
    Snapshot,
    /// A schema change of the table (see [`crate::sql::schema`]): no key, its shape before and
    /// after.
    Ddl,
}

impl Operation {
    /// Every operation a trigger (or the capture worker) logs.
    pub const ALL: [Operation; 4] = [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ];

    /// The operations audited when none are chosen: all four. A TRUNCATE removes rows as surely
    /// as a DELETE, so it is logged (one entry per truncated table, without row values) unless
    /// `operations` leaves it out.
    pub const DEFAULT: [Operation; 4] = Operation::ALL;

    /// Every operation an entry of the log may hold: the triggers', `SNAPSHOT` and `DDL`.
    pub const LOGGED: [Operation; 6] = [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
        Operation::Snapshot,
        Operation::Ddl,
    ];

    /// The operation an entry's `operation` column holds (its keyword, any case).
    pub fn from_logged(keyword: &str) -> Option<Operation> {
        Operation::LOGGED
            .into_iter()
            .find(|op| op.keyword().eq_ignore_ascii_case(keyword))
    }

    /// Whether a trigger logs it (not a snapshot).
    pub fn is_triggered(self) -> bool {
        Operation::ALL.contains(&self)
    }

    /// The SQL expression of the row's state after the entry aliased `l` (NULL: no row).
    pub fn after_state_sql(l: &str) -> String {
        format!(
            "CASE WHEN {l}.operation OPERATOR(pg_catalog.=) ANY (ARRAY['INSERT', 'UPDATE', 'SNAPSHOT']) THEN {l}.new_values END"
        )
    }

    /// The SQL expression of the row's state before the entry aliased `l` for its own key
    /// (NULL: no row, or the key changed): a snapshot's row stood as it was read.
    pub fn before_state_sql(l: &str) -> String {
        format!(
            "CASE WHEN {l}.operation OPERATOR(pg_catalog.=) ANY (ARRAY['UPDATE', 'DELETE']) AND {l}.old_record_pk IS NULL THEN {l}.old_values \
WHEN {l}.operation OPERATOR(pg_catalog.=) 'SNAPSHOT' THEN {l}.new_values END"
        )
    }

    /// The lower-case name the `operations` option of the attribute and the program take:
    /// `insert`, `update`, `delete`, `truncate`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Truncate => "truncate",
            Operation::Snapshot => "snapshot",
            Operation::Ddl => "ddl",
        }
    }

    /// The SQL keyword, as stored in the log's `operation` column.
    pub fn keyword(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Truncate => "TRUNCATE",
            Operation::Snapshot => "SNAPSHOT",
            Operation::Ddl => crate::sql::schema::DDL,
        }
    }

    /// The name of this operation's trigger on the audited table.
    pub fn trigger_name(self) -> Ident {
        Ident::generated(self.trigger_name_str(), "")
    }

    fn trigger_name_str(self) -> &'static str {
        match self {
            Operation::Insert => "pg_audit_insert",
            Operation::Update => "pg_audit_update",
            Operation::Delete => "pg_audit_delete",
            Operation::Truncate => "pg_audit_truncate",
            // The builder refuses it among a table's operations.
            Operation::Snapshot | Operation::Ddl => {
                unreachable!("no trigger logs a snapshot or a schema change")
            }
        }
    }

    /// The `REFERENCING` clause of this operation's statement-level trigger (empty for
    /// TRUNCATE): the transition tables the trigger function reads.
    pub(crate) fn referencing(self) -> String {
        match self {
            Operation::Insert => format!("REFERENCING NEW TABLE AS {NEW_ROWS}"),
            Operation::Delete => format!("REFERENCING OLD TABLE AS {OLD_ROWS}"),
            Operation::Update => {
                format!("REFERENCING OLD TABLE AS {OLD_ROWS} NEW TABLE AS {NEW_ROWS}")
            }
            Operation::Truncate | Operation::Snapshot | Operation::Ddl => String::new(),
        }
    }

    /// This operation's event bit in `pg_trigger.tgtype`: the whole `tgtype` of its
    /// statement-level AFTER trigger.
    pub(crate) fn tgtype_event(self) -> u8 {
        match self {
            Operation::Insert => tgtype::INSERT,
            Operation::Delete => tgtype::DELETE,
            Operation::Update => tgtype::UPDATE,
            Operation::Truncate => tgtype::TRUNCATE,
            Operation::Snapshot | Operation::Ddl => 0,
        }
    }

    /// PL/pgSQL dropping the triggers named in the `name[]` expression `names` that the
    /// relation in the `regclass` variable `relation` has of its own (not clones), so that no
    /// NOTICE is printed for one it lacks; the caller declares `pg_audit_trigger name`.
    pub(crate) fn drop_triggers_plpgsql(relation: &str, names: &str, indent: &str) -> String {
        format!(
            "FOR pg_audit_trigger IN SELECT t.tgname FROM pg_catalog.pg_trigger AS t
{indent}                         WHERE t.tgrelid OPERATOR(pg_catalog.=) {relation} AND t.tgparentid OPERATOR(pg_catalog.=) 0
{indent}                           AND t.tgname OPERATOR(pg_catalog.=) ANY ({names}) LOOP
{indent}    EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', pg_audit_trigger, {relation});
{indent}END LOOP;"
        )
    }

    /// The row-level trigger on a partitioned table that refuses writes to partitions without
    /// audit triggers of their own.
    pub(crate) fn guard_trigger_name() -> Ident {
        Ident::generated("pg_audit_guard", "")
    }

    /// `ARRAY[...]::name[]` of every trigger an install creates: each operation's and the
    /// guard.
    pub(crate) fn all_trigger_names_array() -> String {
        format!(
            "ARRAY[{}]::name[]",
            Operation::ALL
                .iter()
                .map(|op| op.trigger_name())
                .chain([Operation::guard_trigger_name()])
                .map(|name| name.literal())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// `ARRAY['pg_audit_insert', ...]::name[]`: every audit trigger's name, for catalog queries.
    pub(crate) fn trigger_names_array() -> String {
        let names: Vec<String> = Operation::ALL
            .iter()
            .map(|op| op.trigger_name().literal())
            .collect();
        format!("ARRAY[{}]::name[]", names.join(", "))
    }
}

impl FromStr for Operation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Operation::ALL
            .into_iter()
            .find(|op| op.keyword().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownOperation { name: s.to_owned() })
    }
}

/// The transition tables of statement-level triggers, as the trigger function names them.
pub(crate) const NEW_ROWS: &str = "pg_audit_new_rows";
pub(crate) const OLD_ROWS: &str = "pg_audit_old_rows";

/// Bits of `pg_trigger.tgtype` (PostgreSQL's `TRIGGER_TYPE_*`, `catalog/pg_trigger.h`).
pub(crate) mod tgtype {
    /// `FOR EACH ROW`.
    pub(crate) const ROW: u8 = 1;
    /// `BEFORE`.
    pub(crate) const BEFORE: u8 = 2;
    /// `INSERT` among the events.
    pub(crate) const INSERT: u8 = 4;
    /// `DELETE` among the events.
    pub(crate) const DELETE: u8 = 8;
    /// `UPDATE` among the events.
    pub(crate) const UPDATE: u8 = 16;
    /// `TRUNCATE` among the events.
    pub(crate) const TRUNCATE: u8 = 32;
    /// A BEFORE UPDATE row trigger: one that can change a row's columns unseen by an
    /// `UPDATE OF` trigger.
    pub(crate) const BEFORE_UPDATE_ROW: u8 = ROW | BEFORE | UPDATE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_name_the_columns_without_defaults() {
        let written: Vec<&str> = written_columns().map(|c| c.name).collect();
        assert_eq!(
            written,
            [
                "operation",
                "schema_name",
                "table_name",
                "record_key",
                "record_pk",
                "old_values",
                "new_values",
                "context",
                "old_record_pk",
                "old_record_key"
            ]
        );
        assert_eq!(
            entry_select_list("l"),
            "l.id, l.changed_at, l.tx_started_at, l.txid, l.operation, l.schema_name, l.table_name, \
             l.record_pk, l.old_values, l.new_values, l.db_user, l.context, l.old_record_pk"
        );
    }

    #[test]
    fn the_partition_column_is_a_column() {
        assert!(
            LOG_COLUMNS
                .iter()
                .any(|c| c.name == PARTITION_COLUMN && !c.nullable)
        );
    }

    #[test]
    fn trigger_bits_match_postgres() {
        assert_eq!(tgtype::BEFORE_UPDATE_ROW, 19);
        assert_eq!(
            Operation::trigger_names_array(),
            "ARRAY['pg_audit_insert', 'pg_audit_update', 'pg_audit_delete', 'pg_audit_truncate']::name[]"
        );
    }
}
