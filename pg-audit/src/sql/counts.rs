//! The log's counts: how many entries each table, operation and user has per day and per block
//! of ids, kept by `<log>_count()` (maintenance, never the write path), and the queries that
//! answer from them instead of walking the log.
//!
//! Two tables, both derived from the log and rebuilt from it if lost:
//! - `<log>_counts`: per id block ([`BLOCK_IDS`] ids), UTC day, table and operation, the
//!   entries and their lowest and highest id. The admin's chart sums days; a filter on a table
//!   or an operation walks only the blocks that hold matching entries, between their ids.
//! - `<log>_context_counts`: the same per context user id and per request id (`field`, and
//!   `value_hash`: a 64-bit hash of the value, so any length is counted and no id is stored
//!   in clear; two values sharing a hash only cost a reader a few more rows). Erasing a user
//!   moves their counts to the erasure marker's, as their entries' user id becomes it.
//!
//! Blocks are disjoint ranges of ids, so a filter's blocks, newest first, are its entries'
//! id ranges in the order the activity lists them. Counting stops at the same horizon the
//! sealer uses (`sql/horizon.rs`); `<log>_counts_state.through_id` says how far it got, and
//! readers walk the entries past it (the tail) in the log itself, so the counts are always
//! exact and only their speed depends on how often they are kept.

use std::fmt::Write as _;

use crate::QualifiedName;
use crate::ident::text_literal;
use crate::sql::names::LogNames;
use crate::sql::{create_function, horizon};

/// How many ids one block holds.
pub const BLOCK_IDS: i64 = 8192;

/// The most entries a count row lists by id (`ids`): a group this small is read by its ids,
/// a larger one walked between its lowest and highest id.
pub const EXACT_IDS: i64 = 32;

/// The most entries one call of `<log>_count()` counts unless told otherwise.
pub const DEFAULT_COUNT_ROWS: i64 = 1_000_000;

/// The context fields the counts know, as `<log>_context_counts.field` names them.
pub const CONTEXT_FIELDS: [&str; 2] = [crate::context::USER_ID, crate::context::REQUEST_ID];

/// The counts' tables and `<log>_count(max_rows)`, part of the log's DDL.
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let counts = names.counts_table();
    let users = names.context_counts_table();
    let state = names.counts_state_table();
    let table = names.table();
    let mut sql = String::new();
    let index =
        |table: &QualifiedName, suffix: &str| crate::Ident::generated(table.name.as_str(), suffix);
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {counts} (
    block bigint NOT NULL,
    day date NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    operation text NOT NULL,
    entries bigint NOT NULL,
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    ids bigint[],
    PRIMARY KEY (schema_name, table_name, block, day, operation)
);
COMMENT ON TABLE {counts} IS {counts_comment};
CREATE INDEX IF NOT EXISTS {by_day} ON {counts} (schema_name, table_name, day);
CREATE INDEX IF NOT EXISTS {by_operation} ON {counts} (operation, block);
CREATE INDEX IF NOT EXISTS {by_block} ON {counts} (day, block);
CREATE TABLE IF NOT EXISTS {users} (
    field text NOT NULL,
    value_hash bigint NOT NULL,
    block bigint NOT NULL,
    day date NOT NULL,
    entries bigint NOT NULL,
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    ids bigint[],
    PRIMARY KEY (field, value_hash, block, day)
);
COMMENT ON TABLE {users} IS {users_comment};
CREATE TABLE IF NOT EXISTS {state} (
    through_id bigint NOT NULL DEFAULT 0,
    {state_columns}
);
REVOKE ALL ON TABLE {counts} FROM PUBLIC;
REVOKE ALL ON TABLE {users} FROM PUBLIC;
REVOKE ALL ON TABLE {state} FROM PUBLIC;
",
        state_columns = horizon::STATE_COLUMNS,
        counts_comment = text_literal(&format!(
            "pg-audit counts: entries per table, operation, UTC day and block of {BLOCK_IDS} ids; derived from the log by {}()",
            names.function("count")
        )),
        users_comment = text_literal(&format!(
            "pg-audit counts: entries per context user id and request id, UTC day and block of {BLOCK_IDS} ids; derived from the log by {}()",
            names.function("count")
        )),
        by_day = index(&counts, "_day_idx"),
        by_operation = index(&counts, "_operation_idx"),
        by_block = index(&counts, "_block_idx"),
    );
    let body = format!(
        "
DECLARE
{declare}    done bigint;
    upto bigint;
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'pg-audit: max_rows must be 1 or more, not %', max_rows;
    END IF;
    -- One counter at a time, until the caller's transaction ends; no writer takes this lock
    -- (an erasure does: it waits for the count, and the count for it).
    IF NOT pg_try_advisory_xact_lock(hashtext({counts_lit})) THEN
        RAISE NOTICE 'pg-audit: another count of this log is running';
        RETURN;
    END IF;
{steps}    SELECT s.through_id INTO done FROM {state} AS s;
    done := coalesce(done, 0);
    counted := 0;
    -- (least() ignores a NULL: no horizon this time counts nothing.)
    upto := CASE WHEN horizon IS NOT NULL THEN least(horizon, done + max_rows) END;
    IF upto IS NOT NULL AND upto > done THEN
        INSERT INTO {counts} AS c (block, day, schema_name, table_name, operation, entries, first_id, last_id, ids)
        SELECT l.id / {BLOCK_IDS}, (l.changed_at AT TIME ZONE 'UTC')::date, l.schema_name, l.table_name, l.operation,
               count(*), min(l.id), max(l.id), CASE WHEN count(*) <= {EXACT_IDS} THEN array_agg(l.id) END
          FROM {table} AS l
         WHERE l.id > done AND l.id <= upto
         GROUP BY 1, 2, 3, 4, 5
        ON CONFLICT (schema_name, table_name, block, day, operation) DO UPDATE
           SET {merge_c};
        GET DIAGNOSTICS counted = ROW_COUNT;
        INSERT INTO {users} AS u (field, value_hash, block, day, entries, first_id, last_id, ids)
        SELECT f.field, {hash_value}, l.id / {BLOCK_IDS}, (l.changed_at AT TIME ZONE 'UTC')::date,
               count(*), min(l.id), max(l.id), CASE WHEN count(*) <= {EXACT_IDS} THEN array_agg(l.id) END
          FROM {table} AS l CROSS JOIN (VALUES {fields}) AS f(field)
         WHERE l.id > done AND l.id <= upto AND l.context->>f.field IS NOT NULL
         GROUP BY 1, 2, 3, 4
        ON CONFLICT (field, value_hash, block, day) DO UPDATE
           SET {merge_u};
{records}        UPDATE {state} SET through_id = upto;
        done := upto;
    END IF;
    through_id := done;
    behind := greatest(handed_out - done, 0);
    RETURN NEXT;
END
",
        declare = horizon::DECLARE,
        steps = horizon::steps(names, &state),
        counts_lit = counts.literal(),
        merge_c = merge("c"),
        hash_value = value_hash("l.context->>f.field"),
        merge_u = merge("u"),
        records = crate::sql::records::count_steps(names),
        fields = CONTEXT_FIELDS
            .map(|f| format!("({})", text_literal(f)))
            .join(", "),
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!(
                "{}(max_rows bigint DEFAULT {DEFAULT_COUNT_ROWS})",
                names.function("count")
            ),
            "TABLE (through_id bigint, behind bigint, counted bigint)",
            "plpgsql",
            false,
            &body
        )
    );
    sql
}

/// The `SET` of a count row's upsert into the row aliased `alias`: the entries added, the
/// lowest and highest id widened, the ids kept while few.
fn merge(alias: &str) -> String {
    format!(
        "entries = {alias}.entries + excluded.entries,
               first_id = least({alias}.first_id, excluded.first_id),
               last_id = greatest({alias}.last_id, excluded.last_id),
               ids = CASE WHEN cardinality({alias}.ids) + cardinality(excluded.ids) <= {EXACT_IDS} THEN {alias}.ids || excluded.ids END"
    )
}

/// The key a context value is counted under (`value_hash`), from the SQL expression `value`
/// of its text: the count, the readers' filter and erasure all take it from here, so they
/// agree.
fn value_hash(value: &str) -> String {
    format!("pg_catalog.hashtextextended({value}, 0)")
}

/// `(SELECT through_id ...)`: how far the counts go, read in the statement that reads them, so
/// the two agree whatever count commits meanwhile.
fn through_expr(names: &LogNames) -> String {
    format!(
        "(SELECT coalesce(pg_catalog.max(s.through_id), 0) FROM {} AS s)",
        names.counts_state_table()
    )
}

/// `<log>_count(max_rows)`: counts up to `max_rows` more entries (never past the horizon), and
/// returns one row: `through_id` (every entry up to it is counted), `behind` (ids handed out
/// past it, an upper bound on the entries not counted yet), `counted` (count rows written by
/// this call). Run it until `behind` stops falling, or every minute from cron.
pub(crate) fn count_sql(names: &LogNames, max_rows: i64) -> String {
    format!(
        "SELECT through_id, behind, counted FROM {}({max_rows})",
        names.function("count")
    )
}

/// How far the counts go: one row, `through_id` (0 before the first count) and `behind` (ids
/// handed out since: the tail readers walk in the log). Readers may run it.
pub(crate) fn counted_through_sql(names: &LogNames) -> String {
    format!(
        "SELECT coalesce((SELECT s.through_id FROM {state} AS s), 0) AS through_id,
                GREATEST(coalesce((SELECT s.pending_id FROM {state} AS s), 0)
                                    OPERATOR(pg_catalog.-) coalesce((SELECT s.through_id FROM {state} AS s), 0), 0) AS behind",
        state = names.counts_state_table()
    )
}

/// A table's entries per UTC day, today's and the `$3` (integer) days' before, counted and in
/// the tail past the counts: rows `day` (timestamptz, midnight UTC) and `changes`. `$1`, `$2`:
/// the table's schema and name.
pub(crate) fn days_sql(names: &LogNames) -> String {
    let first_day =
        "(pg_catalog.timezone('UTC', pg_catalog.now())::date OPERATOR(pg_catalog.-) $3::integer)";
    format!(
        "SELECT pg_catalog.timezone('UTC', d.day::timestamp) AS day, pg_catalog.sum(d.n)::bigint AS changes FROM (
            SELECT c.day, c.entries AS n FROM {counts} AS c
             WHERE c.schema_name OPERATOR(pg_catalog.=) $1 AND c.table_name OPERATOR(pg_catalog.=) $2
               AND c.day OPERATOR(pg_catalog.>=) {first_day}
            UNION ALL
            SELECT pg_catalog.timezone('UTC', l.changed_at)::date, 1 FROM {log} AS l
             WHERE l.id OPERATOR(pg_catalog.>) {through}
               AND l.schema_name OPERATOR(pg_catalog.=) $1 AND l.table_name OPERATOR(pg_catalog.=) $2
               AND l.changed_at OPERATOR(pg_catalog.>=) pg_catalog.timezone('UTC', {first_day}::timestamp)) AS d
          GROUP BY d.day ORDER BY d.day",
        counts = names.counts_table(),
        log = names.table(),
        through = through_expr(names),
    )
}

/// Every table's entries, today's and the `$1` (integer) days' before, counted and in the tail
/// past the counts: rows `schema_name`, `table_name`, `changes`.
pub(crate) fn tables_days_sql(names: &LogNames) -> String {
    let first_day =
        "(pg_catalog.timezone('UTC', pg_catalog.now())::date OPERATOR(pg_catalog.-) $1::integer)";
    format!(
        "SELECT d.schema_name, d.table_name, pg_catalog.sum(d.n)::bigint AS changes FROM (
            SELECT c.schema_name, c.table_name, c.entries AS n FROM {counts} AS c
             WHERE c.day OPERATOR(pg_catalog.>=) {first_day}
            UNION ALL
            SELECT l.schema_name, l.table_name, 1 FROM {log} AS l
             WHERE l.id OPERATOR(pg_catalog.>) {through}
               AND l.changed_at OPERATOR(pg_catalog.>=) pg_catalog.timezone('UTC', {first_day}::timestamp)) AS d
          GROUP BY d.schema_name, d.table_name",
        counts = names.counts_table(),
        log = names.table(),
        through = through_expr(names),
    )
}

/// Which of the counts a listing's blocks come from: the most selective filter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `<log>_context_counts` of this field ([`CONTEXT_FIELDS`]), `$4` its value.
    Context(&'static str),
    /// `<log>_counts`: the schema, table and operation filters (each may be NULL: every
    /// entry in the time range).
    Tables,
}

/// The count rows that can hold entries passing a filter, newest block first, at most `$8` of
/// them: rows `block`, `lo`, `hi` (the lowest and highest id of their entries) and `ids` (the
/// entries' ids, when at most [`EXACT_IDS`]; else NULL). A block may have several rows (days,
/// operations), and the last block of a full answer may have more rows than it lists.
/// Parameters: `$1` schema, `$2` table, `$3` operation (each NULL for any), `$4` the context
/// field's value, `$5` and `$6` the time range's start and end (timestamptz, NULL for
/// unbounded; whole UTC days), `$7` the highest block; each source reads only the ones it
/// holds (the caller binds every one). Entries in a block pass the other filters or not: the
/// caller filters them.
pub(crate) fn blocks_sql(names: &LogNames, counted: Counted) -> String {
    let days = |alias: &str| {
        format!(
            "($5::timestamptz IS NULL OR {alias}.day OPERATOR(pg_catalog.>=) pg_catalog.timezone('UTC', $5::timestamptz)::date)
            AND ($6::timestamptz IS NULL OR {alias}.day OPERATOR(pg_catalog.<=) pg_catalog.timezone('UTC', $6::timestamptz)::date)
            AND {alias}.block OPERATOR(pg_catalog.<=) $7"
        )
    };
    let source = match counted {
        Counted::Tables => format!(
            "{} AS c
          WHERE ($1::text IS NULL OR c.schema_name OPERATOR(pg_catalog.=) $1)
            AND ($2::text IS NULL OR c.table_name OPERATOR(pg_catalog.=) $2)
            AND ($3::text IS NULL OR c.operation OPERATOR(pg_catalog.=) $3)
            AND {}",
            names.counts_table(),
            days("c")
        ),
        Counted::Context(field) => format!(
            "{} AS c
          WHERE c.field OPERATOR(pg_catalog.=) {}
            AND c.value_hash OPERATOR(pg_catalog.=) {}
            AND {}",
            names.context_counts_table(),
            text_literal(field),
            value_hash("$4::text"),
            days("c")
        ),
    };
    format!(
        "SELECT c.block, c.first_id AS lo, c.last_id AS hi, c.ids
           FROM {source}
          ORDER BY c.block DESC
          LIMIT $8"
    )
}

/// The statements of `<log>_redact` erasing a user (the PL/pgSQL variable `user_id`): their
/// context counts become the erasure marker's, as their entries' user id does. It waits for a
/// count running meanwhile (the counts' lock), so no count of theirs lands after it.
pub(crate) fn erase_user_sql(names: &LogNames) -> String {
    let users = names.context_counts_table();
    let field = text_literal(crate::context::USER_ID);
    format!(
        "PERFORM pg_advisory_xact_lock(hashtext({counts_lit}));
        EXECUTE {statement} USING user_id;",
        counts_lit = names.counts_table().literal(),
        statement = text_literal(&format!(
            "WITH gone AS (
                DELETE FROM {users} AS c WHERE c.field = {field} AND c.value_hash = {erased}
                RETURNING c.block, c.day, c.entries, c.first_id, c.last_id, c.ids)
             INSERT INTO {users} AS c (field, value_hash, block, day, entries, first_id, last_id, ids)
             SELECT {field}, {marker}, g.block, g.day, g.entries, g.first_id, g.last_id, g.ids
               FROM gone AS g
             ON CONFLICT (field, value_hash, block, day) DO UPDATE SET {merge}",
            erased = value_hash("$1"),
            marker = value_hash(&text_literal(crate::sql::shape::REDACTED)),
            merge = merge("c")
        ))
    )
}
