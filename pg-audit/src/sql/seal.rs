//! Tamper evidence and erasure: the digest of a log row, the seals (a hash chain over the rows
//! of ended transactions, in id order), and redaction (a value replaced by a marker, its digest
//! kept, so the seals still verify).
//!
//! A row's digest is a SHA-256 over one digest per column, and for the JSON columns one per
//! top-level key: a redacted value keeps its digest in the redaction log, so the row's digest
//! does not change. NULL columns contribute nothing, so a column added to the log later leaves
//! older rows' digests as they were sealed.
//!
//! Every digest is computed by the server from one expression (`row_digest_expr`), in queries
//! written once here: the sealer's function runs them, and `verify` and the archive's
//! read-back check send the same queries themselves ([`AuditLog::reseal_sql`],
//! [`AuditLog::unerased_sql`], [`AuditLog::content_digest_sql`]) — built-in functions only,
//! in a session with pg-audit's settings pinned — rather than call a function the log's owner,
//! the party seals guard against, could replace. (`verify` loads archived rows back into a
//! temporary table with the log's columns.)
//!
//! A recorded redaction stands in for a value only where `redact` could have erased it: a
//! value of `old_values` or `new_values` that is not a key column, of an entry of the
//! redaction's table and record, among its columns; or the context's `user_id` for a
//! redaction of a user. Anything else recorded (a "redaction" of `record_pk` written by hand)
//! is not taken: the marker then counts as the value, and the entry as changed.

use std::fmt::Write as _;

use crate::ident::text_literal;
use crate::sql::create_function;
use crate::sql::log::AuditLog;
use crate::sql::shape::{LOG_COLUMNS, LogColumn};

/// What a redacted value becomes, in the log and in archived files (a JSON string).
pub const REDACTED: &str = "[redacted]";

/// The most rows one seal covers, unless the caller asks otherwise.
pub const DEFAULT_SEAL_ROWS: u32 = 100_000;

/// Bytes per row in a seal's `rows`: the id (8, big-endian) and the first 8 of its digest.
pub const SEAL_ROW_BYTES: usize = 16;

impl AuditLog {
    /// The seals: each covers every id in `first_id..=last_id`, chained by `prev_hash`.
    pub fn seals_table(&self) -> crate::QualifiedName {
        self.function("seals")
    }

    /// The redaction log: who erased what, when and why.
    pub fn redactions_table(&self) -> crate::QualifiedName {
        self.function("redactions")
    }

    /// The digest of each erased value, by entry, column and key.
    pub fn redacted_values_table(&self) -> crate::QualifiedName {
        self.function("redacted_values")
    }

    /// The sealer's state: the horizon it will seal up to once the transactions running at its
    /// last run have ended.
    pub(crate) fn seal_state_table(&self) -> crate::QualifiedName {
        self.function("seal_state")
    }

    /// `SELECT * FROM <log>_seal(max_rows)`: seals the rows of ended transactions, at most
    /// `max_rows` per seal; one row per seal made. Returns nothing while another seal runs.
    pub fn seal_sql(&self, max_rows: u32) -> String {
        format!(
            "SELECT seal_id, first_id, last_id, row_count FROM {}({max_rows})",
            self.function("seal")
        )
    }

    /// The seals in order, for `verify` and export.
    pub fn list_seals_sql(&self) -> String {
        format!(
            "SELECT seal_id, first_id, last_id, row_count, rows, prev_hash, hash, sealed_at, sealed_by
               FROM {} ORDER BY seal_id",
            self.seals_table()
        )
    }

    /// What the seal over `$1..=$2` with previous hash `$3` would hold, recomputed now from the
    /// log and, when `archived` names a table with the log's columns, the archived rows loaded
    /// into it: `row_count`, `rows`, `hash`. The query itself, calling built-in functions only
    /// (run it with [`crate::session::PINNED`]'s settings): what `verify` runs.
    pub fn reseal_sql(&self, archived: Option<&str>) -> String {
        let mut source = format!(
            "SELECT {} FROM {} WHERE id >= $1 AND id <= $2",
            column_list(),
            self.table()
        );
        if let Some(t) = archived {
            let _ = write!(
                source,
                " UNION ALL SELECT {} FROM {t} WHERE id >= $1 AND id <= $2",
                column_list()
            );
        }
        seal_query(self, &source)
    }

    /// The values a recorded redaction erased that are present again (the marker gone), in
    /// the log and, when `archived` names a table with the log's columns, the archived rows
    /// loaded into it: `entry_id`, `column_name`, `key`, `redaction_id`. The query itself, as
    /// [`AuditLog::reseal_sql`].
    pub fn unerased_sql(&self, archived: Option<&str>) -> String {
        let mut source = format!("SELECT {} FROM {}", column_list(), self.table());
        if let Some(t) = archived {
            let _ = write!(source, " UNION ALL SELECT {} FROM {t}", column_list());
        }
        unerased_query(self, &source)
    }

    /// The recorded erasures no `redact` could have made (a key column, a column outside the
    /// redaction's, an entry of another record, anything but the context's user id of a
    /// user's redaction): `redaction_id`, `entry_id`, `column_name`, `key`. Over the log and
    /// the archived rows loaded into `archived`, as [`AuditLog::reseal_sql`]. Such a record
    /// stands in for nothing when digests are computed.
    pub fn unjustified_redactions_sql(&self, archived: Option<&str>) -> String {
        let mut source = format!("SELECT {} FROM {}", column_list(), self.table());
        if let Some(t) = archived {
            let _ = write!(source, " UNION ALL SELECT {} FROM {t}", column_list());
        }
        let rules: String = crate::sql::shape::LOG_COLUMNS
            .iter()
            .filter_map(|c| {
                redaction_applies(c.name, "l", "r.key")
                    .map(|rule| format!(" WHEN {} THEN ({rule})", text_literal(c.name)))
            })
            .collect();
        format!(
            "SELECT r.redaction_id, r.entry_id, r.column_name, r.key
  FROM {values} AS r
  JOIN {redactions} AS d ON d.redaction_id = r.redaction_id
  LEFT JOIN ({source}) AS l ON l.id = r.entry_id
 WHERE l.id IS NOT NULL AND NOT coalesce(CASE r.column_name{rules} ELSE false END, false)
 ORDER BY r.entry_id, r.column_name, r.key",
            values = self.redacted_values_table(),
            redactions = self.redactions_table(),
        )
    }

    /// The relations `verify` reads that are not of the kind pg-audit made (the log a
    /// partitioned table of tables, the seals, redactions and archive catalogue tables, none
    /// with rules): a view or a foreign table in their place could show `verify` other rows
    /// than readers see. `relation`, `relkind`.
    pub fn unexpected_relations_sql(&self) -> String {
        let expected: Vec<String> = [
            (self.table().clone(), 'p'),
            (self.seals_table(), 'r'),
            (self.redactions_table(), 'r'),
            (self.redacted_values_table(), 'r'),
            (self.archives_table(), 'r'),
        ]
        .iter()
        .map(|(t, kind)| format!("({}, '{kind}')", t.literal()))
        .collect();
        format!(
            "SELECT e.name AS relation, coalesce(c.relkind::text, 'missing') AS relkind
  FROM (VALUES {}) AS e(name, kind)
  LEFT JOIN pg_catalog.pg_class AS c ON c.oid = pg_catalog.to_regclass(e.name)
 WHERE c.relkind IS DISTINCT FROM e.kind::\"char\"
    OR EXISTS (SELECT FROM pg_catalog.pg_rewrite AS w WHERE w.ev_class = c.oid)
UNION ALL
SELECT p.relid::text, c.relkind::text
  FROM pg_catalog.pg_partition_tree({}::regclass) AS p
  JOIN pg_catalog.pg_class AS c ON c.oid = p.relid
 WHERE c.relkind NOT IN ('r', 'p')",
            expected.join(", "),
            self.table().literal()
        )
    }

    /// The log's highest id handed out, and the highest sealed.
    pub fn seal_progress_sql(&self) -> String {
        format!(
            "SELECT (SELECT max(last_id) FROM {seals}) AS sealed_upto,
                    (SELECT max(id) FROM {log}) AS max_id,
                    (SELECT count(*) FROM {log} WHERE id > coalesce((SELECT max(last_id) FROM {seals}), 0)) AS unsealed",
            seals = self.seals_table(),
            log = self.table(),
        )
    }

    /// Records a redaction (`$1` reason, `$2` table schema, `$3` table name, `$4` record key
    /// object or NULL, `$5` columns or NULL, `$6` what the erasure targets, e.g. `context
    /// user_id`) and returns its `redaction_id`.
    pub fn insert_redaction_sql(&self) -> String {
        format!(
            "INSERT INTO {} (reason, table_schema, table_name, record_pk, columns, target)
             VALUES ($1, $2, $3, $4::text::jsonb, $5::text[], $6) RETURNING redaction_id",
            self.redactions_table()
        )
    }

    /// Erases values in the entries of `target` (the log, or a table with its columns holding
    /// archived rows) for redaction `$1`: with `$2`/`$3`/`$4` (schema, table, key object) the
    /// named columns `$5` (NULL: every column but the key's) of one record; with `$6` the
    /// context's `user_id` of every entry that has it. Returns the ids of the entries changed.
    pub fn redact_sql(&self, target: &str) -> String {
        format!(
            "SELECT entry_id FROM {}({}::regclass, $1, $2, $3, $4::text::jsonb, $5::text[], $6)",
            self.function("redact"),
            text_literal(target)
        )
    }
}

/// The digest of one value (`key` and `value` SQL text expressions) — of a key of a JSON
/// column, and what a redaction records for the value it erases.
fn value_digest_expr(key: &str, value: &str) -> String {
    format!("sha256(convert_to({key}, 'UTF8') || '\\x00'::bytea || convert_to({value}, 'UTF8'))")
}

/// Whether a recorded redaction `r` (of `redacted_values`, with its redaction `d`) of key
/// `e.key` of column `column` of row alias `alias` is one `redact` could have made; `None` for
/// a column no redaction erases.
fn redaction_applies(column: &str, alias: &str, key: &str) -> Option<String> {
    match column {
        "old_values" | "new_values" => Some(format!(
            "d.record_pk IS NOT NULL AND d.table_schema = {alias}.schema_name AND d.table_name = {alias}.table_name
                                                   AND (d.record_pk = {alias}.record_pk OR d.record_pk = {alias}.old_record_pk)
                                                   AND (d.columns IS NULL OR {key} = ANY (d.columns))
                                                   AND NOT coalesce({alias}.record_pk ? {key}, false)
                                                   AND NOT coalesce({alias}.old_record_pk ? {key}, false)"
        )),
        "context" => Some(format!(
            "d.record_pk IS NULL AND d.table_name IS NULL AND {key} = {}",
            text_literal(crate::context::USER_ID)
        )),
        _ => None,
    }
}

/// The digest of JSON column `column` of row alias `alias`: one digest per top-level key in the
/// value's own key order, a redacted key's being the one its redaction recorded (where a
/// redaction may apply, [`redaction_applies`]); NULL when the value is NULL.
fn json_digest_expr(log: &AuditLog, column: &LogColumn, alias: &str) -> String {
    let c = format!("{alias}.{}", column.name);
    let name = text_literal(column.name);
    let marker = text_literal(&format!("\"{REDACTED}\""));
    let (each, typeof_, is_marker) = if column.sql_type == "jsonb" {
        (
            "jsonb_each",
            "jsonb_typeof",
            format!("e.value = {marker}::jsonb"),
        )
    } else {
        (
            "json_each",
            "json_typeof",
            format!("e.value::text = {marker}"),
        )
    };
    let vd = value_digest_expr("e.key", "e.value::text");
    let key_digest = match redaction_applies(column.name, alias, "e.key") {
        Some(applies) => format!(
            "CASE WHEN {is_marker}
                                 THEN coalesce((SELECT r.digest FROM {values} AS r
                                                  JOIN {redactions} AS d ON d.redaction_id = r.redaction_id
                                                 WHERE r.entry_id = {alias}.id AND r.column_name = {name} AND r.key = e.key
                                                   AND {applies}), {vd})
                                 ELSE {vd} END",
            values = log.redacted_values_table(),
            redactions = log.redactions_table(),
        ),
        None => vd,
    };
    format!(
        "CASE WHEN {c} IS NULL THEN NULL
      WHEN {typeof_}({c}) <> 'object' THEN {whole}
      ELSE sha256(convert_to({name}, 'UTF8') || '\\x02'::bytea || coalesce((
          SELECT string_agg({key_digest}, ''::bytea ORDER BY e.n)
            FROM {each}({c}) WITH ORDINALITY AS e(key, value, n)), ''::bytea)) END",
        whole = value_digest_expr(&name, &format!("{c}::text")),
    )
}

/// The digest of the row alias `alias` (with the log's columns), as SQL run with the
/// `search_path` pinned (inside the functions below): the scalar columns as one JSON object
/// (NULLs stripped, timestamps in microseconds), then each JSON column's digest.
pub(crate) fn row_digest_expr(log: &AuditLog, alias: &str) -> String {
    let scalars: Vec<String> = LOG_COLUMNS
        .iter()
        .filter(|c| !matches!(c.sql_type, "json" | "jsonb"))
        .map(|c| {
            let v = format!("{alias}.{}", c.name);
            let v = if c.sql_type == "timestamptz" {
                format!("(extract(epoch FROM {v}) * 1000000)::bigint")
            } else {
                v
            };
            format!("{}, {v}", text_literal(c.name))
        })
        .collect();
    let mut parts = vec![format!(
        "convert_to(jsonb_strip_nulls(jsonb_build_object({}))::text, 'UTF8')",
        scalars.join(", ")
    )];
    parts.extend(
        LOG_COLUMNS
            .iter()
            .filter(|c| matches!(c.sql_type, "json" | "jsonb"))
            .map(|c| format!("coalesce({}, ''::bytea)", json_digest_expr(log, c, alias))),
    );
    format!("sha256({})", parts.join("\n        || "))
}

/// Where a query below takes its rows from, for the functions that run it over a relation
/// they are given: the text is cut there.
const SOURCE: &str = "\u{1}source\u{1}";

/// `query` cut at [`SOURCE`].
fn split_at_source(query: &str) -> (&str, &str) {
    query
        .split_once(SOURCE)
        .expect("the query reads its source")
}

/// The seal over the rows of `source` (a query giving the log's columns of ids `$1..=$2`),
/// chained to the previous hash `$3`: `row_count`; `rows`, each row's id and digest prefix;
/// `hash`, over `$3`, the range and every digest in id order.
pub(crate) fn seal_query(log: &AuditLog, source: &str) -> String {
    format!(
        "SELECT pg_catalog.count(*) AS row_count,
       coalesce(pg_catalog.string_agg(pg_catalog.int8send(d.id) || pg_catalog.substr(d.digest, 1, 8), ''::bytea ORDER BY d.id, d.digest), ''::bytea) AS rows,
       pg_catalog.sha256(coalesce($3::bytea, ''::bytea) || pg_catalog.int8send($1::bigint) || pg_catalog.int8send($2::bigint)
              || coalesce(pg_catalog.string_agg(d.digest, ''::bytea ORDER BY d.id, d.digest), ''::bytea)) AS hash
  FROM (SELECT l.id, {} AS digest FROM ({source}) AS l) AS d",
        row_digest_expr(log, "l")
    )
}

/// The rows of `relation` (the log's columns), their lowest and highest id, and a digest over
/// their digests in id order: what the archive's catalogue records of a file.
pub(crate) fn content_query(log: &AuditLog, relation: &str) -> String {
    format!(
        "SELECT pg_catalog.count(*) AS row_count, pg_catalog.min(l.id) AS min_id, pg_catalog.max(l.id) AS max_id,
       pg_catalog.sha256(coalesce(pg_catalog.string_agg({}, ''::bytea ORDER BY l.id), ''::bytea)) AS content_sha256
  FROM {relation} AS l",
        row_digest_expr(log, "l")
    )
}

/// The values a recorded redaction erased that are present again in the rows of `source`.
fn unerased_query(log: &AuditLog, source: &str) -> String {
    format!(
        "SELECT r.entry_id, r.column_name, r.key, r.redaction_id
  FROM {values} AS r
  JOIN ({source}) AS l ON l.id = r.entry_id
 WHERE (pg_catalog.to_jsonb(l) -> r.column_name -> r.key) IS DISTINCT FROM {marker}::jsonb
 ORDER BY r.entry_id, r.column_name, r.key",
        values = log.redacted_values_table(),
        marker = text_literal(&format!("\"{REDACTED}\"")),
    )
}

/// The log's column names, comma-separated, in table order.
pub fn column_list() -> String {
    LOG_COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tables (seals, their state, redactions) and functions (digests, seal, redact) of tamper
/// evidence and erasure, part of the log's DDL.
pub(crate) fn objects_sql(log: &AuditLog) -> String {
    let table = log.table();
    let table_lit = table.literal();
    let seals = log.seals_table();
    let state = log.seal_state_table();
    let redactions = log.redactions_table();
    let values = log.redacted_values_table();
    // Names inside the bodies' `format` templates (a log may be named `a'b%`): quotes doubled,
    // and `%` doubled too.
    let values_str = values.to_string().replace('\'', "''");
    let values_fmt = values_str.replace('%', "%%");
    let seal_of = log.function("seal_of");
    let seal = log.function("seal");
    let redact = log.function("redact");
    let append_only = log.function("append_only");
    let marker = text_literal(&format!("\"{REDACTED}\""));
    let columns = column_list();
    let mut sql = String::new();

    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {seals} (
    seal_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    row_count bigint NOT NULL,
    rows bytea NOT NULL,
    prev_hash bytea,
    hash bytea NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    sealed_by text NOT NULL DEFAULT session_user
);
COMMENT ON TABLE {seals} IS 'pg-audit seals: a hash chain over the log in id order; append-only';
CREATE TABLE IF NOT EXISTS {state} (
    pending_id bigint NOT NULL,
    pending_snapshot pg_snapshot NOT NULL
);
CREATE TABLE IF NOT EXISTS {redactions} (
    redaction_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    redacted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    redacted_by text NOT NULL DEFAULT session_user,
    reason text NOT NULL CHECK (pg_catalog.btrim(reason) <> ''),
    table_schema text,
    table_name text,
    record_pk jsonb,
    columns text[],
    target text NOT NULL
);
COMMENT ON TABLE {redactions} IS 'pg-audit redactions: values erased from the log and its archives; append-only';
CREATE TABLE IF NOT EXISTS {values} (
    redaction_id bigint NOT NULL REFERENCES {redactions},
    entry_id bigint NOT NULL,
    column_name text NOT NULL,
    key text NOT NULL,
    digest bytea NOT NULL,
    PRIMARY KEY (entry_id, column_name, key)
);
"
    );

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
    let archives = log.archives_table();
    for t in [&seals, &redactions, &values, &archives] {
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
    sql.push('\n');

    let seal_of_body = format!(
        "
DECLARE
    source text := {source};
BEGIN
    IF archived IS NOT NULL THEN
        source := source || ' UNION ALL SELECT {columns} FROM ' || archived::text || ' WHERE id >= $1 AND id <= $2';
    END IF;
    RETURN QUERY EXECUTE {before} || source || {after}
        USING from_id, upto_id, prev_hash;
END
",
        source = text_literal(&format!(
            "SELECT {columns} FROM {table} WHERE id >= $1 AND id <= $2"
        )),
        before = text_literal(split_at_source(&seal_query(log, SOURCE)).0),
        after = text_literal(split_at_source(&seal_query(log, SOURCE)).1),
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!(
                "{seal_of}(from_id bigint, upto_id bigint, prev_hash bytea, archived regclass DEFAULT NULL)"
            ),
            "TABLE (row_count bigint, rows bytea, hash bytea)",
            "plpgsql STABLE",
            false,
            &seal_of_body
        )
    );

    let content = content_query(log, SOURCE);
    let (before, after) = split_at_source(&content);
    let content_body = format!(
        "
BEGIN
    RETURN QUERY EXECUTE {} || relation::text || {};
END
",
        text_literal(before),
        text_literal(after),
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{}(relation regclass)", log.function("content_of")),
            "TABLE (row_count bigint, min_id bigint, max_id bigint, content_sha256 bytea)",
            "plpgsql STABLE",
            false,
            &content_body
        )
    );

    // A redaction's digest stands in for the value only while the marker does: a value put
    // back (the digest would match it) is a finding of its own.
    let unerased_body = format!(
        "
DECLARE
    source text := {source};
BEGIN
    IF archived IS NOT NULL THEN
        source := source || ' UNION ALL SELECT {columns} FROM ' || archived::text;
    END IF;
    RETURN QUERY EXECUTE {before} || source || {after};
END
",
        source = text_literal(&format!("SELECT {columns} FROM {table}")),
        before = text_literal(split_at_source(&unerased_query(log, SOURCE)).0),
        after = text_literal(split_at_source(&unerased_query(log, SOURCE)).1),
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!(
                "{}(archived regclass DEFAULT NULL)",
                log.function("unerased")
            ),
            "TABLE (entry_id bigint, column_name text, key text, redaction_id bigint)",
            "plpgsql STABLE",
            false,
            &unerased_body
        )
    );

    // The horizon: every writer holds a transaction id before it takes a log id (the triggers
    // run after the audited write; the capture worker asks for one first). So once every
    // transaction running when the sequence was read has ended, no row with an id up to that
    // value can still appear.
    let seal_body = format!(
        "
DECLARE
    handed_out bigint;
    called boolean;
    snap pg_snapshot;
    pending record;
    horizon bigint;
    prev_last bigint;
    prev_hash bytea;
    lo bigint;
    hi bigint;
    n bigint;
    m bigint;
    made record;
    sid bigint;
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'pg-audit: max_rows must be 1 or more, not %', max_rows;
    END IF;
    -- One sealer at a time; no writer takes this lock.
    IF NOT pg_try_advisory_xact_lock(hashtext({seals_lit})) THEN
        RAISE NOTICE 'pg-audit: another seal of this log is running';
        RETURN;
    END IF;
    EXECUTE pg_catalog.format('SELECT last_value, is_called FROM %s', pg_get_serial_sequence({table_lit}, 'id'))
       INTO handed_out, called;
    IF NOT called THEN
        handed_out := handed_out - 1;
    END IF;
    snap := pg_current_snapshot();
    SELECT s.pending_id, s.pending_snapshot INTO pending FROM {state} AS s;
    IF NOT EXISTS (SELECT FROM pg_snapshot_xip(snap) AS x
                    WHERE x IS DISTINCT FROM pg_current_xact_id_if_assigned()
                      AND pg_xact_status(x) = 'in progress') THEN
        horizon := handed_out;
    ELSIF pending.pending_id IS NOT NULL
          AND NOT EXISTS (SELECT FROM pg_snapshot_xip(pending.pending_snapshot) AS x
                           WHERE pg_xact_status(x) = 'in progress') THEN
        horizon := pending.pending_id;
    END IF;
    DELETE FROM {state};
    INSERT INTO {state} (pending_id, pending_snapshot) VALUES (handed_out, snap);
    SELECT s.last_id, s.hash INTO prev_last, prev_hash FROM {seals} AS s ORDER BY s.seal_id DESC LIMIT 1;
    -- The first seal starts after what was archived before sealing began (not in the database).
    lo := coalesce(prev_last, (SELECT max(a.max_id) FROM {archives} AS a), 0) + 1;
    WHILE horizon IS NOT NULL AND lo <= horizon LOOP
        SELECT count(*), max(c.id) INTO n, m
          FROM (SELECT l.id FROM {table} AS l WHERE l.id >= lo AND l.id <= horizon ORDER BY l.id LIMIT max_rows) AS c;
        hi := CASE WHEN n = max_rows THEN m ELSE horizon END;
        SELECT * INTO made FROM {seal_of}(lo, hi, prev_hash);
        INSERT INTO {seals} (first_id, last_id, row_count, rows, prev_hash, hash)
             VALUES (lo, hi, made.row_count, made.rows, prev_hash, made.hash)
          RETURNING {seals}.seal_id INTO sid;
        seal_id := sid;
        first_id := lo;
        last_id := hi;
        row_count := made.row_count;
        RETURN NEXT;
        prev_hash := made.hash;
        lo := hi + 1;
    END LOOP;
END
",
        seals_lit = seals.literal(),
        archives = log.archives_table(),
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{seal}(max_rows integer DEFAULT {DEFAULT_SEAL_ROWS})"),
            "TABLE (seal_id bigint, first_id bigint, last_id bigint, row_count bigint)",
            "plpgsql",
            false,
            &seal_body
        )
    );

    let record_key = crate::sql::shape::record_key_expr("tbl_schema", "tbl_name", "pk");
    // The marker inside the string literals of `format` templates.
    let marker = marker.replace('\'', "''");
    let vd = value_digest_expr("e.key", "e.value::text").replace('\'', "''");
    let redact_body = format!(
        "
DECLARE
    filter text;
BEGIN
    IF pk IS NOT NULL THEN
        filter := pg_catalog.format('schema_name = %L AND table_name = %L AND (record_key = %s OR old_record_key = %s) AND (record_pk = %L OR old_record_pk = %L)',
                                    tbl_schema, tbl_name, {record_key}, {record_key}, pk, pk);
        -- The digest of each value about to be erased, kept so the seals still verify.
        EXECUTE pg_catalog.format(
            'INSERT INTO {values_fmt} (redaction_id, entry_id, column_name, key, digest)
             SELECT $1, l.id, v.col, e.key, {vd}
               FROM %s AS l
              CROSS JOIN LATERAL (VALUES (''old_values'', l.old_values), (''new_values'', l.new_values)) AS v(col, data)
              CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(v.data) = ''object'' THEN v.data END) AS e
              WHERE %s
                AND e.value <> {marker}::jsonb
                AND CASE WHEN $2 IS NULL THEN NOT (l.record_pk ? e.key) ELSE e.key = ANY ($2) END
             ON CONFLICT DO NOTHING', target, filter)
          USING redaction, columns;
        RETURN QUERY EXECUTE pg_catalog.format(
            'UPDATE %s AS l
                SET old_values = (SELECT jsonb_object_agg(e.key, CASE WHEN r.key IS NULL THEN e.value ELSE {marker}::jsonb END)
                                    FROM jsonb_each(l.old_values) AS e
                                    LEFT JOIN {values_fmt} AS r ON r.entry_id = l.id AND r.column_name = ''old_values'' AND r.key = e.key),
                    new_values = (SELECT jsonb_object_agg(e.key, CASE WHEN r.key IS NULL THEN e.value ELSE {marker}::jsonb END)
                                    FROM jsonb_each(l.new_values) AS e
                                    LEFT JOIN {values_fmt} AS r ON r.entry_id = l.id AND r.column_name = ''new_values'' AND r.key = e.key)
              WHERE %s
                AND EXISTS (SELECT FROM {values_fmt} AS r
                             WHERE r.entry_id = l.id AND r.column_name IN (''old_values'', ''new_values'')
                               AND (jsonb_typeof(l.old_values) = ''object'' AND l.old_values->r.key <> {marker}::jsonb
                                    OR jsonb_typeof(l.new_values) = ''object'' AND l.new_values->r.key <> {marker}::jsonb))
             RETURNING l.id', target, filter);
    ELSIF user_id IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'INSERT INTO {values_fmt} (redaction_id, entry_id, column_name, key, digest)
             SELECT $1, l.id, ''context'', e.key, {vd}
               FROM %s AS l
              CROSS JOIN LATERAL json_each(CASE WHEN json_typeof(l.context) = ''object'' THEN l.context END) AS e
              WHERE l.context->>''user_id'' = $2 AND e.key = ''user_id''
             ON CONFLICT DO NOTHING', target)
          USING redaction, user_id;
        RETURN QUERY EXECUTE pg_catalog.format(
            'UPDATE %s AS l
                SET context = (SELECT json_object_agg(e.key, CASE WHEN e.key = ''user_id'' THEN {marker}::json ELSE e.value END ORDER BY e.n)
                                 FROM json_each(l.context) WITH ORDINALITY AS e(key, value, n))
              WHERE l.context->>''user_id'' = $1
             RETURNING l.id', target)
          USING user_id;
    ELSE
        RAISE EXCEPTION 'pg-audit: a redaction names a record (table and key) or a user id';
    END IF;
END
"
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!(
                "{redact}(target regclass, redaction bigint, tbl_schema text, tbl_name text, pk jsonb, columns text[], user_id text)"
            ),
            "TABLE (entry_id bigint)",
            "plpgsql",
            false,
            &redact_body
        )
    );
    for t in [&seals, &state, &redactions, &values] {
        let _ = writeln!(sql, "REVOKE ALL ON TABLE {t} FROM PUBLIC;");
    }
    sql
}

/// The functions of tamper evidence and erasure, with their argument types (revoked from
/// PUBLIC, dropped with the log).
pub(crate) fn function_signatures(log: &AuditLog) -> [(crate::QualifiedName, &'static str); 6] {
    [
        (log.function("append_only"), ""),
        (log.function("unerased"), "regclass"),
        (log.function("seal_of"), "bigint, bigint, bytea, regclass"),
        (log.function("content_of"), "regclass"),
        (log.function("seal"), "integer"),
        (
            log.function("redact"),
            "regclass, bigint, text, text, jsonb, text[], text",
        ),
    ]
}
