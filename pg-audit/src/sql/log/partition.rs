//! Partition maintenance: functions installed beside the log that create partitions ahead,
//! list them, and detach or drop the old ones.
//!
//! They are SQL functions rather than Rust code so that every client (psql, `pg_cron`, the
//! `pg-audit` program, an application) maintains partitions the same way:
//!
//! ```sql
//! SELECT * FROM audit.auditlog_ensure_partitions(3);      -- current period and 3 ahead
//! SELECT * FROM audit.auditlog_partitions();              -- name, range, size
//! SELECT * FROM audit.auditlog_prune_partitions('90 days', drop_partitions => false);
//! ```
//!
//! Periods are aligned in UTC. A partition is named after its first day: `auditlog_p20261101`.

use std::fmt::Write as _;
use std::str::FromStr;

use crate::Error;
use crate::ident::text_literal;
use crate::sql::create_function;
use crate::sql::names::LogNames;
use crate::sql::shape::LOG_COLUMNS;

/// How much time one partition covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PartitionPeriod {
    /// One partition per UTC day.
    Daily,
    /// One partition per ISO week (Monday to Sunday, UTC).
    Weekly,
    /// One partition per calendar month (UTC).
    #[default]
    Monthly,
}

impl PartitionPeriod {
    /// Every period, shortest first.
    pub const ALL: [PartitionPeriod; 3] = [
        PartitionPeriod::Daily,
        PartitionPeriod::Weekly,
        PartitionPeriod::Monthly,
    ];

    /// `daily`, `weekly` or `monthly`.
    pub fn name(self) -> &'static str {
        match self {
            PartitionPeriod::Daily => "daily",
            PartitionPeriod::Weekly => "weekly",
            PartitionPeriod::Monthly => "monthly",
        }
    }

    fn date_trunc_field(self) -> &'static str {
        match self {
            PartitionPeriod::Daily => "day",
            PartitionPeriod::Weekly => "week",
            PartitionPeriod::Monthly => "month",
        }
    }

    fn interval(self) -> &'static str {
        match self {
            PartitionPeriod::Daily => "1 day",
            PartitionPeriod::Weekly => "7 days",
            PartitionPeriod::Monthly => "1 month",
        }
    }
}

impl FromStr for PartitionPeriod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "daily" | "day" => Ok(PartitionPeriod::Daily),
            "weekly" | "week" => Ok(PartitionPeriod::Weekly),
            "monthly" | "month" => Ok(PartitionPeriod::Monthly),
            _ => Err(Error::UnknownPeriod { name: s.to_owned() }),
        }
    }
}

/// What pruning does with a partition past the retention period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Detach it: it leaves the log but stays in the database as a plain table, to archive
    /// (for example with `pg_dump -t`) and drop by hand. Nothing is deleted.
    Detach,
    /// Detach and drop it, and delete the DEFAULT partition's rows older than the cutoff.
    Drop,
}

/// How long maintenance waits for a lock that audited writes would queue behind, per attempt:
/// a write waits at most this long for maintenance.
pub const LOCK_TIMEOUT: &str = "100ms";
/// How long maintenance keeps trying before it gives up, with an error naming the cause.
pub const MAX_WAIT: &str = "10 minutes";

/// `attempt` (PL/pgSQL statements, indented for inside the loop) run in a loop that gives each
/// try a short lock timeout (a subtransaction's rollback undoes it) and, when a try timed out on
/// a lock, gives up past [`MAX_WAIT`] or sleeps (backing off from 0.1 s to 1 s) and tries again;
/// the caller's `lock_timeout` is put back after the try that succeeds. `indent` is the loop's.
/// The function declares `attempt`, `started` and `caller_lock_timeout`.
fn retrying(indent: &str, attempt: &str) -> String {
    let inner = format!("{indent}        ");
    format!(
        "{indent}attempt := 0;
{indent}LOOP
{indent}    BEGIN
{inner}PERFORM pg_catalog.set_config('lock_timeout', '{LOCK_TIMEOUT}', true);
{attempt}
{inner}PERFORM pg_catalog.set_config('lock_timeout', caller_lock_timeout, true);
{inner}EXIT;
{indent}    EXCEPTION WHEN lock_not_available THEN
{inner}attempt := attempt OPERATOR(pg_catalog.+) 1;
{inner}IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) started OPERATOR(pg_catalog.>) interval '{MAX_WAIT}' THEN
{inner}    RAISE EXCEPTION 'pg-audit: the audit log stayed locked by other transactions for {MAX_WAIT}; maintenance gave up rather than block audited writes'
{inner}        USING ERRCODE = 'lock_not_available',
{inner}              HINT = 'Find the long transaction holding it in pg_stat_activity (a report, pg_dump) and run maintenance again when it ends.';
{inner}END IF;
{inner}IF attempt OPERATOR(pg_catalog.=) 1 THEN
{inner}    RAISE NOTICE 'pg-audit: the audit log is held by another transaction; retrying without blocking audited writes';
{inner}END IF;
{inner}PERFORM pg_catalog.pg_sleep(LEAST(0.05 * 2 ^ LEAST(attempt, 5), 1.0));
{indent}    END;
{indent}END LOOP;"
    )
}

/// The maintenance functions' DDL: `<log>_partitions()`, `<log>_ensure_partitions(ahead)` and
/// `<log>_prune_partitions(older_than, drop_partitions, only_partition)`.
pub(crate) fn functions_sql(names: &LogNames, period: PartitionPeriod) -> String {
    let table = names.table();
    let table_lit = table.literal();
    let default_lit = names.default_partition().literal();
    let schema_lit = names.schema().literal();
    let prefix_lit = text_literal(&names.partition_prefix());
    let partitions = names.function("partitions");
    let ensure = names.function("ensure_partitions");
    let prune = names.function("prune_partitions");
    let prunes = names.prunes_table();
    let records = names.records_table();
    // The prune record: which ids went, as runs of consecutive ids (a month is one run or a
    // few), so `verify` tells rows pruned from rows deleted.
    let record = format!(
        "INSERT INTO {prunes} (relation, action, range_start, range_end, row_count, run_starts, run_ends)
                     VALUES (p.partition_name, action, p.range_start, p.range_end, n, starts, ends);"
    );
    let partition_runs = text_literal(&id_runs("%s"));
    let default_runs = text_literal(&format!(
        "WITH gone AS (DELETE FROM %s WHERE changed_at OPERATOR(pg_catalog.<) $1 RETURNING id) {}",
        id_runs("gone")
    ));
    let strip = names.function("strip_grants");
    let field = period.date_trunc_field();
    let step = period.interval();
    let mut sql = String::new();

    let list_body = format!(
        r#"
    SELECT c.oid::regclass::text,
           (pg_catalog.regexp_match(b.bound, 'FROM \(''([^'']*)''\)'))[1]::timestamptz,
           (pg_catalog.regexp_match(b.bound, 'TO \(''([^'']*)''\)'))[1]::timestamptz,
           b.bound = 'DEFAULT',
           pg_catalog.pg_total_relation_size(c.oid)
      FROM pg_catalog.pg_inherits AS i
      JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
     CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
     WHERE i.inhparent = {table_lit}::regclass
     ORDER BY 2 NULLS FIRST, 1
"#
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{partitions}()"),
            "TABLE (partition_name text, range_start timestamptz, range_end timestamptz, is_default boolean, total_bytes bigint)",
            "sql STABLE",
            false,
            &list_body
        )
    );

    // One attempt at making a partition (retried while the log is locked).
    let attach = retrying(
        "            ",
        &format!(
            "                    EXECUTE pg_catalog.format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                                              part_schema, part, {table_lit});
                    EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE changed_at >= $1 AND changed_at < $2', default_part)
                       INTO n USING lo, hi;
                    IF n > 0 OR lo <= pg_catalog.clock_timestamp() THEN
                        -- Rows of this range are in, or may be on their way to, the DEFAULT
                        -- partition. Hold audited writes (they wait, they do not fail) while
                        -- the rows move, so none lands in the DEFAULT partition once the new
                        -- partition covers the range.
                        IF n > 0 THEN
                            RAISE NOTICE 'pg-audit: moving % rows from % into new partition %.%', n, default_part, part_schema, part;
                        END IF;
                        LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE;
                        EXECUTE pg_catalog.format('WITH moved AS (DELETE FROM %s WHERE changed_at >= $1 AND changed_at < $2 RETURNING *) '
                                                  'INSERT INTO %I.%I SELECT * FROM moved', default_part, part_schema, part)
                           USING lo, hi;
                        GET DIAGNOSTICS n = ROW_COUNT;
                    END IF;
                    -- ATTACH rather than CREATE TABLE ... PARTITION OF: it takes only a SHARE
                    -- UPDATE EXCLUSIVE lock on the log, which audited writes never wait for.
                    EXECUTE pg_catalog.format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                                              {table_lit}, part_schema, part, lo, hi);"
        ),
    );
    let ensure_body = format!(
        r#"
DECLARE
    default_part constant text := {default_lit};
    part_schema constant text := {schema_lit};
    prefix constant text := {prefix_lit};
    step constant interval := '{step}';
    started constant timestamptz := pg_catalog.clock_timestamp();
    caller_lock_timeout constant text := pg_catalog.current_setting('lock_timeout');
    lo timestamptz;
    hi timestamptz;
    part text;
    n bigint;
    attempt integer;
BEGIN
    IF ahead IS NULL OR ahead < 0 THEN
        RAISE EXCEPTION 'pg-audit: ahead must be zero or more, not %', ahead;
    END IF;
    -- One maintenance run at a time. This lock does not block audited writes.
    LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE;
    lo := pg_catalog.date_trunc('{field}', pg_catalog.clock_timestamp() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    FOR i IN 0..ahead LOOP
        hi := ((lo AT TIME ZONE 'UTC') + step) AT TIME ZONE 'UTC';
        IF NOT EXISTS (SELECT FROM {partitions}() AS p
                        WHERE NOT p.is_default AND p.range_start < hi AND p.range_end > lo) THEN
            part := prefix || pg_catalog.to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD');
{attach}
            -- Only the owner may write it, whatever the schema's default privileges grant.
            PERFORM {strip}(pg_catalog.format('%I.%I', part_schema, part)::regclass, false);
            partition_name := pg_catalog.format('%I.%I', part_schema, part);
            range_start := lo;
            range_end := hi;
            moved_rows := n;
            RETURN NEXT;
        END IF;
        lo := hi;
    END LOOP;
END
"#
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{ensure}(ahead integer DEFAULT 3)"),
            "TABLE (partition_name text, range_start timestamptz, range_end timestamptz, moved_rows bigint)",
            "plpgsql",
            false,
            &ensure_body
        )
    );

    let strip_body = r#"
DECLARE
    g record;
BEGIN
    FOR g IN SELECT DISTINCT a.grantee, a.privilege_type
               FROM pg_catalog.pg_class AS c
              CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
              WHERE c.oid OPERATOR(pg_catalog.=) rel AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
                AND NOT (keep_select AND a.privilege_type OPERATOR(pg_catalog.=) 'SELECT') LOOP
        EXECUTE pg_catalog.format('REVOKE %s ON TABLE %s FROM %s', g.privilege_type, rel,
                                  CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                       ELSE g.grantee::regrole::text END);
    END LOOP;
END
"#;
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{strip}(rel regclass, keep_select boolean DEFAULT false)"),
            "void",
            "plpgsql",
            false,
            strip_body
        )
    );

    // One attempt at detaching a partition (retried while the log is locked).
    let detach = retrying(
        "        ",
        &format!(
            "                -- DETACH takes an ACCESS EXCLUSIVE lock on the log, which audited writes wait
                -- for: it waits at most lock_timeout, then lets them through and tries again.
                EXECUTE pg_catalog.format('ALTER TABLE %s DETACH PARTITION %s', {table_lit}, p.partition_name);
                EXECUTE pg_catalog.format({partition_runs}, p.partition_name) INTO n, starts, ends;
                action := CASE WHEN drop_partitions THEN 'dropped' ELSE 'detached' END;
                {record}
                IF drop_partitions THEN
                    EXECUTE pg_catalog.format('DROP TABLE %s', p.partition_name);
                END IF;"
        ),
    );
    let prune_body = format!(
        r#"
DECLARE
    default_part constant text := {default_lit};
    started constant timestamptz := pg_catalog.clock_timestamp();
    caller_lock_timeout constant text := pg_catalog.current_setting('lock_timeout');
    cutoff timestamptz;
    p record;
    n bigint;
    starts bigint[];
    ends bigint[];
    attempt integer;
    pruned boolean := false;
    horizon timestamptz;
    default_oldest timestamptz;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'pg-audit: older_than must be a positive interval, not %', older_than;
    END IF;
    cutoff := pg_catalog.clock_timestamp() - older_than;
    LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE;
    FOR p IN SELECT * FROM {partitions}() AS l
              WHERE NOT l.is_default AND l.range_end <= cutoff
                AND (only_partition IS NULL OR l.partition_name OPERATOR(pg_catalog.=) only_partition)
              ORDER BY l.range_start LOOP
{detach}
        partition_name := p.partition_name;
        range_start := p.range_start;
        range_end := p.range_end;
        "rows" := n;
        pruned := true;
        -- The records whose every entry was in this partition (its range holds all of its
        -- rows: a row that fell in the DEFAULT partition keeps a range from being made).
        DELETE FROM {records} AS r
         WHERE r.key IS NOT NULL AND r.first_at OPERATOR(pg_catalog.>=) p.range_start
           AND r.last_at OPERATOR(pg_catalog.<) p.range_end;
        RETURN NEXT;
    END LOOP;
    IF drop_partitions AND only_partition IS NULL THEN
        EXECUTE pg_catalog.format({default_runs}, default_part) USING cutoff INTO n, starts, ends;
        IF n > 0 THEN
            INSERT INTO {prunes} (relation, action, range_start, range_end, row_count, run_starts, run_ends)
                 VALUES (default_part::regclass::text, 'deleted old rows', NULL, cutoff, n, starts, ends);
            partition_name := default_part::regclass::text;
            range_start := NULL;
            range_end := cutoff;
            action := 'deleted old rows';
            "rows" := n;
            RETURN NEXT;
        END IF;
    END IF;
    -- The records whose entries spanned partitions removed: those whose last entry is older
    -- than everything left (the oldest partition left and the DEFAULT partition's oldest row).
    -- The table as of a time takes a forgotten record's row from the table, as a row the log
    -- never saw.
    IF pruned THEN
        SELECT pg_catalog.min(l.range_start) INTO horizon FROM {partitions}() AS l WHERE NOT l.is_default;
        EXECUTE pg_catalog.format('SELECT pg_catalog.min(changed_at) FROM %s', default_part) INTO default_oldest;
        horizon := LEAST(horizon, default_oldest);
        DELETE FROM {records} AS r
         WHERE r.key IS NOT NULL AND (horizon IS NULL OR r.last_at OPERATOR(pg_catalog.<) horizon);
    END IF;
END
"#
    );
    let _ = writeln!(
        sql,
        "{}",
        create_function(
            &format!(
                "{prune}(older_than interval, drop_partitions boolean DEFAULT false, only_partition text DEFAULT NULL)"
            ),
            "TABLE (partition_name text, range_start timestamptz, range_end timestamptz, action text, \"rows\" bigint)",
            "plpgsql",
            false,
            &prune_body
        )
    );
    sql
}

/// A query of how many ids `from` (a relation or a query's name, with a column `id`) holds and
/// their runs of consecutive ids: `n`, `starts`, `ends` (`starts[i]..=ends[i]`, ascending).
fn id_runs(from: &str) -> String {
    format!(
        "SELECT coalesce(pg_catalog.sum(r.hi OPERATOR(pg_catalog.-) r.lo OPERATOR(pg_catalog.+) 1), 0)::bigint,
       coalesce(pg_catalog.array_agg(r.lo ORDER BY r.lo), '{{}}'), coalesce(pg_catalog.array_agg(r.hi ORDER BY r.lo), '{{}}')
  FROM (SELECT pg_catalog.min(s.id) AS lo, pg_catalog.max(s.id) AS hi
          FROM (SELECT i.id, i.id OPERATOR(pg_catalog.-) pg_catalog.row_number() OVER (ORDER BY i.id) AS run FROM {from} AS i) AS s
         GROUP BY s.run) AS r"
    )
}

/// The prune record's table, part of the log's DDL: append-only like the seals (its trigger is
/// made with theirs).
pub(crate) fn prunes_table_sql(names: &LogNames) -> String {
    let prunes = names.prunes_table();
    format!(
        "CREATE TABLE IF NOT EXISTS {prunes} (
    prune_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation text NOT NULL,
    action text NOT NULL,
    range_start timestamptz,
    range_end timestamptz NOT NULL,
    row_count bigint NOT NULL,
    run_starts bigint[] NOT NULL,
    run_ends bigint[] NOT NULL,
    pruned_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    pruned_by text NOT NULL DEFAULT session_user
);
COMMENT ON TABLE {prunes} IS {};
REVOKE ALL ON TABLE {prunes} FROM PUBLIC;
",
        text_literal(
            "pg-audit: partitions detached or dropped and old rows deleted by prune_partitions; the ids as runs run_starts[i]..run_ends[i]"
        )
    )
}

/// [`crate::AuditLog::prunes_sql`].
pub(crate) fn prunes_sql(names: &LogNames) -> String {
    format!(
        "SELECT prune_id, relation, action, range_start::text AS range_start, range_end::text AS range_end,
       row_count, run_starts, run_ends, pruned_at::text AS pruned_at, pruned_by
  FROM {} ORDER BY prune_id",
        names.prunes_table()
    )
}

/// [`crate::AuditLog::partitions_older_than_sql`].
pub(crate) fn partitions_older_than_sql(names: &LogNames) -> String {
    format!(
        "SELECT p.partition_name, p.range_start::text AS range_start, p.range_end::text AS range_end,
       p.total_bytes, n.nspname::text AS schema_name, c.relname::text AS table_name
  FROM {}() AS p
  JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) p.partition_name::pg_catalog.regclass
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE NOT p.is_default
   AND p.range_end OPERATOR(pg_catalog.<=) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) $1::text::interval)
 ORDER BY p.range_start",
        names.function("partitions")
    )
}

/// [`crate::AuditLog::detached_partitions_sql`].
pub(crate) fn detached_partitions_sql(names: &LogNames) -> String {
    let prefix = names.partition_prefix();
    format!(
            "SELECT c.oid::pg_catalog.regclass::text AS partition_name
  FROM pg_catalog.pg_class AS c
 WHERE c.relnamespace OPERATOR(pg_catalog.=) {schema}::pg_catalog.regnamespace
   AND c.relkind OPERATOR(pg_catalog.=) 'r' AND NOT c.relispartition
   AND pg_catalog.left(c.relname, {n}) OPERATOR(pg_catalog.=) {prefix_lit}
   AND pg_catalog.substr(c.relname, {after}) OPERATOR(pg_catalog.~) '^[0-9]{{8}}$'
   AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND NOT a.attisdropped
           AND a.attname OPERATOR(pg_catalog.=) ANY (ARRAY[{columns}]::name[])) OPERATOR(pg_catalog.=) {count}
 ORDER BY c.relname",
            schema = names.schema().literal(),
            n = prefix.chars().count(),
            after = prefix.chars().count() + 1,
            prefix_lit = text_literal(&prefix),
            columns = LOG_COLUMNS
                .iter()
                .map(|c| text_literal(c.name))
                .collect::<Vec<_>>()
                .join(", "),
            count = LOG_COLUMNS.len(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse() {
        assert_eq!("weekly".parse(), Ok(PartitionPeriod::Weekly));
        assert_eq!(
            "yearly".parse::<PartitionPeriod>(),
            Err(Error::UnknownPeriod {
                name: "yearly".into()
            })
        );
    }
}
