//! Tamper evidence: the seals, a hash chain over the rows of ended transactions in id order,
//! each over the rows' digests (`sql/digest.rs`).
//!
//! The sealer's function runs the queries written here, and `verify` and the archive's
//! read-back check send the same queries themselves ([`crate::AuditLog::reseal_sql`],
//! [`crate::AuditLog::content_digest_sql`]) — built-in functions only, in a session with
//! pg-audit's settings pinned — rather than call a function the log's owner, the party seals
//! guard against, could replace. (`verify` loads archived rows back into a temporary table
//! with the log's columns.)

use std::fmt::Write as _;

use crate::ident::text_literal;
use crate::sql::digest::{
    SOURCE, column_list, live_and_archived, row_digest_expr, split_at_source,
};
use crate::sql::names::LogNames;
use crate::sql::{create_function, horizon};

/// The most rows one seal covers, unless the caller asks otherwise.
pub const DEFAULT_SEAL_ROWS: u32 = 100_000;

/// Bytes per row in a seal's `rows`: the id (8, big-endian) and the first 8 of its digest.
pub const SEAL_ROW_BYTES: usize = 16;

/// The SQL of [`crate::AuditLog::seal_sql`].
pub(crate) fn seal_sql(names: &LogNames, max_rows: u32) -> String {
    format!(
        "SELECT seal_id, first_id, last_id, row_count FROM {}({max_rows})",
        names.function("seal")
    )
}

/// The statements a program that computes the digests itself seals with, in one transaction
/// ([`crate::AuditLog::sealing_sql`]), making the same seals as `<log>_seal()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealingSql {
    /// `first_id`, `upto_id` (NULL: nothing can be sealed yet), `prev_hash`: where the next
    /// seal starts, how far rows are final, and the last seal's hash. Takes the sealers' lock
    /// for the transaction; no row when another sealer holds it.
    pub horizon: String,
    /// The id of the `$3`-th row (from 0) at or after `$1` and at most `$2`: where a seal of
    /// at most `$3 + 1` rows ends (none: the seal ends at `$2`).
    pub boundary: String,
    /// Records a seal: `$1` first id, `$2` last id, `$3` row count, `$4` rows, `$5` previous
    /// hash, `$6` hash; returns its `seal_id`.
    pub insert: String,
}

/// The SQL of [`crate::AuditLog::sealing_sql`].
pub(crate) fn sealing_sql(names: &LogNames) -> SealingSql {
    SealingSql {
        horizon: format!(
            "SELECT first_id, upto_id, prev_hash FROM {}()",
            names.function("seal_horizon")
        ),
        boundary: format!(
            "SELECT id FROM {} WHERE id >= $1 AND id <= $2 ORDER BY id OFFSET $3 LIMIT 1",
            names.table()
        ),
        insert: format!(
            "INSERT INTO {} (first_id, last_id, row_count, rows, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seal_id",
            names.seals_table()
        ),
    }
}

/// The SQL of [`crate::AuditLog::list_seals_sql`].
pub(crate) fn list_seals_sql(names: &LogNames) -> String {
    format!(
        "SELECT seal_id, first_id, last_id, row_count, rows, prev_hash, hash, sealed_at, sealed_by
               FROM {} ORDER BY seal_id",
        names.seals_table()
    )
}

/// The SQL of [`crate::AuditLog::reseal_sql`].
pub(crate) fn reseal_sql(names: &LogNames, archived: Option<&str>) -> String {
    let filter = " WHERE id >= $1 AND id <= $2";
    let source = live_and_archived(names, &column_list(), archived, filter);
    seal_query(names, &source)
}

/// The SQL of [`crate::AuditLog::seal_coverage_sql`].
pub(crate) fn seal_coverage_sql(names: &LogNames, archived: Option<&str>) -> String {
    let both = match archived {
        Some(t) => format!(
            "(SELECT min(l.id) FROM {} AS l JOIN {t} AS a ON a.id = l.id)",
            names.table()
        ),
        None => "NULL::bigint".to_owned(),
    };
    format!(
        "SELECT count(*) FILTER (WHERE r.id < $1) AS before_first,
       count(*) FILTER (WHERE r.id > $2) AS unsealed,
       count(*) FILTER (WHERE r.id < 1) AS impossible,
       min(r.id) FILTER (WHERE r.id < 1) AS first_impossible,
       (SELECT min(l.id) FROM {log} AS l WHERE l.id < $1 AND l.id >= 1) AS live_below_first,
       {both} AS live_and_archived
  FROM ({source}) AS r",
        log = names.table(),
        source = live_and_archived(names, "id", archived, ""),
    )
}

/// The SQL of [`crate::AuditLog::seal_progress_sql`].
pub(crate) fn seal_progress_sql(names: &LogNames) -> String {
    format!(
        "SELECT (SELECT max(last_id) FROM {seals}) AS sealed_upto,
                    (SELECT max(id) FROM {log}) AS max_id,
                    (SELECT count(*) FROM {log} WHERE id > coalesce((SELECT max(last_id) FROM {seals}), 0)) AS unsealed",
        seals = names.seals_table(),
        log = names.table(),
    )
}

/// The SQL of [`crate::AuditLog::seal_metrics_sql`].
pub(crate) fn seal_metrics_sql(names: &LogNames) -> String {
    format!(
        "SELECT (SELECT pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) s.sealed_at)
                   FROM {seals} AS s ORDER BY s.seal_id DESC LIMIT 1) AS seal_age_seconds,
                (coalesce((SELECT pg_catalog.max(l.id) FROM {log} AS l), 0)
                 OPERATOR(pg_catalog.-) coalesce((SELECT pg_catalog.max(s.last_id) FROM {seals} AS s), 0))::bigint AS ids_past_seals",
        seals = names.seals_table(),
        log = names.table(),
    )
}

/// The SQL of [`crate::AuditLog::unexpected_relations_sql`].
pub(crate) fn unexpected_relations_sql(names: &LogNames) -> String {
    let expected: Vec<String> = [
        (names.table().clone(), 'p'),
        (names.seals_table(), 'r'),
        (names.redactions_table(), 'r'),
        (names.redacted_values_table(), 'r'),
        (names.archives_table(), 'r'),
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
        names.table().literal()
    )
}

/// The seal over the rows of `source` (a query giving the log's columns of ids `$1..=$2`),
/// chained to the previous hash `$3`: `row_count`; `rows`, each row's id and digest prefix;
/// `hash`, over `$3`, the range and every digest in id order.
pub(crate) fn seal_query(names: &LogNames, source: &str) -> String {
    format!(
        "SELECT pg_catalog.count(*) AS row_count,
       coalesce(pg_catalog.string_agg(pg_catalog.int8send(d.id) || pg_catalog.substr(d.digest, 1, 8), ''::bytea ORDER BY d.id, d.digest), ''::bytea) AS rows,
       pg_catalog.sha256(coalesce($3::bytea, ''::bytea) || pg_catalog.int8send($1::bigint) || pg_catalog.int8send($2::bigint)
              || coalesce(pg_catalog.string_agg(d.digest, ''::bytea ORDER BY d.id, d.digest), ''::bytea)) AS hash
  FROM (SELECT l.id, {} AS digest FROM ({source}) AS l) AS d",
        row_digest_expr(names, "l")
    )
}

/// The rows of `relation` (the log's columns), their lowest and highest id, and a digest over
/// their digests in the archived files' order: what the archive's catalogue records of a file.
pub(crate) fn content_query(names: &LogNames, relation: &str) -> String {
    format!(
        "SELECT pg_catalog.count(*) AS row_count, pg_catalog.min(l.id) AS min_id, pg_catalog.max(l.id) AS max_id,
       pg_catalog.sha256(coalesce(pg_catalog.string_agg({}, ''::bytea ORDER BY {}), ''::bytea)) AS content_sha256
  FROM {relation} AS l",
        row_digest_expr(names, "l"),
        crate::sql::archive::file_order("l")
    )
}

/// The seals' tables (the seals, the sealer's state) and functions (a range's seal, a
/// relation's content digest, the sealer), part of the log's DDL.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let table = names.table();
    let seals = names.seals_table();
    let state = names.seal_state_table();
    let seal_of = names.function("seal_of");
    let seal = names.function("seal");
    let columns = column_list();
    let state_columns = horizon::STATE_COLUMNS;
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
    {state_columns}
);
"
    );

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
        before = text_literal(split_at_source(&seal_query(names, SOURCE)).0),
        after = text_literal(split_at_source(&seal_query(names, SOURCE)).1),
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

    let content = content_query(names, SOURCE);
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
            &format!("{}(relation regclass)", names.function("content_of")),
            "TABLE (row_count bigint, min_id bigint, max_id bigint, content_sha256 bytea)",
            "plpgsql STABLE",
            false,
            &content_body
        )
    );

    let horizon_body = format!(
        "
DECLARE
{declare}    prev_last bigint;
    prev bytea;
BEGIN
    -- One sealer at a time, until the caller's transaction ends; no writer takes this lock.
    IF NOT pg_try_advisory_xact_lock(hashtext({seals_lit})) THEN
        RAISE NOTICE 'pg-audit: another seal of this log is running';
        RETURN;
    END IF;
{steps}    SELECT s.last_id, s.hash INTO prev_last, prev FROM {seals} AS s ORDER BY s.seal_id DESC LIMIT 1;
    -- The first seal starts after what was archived before sealing began (not in the database).
    first_id := coalesce(prev_last, (SELECT max(a.max_id) FROM {archives} AS a), 0) + 1;
    upto_id := horizon;
    prev_hash := prev;
    RETURN NEXT;
END
",
        seals_lit = seals.literal(),
        archives = names.archives_table(),
        declare = horizon::DECLARE,
        steps = horizon::steps(names, &state),
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{horizon}()", horizon = names.function("seal_horizon")),
            "TABLE (first_id bigint, upto_id bigint, prev_hash bytea)",
            "plpgsql",
            false,
            &horizon_body
        )
    );

    let seal_body = format!(
        "
DECLARE
    plan record;
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
    SELECT * INTO plan FROM {horizon}();
    IF NOT FOUND THEN
        RETURN;
    END IF;
    lo := plan.first_id;
    prev_hash := plan.prev_hash;
    WHILE plan.upto_id IS NOT NULL AND lo <= plan.upto_id LOOP
        SELECT count(*), max(c.id) INTO n, m
          FROM (SELECT l.id FROM {table} AS l WHERE l.id >= lo AND l.id <= plan.upto_id ORDER BY l.id LIMIT max_rows) AS c;
        hi := CASE WHEN n = max_rows THEN m ELSE plan.upto_id END;
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
        horizon = names.function("seal_horizon"),
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

    for t in [&seals, &state] {
        let _ = writeln!(sql, "REVOKE ALL ON TABLE {t} FROM PUBLIC;");
    }
    sql
}
