//! Import of the history another audit tool kept, into the log: `audit-trigger` (the
//! PostgreSQL wiki's trigger, `audit.logged_actions`, rows as `hstore`) and `supa_audit`
//! (`audit.record_version`, rows as `jsonb`).
//!
//! One audited table at a time, in the source's order, in batches each written in one
//! transaction with its progress (`<log>_imports`: the last source id imported per source and
//! table), so running it again imports only what the source logged since. Each source row
//! becomes the entry the triggers would have written: its time, user and transaction where
//! the source has them, its row values typed by the table's columns (audit-trigger's `hstore`
//! holds text), its key from the table's primary key. What cannot be mapped is counted, not
//! guessed: audit-trigger's statement-level rows of INSERT, UPDATE or DELETE (no row values),
//! and rows whose key columns the source left out.

use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::names::LogNames;
use crate::sql::shape::{record_key_expr, written_columns};
use crate::sql::trigger::{Columns, TriggerSpec};

/// A tool whose history can be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportSource {
    /// The PostgreSQL wiki's audit trigger (2ndQuadrant's `audit-trigger`): `audit.logged_actions`.
    AuditTrigger,
    /// Supabase's `supa_audit`: `audit.record_version`.
    SupaAudit,
}

impl ImportSource {
    /// Every source.
    pub const ALL: [ImportSource; 2] = [ImportSource::AuditTrigger, ImportSource::SupaAudit];

    /// `audit-trigger` or `supa-audit`.
    pub fn name(self) -> &'static str {
        match self {
            ImportSource::AuditTrigger => "audit-trigger",
            ImportSource::SupaAudit => "supa-audit",
        }
    }

    /// The source's table.
    pub fn table(self) -> &'static str {
        match self {
            ImportSource::AuditTrigger => "audit.logged_actions",
            ImportSource::SupaAudit => "audit.record_version",
        }
    }

    /// The source named `name`.
    pub fn named(name: &str) -> Option<ImportSource> {
        ImportSource::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The tables the source holds history of, with their rows: `schema_name`, `table_name`,
    /// `rows`.
    pub fn tables_sql(self) -> String {
        let (schema, table) = self.columns();
        format!(
            "SELECT s.{schema}::text AS schema_name, s.{table}::text AS table_name, pg_catalog.count(*) AS rows
               FROM {} AS s GROUP BY 1, 2 ORDER BY 1, 2",
            self.table()
        )
    }

    /// The next source id of `table`'s rows after `$1`: `last_id` (NULL: none). What an import
    /// steps over when a row cannot be read (a value the table's type refuses).
    pub fn next_id_sql(self, table: &QualifiedName) -> String {
        let (schema_col, table_col) = self.columns();
        let id = self.id();
        format!(
            "SELECT pg_catalog.min(s.{id}) AS last_id FROM {} AS s
              WHERE s.{schema_col}::text OPERATOR(pg_catalog.=) {} AND s.{table_col}::text OPERATOR(pg_catalog.=) {}
                AND s.{id} OPERATOR(pg_catalog.>) $1",
            self.table(),
            text_literal(table.schema.as_ref().map_or("public", |s| s.as_str())),
            text_literal(table.name.as_str()),
        )
    }

    fn columns(self) -> (&'static str, &'static str) {
        match self {
            ImportSource::AuditTrigger => ("schema_name", "table_name"),
            ImportSource::SupaAudit => ("table_schema", "table_name"),
        }
    }

    fn id(self) -> &'static str {
        match self {
            ImportSource::AuditTrigger => "event_id",
            ImportSource::SupaAudit => "id",
        }
    }
}

/// The progress table, part of the log's DDL.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let imports = names.imports_table();
    format!(
        "CREATE TABLE IF NOT EXISTS {imports} (
    source text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    last_id bigint NOT NULL,
    rows bigint NOT NULL DEFAULT 0,
    unmapped bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (source, schema_name, table_name)
);
COMMENT ON TABLE {imports} IS {comment};
REVOKE ALL ON TABLE {imports} FROM PUBLIC;
",
        comment = text_literal(
            "pg-audit imports: how far the history of another audit tool was imported, per table"
        ),
    )
}

/// How far an import went: `last_id` (NULL: none yet); `$1` source, `$2` schema, `$3` table.
pub(crate) fn progress_sql(names: &LogNames) -> String {
    format!(
        "SELECT (SELECT i.last_id FROM {} AS i
                  WHERE i.source OPERATOR(pg_catalog.=) $1 AND i.schema_name OPERATOR(pg_catalog.=) $2
                    AND i.table_name OPERATOR(pg_catalog.=) $3) AS last_id",
        names.imports_table()
    )
}

/// Records a batch: `$1` source, `$2` schema, `$3` table, `$4` the last source id, `$5` rows
/// written, `$6` rows not mapped.
pub(crate) fn step_sql(names: &LogNames) -> String {
    format!(
        "INSERT INTO {} AS i (source, schema_name, table_name, last_id, rows, unmapped) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (source, schema_name, table_name) DO UPDATE
   SET last_id = EXCLUDED.last_id, rows = i.rows OPERATOR(pg_catalog.+) EXCLUDED.rows,
       unmapped = i.unmapped OPERATOR(pg_catalog.+) EXCLUDED.unmapped",
        names.imports_table()
    )
}

/// One batch of `source`'s rows of `table` (its key columns `key`) into `names`'s log: the
/// next `$2` rows after source id `$1`. Returns `last_id` (NULL when none was left), `rows`
/// read, `written` and `unmapped`. `hstore` is the schema of the `hstore` extension
/// (audit-trigger), `auth` whether `supa_audit`'s table has Supabase's `auth_uid` and
/// `auth_role` columns.
pub(crate) fn batch_sql(
    names: &LogNames,
    source: ImportSource,
    table: &QualifiedName,
    key: &[Ident],
    hstore: Option<&Ident>,
    auth: bool,
    installed: Option<&TriggerSpec>,
) -> String {
    // What pg-audit's own install of the table keeps out of the log stays out of the
    // imported entries too: columns not tracked or excluded, masked values as digests.
    let logged = |values: &str| -> String {
        let Some(spec) = installed else {
            return values.to_owned();
        };
        let list = |cols: &[Ident]| {
            format!(
                "ARRAY[{}]::text[]",
                cols.iter()
                    .map(Ident::literal)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let kept = match spec.columns() {
            Columns::All => values.to_owned(),
            Columns::Exclude(cols) => {
                format!("({values} OPERATOR(pg_catalog.-) {})", list(cols))
            }
            Columns::TrackOnly(cols) => {
                let mut tracked = cols.clone();
                tracked.extend(spec.primary_key().iter().cloned());
                format!(
                    "(SELECT pg_catalog.jsonb_object_agg(e.key, e.value) FROM pg_catalog.jsonb_each({values}) AS e
                       WHERE e.key OPERATOR(pg_catalog.=) ANY ({}))",
                    list(&tracked)
                )
            }
        };
        if spec.mask().is_empty() {
            kept
        } else {
            format!(
                "{}({kept}, {})",
                names.function("masked"),
                list(spec.mask())
            )
        }
    };
    let schema_lit = text_literal(table.schema.as_ref().map_or("public", |s| s.as_str()));
    let name_lit = text_literal(table.name.as_str());
    let (schema_col, table_col) = source.columns();
    let id = source.id();
    // audit-trigger's row values (hstore: text) typed by the table's columns, each read by
    // its type's input function as the table would (a column the table no longer has keeps
    // the source's text).
    let typed = |hstore: &Ident, h: &str| {
        format!(
            "(SELECT pg_catalog.jsonb_object_agg(e.key, CASE WHEN t.v OPERATOR(pg_catalog.?) e.key THEN t.v OPERATOR(pg_catalog.->) e.key ELSE e.value END)
                FROM pg_catalog.jsonb_each({hstore}.hstore_to_jsonb({h})) AS e,
                     (SELECT pg_catalog.to_jsonb({hstore}.populate_record(NULL::{table}, {h})) AS v) AS t)"
        )
    };
    let key_of = |row: &str| {
        let pairs: Vec<String> = key
            .iter()
            .map(|c| {
                format!(
                    "{}, {row} OPERATOR(pg_catalog.->) {}",
                    c.literal(),
                    c.literal()
                )
            })
            .collect();
        let present: Vec<String> = key
            .iter()
            .map(|c| format!("{row} OPERATOR(pg_catalog.?) {}", c.literal()))
            .collect();
        format!(
            "CASE WHEN {} THEN pg_catalog.jsonb_build_object({}) END",
            present.join(" AND "),
            pairs.join(", ")
        )
    };
    // Each source row as (op, at, tx_at, txid, db_user, old, new, context).
    let mapped = match source {
        ImportSource::AuditTrigger => {
            let hstore = hstore.expect("audit-trigger's rows are hstore");
            format!(
                "SELECT s.event_id AS src_id,
                        CASE s.action WHEN 'I' THEN 'INSERT' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END AS op,
                        s.action_tstamp_stm AS at, s.action_tstamp_tx AS tx_at, s.transaction_id AS txid,
                        coalesce(s.session_user_name, '') AS db_user,
                        CASE WHEN s.action OPERATOR(pg_catalog.=) ANY (ARRAY['U', 'D']) THEN {old} END AS old,
                        CASE WHEN s.action OPERATOR(pg_catalog.=) 'I' THEN {old}
                             WHEN s.action OPERATOR(pg_catalog.=) 'U' THEN {new} END AS new,
                        pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                            'source', 'import audit-trigger', 'client_addr', pg_catalog.host(s.client_addr),
                            'metadata', pg_catalog.jsonb_build_object('audit_trigger_event_id', s.event_id,
                                                                      'application_name', s.application_name))) AS context,
                        s.statement_only AND s.action OPERATOR(pg_catalog.<>) 'T' AS unmappable
                   FROM src AS s",
                old = typed(hstore, "s.row_data"),
                new = typed(
                    hstore,
                    &format!("(s.row_data OPERATOR({hstore}.||) coalesce(s.changed_fields, ''::{hstore}.hstore))")
                ),
            )
        }
        ImportSource::SupaAudit => {
            let (user, role) = if auth {
                ("s.auth_uid::text", "s.auth_role::text")
            } else {
                ("NULL::text", "NULL::text")
            };
            format!(
                "SELECT s.id AS src_id, s.op::text AS op, s.ts AS at, s.ts AS tx_at,
                        -- supa_audit records no transaction: each entry is one of its own.
                        -s.id AS txid, coalesce({role}, '') AS db_user,
                        s.old_record AS old, s.record AS new,
                        pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                            'source', 'import supa_audit', 'user_id', {user},
                            'metadata', pg_catalog.jsonb_build_object('supa_audit_id', s.id))) AS context,
                        false AS unmappable
                   FROM src AS s"
            )
        }
    };
    let columns: Vec<&str> = written_columns().map(|c| c.name).collect();
    let values: Vec<String> = written_columns()
        .map(|c| match c.name {
            "operation" => "m.op".to_owned(),
            "schema_name" => schema_lit.clone(),
            "table_name" => name_lit.clone(),
            "record_key" => format!(
                "CASE WHEN m.pk IS NOT NULL THEN {} END",
                record_key_expr(&schema_lit, &name_lit, "m.pk")
            ),
            "record_pk" => "m.pk".to_owned(),
            "old_values" => logged("m.old"),
            "new_values" => logged("m.new"),
            "context" => "m.context::pg_catalog.json".to_owned(),
            "old_record_pk" => {
                "CASE WHEN m.old_pk OPERATOR(pg_catalog.<>) m.pk THEN m.old_pk END".to_owned()
            }
            "old_record_key" => format!(
                "CASE WHEN m.old_pk OPERATOR(pg_catalog.<>) m.pk THEN {} END",
                record_key_expr(&schema_lit, &name_lit, "m.old_pk")
            ),
            other => panic!("log column `{other}` has no value in an import"),
        })
        .collect();
    format!(
        "WITH src AS MATERIALIZED (
        SELECT s.* FROM {source_table} AS s
         WHERE s.{schema_col}::text OPERATOR(pg_catalog.=) {schema_lit} AND s.{table_col}::text OPERATOR(pg_catalog.=) {name_lit}
           AND s.{id} OPERATOR(pg_catalog.>) $1
         ORDER BY s.{id}
         LIMIT $2),
     mapped AS MATERIALIZED ({mapped}),
     keyed AS (
        SELECT m.*, CASE WHEN m.op OPERATOR(pg_catalog.=) 'DELETE' THEN {old_key} ELSE {new_key} END AS pk,
               {old_key} AS old_pk
          FROM mapped AS m),
     written AS (
        INSERT INTO {log} ({columns}, changed_at, tx_started_at, txid, db_user)
        SELECT {values}, m.at, m.tx_at, m.txid, m.db_user
          FROM keyed AS m
         WHERE NOT m.unmappable AND (m.op OPERATOR(pg_catalog.=) 'TRUNCATE' OR m.pk IS NOT NULL)
         ORDER BY m.src_id
        RETURNING 1)
SELECT (SELECT pg_catalog.max(s.{id}) FROM src AS s) AS last_id,
       (SELECT pg_catalog.count(*) FROM src) AS rows,
       (SELECT pg_catalog.count(*) FROM written) AS written",
        source_table = source.table(),
        old_key = key_of("m.old"),
        new_key = key_of("m.new"),
        log = names.table(),
        columns = columns.join(", "),
        values = values.join(", "),
    )
}
