//! The table as of a time, rebuilt record by record from the log's records
//! (`<log>_records`, kept by `<log>_count()`), must equal the table rebuilt from every entry
//! of the log — the plain definition below — whatever part of the log is counted, at every
//! time, on histories with key changes, deletes, re-inserts, TRUNCATEs, rows from before
//! auditing, a baseline's snapshots taken midway and statement times out of id order.

use std::time::{Duration, SystemTime};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};
use pg_audit_diesel::log::AuditReader;
use pg_audit_tests::{Rng, TestDb, exec, value};
use pretty_assertions::assert_eq;
use serde_json::Value;

/// The table as of `$1` (microseconds since the epoch) from every entry of the log and the table's own rows: each record's
/// last state at or before the time (none after a later TRUNCATE), else the state before its
/// first entry after it; rows the log never saw from the table; in key order.
const DEFINITION: &str = "
WITH at AS (SELECT timestamptz 'epoch' + $1 * interval '1 microsecond' AS t),
 ev AS (
    SELECT l.record_pk AS k, l.id, l.changed_at,
           CASE WHEN l.operation IN ('UPDATE', 'DELETE') AND l.old_record_pk IS NULL THEN l.old_values
                WHEN l.operation = 'SNAPSHOT' THEN l.new_values END AS before,
           CASE WHEN l.operation IN ('INSERT', 'UPDATE', 'SNAPSHOT') THEN l.new_values END AS after
      FROM audit.auditlog AS l WHERE l.table_name = 't' AND l.record_pk IS NOT NULL
    UNION ALL
    SELECT l.old_record_pk, l.id, l.changed_at, l.old_values, NULL
      FROM audit.auditlog AS l WHERE l.table_name = 't' AND l.old_record_pk IS NOT NULL),
 truncated AS (
    SELECT max(l.id) AS id FROM audit.auditlog AS l
     WHERE l.table_name = 't' AND l.operation = 'TRUNCATE' AND l.changed_at <= (SELECT t FROM at)),
 last_before AS (
    SELECT DISTINCT ON (ev.k) ev.k, ev.id, ev.after AS v FROM ev
     WHERE ev.changed_at <= (SELECT t FROM at) ORDER BY ev.k, ev.id DESC),
 first_after AS (
    SELECT DISTINCT ON (ev.k) ev.k, ev.before AS v FROM ev
     WHERE ev.changed_at > (SELECT t FROM at) AND NOT EXISTS (SELECT FROM last_before AS b WHERE b.k = ev.k)
     ORDER BY ev.k, ev.id)
SELECT s.k::text AS k, s.v::text AS v, s.from_log FROM (
    SELECT b.k, b.v, true AS from_log FROM last_before AS b, truncated AS t
     WHERE t.id IS NULL OR b.id > t.id
    UNION ALL
    SELECT a.k, a.v, true FROM first_after AS a
    UNION ALL
    SELECT jsonb_build_object('id', t.id), to_jsonb(t), false FROM t
     WHERE NOT EXISTS (SELECT FROM ev WHERE ev.k = jsonb_build_object('id', t.id))) AS s
 WHERE s.v IS NOT NULL
 ORDER BY s.k::text COLLATE \"C\"";

#[derive(QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = Text)]
    k: String,
    #[diesel(sql_type = Text)]
    v: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    from_log: bool,
}

/// A time in microseconds since the epoch, exact both ways.
#[derive(QueryableByName)]
struct Time {
    #[diesel(sql_type = BigInt)]
    at: i64,
}

/// Counts up to `max_rows` more entries, waiting out other tests' transactions that hold the
/// horizon back; returns how far the counts go.
fn count(conn: &mut PgConnection, log: &AuditLog, max_rows: i64, want: i64) -> i64 {
    for _ in 0..500 {
        let through = value(
            conn,
            &format!("SELECT through_id FROM ({}) c", log.count_sql(max_rows)),
        )
        .as_i64()
        .unwrap();
        if through >= want {
            return through;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the counts never reached id {want}");
}

/// Every page of the table at `at`, `size` rows a page, as the reader gives them.
fn pages(reader: &AuditReader, conn: &mut PgConnection, at: SystemTime, size: u32) -> Vec<Row> {
    let table = QualifiedName::parse("t").unwrap();
    let mut out: Vec<Row> = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let page = reader
            .table_at(conn, &table, at, after.as_ref(), size)
            .unwrap();
        assert!(page.current_rows);
        let full = page.rows.len() == size as usize;
        after = page.rows.last().map(|r| r.key.clone());
        out.extend(page.rows.into_iter().map(|r| Row {
            k: r.key.to_string(),
            v: r.values.to_string(),
            from_log: r.from_log,
        }));
        if !full {
            return out;
        }
    }
}

/// JSON text as serde writes it, so both sides compare the same way.
fn canonical(rows: Vec<Row>) -> Vec<Row> {
    rows.into_iter()
        .map(|r| Row {
            k: serde_json::from_str::<Value>(&r.k).unwrap().to_string(),
            v: serde_json::from_str::<Value>(&r.v).unwrap().to_string(),
            from_log: r.from_log,
        })
        .collect()
}

#[test]
fn the_table_at_any_time_equals_its_definition_however_much_is_counted() {
    for seed in [1_u64, 2, 3] {
        let db = TestDb::new(&format!("table_at_{seed}"));
        let mut conn = db.conn();
        let log = AuditLog::new();
        exec(&mut conn, &log.create_sql());
        exec(
            &mut conn,
            "CREATE TABLE t (id int PRIMARY KEY, name text);
             INSERT INTO t SELECT g, 'before auditing ' || g FROM generate_series(1, 40, 3) AS g;",
        );
        let spec = TriggerSpec::builder(QualifiedName::parse("public.t").unwrap())
            .build()
            .unwrap();
        exec(&mut conn, &spec.install_sql(&log));
        let mut rng = Rng::new(seed);
        for i in 0..400 {
            let id = 1 + rng.below(120);
            let statement = match rng.below(12) {
                0..=3 => format!(
                    "INSERT INTO t VALUES ({id}, 'n{i}') ON CONFLICT (id) DO UPDATE SET name = 'u{i}'"
                ),
                4..=6 => format!("UPDATE t SET name = 'u{i}' WHERE id = {id}"),
                7 | 8 => format!("DELETE FROM t WHERE id = {id}"),
                // A key change, to a key that may have a history of its own.
                9 | 10 => format!(
                    "UPDATE t SET id = {} WHERE id = {id} AND NOT EXISTS (SELECT FROM t WHERE id = {0})",
                    1 + rng.below(120)
                ),
                _ if rng.below(8) == 0 => "TRUNCATE t".to_owned(),
                // A row written with the triggers off: the log never sees it.
                _ => format!(
                    "SET session_replication_role = replica;
                     INSERT INTO t VALUES ({id}, 'unseen {i}') ON CONFLICT DO NOTHING;
                     RESET session_replication_role;"
                ),
            };
            exec(&mut conn, &statement);
            if i == 200 {
                // A baseline's snapshot of every row, midway through the history.
                diesel::sql_query(log.baseline_batch_sql(&spec, true))
                    .bind::<diesel::sql_types::Nullable<Text>, _>(None::<&str>)
                    .bind::<BigInt, _>(1_000_000)
                    .bind::<Text, _>("{}")
                    .execute(&mut conn)
                    .unwrap();
            }
        }
        // One change a minute, then a few moved out of id order (a long statement's start).
        exec(
            &mut conn,
            &format!(
                "ALTER TABLE audit.auditlog DISABLE TRIGGER USER;
                 UPDATE audit.auditlog SET changed_at = now() - interval '1 day' + id * interval '1 minute';
                 UPDATE audit.auditlog SET changed_at = changed_at - interval '17 minutes' WHERE id % 11 = {};
                 ALTER TABLE audit.auditlog ENABLE TRIGGER USER;",
                seed % 11
            ),
        );
        let last = value(&mut conn, "SELECT max(id) FROM audit.auditlog")
            .as_i64()
            .unwrap();
        let times: Vec<i64> = diesel::sql_query(
            "SELECT (extract(epoch FROM at) * 1000000)::bigint AS at FROM (
             SELECT changed_at + d * interval '30 seconds' AS at
               FROM audit.auditlog, (VALUES (-1), (0), (1)) AS x(d)
              WHERE id % 4 = 0
             UNION ALL SELECT now() - interval '2 days'
             UNION ALL SELECT now() + interval '2 days') AS s",
        )
        .load::<Time>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|t| t.at)
        .collect();
        let time = |micros: i64| SystemTime::UNIX_EPOCH + Duration::from_micros(micros as u64);
        assert!(times.len() > 60, "{}", times.len());
        let reader = AuditReader::new();
        // Nothing counted, part of it, all of it (twice, the second call counting nothing).
        for want in [0, last / 3, 2 * last / 3, last, last] {
            if want > 0 {
                let through = count(&mut conn, &log, want / 2 + 1, want);
                assert!(through >= want);
            }
            for (n, at) in times
                .iter()
                .enumerate()
                .filter(|(n, _)| n % 2 == want as usize % 2)
            {
                let expected: Vec<Row> = diesel::sql_query(DEFINITION)
                    .bind::<BigInt, _>(*at)
                    .load(&mut conn)
                    .unwrap();
                let size = [3, 50][n % 2];
                assert_eq!(
                    pages(&reader, &mut conn, time(*at), size),
                    canonical(expected),
                    "seed {seed}, counted to {want}, time #{n}, pages of {size}"
                );
            }
        }
        // What the records hold: a record per key the log saw, a row per TRUNCATE.
        let keys = value(
            &mut conn,
            "SELECT count(*) FROM audit.auditlog_records WHERE key IS NOT NULL",
        );
        let seen = value(
            &mut conn,
            "SELECT count(DISTINCT k) FROM (SELECT record_pk AS k FROM audit.auditlog WHERE record_pk IS NOT NULL
                                           UNION ALL SELECT old_record_pk FROM audit.auditlog WHERE old_record_pk IS NOT NULL) AS s",
        );
        assert_eq!(keys, seen);
    }
}

/// A log counted before the records existed (an earlier version's): installing this version
/// counts it again from the start, so the records hold every entry and the table as of a time
/// is whole.
#[test]
fn a_log_counted_before_the_records_existed_is_counted_again() {
    let db = TestDb::new("table_at_upgrade");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, "CREATE TABLE t (id int PRIMARY KEY, name text)");
    let spec = TriggerSpec::builder(QualifiedName::parse("public.t").unwrap())
        .build()
        .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    exec(
        &mut conn,
        "INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 30) AS g",
    );
    let last = value(&mut conn, "SELECT max(id) FROM audit.auditlog")
        .as_i64()
        .unwrap();
    count(&mut conn, &log, 1_000, last);
    // What the earlier version left: counts through the end, no records.
    exec(&mut conn, "DROP TABLE audit.auditlog_records");
    exec(&mut conn, &log.create_sql());
    assert_eq!(
        value(
            &mut conn,
            "SELECT through_id FROM audit.auditlog_counts_state"
        ),
        serde_json::json!(0)
    );
    count(&mut conn, &log, 1_000, last);
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog_records"),
        serde_json::json!(30)
    );
    let reader = AuditReader::new();
    let page = reader
        .table_at(
            &mut conn,
            &QualifiedName::parse("t").unwrap(),
            SystemTime::now(),
            None,
            100,
        )
        .unwrap();
    assert_eq!(page.rows.len(), 30);
    assert!(page.rows.iter().all(|r| r.from_log));
    // Installing again changes nothing.
    exec(&mut conn, &log.create_sql());
    assert_eq!(
        value(
            &mut conn,
            "SELECT through_id FROM audit.auditlog_counts_state"
        ),
        serde_json::json!(last)
    );
}

/// Retention and archiving remove partitions whole. A record whose every entry went is
/// forgotten, so its row is read from the table (as one the log never saw) rather than
/// vanishing; one with entries left is read from those. Partitions are removed as
/// `prune --drop` does (all at once) and as `archive` and `prune` with progress do (one at a
/// time, a middle one first); after each step the pages equal the definition over what is left.
#[test]
fn records_whose_entries_were_removed_are_read_from_the_table() {
    for one_at_a_time in [false, true] {
        let db = TestDb::new(&format!("table_at_pruned_{one_at_a_time}"));
        let mut conn = db.conn();
        let log = AuditLog::new();
        exec(&mut conn, &log.create_sql());
        exec(
            &mut conn,
            "CREATE TABLE t (id int PRIMARY KEY, name text);
             CREATE TABLE audit.auditlog_p20240101 PARTITION OF audit.auditlog
                 FOR VALUES FROM ('2024-01-01 00:00+00') TO ('2024-02-01 00:00+00');
             CREATE TABLE audit.auditlog_p20240201 PARTITION OF audit.auditlog
                 FOR VALUES FROM ('2024-02-01 00:00+00') TO ('2024-03-01 00:00+00');
             CREATE TABLE audit.auditlog_p20240301 PARTITION OF audit.auditlog
                 FOR VALUES FROM ('2024-03-01 00:00+00') TO ('2024-04-01 00:00+00');",
        );
        let spec = TriggerSpec::builder(QualifiedName::parse("public.t").unwrap())
            .build()
            .unwrap();
        exec(&mut conn, &spec.install_sql(&log));
        // 1: only in January; 2: only in February; 3: January and February; 4: January and
        // now; 5: March.
        exec(
            &mut conn,
            "INSERT INTO t VALUES (1, 'jan'), (2, 'feb'), (3, 'jan'), (4, 'jan'), (5, 'mar');
             UPDATE t SET name = 'feb' WHERE id = 3;",
        );
        exec(
            &mut conn,
            "ALTER TABLE audit.auditlog DISABLE TRIGGER USER;
             UPDATE audit.auditlog SET changed_at = CASE
                 WHEN record_pk = '{\"id\": 2}' OR (record_pk = '{\"id\": 3}' AND operation = 'UPDATE')
                     THEN timestamptz '2024-02-15 00:00+00'
                 WHEN record_pk = '{\"id\": 5}' THEN timestamptz '2024-03-15 00:00+00'
                 ELSE timestamptz '2024-01-15 00:00+00' END;
             ALTER TABLE audit.auditlog ENABLE TRIGGER USER;",
        );
        exec(&mut conn, "UPDATE t SET name = 'now' WHERE id = 4");
        let last = value(&mut conn, "SELECT max(id) FROM audit.auditlog")
            .as_i64()
            .unwrap();
        count(&mut conn, &log, 1_000, last);
        let remove = |conn: &mut PgConnection, partition: Option<&str>| {
            let sql = match partition {
                Some(p) => log.prune_partition_sql("1 year", pg_audit::Retention::Drop, p),
                None => log.prune_partitions_sql("1 year", pg_audit::Retention::Drop),
            };
            exec(conn, &format!("SELECT * FROM ({}) AS p", sql.unwrap()));
        };
        let steps: &[Option<&str>] = if one_at_a_time {
            &[
                Some("audit.auditlog_p20240201"),
                Some("audit.auditlog_p20240101"),
                Some("audit.auditlog_p20240301"),
            ]
        } else {
            &[None]
        };
        let reader = AuditReader::new();
        let now = SystemTime::now();
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64
        };
        for (n, step) in steps.iter().enumerate() {
            remove(&mut conn, *step);
            for at in [
                now,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_707_000_000),
            ] {
                let expected: Vec<Row> = diesel::sql_query(DEFINITION)
                    .bind::<BigInt, _>(micros(at))
                    .load(&mut conn)
                    .unwrap();
                assert_eq!(
                    pages(&reader, &mut conn, at, 2),
                    canonical(expected),
                    "one at a time: {one_at_a_time}, step {n}, at {at:?}"
                );
            }
        }
        // Everything removed but row 4's last entry: it alone is read from the log.
        let rows: Vec<(String, bool)> = pages(&reader, &mut conn, now, 10)
            .into_iter()
            .map(|r| (r.v, r.from_log))
            .collect();
        assert_eq!(
            rows,
            [
                (r#"{"id":1,"name":"jan"}"#.to_owned(), false),
                (r#"{"id":2,"name":"feb"}"#.to_owned(), false),
                (r#"{"id":3,"name":"feb"}"#.to_owned(), false),
                (r#"{"id":4,"name":"now"}"#.to_owned(), true),
                (r#"{"id":5,"name":"mar"}"#.to_owned(), false),
            ]
        );
    }
}

/// After a finished baseline the log holds every row: a reader that may not read the table
/// still gets the whole table, from the log alone.
#[test]
fn after_a_finished_baseline_the_log_alone_gives_the_whole_table() {
    let db = TestDb::new("table_at_baseline");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE t (id int PRIMARY KEY, name text);
         INSERT INTO t SELECT g, 'before auditing ' || g FROM generate_series(1, 30) AS g;",
    );
    let spec = TriggerSpec::builder(QualifiedName::parse("public.t").unwrap())
        .build()
        .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    let roles = pg_audit_tests::Roles::new("baseline", &["reader"]);
    let role = roles.name("reader");
    exec(
        &mut conn,
        &log.grant_read_sql(&pg_audit::Ident::new(role.trim_matches('"')).unwrap()),
    );
    // The reader may read the log, not the table.
    let mut as_reader = db.conn();
    exec(&mut as_reader, &format!("SET ROLE {role}"));
    let reader = AuditReader::new();
    let table = QualifiedName::parse("t").unwrap();
    let before = reader
        .table_at(&mut as_reader, &table, SystemTime::now(), None, 100)
        .unwrap();
    assert!(!before.current_rows);
    assert!(before.rows.is_empty());
    // The baseline, as `pg-audit baseline` takes it: begun, one batch, recorded finished.
    let (schema, name) = ("public", "t");
    diesel::sql_query(log.baseline_begin_sql(false))
        .bind::<Text, _>(schema)
        .bind::<Text, _>(name)
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(log.baseline_batch_sql(&spec, true))
        .bind::<diesel::sql_types::Nullable<Text>, _>(None::<&str>)
        .bind::<BigInt, _>(1_000)
        .bind::<Text, _>("{}")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(log.baseline_step_sql())
        .bind::<Text, _>(schema)
        .bind::<Text, _>(name)
        .bind::<diesel::sql_types::Nullable<Text>, _>(Some(r#"{"id": 30}"#))
        .bind::<BigInt, _>(30)
        .bind::<diesel::sql_types::Bool, _>(true)
        .execute(&mut conn)
        .unwrap();
    exec(&mut conn, "UPDATE t SET name = 'changed' WHERE id = 7");
    let page = reader
        .table_at(&mut as_reader, &table, SystemTime::now(), None, 100)
        .unwrap();
    assert!(page.current_rows);
    assert_eq!(page.rows.len(), 30);
    assert!(page.rows.iter().all(|r| r.from_log));
    let one = page.rows.iter().find(|r| r.key["id"] == 1).unwrap();
    assert_eq!(one.values["name"], "before auditing 1");
    let seven = page.rows.iter().find(|r| r.key["id"] == 7).unwrap();
    assert_eq!(seven.values["name"], "changed");
    // A row's state before its snapshot is the snapshot's: the log saw no change of it.
    let long_ago = SystemTime::now() - Duration::from_secs(86_400);
    let state = reader
        .state_of_at(
            &mut as_reader,
            &table,
            &serde_json::json!({"id": 3}),
            long_ago,
        )
        .unwrap();
    assert_eq!(state.unwrap()["name"], "before auditing 3");
    // Blame names the snapshot for columns no entry changed since.
    let blame = reader
        .blame_of(&mut as_reader, &table, &serde_json::json!({"id": 7}))
        .unwrap();
    let by_column = |c: &str| {
        blame
            .iter()
            .find(|b| b.column == c)
            .unwrap()
            .entry
            .operation
    };
    assert_eq!(by_column("name"), pg_audit::Operation::Update);
    assert_eq!(by_column("id"), pg_audit::Operation::Snapshot);
}
