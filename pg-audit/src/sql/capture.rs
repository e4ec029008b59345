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

use std::str::FromStr;

use crate::Error;
use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::install::{
    AUDITED_FIELD, CAPTURE_FIELD, EXCLUDE_FIELD, KEY_FIELD, MASK_FIELD, TRACK_ONLY_FIELD,
};
use crate::sql::names::LogNames;
use crate::sql::shape::{record_key_expr, written_columns};

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

/// The stored generated columns of the table `$1`.`$2` and their expressions, in column order:
/// rows `name`, `expr` (as the server prints it under the worker's pinned `search_path`, so
/// every name outside `pg_catalog` comes qualified). The write-ahead log does not carry their
/// values (PostgreSQL before 18 leaves them out of `pgoutput`); the worker computes them with
/// [`generated_values_sql`].
pub const GENERATED_COLUMNS_SQL: &str = "SELECT a.attname::text AS name, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS expr
  FROM pg_catalog.pg_attribute AS a
  JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) a.attrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN pg_catalog.pg_attrdef AS d ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid AND d.adnum OPERATOR(pg_catalog.=) a.attnum
 WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2
   AND a.attgenerated OPERATOR(pg_catalog.=) 's' AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

/// The values of `table`'s generated columns (`columns`: name and expression, from
/// [`GENERATED_COLUMNS_SQL`]) for captured rows, computed by the source server from the rest
/// of each row as it computed them when the row was written (generation expressions are
/// immutable): `$1` is a JSON array of `{"ord", "row"}` (`row` the row's other columns as the
/// triggers' `to_jsonb` writes them); rows `ord`, `name`, `value` (the value's JSON text, as
/// `to_jsonb` writes it). The expressions read the row's columns by their names only (a
/// subquery of its own, so the array's fields cannot shadow them).
pub fn generated_values_sql(table: &QualifiedName, columns: &[(String, String)]) -> String {
    // jsonb_build_object takes at most 100 arguments: 50 columns an object.
    let objects: Vec<String> = columns
        .chunks(50)
        .map(|chunk| {
            let pairs: Vec<String> = chunk
                .iter()
                .map(|(name, expr)| format!("{}, pg_catalog.to_jsonb({expr})", text_literal(name)))
                .collect();
            format!("pg_catalog.jsonb_build_object({})", pairs.join(", "))
        })
        .collect();
    format!(
        "SELECT x.ord, g.key AS name, g.value::text AS value
  FROM pg_catalog.json_to_recordset($1::text::pg_catalog.json) AS x(ord bigint, \"row\" jsonb)
 CROSS JOIN LATERAL (SELECT {objects} AS v
                       FROM pg_catalog.jsonb_populate_record(NULL::{table}, x.\"row\")) AS r
 CROSS JOIN LATERAL pg_catalog.jsonb_each(r.v) AS g
 ORDER BY x.ord",
        objects = objects.join(" OPERATOR(pg_catalog.||) ")
    )
}

/// The SQL of [`crate::AuditLog::capture_setup_sql`].
pub(crate) fn capture_setup_sql(names: &LogNames) -> String {
    let table = names.capture_progress_table();
    let issues = names.capture_issues_table();
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

/// The SQL of [`crate::AuditLog::capture_issues_insert_sql`].
pub(crate) fn capture_issues_insert_sql(names: &LogNames) -> String {
    format!(
        "INSERT INTO {} (slot, txid, schema_name, table_name, record_pk, column_name, issue, raw)
SELECT $1::text, i.txid, i.schema_name, i.table_name, i.record_pk, i.column_name, i.issue, i.raw
  FROM pg_catalog.json_to_recordset($2::text::pg_catalog.json) AS i(
       txid bigint, schema_name text, table_name text, record_pk text, column_name text, issue text, raw text)",
        names.capture_issues_table()
    )
}

/// The SQL of [`crate::AuditLog::capture_issues_summary_sql`].
pub(crate) fn capture_issues_summary_sql(names: &LogNames) -> String {
    format!(
        "SELECT pg_catalog.count(*) AS issues,
       coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'noted_at', n.noted_at, 'txid', n.txid, 'table', pg_catalog.format('%I.%I', n.schema_name, n.table_name),
                   'record_pk', n.record_pk, 'column_name', n.column_name, 'issue', n.issue) ORDER BY n.noted_at DESC)
                   FROM (SELECT * FROM {issues} AS i WHERE i.slot OPERATOR(pg_catalog.=) $1::text
                          ORDER BY i.noted_at DESC LIMIT 10) AS n)::text, '[]') AS latest
  FROM {issues} AS i WHERE i.slot OPERATOR(pg_catalog.=) $1::text",
        issues = names.capture_issues_table()
    )
}

/// The SQL of [`crate::AuditLog::capture_progress_read_sql`].
pub(crate) fn capture_progress_read_sql(names: &LogNames) -> String {
    format!(
        "SELECT lsn::text AS lsn, last_commit FROM {} WHERE slot OPERATOR(pg_catalog.=) $1::text",
        names.capture_progress_table()
    )
}

/// The SQL of [`crate::AuditLog::capture_progress_write_sql`].
pub(crate) fn capture_progress_write_sql(names: &LogNames) -> String {
    format!(
        "INSERT INTO {} AS p (slot, lsn, last_commit) VALUES ($1::text, $2::text::pg_lsn, $3)
ON CONFLICT (slot) DO UPDATE SET lsn = EXCLUDED.lsn, last_commit = EXCLUDED.last_commit, updated_at = pg_catalog.now()",
        names.capture_progress_table()
    )
}

/// The SQL of [`crate::AuditLog::capture_insert_sql`].
pub(crate) fn capture_insert_sql(names: &LogNames) -> String {
    let masked = names.function("masked");
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
            // Masked as the triggers mask them.
            "old_values" | "new_values" => format!(
                "CASE WHEN r.mask IS NULL THEN r.{c} ELSE {masked}(r.{c}, ARRAY(SELECT pg_catalog.jsonb_array_elements_text(r.mask))) END"
            ),
            other => format!("r.{other}"),
        })
        .collect();
    format!(
        "INSERT INTO {log} ({columns}, changed_at, tx_started_at, txid, db_user)
SELECT {values}, r.changed_at, r.tx_started_at, r.txid, r.db_user
  FROM pg_catalog.json_to_recordset($1::text::pg_catalog.json) AS r(
       ord bigint, changed_at timestamptz, tx_started_at timestamptz, txid bigint, operation text,
       schema_name text, table_name text, record_pk jsonb, old_record_pk jsonb, old_values jsonb,
       new_values jsonb, db_user text, context json, mask jsonb)
 WHERE r.operation OPERATOR(pg_catalog.<>) 'UPDATE'
    OR r.old_values IS NULL OR r.old_values OPERATOR(pg_catalog.<>) r.new_values OR {changed_key}
 ORDER BY r.ord",
        log = names.table(),
        columns = columns.join(", "),
        values = values.join(", "),
    )
}

/// The SQL of [`crate::AuditLog::captured_tables_sql`].
pub(crate) fn captured_tables_sql(names: &LogNames) -> String {
    installed_tables_sql(
        names,
        &format!(
            "r.config ->> {} OPERATOR(pg_catalog.=) {}",
            text_literal(CAPTURE_FIELD),
            text_literal(Capture::Wal.name()),
        ),
    )
}

/// One table's install record, as [`captured_tables_sql`] reads them: `$1` schema, `$2` name.
pub(crate) fn installed_table_sql(names: &LogNames) -> String {
    installed_tables_sql(
        names,
        "r.table_schema OPERATOR(pg_catalog.=) $1 AND r.table_name OPERATOR(pg_catalog.=) $2",
    )
}

/// The install records passing `filter` (over `r`), each with its configuration as columns.
fn installed_tables_sql(names: &LogNames, filter: &str) -> String {
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
       {} AS mask,
       r.config ->> 'condition' AS condition,
       {} AS operations
  FROM {} AS r
 WHERE {filter}
 ORDER BY 1, 2",
        list(&path(&[KEY_FIELD])),
        list(&path(&[AUDITED_FIELD, TRACK_ONLY_FIELD])),
        list(&path(&[AUDITED_FIELD, EXCLUDE_FIELD])),
        list(&path(&[MASK_FIELD])),
        list(&path(&["operations"])),
        names.config_table(),
    )
}

/// PL/pgSQL adding `table` to `publication` (`add`) when it is not in it, or dropping it
/// when it is; `indent` starts each line after the first.
pub(crate) fn membership_plpgsql(
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
}

/// A table's install record as [`AuditLog::captured_tables_sql`](crate::AuditLog::captured_tables_sql) reads it, from which its spec is made
/// again (for the capture worker's condition, and a baseline's rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTable {
    /// `table_schema`.
    pub schema: String,
    /// `table_name`.
    pub name: String,
    /// `primary_key`.
    pub primary_key: Vec<String>,
    /// `track_only`.
    pub track_only: Option<Vec<String>>,
    /// `exclude_fields`.
    pub exclude_fields: Option<Vec<String>>,
    /// `mask` (empty: none).
    pub mask: Vec<String>,
    /// `condition`, as written.
    pub condition: Option<String>,
}

impl InstalledTable {
    /// The table's name, schema-qualified.
    pub fn table(&self) -> Result<crate::QualifiedName, crate::Error> {
        Ok(crate::QualifiedName::new(
            Some(crate::Ident::new(&self.schema)?),
            crate::Ident::new(&self.name)?,
        ))
    }

    /// The spec the record was installed from, as far as the values it logs go (key, columns,
    /// condition).
    pub fn spec(&self) -> Result<crate::TriggerSpec, crate::Error> {
        let mut builder =
            crate::TriggerSpec::builder(self.table()?).primary_key(self.primary_key.clone());
        if let Some(columns) = &self.track_only {
            builder = builder.track_only(columns.clone());
        }
        if let Some(columns) = &self.exclude_fields {
            builder = builder.exclude_fields(columns.clone());
        }
        if !self.mask.is_empty() {
            builder = builder.mask(self.mask.clone());
        }
        if let Some(condition) = &self.condition {
            builder = builder.condition(condition.clone());
        }
        builder.build()
    }
}
