//! The log's records: one row per record (table and key) the log has seen, with the span of
//! time its entries cover and whether it began and ended inside the log, kept by
//! `<log>_count()` beside the counts; and the query that rebuilds a page of a table as of a
//! time from them, one record at a time, instead of from every entry of the table.
//!
//! A record's state at a time T is its last entry's at or before T (none if a TRUNCATE came
//! after it), else the state before its first entry after T. So a page walks the records in
//! key order and reads each one's state through the log's `record_key` index — a few index
//! probes a record, whatever the log's size — skipping without a probe the records the
//! summary proves absent at T:
//! - `born` (its first entry had no state before it: an INSERT, or the new key of an UPDATE)
//!   and `first_at` after T: it did not exist yet;
//! - `gone` (its last entry left no state: a DELETE, the old key of an UPDATE, or a TRUNCATE
//!   after it) and `last_at` at or before T: it no longer existed.
//!
//! Entries are written in statement-time order only roughly (a transaction's `changed_at` is
//! its statement's start), so `first_at` and `last_at` are the least and greatest times of all
//! the record's entries: both tests hold for every entry, whatever their order. A TRUNCATE is
//! a row with no key (`key` NULL). Entries past the counts' `through_id` (the tail) are read
//! from the log itself, and a record they touch is probed whatever its summary says.

use crate::QualifiedName;
use crate::ident::text_literal;
use crate::sql::names::LogNames;
use crate::sql::shape::{Operation, record_key_expr};

/// The records table, part of the log's DDL (after the counts, whose state it shares).
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let records = names.records_table();
    let index = crate::Ident::generated(records.name.as_str(), "_truncate_idx");
    // A log counted before the records existed: counted again from its first entry (the
    // counts are derived, and readers walk what is not counted yet), so the records hold every
    // entry the counts do.
    let upgrade = crate::ident::dollar_quote(&format!(
        "
BEGIN
    IF pg_catalog.to_regclass({records_lit}) IS NULL AND pg_catalog.to_regclass({state_lit}) IS NOT NULL THEN
        TRUNCATE {counts}, {users};
        UPDATE {state} SET through_id = 0;
    END IF;
END
",
        records_lit = text_literal(&records.to_string()),
        state_lit = text_literal(&names.counts_state_table().to_string()),
        counts = names.counts_table(),
        users = names.context_counts_table(),
        state = names.counts_state_table(),
    ));
    format!(
        "DO {upgrade};
CREATE TABLE IF NOT EXISTS {records} (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    key text COLLATE \"C\",
    last_id bigint NOT NULL,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    born boolean NOT NULL,
    gone boolean NOT NULL,
    UNIQUE (schema_name, table_name, key)
);
COMMENT ON TABLE {records} IS {comment};
CREATE INDEX IF NOT EXISTS {index} ON {records} (schema_name, table_name, last_at) WHERE key IS NULL;
REVOKE ALL ON TABLE {records} FROM PUBLIC;
",
        comment = text_literal(&format!(
            "pg-audit records: each record (table and key) the log has seen, the span of its entries and whether it began and ended in them; a TRUNCATE has no key; derived from the log by {}()",
            names.function("count")
        )),
    )
}

/// Each entry of `source` (the log or rows of it), aliased `l` and passing `filter`, as seen from
/// each record it concerns:
/// `id`, `changed_at`, `key` (the key object's text), `before` and `after` (the record's
/// state before and after it; NULL: no row). A key-changing UPDATE ends the old key's record
/// and starts the new key's.
fn sides(source: &str, filter: &str) -> String {
    let before = Operation::before_state_sql("l");
    let after = Operation::after_state_sql("l");
    format!(
        "SELECT l.id, l.changed_at, l.schema_name, l.table_name, (l.record_pk::text) COLLATE \"C\" AS key,
                {before} AS before,
                {after} AS after
           FROM {source} AS l
          WHERE l.record_pk IS NOT NULL AND {filter}
         UNION ALL
         SELECT l.id, l.changed_at, l.schema_name, l.table_name, (l.old_record_pk::text) COLLATE \"C\", l.old_values, NULL
           FROM {source} AS l
          WHERE l.old_record_pk IS NOT NULL AND {filter}"
    )
}

/// The statements of `<log>_count()` that fold the entries with ids in `(done, upto]` into the
/// records (PL/pgSQL variables `done` and `upto`).
pub(crate) fn count_steps(names: &LogNames) -> String {
    let records = names.records_table();
    let table = names.table();
    let range = "l.id > done AND l.id <= upto";
    format!(
        "        INSERT INTO {records} AS r (schema_name, table_name, key, last_id, first_at, last_at, born, gone)
        SELECT e.schema_name, e.table_name, e.key, max(e.id), min(e.changed_at), max(e.changed_at),
               (array_agg(e.before IS NULL ORDER BY e.id))[1], (array_agg(e.after IS NULL ORDER BY e.id DESC))[1]
          FROM ({sides}) AS e
         GROUP BY 1, 2, 3
        ON CONFLICT (schema_name, table_name, key) DO UPDATE
           SET last_id = excluded.last_id, first_at = least(r.first_at, excluded.first_at),
               last_at = greatest(r.last_at, excluded.last_at), gone = excluded.gone;
        -- A TRUNCATE: a row of its own, and the end of every record it found.
        INSERT INTO {records} (schema_name, table_name, key, last_id, first_at, last_at, born, gone)
        SELECT l.schema_name, l.table_name, NULL, l.id, l.changed_at, l.changed_at, false, true
          FROM {table} AS l
         WHERE {range} AND l.operation = 'TRUNCATE';
        UPDATE {records} AS r SET gone = true, last_at = greatest(r.last_at, t.changed_at)
          FROM (SELECT l.schema_name, l.table_name, max(l.id) AS id, max(l.changed_at) AS changed_at
                  FROM {table} AS l
                 WHERE {range} AND l.operation = 'TRUNCATE'
                 GROUP BY 1, 2) AS t
         WHERE r.schema_name = t.schema_name AND r.table_name = t.table_name
           AND r.key IS NOT NULL AND r.last_id < t.id;
",
        sides = sides(&table.to_string(), range),
    )
}

/// A table the reader may read: `table` (aliased `t` in `key` and `values`), the SQL of its row
/// `t`'s key object and audited columns (both `jsonb`, the columns as the triggers record them).
#[derive(Debug, Clone, Copy)]
pub struct LiveRows<'a> {
    /// The table.
    pub table: &'a QualifiedName,
    /// Its row `t`'s key object.
    pub key: &'a str,
    /// Its row `t`'s audited columns.
    pub values: &'a str,
}

/// The entries of the table `$1`.`$2` with ids past the parameter `through` (how far the
/// counts went: `tail_entries`), and each as seen from the records it concerns (`tail`), as
/// common table expressions. (A parameter, not a subquery: the planner then knows the tail is
/// short, and reads it through the id index.)
fn tail_ctes(names: &LogNames, through: &str) -> String {
    format!(
        "tail_entries AS MATERIALIZED (
        SELECT l.id, l.changed_at, l.operation, l.schema_name, l.table_name, l.record_pk, l.old_record_pk,
               l.old_values, l.new_values
          FROM {log} AS l
         WHERE l.id OPERATOR(pg_catalog.>) {through}::bigint AND {THIS_TABLE}),
     tail AS MATERIALIZED ({tail})",
        log = names.table(),
        tail = sides("tail_entries", "true"),
    )
}

/// The entries of the table `$1`.`$2` in the log aliased `l`.
const THIS_TABLE: &str =
    "l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2";

/// `key` (the text of a key object, `COLLATE "C"`) comes after the key object whose JSON text
/// is the parameter `param` (always, when it is NULL).
fn after(key: &str, param: &str) -> String {
    format!(
        "({param}::text IS NULL OR {key} OPERATOR(pg_catalog.>) ({param}::text::jsonb::text) COLLATE \"C\")"
    )
}

/// One page of the records of a table the log holds, as they were at a time: rows `key` (the
/// key object's text), `k` (the key object), `v` (the audited columns), in key order (the
/// text, byte by byte), only records that existed then. Parameters: `$1` the table's schema,
/// `$2` its name, `$3` the time (timestamptz), `$4` the key after which the page starts (its
/// JSON text; NULL for the first page), `$5` the most rows, `$6` how far the counts go
/// (`AuditLog::counted_through_sql`; any value up to it is right, a lower one slower).
///
/// The records are walked in key order through their index and the page ends at `$5` rows.
/// A record unchanged since the time is read by its last entry's id; another through the
/// log's `record_key` indexes, reading its entries up to the time (or from it, for one that
/// began after it).
pub(crate) fn table_at_sql(names: &LogNames) -> String {
    let records = names.records_table();
    let of_table =
        "r.schema_name OPERATOR(pg_catalog.=) $1 AND r.table_name OPERATOR(pg_catalog.=) $2";
    // A page of the candidates `c` (key, last_id, first_at, last_at, in_tail, absent) in key
    // order, with their state at the time: each branch of the union is a page of its own, so
    // the records are walked through their index and the walk stops at the page's last row.
    let page_of = |candidates: &str| {
        format!(
            "(SELECT c.key, s.v FROM ({candidates}) AS c
  CROSS JOIN LATERAL (
    SELECT CASE WHEN c.absent THEN NULL
                -- Unchanged since: its last entry's state, found by id; else (or if that entry
                -- went with its partition) read through the indexes.
                ELSE coalesce(CASE WHEN NOT c.in_tail AND c.last_at OPERATOR(pg_catalog.<=) $3 THEN (
                    SELECT l.new_values FROM {log} AS l
                     WHERE l.id OPERATOR(pg_catalog.=) c.last_id
                       AND l.changed_at OPERATOR(pg_catalog.>=) c.first_at AND l.changed_at OPERATOR(pg_catalog.<=) c.last_at
                       AND l.operation OPERATOR(pg_catalog.=) ANY (ARRAY['INSERT', 'UPDATE', 'SNAPSHOT'])
                       AND l.record_pk OPERATOR(pg_catalog.=) c.key::jsonb
                       AND l.id OPERATOR(pg_catalog.>) coalesce((SELECT t.id FROM truncated AS t), 0)) END,
                    {state}) END AS v
    OFFSET 0) AS s
 WHERE s.v IS NOT NULL
 ORDER BY c.key
 LIMIT $5)",
            log = names.table(),
            state = state_at(names.table()),
        )
    };
    format!(
        "WITH {tail},
     truncated AS MATERIALIZED (
        SELECT pg_catalog.max(x.id) AS id FROM (
            SELECT r.last_id AS id FROM {records} AS r
             WHERE {of_table} AND r.key IS NULL AND r.last_at OPERATOR(pg_catalog.<=) $3
            UNION ALL
            SELECT l.id FROM tail_entries AS l
             WHERE l.operation OPERATOR(pg_catalog.=) 'TRUNCATE' AND l.changed_at OPERATOR(pg_catalog.<=) $3) AS x)
SELECT p.key, p.key::jsonb AS k, p.v FROM (
{records_page}
UNION ALL
{tail_page}) AS p
 ORDER BY p.key
 LIMIT $5",
        tail = tail_ctes(names, "$6"),
        records_page = page_of(&format!(
            "SELECT r.key, r.last_id, r.first_at, r.last_at, r.key IN (SELECT tail.key FROM tail) AS in_tail,
           r.key NOT IN (SELECT tail.key FROM tail)
           AND ((r.born AND r.first_at OPERATOR(pg_catalog.>) $3) OR (r.gone AND r.last_at OPERATOR(pg_catalog.<=) $3)) AS absent
      FROM {records} AS r
     WHERE {of_table} AND r.key IS NOT NULL AND {after_r}",
            after_r = after("r.key", "$4"),
        )),
        tail_page = page_of(&format!(
            "SELECT DISTINCT tail.key, NULL::bigint AS last_id, NULL::timestamptz AS first_at, NULL::timestamptz AS last_at,
           true AS in_tail, false AS absent
      FROM tail
      LEFT JOIN LATERAL (SELECT true AS seen FROM {records} AS r
                          WHERE {of_table} AND r.key OPERATOR(pg_catalog.=) tail.key) AS r ON true
     WHERE r.seen IS NULL AND {after_tail}",
            after_tail = after("tail.key", "$4"),
        )),
    )
}

/// The rows of `live` the log never saw (none of its entries names their key): unchanged since
/// before auditing, they stand for themselves at any time. Rows `key` (the key object's text),
/// `k` (the key object) and `v` (the audited columns), in key order (the text, byte by byte).
/// Parameters: `$1` the table's schema, `$2` its name, `$3` the key after which the page
/// starts (its JSON text; NULL for the first page), `$4` the most rows, `$5` how far the
/// counts go (as for `table_at_sql`).
///
/// Keys are ordered by their JSON text, which no index of the table holds: this reads every
/// row's key, a cost that grows with the table's rows (not the log's entries).
pub(crate) fn unseen_rows_sql(names: &LogNames, live: LiveRows<'_>) -> String {
    let records = names.records_table();
    format!(
        "WITH {tail}
SELECT w.key, w.key::jsonb AS k, (SELECT {values} FROM {table} AS t WHERE t.ctid OPERATOR(pg_catalog.=) w.live) AS v
  FROM (
    SELECT w.key, w.live FROM (
        SELECT ({key})::text COLLATE \"C\" AS key, t.ctid AS live FROM {table} AS t) AS w
     WHERE {after_w}
       AND NOT EXISTS (SELECT FROM {records} AS r
                        WHERE r.schema_name OPERATOR(pg_catalog.=) $1 AND r.table_name OPERATOR(pg_catalog.=) $2
                          AND r.key OPERATOR(pg_catalog.=) w.key)
       AND NOT EXISTS (SELECT FROM tail WHERE tail.key OPERATOR(pg_catalog.=) w.key)
     ORDER BY w.key
     LIMIT $4) AS w
 ORDER BY w.key",
        tail = tail_ctes(names, "$5"),
        key = live.key,
        values = live.values,
        table = live.table,
        after_w = after("w.key", "$3"),
    )
}

/// The state at `$3` of the record keyed by the text `c.key`, from its entries in the log
/// (read through the `record_key` indexes): its last entry's at or before `$3` unless the
/// table was truncated after it (`truncated`), else the state before its first entry after.
fn state_at(log: &QualifiedName) -> String {
    let record_key = record_key_expr("$1", "$2", "c.key::jsonb");
    let after = Operation::after_state_sql("l");
    let before = Operation::before_state_sql("l");
    let entries = |when: &str| {
        format!(
            "SELECT l.id, {after} AS after,
                            {before} AS before
                       FROM {log} AS l
                      WHERE l.record_key OPERATOR(pg_catalog.=) {record_key} AND {THIS_TABLE}
                        AND l.record_pk OPERATOR(pg_catalog.=) c.key::jsonb AND {when}
                     UNION ALL
                     SELECT l.id, NULL, l.old_values
                       FROM {log} AS l
                      WHERE l.old_record_key OPERATOR(pg_catalog.=) {record_key} AND {THIS_TABLE}
                        AND l.old_record_pk OPERATOR(pg_catalog.=) c.key::jsonb AND {when}"
        )
    };
    format!(
        "(SELECT CASE WHEN b.id IS NULL THEN
                     (SELECT a.before FROM ({after}) AS a ORDER BY a.id LIMIT 1)
                 WHEN b.id OPERATOR(pg_catalog.>) coalesce((SELECT t.id FROM truncated AS t), 0) THEN b.after END
            FROM (SELECT) AS one
            LEFT JOIN LATERAL (
                SELECT e.id, e.after FROM ({before}) AS e ORDER BY e.id DESC LIMIT 1) AS b ON true)",
        before = entries("l.changed_at OPERATOR(pg_catalog.<=) $3"),
        after = entries("l.changed_at OPERATOR(pg_catalog.>) $3"),
    )
}
