//! Drift detection: every install records what it installed in the log's `<log>_tables`, and
//! `<log>_check()` compares that record with what the database holds now. The record's shape is
//! written and read only here.
//!
//! ```sql
//! SELECT * FROM audit.auditlog_check();
//! --  table_schema | table_name | problem
//! --  public       | users      | trigger pg_audit_update is disabled
//! ```
//!
//! Problems found: the audited table is gone; the trigger function is missing or its body was
//! edited since the install; a trigger is missing, disabled (or enabled only for replicas), or
//! calls another function; a column the configuration names (key, `track_only`,
//! `exclude_fields`, condition) was dropped or renamed; a BEFORE UPDATE trigger was added to a
//! table whose UPDATE trigger relies on `UPDATE OF`, and could change a tracked column unseen;
//! and `pg_audit_*` triggers that no install recorded.

use std::fmt::Write as _;

use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::create_function;
use crate::sql::shape::{Filled, LOG_COLUMNS, Operation, tgtype};

/// The field listing the audited operations' keywords, in the order of [`TRIGGERS_FIELD`].
const OPERATIONS_FIELD: &str = "operations";

/// The install record's field holding the key columns, in key order.
pub const KEY_FIELD: &str = "primary_key";
/// The install record's field saying which columns reach the log: `"all"`, or an object with
/// [`TRACK_ONLY_FIELD`] or [`EXCLUDE_FIELD`] listing columns.
pub const AUDITED_FIELD: &str = "audited";
/// In [`AUDITED_FIELD`]: only these columns are logged.
pub const TRACK_ONLY_FIELD: &str = "track_only";
/// In [`AUDITED_FIELD`]: these columns are never logged.
pub const EXCLUDE_FIELD: &str = "exclude_fields";
/// The install record's field saying where changes are captured: `"wal"`, or absent for
/// triggers (records written before capture from the write-ahead log existed have none).
pub const CAPTURE_FIELD: &str = "capture";
/// The field listing the triggers the install created.
const TRIGGERS_FIELD: &str = "triggers";
/// The field listing every column the configuration names.
const COLUMNS_FIELD: &str = "columns";

/// What one install recorded: the configuration as JSON, what `check` compares and what
/// readers need (the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InstallRecord {
    /// The key columns, in key order.
    pub(crate) primary_key: Vec<String>,
    /// `"all"`, `{"track_only": [...]}` or `{"exclude_fields": [...]}`, as JSON.
    pub(crate) audited: Audited,
    /// The condition as written.
    pub(crate) condition: Option<String>,
    /// The audited operations' keywords.
    pub(crate) operations: Vec<String>,
    /// `insert:statement`, ...: the level each operation's trigger was created at.
    pub(crate) levels: Vec<String>,
    /// The triggers created.
    pub(crate) triggers: Vec<String>,
    /// Every column the configuration names, for the dropped-column check.
    pub(crate) columns: Vec<String>,
    /// Captured from the write-ahead log rather than by triggers.
    pub(crate) wal: bool,
}

/// Which columns an install audits, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Audited {
    All,
    TrackOnly(Vec<String>),
    Exclude(Vec<String>),
}

impl InstallRecord {
    /// The record as a JSON object.
    pub(crate) fn to_json(&self) -> String {
        let audited = match &self.audited {
            Audited::All => "\"all\"".to_owned(),
            Audited::TrackOnly(cols) => {
                format!("{{{}:{}}}", json_string(TRACK_ONLY_FIELD), json_list(cols))
            }
            Audited::Exclude(cols) => {
                format!("{{{}:{}}}", json_string(EXCLUDE_FIELD), json_list(cols))
            }
        };
        let condition = self
            .condition
            .as_deref()
            .map_or_else(|| "null".to_owned(), json_string);
        let capture = if self.wal {
            format!(",{}:{}", json_string(CAPTURE_FIELD), json_string("wal"))
        } else {
            String::new()
        };
        format!(
            "{{{}:{},{}:{audited},\"condition\":{condition},{}:{},\"levels\":{},{}:{},{}:{}{capture}}}",
            json_string(KEY_FIELD),
            json_list(&self.primary_key),
            json_string(AUDITED_FIELD),
            json_string(OPERATIONS_FIELD),
            json_list(&self.operations),
            json_list(&self.levels),
            json_string(TRIGGERS_FIELD),
            json_list(&self.triggers),
            json_string(COLUMNS_FIELD),
            json_list(&self.columns),
        )
    }

    /// SQL recording this install of `table`'s trigger function `function` in `config`,
    /// replacing an earlier record of the same table.
    /// The function's name is recorded as written (schema-qualified), not as `regproc`
    /// prints it, which leaves out a schema on the installer's search_path; and each trigger's
    /// full definition as `definitions` (a function of the log's, with a pinned search_path)
    /// gives it.
    pub(crate) fn insert_sql(
        &self,
        objects: &LogObjects,
        table: &QualifiedName,
        function: &QualifiedName,
    ) -> String {
        let table_lit = table.literal();
        let function_lit = function.literal();
        let LogObjects {
            config,
            definitions,
            ..
        } = objects;
        format!(
            "INSERT INTO {config} AS r (table_schema, table_name, trigger_function, config, function_md5, definitions)
SELECT n.nspname, c.relname, {function_lit}, {config_json}::jsonb, pg_catalog.md5(p.prosrc), {definitions}(c.oid)
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN pg_catalog.pg_proc AS p ON p.oid OPERATOR(pg_catalog.=) {function_lit}::regproc
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
ON CONFLICT (table_schema, table_name) DO UPDATE
   SET trigger_function = EXCLUDED.trigger_function, config = EXCLUDED.config,
       function_md5 = EXCLUDED.function_md5, definitions = EXCLUDED.definitions,
       installed_at = pg_catalog.now();",
            config_json = text_literal(&self.to_json()),
        )
    }
}

impl InstallRecord {
    /// SQL recording this install of `table` for capture from the write-ahead log: no trigger
    /// function (`trigger_function` and `function_md5` empty, no definitions).
    pub(crate) fn insert_wal_sql(&self, objects: &LogObjects, table: &QualifiedName) -> String {
        format!(
            "INSERT INTO {config} AS r (table_schema, table_name, trigger_function, config, function_md5, definitions)
SELECT n.nspname, c.relname, '', {config_json}::jsonb, '', NULL
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
ON CONFLICT (table_schema, table_name) DO UPDATE
   SET trigger_function = EXCLUDED.trigger_function, config = EXCLUDED.config,
       function_md5 = EXCLUDED.function_md5, definitions = EXCLUDED.definitions,
       installed_at = pg_catalog.now();",
            config = objects.config,
            table_lit = table.literal(),
            config_json = text_literal(&self.to_json()),
        )
    }
}

/// SQL removing `table`'s record from `config`.
pub(crate) fn delete_sql(config: &QualifiedName, table: &QualifiedName) -> String {
    format!(
        "DELETE FROM {config} AS r
 USING pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({})
   AND r.table_schema OPERATOR(pg_catalog.=) n.nspname::text AND r.table_name OPERATOR(pg_catalog.=) c.relname::text;",
        table.literal(),
    )
}

/// SQL returning the key columns recorded in `config` for a table, as a JSON array in key order
/// (`primary_key`): parameters `$1` the table name (text), `$2` its schema (text, NULL for any).
pub(crate) fn recorded_key_sql(config: &QualifiedName) -> String {
    format!(
        "SELECT r.config OPERATOR(pg_catalog.->) {} AS primary_key FROM {config} AS r
 WHERE r.table_name OPERATOR(pg_catalog.=) $1::text
   AND ($2::text IS NULL OR r.table_schema OPERATOR(pg_catalog.=) $2::text)",
        text_literal(KEY_FIELD),
    )
}

/// The log's objects the record and the check involve.
pub(crate) struct LogObjects {
    /// The log table.
    pub(crate) log: QualifiedName,
    /// The install records.
    pub(crate) config: QualifiedName,
    /// The check function.
    pub(crate) check: QualifiedName,
    /// The function returning a table's audit triggers' definitions.
    pub(crate) definitions: QualifiedName,
    /// The function adopting new partitions of audited tables.
    pub(crate) adopt: QualifiedName,
    /// Every maintenance function, with its argument types.
    pub(crate) functions: Vec<(QualifiedName, &'static str)>,
    /// The functions readers may run (the partition listing, the check).
    pub(crate) readable: Vec<(QualifiedName, &'static str)>,
    /// The publication of the tables captured from the write-ahead log.
    pub(crate) publication: Ident,
    /// The log's tables besides the log and its partitions (install records, archive
    /// catalogue, seals, redactions, capture progress), which may not all exist.
    pub(crate) side_tables: Vec<QualifiedName>,
    /// Those of them that are append-only (a trigger refuses changes).
    pub(crate) append_only: Vec<QualifiedName>,
}

/// DDL of the record table and of the definitions function (the check function comes last,
/// [`check_function_sql`], as it compares every other function with what it should be).
pub(crate) fn objects_sql(objects: &LogObjects) -> String {
    let LogObjects {
        config,
        check,
        definitions,
        ..
    } = objects;
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {config} (
    table_schema text NOT NULL,
    table_name text NOT NULL,
    trigger_function text NOT NULL,
    config jsonb NOT NULL,
    function_md5 text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (table_schema, table_name)
);
ALTER TABLE {config} ADD COLUMN IF NOT EXISTS definitions jsonb;
COMMENT ON TABLE {config} IS {comment};
",
        comment = text_literal(&format!(
            "pg-audit: the audit triggers installed, as installed; see {check}()"
        )),
    );
    let all_triggers = crate::sql::trigger::all_trigger_names_array();
    let definitions_body = format!(
        "
    SELECT pg_catalog.jsonb_object_agg(tg.tgname, pg_catalog.pg_get_triggerdef(tg.oid))
      FROM pg_catalog.pg_trigger AS tg
     WHERE tg.tgrelid = rel AND tg.tgname = ANY ({all_triggers})
"
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{definitions}(rel regclass)"),
            "jsonb",
            "sql STABLE",
            false,
            &definitions_body
        )
    );
    sql
}

/// Run before the check's queries, in their transaction: planned, they cost enough for JIT,
/// which would take seconds to compile what runs in milliseconds.
pub(crate) const CHECK_PRELUDE: &str = "SET LOCAL jit = off";

/// A function of the log's as this version of pg-audit installs it, for the check to compare
/// the installed one with: its signature (name and argument types), body and whether it runs
/// as its owner.
#[derive(Debug, Clone)]
pub(crate) struct ExpectedFunction {
    pub(crate) name: QualifiedName,
    pub(crate) args: &'static str,
    pub(crate) body: String,
    pub(crate) security_definer: bool,
}

/// The check function: every problem [`check_query`] finds, and on PostgreSQL 15 and later
/// those of [`check_v15_query`] too. For psql, cron and pg_cron; the `pg-audit` program and
/// the admin run the queries themselves rather than trust a function the log's owner may
/// replace.
pub(crate) fn check_function_sql(objects: &LogObjects, expected: &[ExpectedFunction]) -> String {
    create_function(
        &format!("{}()", objects.check),
        "TABLE (table_schema text, table_name text, problem text)",
        "plpgsql STABLE",
        false,
        &check_function_body(objects, expected),
    )
}

/// The check function's body, comparing the other functions with `expected`.
pub(crate) fn check_function_body(objects: &LogObjects, expected: &[ExpectedFunction]) -> String {
    format!(
        "
BEGIN
    PERFORM pg_catalog.set_config('jit', 'off', true);
    RETURN QUERY {};
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        RETURN QUERY EXECUTE {};
    END IF;
END
",
        check_query(objects, expected),
        text_literal(&check_v15_query(objects)),
    )
}

/// What the drift check finds, on PostgreSQL 13 and later: rows of `table_schema`,
/// `table_name`, `problem`. Run with the settings of [`crate::session::PINNED`] (a session the
/// program opened, a transaction that set them, or the check function).
///
/// For each recorded table: the table, its trigger function (as recorded, pinned, owned by
/// the log's owner, executable by nobody else), its triggers and partitions (each with its
/// triggers, owned by the log's owner), its columns; for capture from the WAL, the
/// publication and replica identity. For the log itself (reported under its name): every
/// relation of the log — the log, its partitions, the install records, the archive catalogue,
/// the seals and their state, the redaction log, the capture progress — owned by the log's
/// owner, with no trigger, rule or row-level security policy of anyone else's; the log's
/// columns and defaults as installed; no write grant; its functions as this version installs
/// them; its publication publishing every operation through the partition root; and no role
/// or database whose default `session_replication_role` switches triggers off.
pub(crate) fn check_query(objects: &LogObjects, expected: &[ExpectedFunction]) -> String {
    let LogObjects {
        log,
        config,
        check: _,
        definitions: _,
        adopt,
        functions,
        readable,
        publication,
        side_tables,
        append_only,
    } = objects;
    // A partition's trigger of each operation: statement-level AFTER, on that one event.
    let partition_tgtype = format!(
        "CASE e.op {} END",
        Operation::ALL
            .iter()
            .map(|op| format!(
                "WHEN {} THEN {}",
                text_literal(op.keyword()),
                op.tgtype_event()
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let maintenance = functions
        .iter()
        .map(|(name, args)| {
            format!(
                "pg_catalog.to_regprocedure({})",
                text_literal(&format!("{name}({args})"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let grantee = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END";
    let pinned = crate::session::proconfig_array();
    let missing_pins = format!(
        "(SELECT pg_catalog.string_agg(s.s, ', ') FROM pg_catalog.unnest({pinned}) AS s(s) WHERE s.s <> ALL (coalesce(f.proconfig, '{{}}')))"
    );
    // The log's relations: the log and its partitions, and the side tables that exist.
    let relations = format!(
        "(SELECT pt.relid AS rel FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
          UNION ALL
          SELECT r.rel FROM (VALUES {side}) AS r(rel) WHERE r.rel IS NOT NULL)",
        log_lit = log.literal(),
        side = side_tables
            .iter()
            .map(|t| format!("(pg_catalog.to_regclass({}))", t.literal()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let append_only_list = append_only
        .iter()
        .map(|t| format!("pg_catalog.to_regclass({})", t.literal()))
        .collect::<Vec<_>>()
        .join(", ");
    // The log's defaults as installed (pg_get_expr prints them so under the pinned path).
    let defaults = LOG_COLUMNS
        .iter()
        .map(|c| {
            let expected = match c.filled {
                Filled::Sequence => format!(
                    "pg_catalog.format('nextval(%L::regclass)', pg_catalog.pg_get_serial_sequence({}, {}))",
                    log.literal(),
                    text_literal(c.name)
                ),
                Filled::Default(_) => text_literal(
                    c.deparsed_default()
                        .expect("every default column has its deparsed form"),
                ),
                Filled::Writer => "NULL::text".to_owned(),
            };
            let sql_type = if c.filled == Filled::Sequence {
                "bigint"
            } else {
                c.sql_type
            };
            format!(
                "({}, {expected}, {}, {})",
                text_literal(c.name),
                text_literal(sql_type),
                !c.nullable
            )
        })
        .collect::<Vec<_>>()
        .join(",\n                         ");
    let expected_functions = expected
        .iter()
        .map(|f| {
            format!(
                "({}, {}, {})",
                text_literal(&format!("{}({})", f.name, f.args)),
                crate::ident::dollar_quote(&f.body),
                f.security_definer
            )
        })
        .collect::<Vec<_>>()
        .join(",\n                         ");
    format!(
        r#"
    SELECT t.table_schema, t.table_name, p.problem
      FROM {config} AS t
     CROSS JOIN LATERAL (
            -- Found in the catalog, not by name: a reader may lack USAGE on the table's schema.
            SELECT (SELECT c.oid FROM pg_catalog.pg_class AS c
                      JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                     WHERE n.nspname OPERATOR(pg_catalog.=) t.table_schema
                       AND c.relname OPERATOR(pg_catalog.=) t.table_name)::regclass AS rel,
                   CASE WHEN t.trigger_function OPERATOR(pg_catalog.<>) ''
                        THEN pg_catalog.to_regprocedure(t.trigger_function OPERATOR(pg_catalog.||) '()') END AS fn,
                   t.config ->> {capture_field} IS NOT DISTINCT FROM 'wal' AS wal
           ) AS o
      JOIN pg_catalog.pg_class AS lg ON lg.oid = {log_lit}::regclass
     CROSS JOIN LATERAL (
            SELECT 'the table is missing' AS problem
             WHERE o.rel IS NULL
            UNION ALL
            SELECT pg_catalog.format('trigger function %s is missing', t.trigger_function)
             WHERE o.fn IS NULL AND NOT o.wal
            UNION ALL
            -- Captured from the write-ahead log: in the log's publication, every old row logged.
            SELECT pg_catalog.format('the table is not in publication %s, so its changes are not captured; reinstall it', {publication_lit})
             WHERE o.wal AND o.rel IS NOT NULL
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication_rel AS pr
                                 JOIN pg_catalog.pg_publication AS pb ON pb.oid = pr.prpubid
                                WHERE pb.pubname = {publication_lit} AND pr.prrelid = o.rel)
            UNION ALL
            SELECT pg_catalog.format('wal_level is %s, not logical, so changes are not captured from the write-ahead log', pg_catalog.current_setting('wal_level'))
             WHERE o.wal AND pg_catalog.current_setting('wal_level') <> 'logical'
            UNION ALL
            SELECT pg_catalog.format('%s is not REPLICA IDENTITY FULL, so its UPDATE and DELETE entries lack the old row; run ALTER TABLE %s REPLICA IDENTITY FULL', pt.relid::regclass, pt.relid::regclass)
              FROM (SELECT o.rel AS relid UNION SELECT p.relid FROM pg_catalog.pg_partition_tree(o.rel) AS p) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid AND c.relkind <> 'p'
             WHERE o.wal AND c.relreplident <> 'f'
            UNION ALL
            SELECT pg_catalog.format('trigger function %s was edited after it was installed', t.trigger_function)
              FROM pg_catalog.pg_proc AS f
             WHERE f.oid OPERATOR(pg_catalog.=) o.fn AND pg_catalog.md5(f.prosrc) OPERATOR(pg_catalog.<>) t.function_md5
            UNION ALL
            SELECT CASE
                       WHEN tg.oid IS NULL THEN pg_catalog.format('trigger %s is missing', e.name)
                       WHEN tg.tgenabled OPERATOR(pg_catalog.=) 'D' THEN pg_catalog.format('trigger %s is disabled', e.name)
                       WHEN tg.tgenabled OPERATOR(pg_catalog.=) 'R' THEN pg_catalog.format('trigger %s is enabled only for replicas', e.name)
                       ELSE pg_catalog.format('trigger %s calls another function', e.name)
                   END
              FROM pg_catalog.jsonb_array_elements_text(t.config -> {triggers_field}) AS e(name)
              LEFT JOIN pg_catalog.pg_trigger AS tg
                ON tg.tgrelid OPERATOR(pg_catalog.=) o.rel AND tg.tgname OPERATOR(pg_catalog.=) e.name
             WHERE o.rel IS NOT NULL
               AND (tg.oid IS NULL OR tg.tgenabled OPERATOR(pg_catalog.=) ANY (ARRAY['D', 'R']::"char"[])
                    OR tg.tgfoid OPERATOR(pg_catalog.<>) o.fn)
            UNION ALL
            SELECT pg_catalog.format('audited column %s was dropped or renamed', pg_catalog.quote_ident(c.name))
              FROM pg_catalog.jsonb_array_elements_text(t.config -> {columns_field}) AS c(name)
             WHERE o.rel IS NOT NULL
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                                WHERE a.attrelid OPERATOR(pg_catalog.=) o.rel AND a.attname OPERATOR(pg_catalog.=) c.name
                                  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped)
            UNION ALL
            SELECT pg_catalog.format('BEFORE UPDATE trigger %s can change tracked columns unseen by the UPDATE OF trigger; reinstall', b.tgname)
              FROM pg_catalog.pg_trigger AS u
              JOIN pg_catalog.pg_trigger AS b ON b.tgrelid OPERATOR(pg_catalog.=) u.tgrelid
             WHERE u.tgrelid OPERATOR(pg_catalog.=) o.rel AND u.tgname OPERATOR(pg_catalog.=) {update_trigger}
               AND pg_catalog.array_length(u.tgattr::int2[], 1) OPERATOR(pg_catalog.>) 0
               AND NOT b.tgisinternal
               AND (b.tgtype::int OPERATOR(pg_catalog.&) {before_update_row}) OPERATOR(pg_catalog.=) {before_update_row}
            UNION ALL
            -- Each trigger as the install created it: events, level, column list, WHEN.
            SELECT pg_catalog.format('trigger %s was changed since the install: it is now %s', tg.tgname, pg_catalog.pg_get_triggerdef(tg.oid))
              FROM pg_catalog.pg_trigger AS tg
              JOIN pg_catalog.jsonb_each_text(t.definitions) AS d(name, def) ON d.name = tg.tgname
             WHERE tg.tgrelid = o.rel AND tg.tgfoid = o.fn AND pg_catalog.pg_get_triggerdef(tg.oid) <> d.def
            UNION ALL
            SELECT pg_catalog.format('trigger %s was not created by the install', tg.tgname)
              FROM pg_catalog.pg_trigger AS tg
             WHERE tg.tgrelid = o.rel AND tg.tgname = ANY ({all_triggers}) AND NOT (t.definitions ? tg.tgname)
               AND t.definitions IS NOT NULL
            UNION ALL
            -- The trigger function runs as the log's owner, with pg-audit's settings pinned, for
            -- the triggers alone.
            SELECT x.problem
              FROM pg_catalog.pg_proc AS f
             CROSS JOIN LATERAL (
                    SELECT pg_catalog.format('trigger function %s is no longer SECURITY DEFINER', t.trigger_function) AS problem
                     WHERE NOT f.prosecdef
                    UNION ALL
                    SELECT pg_catalog.format('trigger function %s does not pin %s, so the writing session''s settings can change what is logged or what runs; reinstall', t.trigger_function, {missing_pins})
                     WHERE NOT coalesce(f.proconfig @> {pinned}, false)
                    UNION ALL
                    SELECT pg_catalog.format('trigger function %s is owned by %s, not by the log''s owner %s', t.trigger_function, f.proowner::regrole, lg.relowner::regrole)
                     WHERE f.proowner <> lg.relowner
                    UNION ALL
                    SELECT pg_catalog.format('EXECUTE on trigger function %s is granted to %s, who could attach it to a table of their own to forge audit rows', t.trigger_function, {grantee})
                      FROM pg_catalog.aclexplode(f.proacl) AS a
                     WHERE a.grantee <> f.proowner AND a.privilege_type = 'EXECUTE'
                   ) AS x
             WHERE f.oid = o.fn
            UNION ALL
            -- The table and its partitions belong to the log's owner: their owner can disable
            -- their audit triggers, write, and enable them again.
            SELECT pg_catalog.format('%s %s is owned by %s, not by the log''s owner %s: %s can disable its audit triggers',
                                     CASE WHEN c.oid = o.rel THEN 'the table' ELSE 'partition' END,
                                     c.oid::regclass, c.relowner::regrole, lg.relowner::regrole, c.relowner::regrole)
              FROM (SELECT o.rel AS relid UNION SELECT p.relid FROM pg_catalog.pg_partition_tree(o.rel) AS p) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid
             WHERE c.relowner <> lg.relowner
            UNION ALL
            -- A partitioned table's partitions: each has the table's triggers of its own.
            SELECT CASE WHEN tg.oid IS NULL
                        THEN pg_catalog.format('partition %s has no trigger %s, so writes straight into it are not logged; run SELECT * FROM %s()', pt.relid::regclass, e.name, {adopt_lit})
                        ELSE pg_catalog.format('trigger %s on partition %s was changed since the install: it is now %s', e.name, pt.relid::regclass, pg_catalog.pg_get_triggerdef(tg.oid))
                   END
              FROM pg_catalog.pg_partition_tree(o.rel) AS pt
             CROSS JOIN LATERAL (SELECT t.config -> {triggers_field} ->> (i.n - 1) AS name, t.config -> {operations_field} ->> (i.n - 1) AS op
                                   FROM pg_catalog.generate_series(1, pg_catalog.jsonb_array_length(t.config -> {triggers_field})) AS i(n)) AS e
              LEFT JOIN pg_catalog.pg_trigger AS tg ON tg.tgrelid = pt.relid AND tg.tgname = e.name AND tg.tgparentid = 0
             WHERE pt.relid <> o.rel AND NOT o.wal
               AND (tg.oid IS NULL OR tg.tgenabled IN ('D', 'R') OR tg.tgfoid <> o.fn OR tg.tgqual IS NOT NULL
                    OR tg.tgtype::int <> {partition_tgtype}
                    -- It logs under the table's name, passed as its two arguments.
                    OR tg.tgnargs <> 2
                    OR tg.tgargs <> pg_catalog.convert_to(t.table_schema, 'UTF8') || '\x00'::bytea
                                    || pg_catalog.convert_to(t.table_name, 'UTF8') || '\x00'::bytea)
            UNION ALL
            SELECT pg_catalog.format('partition %s refuses writes: its guard is enabled (the partition was attached again, or its triggers enabled by hand); run SELECT * FROM %s()', pt.relid::regclass, {adopt_lit})
              FROM pg_catalog.pg_partition_tree(o.rel) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid AND c.relkind <> 'p'
              JOIN pg_catalog.pg_trigger AS g ON g.tgrelid = pt.relid AND g.tgname = {guard_lit} AND g.tgenabled <> 'D'
             WHERE pt.relid <> o.rel
           ) AS p
    UNION ALL
    SELECT n.nspname::text, c.relname::text,
           pg_catalog.format('trigger %s was not installed by pg-audit (no record in %s)', tg.tgname, {config_lit})
      FROM pg_catalog.pg_trigger AS tg
      JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) tg.tgrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE tg.tgname OPERATOR(pg_catalog.=) ANY ({trigger_names})
       AND NOT EXISTS (SELECT FROM {config} AS r
                        WHERE r.table_schema OPERATOR(pg_catalog.=) n.nspname::text
                          AND r.table_name OPERATOR(pg_catalog.=) c.relname::text)
       -- A partition of a recorded table carries its table's triggers.
       AND NOT (c.relispartition AND EXISTS (
                SELECT FROM {config} AS r
                  JOIN pg_catalog.pg_namespace AS rn ON rn.nspname OPERATOR(pg_catalog.=) r.table_schema
                  JOIN pg_catalog.pg_class AS rc ON rc.relnamespace OPERATOR(pg_catalog.=) rn.oid
                                                AND rc.relname OPERATOR(pg_catalog.=) r.table_name
                 WHERE rc.oid OPERATOR(pg_catalog.=) pg_catalog.pg_partition_root(c.oid)))
    UNION ALL
    -- The log itself, reported under its name: what could change, hide or drop its rows.
    SELECT {log_schema}, {log_name}, x.problem
      FROM pg_catalog.pg_class AS lg
     CROSS JOIN LATERAL (
            -- Only the owner writes the log, its partitions and the records; readers may SELECT
            -- the log and the records, and run nothing but the partition listing.
            SELECT pg_catalog.format('%s grants %s to %s', c.oid::regclass, a.privilege_type, {grantee}) AS problem
              FROM (SELECT {log_lit}::regclass AS rel, true AS readable
                    UNION ALL SELECT {config_lit}::regclass, true
                    UNION ALL SELECT pt.relid, false FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
                               WHERE pt.relid <> {log_lit}::regclass) AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
             WHERE a.grantee <> c.relowner AND NOT (r.readable AND a.privilege_type = 'SELECT')
            UNION ALL
            SELECT pg_catalog.format('EXECUTE on %s is granted to %s', f.oid::regprocedure, {grantee})
              FROM pg_catalog.pg_proc AS f
             CROSS JOIN LATERAL pg_catalog.aclexplode(f.proacl) AS a
             WHERE f.oid = ANY (ARRAY[{maintenance}]) AND a.grantee <> f.proowner AND a.privilege_type = 'EXECUTE'
               AND f.oid <> ALL (ARRAY[{readable_list}]::oid[])
            UNION ALL
            -- The log's id sequence: whoever may set it makes new entries reuse ids, out of
            -- order, and verify report tampering that did not happen.
            SELECT pg_catalog.format('%s grants %s to %s: new entries could reuse ids', c.oid::regclass, a.privilege_type, {grantee})
              FROM pg_catalog.pg_class AS c
             CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
             WHERE c.oid = pg_catalog.pg_get_serial_sequence({log_lit}, 'id')::regclass AND a.grantee <> c.relowner
            UNION ALL
            -- Any role that is the owner: a member of the log's owner role may do all it may.
            SELECT pg_catalog.format('role %s is a member of %s, the log''s owner: it can do all the owner can (disable audit triggers, edit the log)', m.rolname, lg.relowner::regrole)
              FROM pg_catalog.pg_roles AS m
             WHERE m.oid <> lg.relowner AND NOT m.rolsuper
               AND pg_catalog.pg_has_role(m.oid, lg.relowner, 'MEMBER')
            UNION ALL
            -- Unlogged, a crash empties them (and a standby never has their rows).
            SELECT pg_catalog.format('%s is %s: a crash empties it and standbys never receive it; ALTER TABLE %s SET LOGGED', c.oid::regclass,
                                     CASE c.relpersistence WHEN 'u' THEN 'UNLOGGED' ELSE 'TEMPORARY' END, c.oid::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             WHERE c.relpersistence <> 'p'
            UNION ALL
            -- Every relation of the log belongs to its owner.
            SELECT pg_catalog.format('%s is owned by %s, not by the log''s owner %s', c.oid::regclass, c.relowner::regrole, lg.relowner::regrole)
              FROM {relations} AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             WHERE c.relowner <> lg.relowner
            UNION ALL
            -- No trigger on them but the seals' and catalogues' append-only ones, enabled.
            SELECT pg_catalog.format('trigger %s on %s was not installed by pg-audit: it runs on every write of %s and can change, drop or forge rows', tg.tgname, tg.tgrelid::regclass, tg.tgrelid::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_trigger AS tg ON tg.tgrelid = r.rel
             WHERE NOT tg.tgisinternal
               AND NOT (tg.tgname = 'append_only' AND tg.tgrelid = ANY (ARRAY[{append_only_list}]))
            UNION ALL
            SELECT pg_catalog.format('%s is not append-only: its trigger append_only is %s', a.rel::regclass,
                                     CASE WHEN tg.oid IS NULL THEN 'missing' ELSE 'disabled' END)
              FROM pg_catalog.unnest(ARRAY[{append_only_list}]) AS a(rel)
              LEFT JOIN pg_catalog.pg_trigger AS tg ON tg.tgrelid = a.rel AND tg.tgname = 'append_only'
             WHERE a.rel IS NOT NULL AND (tg.oid IS NULL OR tg.tgenabled IN ('D', 'R'))
            UNION ALL
            SELECT pg_catalog.format('rule %s on %s rewrites what is written to or read from it', w.rulename, w.ev_class::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_rewrite AS w ON w.ev_class = r.rel
            UNION ALL
            SELECT pg_catalog.format('constraint %s on %s was not installed by pg-audit: it can refuse entries, and so the writes they log', k.conname, k.conrelid::regclass)
              FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
              JOIN pg_catalog.pg_constraint AS k ON k.conrelid = pt.relid
            UNION ALL
            SELECT pg_catalog.format('%s has row-level security enabled%s: a policy can hide rows from readers and verify', c.oid::regclass,
                                     CASE WHEN c.relforcerowsecurity THEN ' and forced on its owner' ELSE '' END)
              FROM {relations} AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             WHERE c.relrowsecurity OR c.relforcerowsecurity
            UNION ALL
            SELECT pg_catalog.format('policy %s on %s was not installed by pg-audit', pol.polname, pol.polrelid::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_policy AS pol ON pol.polrelid = r.rel
            UNION ALL
            -- The log's columns and the defaults the writers rely on (db_user, txid, times).
            SELECT CASE
                       WHEN a.attnum IS NULL THEN pg_catalog.format('column %s of %s is missing', e.name, c.oid::regclass)
                       WHEN a.atttypid <> e.type::regtype OR a.attnotnull <> e.not_null
                           THEN pg_catalog.format('column %s of %s is %s%s, not %s%s', e.name, c.oid::regclass,
                                                  pg_catalog.format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                                                  e.type::regtype, CASE WHEN e.not_null THEN ' NOT NULL' ELSE '' END)
                       ELSE pg_catalog.format('column %s of %s defaults to %s, not %s: every entry written takes it', e.name, c.oid::regclass,
                                              coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), 'nothing'), coalesce(e.def, 'nothing'))
                   END
              FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid
             CROSS JOIN (VALUES {defaults}) AS e(name, def, type, not_null)
              LEFT JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attname = e.name AND NOT a.attisdropped
              LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
             WHERE a.attnum IS NULL
                OR a.atttypid <> e.type::regtype OR a.attnotnull <> e.not_null
                OR pg_catalog.pg_get_expr(d.adbin, d.adrelid) IS DISTINCT FROM e.def
            UNION ALL
            SELECT pg_catalog.format('column %s of %s has a default (%s) pg-audit did not give it', a.attname, c.oid::regclass, pg_catalog.pg_get_expr(d.adbin, d.adrelid))
              FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid
              JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = c.oid
              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = d.adnum
             WHERE a.attname::text <> ALL (ARRAY[{column_names}])
            UNION ALL
            -- The log's functions as this version installs them: a function the log's owner
            -- replaced would run in place of pg-audit's.
            SELECT CASE WHEN f.oid IS NULL THEN pg_catalog.format('function %s is missing; reinstall the log', e.sig)
                        ELSE pg_catalog.format('function %s differs from what this version of pg-audit installs (edited, replaced, or installed by another version); reinstall the log', e.sig)
                   END
              FROM (VALUES {expected_functions}) AS e(sig, body, definer)
              LEFT JOIN pg_catalog.pg_proc AS f ON f.oid = pg_catalog.to_regprocedure(e.sig)
             WHERE f.oid IS NULL OR f.prosrc <> e.body OR f.prosecdef <> e.definer
                OR NOT coalesce(f.proconfig @> {pinned}, false) OR f.proowner <> lg.relowner
            UNION ALL
            -- Capture from the WAL: every operation published, through the partition root.
            SELECT pg_catalog.format('publication %s publishes %s%s: changes it leaves out are not captured; drop it and reinstall the WAL-captured tables',
                                     pb.pubname,
                                     pg_catalog.concat_ws(', ', CASE WHEN pb.pubinsert THEN 'insert' END, CASE WHEN pb.pubupdate THEN 'update' END,
                                                          CASE WHEN pb.pubdelete THEN 'delete' END, CASE WHEN pb.pubtruncate THEN 'truncate' END),
                                     CASE WHEN pb.pubviaroot THEN '' ELSE ', not through the partition root' END)
              FROM pg_catalog.pg_publication AS pb
             WHERE pb.pubname = {publication_lit}
               AND NOT (pb.pubinsert AND pb.pubupdate AND pb.pubdelete AND pb.pubtruncate AND pb.pubviaroot)
            UNION ALL
            SELECT pg_catalog.format('the install records %s are not in publication %s: the capture worker would not see configuration changes', {config_lit}, pb.pubname)
              FROM pg_catalog.pg_publication AS pb
             WHERE pb.pubname = {publication_lit}
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication_rel AS pr
                                WHERE pr.prpubid = pb.oid AND pr.prrelid = {config_lit}::regclass)
               AND EXISTS (SELECT FROM {config} AS r WHERE r.config ->> {capture_field} = 'wal')
            UNION ALL
            -- session_replication_role = replica switches every ordinary trigger off.
            SELECT pg_catalog.format('%s session_replication_role = replica by default%s: its writes skip every audit trigger',
                                     CASE WHEN s.setrole = 0 THEN pg_catalog.format('database %s has', pg_catalog.current_database())
                                          ELSE pg_catalog.format('role %s has', s.setrole::regrole) END,
                                     CASE WHEN s.setdatabase = 0 THEN ' in every database' ELSE '' END)
              FROM pg_catalog.pg_db_role_setting AS s
             WHERE (s.setdatabase = 0 OR s.setdatabase = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()))
               AND EXISTS (SELECT FROM pg_catalog.unnest(s.setconfig) AS c(c) WHERE pg_catalog.lower(c.c) = 'session_replication_role=replica')
            UNION ALL
            SELECT 'session_replication_role is replica by default on this server: writes skip every audit trigger'
             WHERE (SELECT st.reset_val FROM pg_catalog.pg_settings AS st WHERE st.name = 'session_replication_role') = 'replica'
           ) AS x
     WHERE lg.oid = {log_lit}::regclass
     ORDER BY 1, 2, 3
"#,
        log_lit = log.literal(),
        adopt_lit = adopt.literal(),
        guard_lit = crate::sql::trigger::guard_trigger_name().literal(),
        log_schema = log
            .schema
            .as_ref()
            .map_or_else(|| "NULL".to_owned(), Ident::literal),
        log_name = log.name.literal(),
        readable_list = readable
            .iter()
            .map(|(f, args)| format!(
                "coalesce(pg_catalog.to_regprocedure({})::oid, 0)",
                text_literal(&format!("{f}({args})"))
            ))
            .collect::<Vec<_>>()
            .join(", "),
        operations_field = text_literal(OPERATIONS_FIELD),
        capture_field = text_literal(CAPTURE_FIELD),
        publication_lit = publication.literal(),
        config_lit = config.literal(),
        triggers_field = text_literal(TRIGGERS_FIELD),
        columns_field = text_literal(COLUMNS_FIELD),
        before_update_row = tgtype::BEFORE_UPDATE_ROW,
        trigger_names = Operation::trigger_names_array(),
        update_trigger = Operation::Update.trigger_name().literal(),
        all_triggers = crate::sql::trigger::all_trigger_names_array(),
        column_names = LOG_COLUMNS
            .iter()
            .map(|c| text_literal(c.name))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// What the drift check finds that only PostgreSQL 15 and later can have: a grant of `SET` on
/// `session_replication_role` (which lets a role switch triggers off), and row filters or
/// column lists on the log's publication.
pub(crate) fn check_v15_query(objects: &LogObjects) -> String {
    let LogObjects {
        log, publication, ..
    } = objects;
    format!(
        "
    SELECT {log_schema}::text AS table_schema, {log_name}::text AS table_name, x.problem
      FROM (
            SELECT pg_catalog.format('%s may %s session_replication_role (GRANT %s ON PARAMETER): its sessions can switch every audit trigger off',
                                     CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                                     pg_catalog.lower(a.privilege_type), a.privilege_type) AS problem
              FROM pg_catalog.pg_parameter_acl AS p
             CROSS JOIN LATERAL pg_catalog.aclexplode(p.paracl) AS a
             WHERE p.parname = 'session_replication_role'
               -- a superuser may set it anyway: the grants that widen who can are the others'.
               AND NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.oid = a.grantee), false)
            UNION ALL
            SELECT pg_catalog.format('publication %s filters the rows of %s (WHERE %s): changes outside the filter are not captured; drop the publication and reinstall',
                                     pb.pubname, pr.prrelid::regclass, pg_catalog.pg_get_expr(pr.prqual, pr.prrelid))
              FROM pg_catalog.pg_publication AS pb
              JOIN pg_catalog.pg_publication_rel AS pr ON pr.prpubid = pb.oid
             WHERE pb.pubname = {publication_lit} AND pr.prqual IS NOT NULL
            UNION ALL
            SELECT pg_catalog.format('publication %s publishes only some columns of %s: the others are not captured; drop the publication and reinstall',
                                     pb.pubname, pr.prrelid::regclass)
              FROM pg_catalog.pg_publication AS pb
              JOIN pg_catalog.pg_publication_rel AS pr ON pr.prpubid = pb.oid
             WHERE pb.pubname = {publication_lit} AND pr.prattrs IS NOT NULL
           ) AS x
     ORDER BY 1, 2, 3
",
        log_schema = log
            .schema
            .as_ref()
            .map_or_else(|| "NULL".to_owned(), Ident::literal),
        log_name = log.name.literal(),
        publication_lit = publication.literal(),
    )
}

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
    event_trigger: &Ident,
) -> String {
    let guard_name = crate::sql::trigger::guard_trigger_name();
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
    let on_ddl_body = format!("\nBEGIN\n    PERFORM {adopt}();\nEND\n");
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

fn json_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| json_string(s))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// `value` as a JSON string literal.
fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            json_string("a\"b\\c\n\u{1}é"),
            "\"a\\\"b\\\\c\\u000a\\u0001é\""
        );
    }
}
