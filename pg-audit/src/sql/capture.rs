//! Capture from the write-ahead log: the per-table choice ([`Capture`]), what an install sets up
//! for it (a publication, `REPLICA IDENTITY FULL`, the install record), and the SQL the capture
//! worker (`pg-audit-capture`) runs: reading the captured tables' configuration, evaluating
//! conditions, writing the log and its progress in one transaction.
//!
//! Triggers write an audit row inside the writing transaction. With [`Capture::Wal`] nothing
//! runs in the writer's transaction: PostgreSQL's logical decoding reads the change back from
//! the write-ahead log through the `pgoutput` plugin, and the worker writes the same log after
//! commit. The publication carries whole rows (no column lists, no row filters): a column list
//! must cover the replica identity, which is every column under `REPLICA IDENTITY FULL`, and a
//! row filter turns an UPDATE whose row leaves the filter into a DELETE (and one that enters it
//! into an INSERT), which is not what a condition over `NEW` and `OLD` means. The worker applies
//! `track_only`, `exclude_fields` and conditions exactly as the triggers do, so excluded values
//! travel the replication stream but never reach the log.

use std::fmt::Write as _;
use std::str::FromStr;

use crate::Error;
use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::drift::{AUDITED_FIELD, CAPTURE_FIELD, EXCLUDE_FIELD, KEY_FIELD, TRACK_ONLY_FIELD};
use crate::sql::log::AuditLog;
use crate::sql::shape::{Operation, record_key_expr, written_columns};
use crate::sql::trigger::TriggerSpec;

/// Where a table's changes are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Capture {
    /// By triggers, inside the writing transaction: the audit row commits if and only if the
    /// change does.
    #[default]
    Trigger,
    /// From the write-ahead log, by the capture worker after commit: almost nothing on the
    /// write path, exactly once, with a lag.
    Wal,
}

impl Capture {
    /// Every capture path.
    pub const ALL: [Capture; 2] = [Capture::Trigger, Capture::Wal];

    /// `trigger` or `wal`.
    pub fn name(self) -> &'static str {
        match self {
            Capture::Trigger => "trigger",
            Capture::Wal => "wal",
        }
    }
}

impl FromStr for Capture {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Capture::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| Error::UnknownCapture { name: s.to_owned() })
    }
}

/// The prefix of the logical messages carrying a transaction's context.
pub const MESSAGE_PREFIX: &str = "pg_audit";

/// The expression emitting the context `context_sql` (a text expression holding the context's
/// JSON, or `''` for none) as a transactional logical message, for the capture worker: the
/// context with the writer's `session_user` and transaction start, which the stream does not
/// carry (the transaction id it does). Emitting assigns a transaction id, as the write that
/// follows would. Any writer can emit such a message, so what it says is the writer's word, as
/// the context setting is.
pub fn emit_context_sql(context_sql: &str) -> String {
    format!(
        "pg_catalog.pg_logical_emit_message(true, {}, pg_catalog.json_build_object('context', CASE WHEN {context_sql}::text OPERATOR(pg_catalog.=) '' THEN NULL ELSE {context_sql}::pg_catalog.json END, 'db_user', session_user, 'tx_started_at', pg_catalog.transaction_timestamp())::text)",
        text_literal(MESSAGE_PREFIX)
    )
}

impl AuditLog {
    /// The publication listing the tables captured from the write-ahead log (database-wide,
    /// so its name carries the log's schema and name).
    pub fn publication(&self) -> Ident {
        Ident::generated(
            &format!(
                "pg_audit_{}_{}",
                self.schema().as_str(),
                self.table().name.as_str()
            ),
            "",
        )
    }

    /// The default replication slot's name for the log's capture from `database`:
    /// `pg_audit_<schema>_<log>_<database>` (slot names are the server's, shared by its
    /// databases), in the characters a slot name may hold (lower-case letters, digits, `_`), at
    /// most 63 bytes (a long name is cut and ends with a hash of the whole).
    pub fn default_slot(&self, database: &str) -> String {
        Ident::generated(&format!("{}_{database}", self.publication().as_str()), "")
            .as_str()
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '_' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '_',
            })
            .collect()
    }

    /// The table holding each slot's progress beside the log, written in the same transaction
    /// as the rows: `slot`, `lsn` (the end of the last transaction written), `last_commit`.
    pub fn capture_progress_table(&self) -> QualifiedName {
        self.function("capture_progress")
    }

    /// The table where the capture worker notes what it could not log as it came: a value
    /// the log cannot hold (logged instead as the JSON string of its text) or a change it
    /// could not log at all (set aside here whole). Written in the batch's transaction.
    pub fn capture_issues_table(&self) -> QualifiedName {
        self.function("capture_issues")
    }

    /// SQL creating the progress table and the issues table where the log lives when they are
    /// missing (run by the worker at every start, so it does nothing that needs ownership
    /// once the tables exist).
    pub fn capture_setup_sql(&self) -> String {
        let table = self.capture_progress_table();
        let issues = self.capture_issues_table();
        let body = format!(
            "
BEGIN
    IF pg_catalog.to_regclass({table_lit}) IS NULL THEN
        CREATE TABLE {table} (
            slot text PRIMARY KEY,
            lsn pg_lsn NOT NULL,
            last_commit timestamptz,
            updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
        );
        COMMENT ON TABLE {table} IS {comment};
    END IF;
    IF pg_catalog.to_regclass({issues_lit}) IS NULL THEN
        CREATE TABLE {issues} (
            noted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
            slot text NOT NULL,
            txid bigint NOT NULL,
            schema_name text NOT NULL,
            table_name text NOT NULL,
            record_pk text,
            column_name text,
            issue text NOT NULL,
            raw text NOT NULL
        );
        COMMENT ON TABLE {issues} IS {issues_comment};
        REVOKE ALL ON TABLE {issues} FROM PUBLIC;
    END IF;
END
",
            table_lit = table.literal(),
            comment = text_literal(
                "pg-audit: how far each capture worker has written the log, committed with the rows"
            ),
            issues_lit = issues.literal(),
            issues_comment = text_literal(
                "pg-audit: what the capture worker could not log as it came (a value logged as its text, or a change set aside whole); see pg-audit capture status"
            ),
        );
        format!("DO {};", crate::ident::dollar_quote(&body))
    }

    /// SQL noting capture issues: `$1` the slot, `$2` a JSON array of objects with `txid`,
    /// `schema_name`, `table_name`, `record_pk` (text or null), `column_name` (null for a
    /// change set aside whole), `issue`, `raw` (the value's or the change's text).
    pub fn capture_issues_insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (slot, txid, schema_name, table_name, record_pk, column_name, issue, raw)
SELECT $1::text, i.txid, i.schema_name, i.table_name, i.record_pk, i.column_name, i.issue, i.raw
  FROM pg_catalog.json_to_recordset($2::text::pg_catalog.json) AS i(
       txid bigint, schema_name text, table_name text, record_pk text, column_name text, issue text, raw text)",
            self.capture_issues_table()
        )
    }

    /// SQL summing up a slot's capture issues: `$1` the slot; one row of `issues` (their
    /// number) and `latest` (a JSON array of the ten newest, each with `noted_at`, `txid`,
    /// `table`, `record_pk`, `column_name`, `issue`).
    pub fn capture_issues_summary_sql(&self) -> String {
        format!(
            "SELECT pg_catalog.count(*) AS issues,
       coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'noted_at', n.noted_at, 'txid', n.txid, 'table', pg_catalog.format('%I.%I', n.schema_name, n.table_name),
                   'record_pk', n.record_pk, 'column_name', n.column_name, 'issue', n.issue) ORDER BY n.noted_at DESC)
                   FROM (SELECT * FROM {issues} AS i WHERE i.slot OPERATOR(pg_catalog.=) $1::text
                          ORDER BY i.noted_at DESC LIMIT 10) AS n)::text, '[]') AS latest
  FROM {issues} AS i WHERE i.slot OPERATOR(pg_catalog.=) $1::text",
            issues = self.capture_issues_table()
        )
    }

    /// SQL reading a slot's progress: `$1` the slot; one row of `lsn` (text) and `last_commit`.
    pub fn capture_progress_read_sql(&self) -> String {
        format!(
            "SELECT lsn::text AS lsn, last_commit FROM {} WHERE slot OPERATOR(pg_catalog.=) $1::text",
            self.capture_progress_table()
        )
    }

    /// SQL recording a slot's progress: `$1` the slot, `$2` the LSN (text), `$3` the last
    /// commit time (timestamptz).
    pub fn capture_progress_write_sql(&self) -> String {
        format!(
            "INSERT INTO {} AS p (slot, lsn, last_commit) VALUES ($1::text, $2::text::pg_lsn, $3)
ON CONFLICT (slot) DO UPDATE SET lsn = EXCLUDED.lsn, last_commit = EXCLUDED.last_commit, updated_at = pg_catalog.now()",
            self.capture_progress_table()
        )
    }

    /// SQL writing a batch of captured changes: `$1` a JSON array of objects with `ord`,
    /// `changed_at`, `tx_started_at`, `txid`, `operation`, `schema_name`, `table_name`,
    /// `record_pk`, `old_record_pk`, `old_values`, `new_values`, `db_user`, `context`. The
    /// record keys are computed here, by the formula the triggers use; an UPDATE that changed
    /// no audited value and not the key is dropped, as the triggers drop it; rows get their ids
    /// in `ord` order.
    pub fn capture_insert_sql(&self) -> String {
        let columns: Vec<&str> = written_columns().map(|c| c.name).collect();
        let key = |pk: &str| {
            format!(
                "CASE WHEN {pk} IS NULL THEN NULL ELSE {} END",
                record_key_expr("r.schema_name", "r.table_name", pk)
            )
        };
        let changed_key =
            "r.old_record_pk IS NOT NULL AND r.old_record_pk OPERATOR(pg_catalog.<>) r.record_pk";
        let values: Vec<String> = columns
            .iter()
            .map(|&c| match c {
                "record_key" => key("r.record_pk"),
                "old_record_pk" => format!("CASE WHEN {changed_key} THEN r.old_record_pk END"),
                "old_record_key" => {
                    format!(
                        "CASE WHEN {changed_key} THEN {} END",
                        key("r.old_record_pk")
                    )
                }
                // Normalized as the triggers store it: one value per key.
                "context" => "r.context::pg_catalog.jsonb::pg_catalog.json".to_owned(),
                other => format!("r.{other}"),
            })
            .collect();
        format!(
            "INSERT INTO {log} ({columns}, changed_at, tx_started_at, txid, db_user)
SELECT {values}, r.changed_at, r.tx_started_at, r.txid, r.db_user
  FROM pg_catalog.json_to_recordset($1::text::pg_catalog.json) AS r(
       ord bigint, changed_at timestamptz, tx_started_at timestamptz, txid bigint, operation text,
       schema_name text, table_name text, record_pk jsonb, old_record_pk jsonb, old_values jsonb,
       new_values jsonb, db_user text, context json)
 WHERE r.operation OPERATOR(pg_catalog.<>) 'UPDATE'
    OR r.old_values IS NULL OR r.old_values OPERATOR(pg_catalog.<>) r.new_values OR {changed_key}
 ORDER BY r.ord",
            log = self.table(),
            columns = columns.join(", "),
            values = values.join(", "),
        )
    }

    /// SQL listing the tables installed for capture from the write-ahead log, with their
    /// configuration: `table_schema`, `table_name`, `primary_key` (text[]), `track_only`
    /// (text[] or NULL), `exclude_fields` (text[] or NULL), `condition`, `operations` (text[]).
    pub fn captured_tables_sql(&self) -> String {
        let list = |path: &str| {
            format!(
                "CASE WHEN pg_catalog.jsonb_typeof(r.config #> {path}) OPERATOR(pg_catalog.=) 'array' THEN ARRAY(SELECT pg_catalog.jsonb_array_elements_text(r.config #> {path})) END"
            )
        };
        let path = |parts: &[&str]| text_literal(&format!("{{{}}}", parts.join(",")));
        format!(
            "SELECT r.table_schema, r.table_name,
       {} AS primary_key,
       {} AS track_only,
       {} AS exclude_fields,
       r.config ->> 'condition' AS condition,
       {} AS operations
  FROM {} AS r
 WHERE r.config ->> {} OPERATOR(pg_catalog.=) {}
 ORDER BY 1, 2",
            list(&path(&[KEY_FIELD])),
            list(&path(&[AUDITED_FIELD, TRACK_ONLY_FIELD])),
            list(&path(&[AUDITED_FIELD, EXCLUDE_FIELD])),
            list(&path(&["operations"])),
            self.config_table(),
            text_literal(CAPTURE_FIELD),
            text_literal(Capture::Wal.name()),
        )
    }
}

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
                crate::sql::trigger::condition_for(self, op, "n", "o")
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
            table_text = table.to_string().replace('\'', "''").replace('%', "%%"),
        );
        let _ = writeln!(sql, "DO {};", crate::ident::dollar_quote(&body));
        let _ = writeln!(
            sql,
            "\n{}",
            self.install_record().insert_wal_sql(&log.objects(), table)
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

/// PL/pgSQL adding `table` to `publication` (`add`) when it is not in it, or dropping it
/// when it is; `indent` starts each line after the first.
fn membership_plpgsql(
    publication: &Ident,
    table: &QualifiedName,
    add: bool,
    indent: &str,
) -> String {
    let (test, action) = if add {
        ("IF NOT EXISTS", "ADD")
    } else {
        ("IF EXISTS", "DROP")
    };
    let pad = " ".repeat(test.len() - "IF EXISTS".len());
    let (pub_lit, table_lit) = (publication.literal(), table.literal());
    format!(
        "{test} (SELECT FROM pg_catalog.pg_publication_rel AS r
{indent}{pad}             JOIN pg_catalog.pg_publication AS p ON p.oid OPERATOR(pg_catalog.=) r.prpubid
{indent}{pad}            WHERE p.pubname OPERATOR(pg_catalog.=) {pub_lit}
{indent}{pad}              AND r.prrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})) THEN
{indent}    EXECUTE pg_catalog.format('ALTER PUBLICATION %I {action} TABLE %s', {pub_lit}, pg_catalog.to_regclass({table_lit}));
{indent}END IF;"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_names_round_trip() {
        for c in Capture::ALL {
            assert_eq!(c.name().parse::<Capture>(), Ok(c));
        }
        assert_eq!(
            "logical".parse::<Capture>(),
            Err(Error::UnknownCapture {
                name: "logical".into()
            })
        );
    }

    #[test]
    fn the_default_slot_is_a_valid_slot_name() {
        let log = AuditLog::named("Audit", "My-Log").unwrap();
        let slot = log.default_slot("App-DB");
        assert!(
            slot.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_eq!(
            AuditLog::new().default_slot("app"),
            "pg_audit_audit_auditlog_app"
        );
        assert!(AuditLog::new().default_slot(&"d".repeat(100)).len() <= 63);
    }
}
