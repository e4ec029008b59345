//! The log's counts (`<log>_count()`): what the admin's chart and the activity's filters read
//! instead of walking the log. Every listing answered from them must equal the listing the
//! log itself gives, whatever part of the log is counted, across id blocks, on a real server.

use std::time::{Duration, SystemTime};

use diesel::prelude::*;
use pg_audit::sql::counts::BLOCK_IDS;
use pg_audit::{AuditLog, Operation, QualifiedName, TriggerSpec};
use pg_audit_diesel::log::{Activity, AuditReader, Page, TimeRange};
use pg_audit_tests::{Rng, TestDb, exec, rows, value};
use pretty_assertions::assert_eq;
use serde_json::json;

/// A log, two audited tables, and `n` changes by a handful of users spread over id blocks
/// (the sequence jumps ahead now and then, as a busy log's ids would) and over days.
fn setup(hint: &str, n: usize) -> (TestDb, PgConnection, AuditLog) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v int);",
    );
    for t in ["public.a", "public.b"] {
        let spec = TriggerSpec::builder(QualifiedName::parse(t).unwrap())
            .build()
            .unwrap();
        exec(&mut conn, &spec.install_sql(&log));
    }
    // A bulk statement first: 200 entries of one table and operation in one block, more
    // than a count row lists by id.
    exec(
        &mut conn,
        "INSERT INTO a SELECT g, 0 FROM generate_series(100, 299) AS g",
    );
    let mut rng = Rng::new(7);
    for i in 0..n {
        if rng.below(10) == 0 {
            exec(
                &mut conn,
                &format!(
                    "SELECT setval(pg_get_serial_sequence('audit.auditlog', 'id'), nextval(pg_get_serial_sequence('audit.auditlog', 'id')) + {})",
                    rng.below(3) as i64 * BLOCK_IDS
                ),
            );
        }
        // "rare" writes one change in twenty; the empty name writes with no user id.
        let user = match rng.below(20) {
            0 => "rare",
            k if k % 3 == 0 => "",
            k if k % 2 == 0 => "ann",
            _ => "bob",
        };
        let table = if rng.below(4) == 0 { "b" } else { "a" };
        let id = rng.below(30);
        let statement = match rng.below(3) {
            0 => format!(
                "INSERT INTO {table} VALUES ({id}, {i}) ON CONFLICT (id) DO UPDATE SET v = {i}"
            ),
            1 => format!("UPDATE {table} SET v = {i} WHERE id = {id}"),
            _ => format!("DELETE FROM {table} WHERE id = {id}"),
        };
        let context = if user.is_empty() {
            String::new()
        } else {
            format!(
                "SET LOCAL pg_audit.context = '{{\"user_id\": \"{user}\", \"request_id\": \"r{}\"}}';",
                i % 37
            )
        };
        exec(&mut conn, &format!("BEGIN; {context} {statement}; COMMIT;"));
    }
    // Spread over the last few days (the log is the test's own: its owner may).
    exec(
        &mut conn,
        "ALTER TABLE audit.auditlog DISABLE TRIGGER USER;
         UPDATE audit.auditlog SET changed_at = changed_at - (id % 4) * interval '1 day';
         ALTER TABLE audit.auditlog ENABLE TRIGGER USER;",
    );
    (db, conn, log)
}

/// Counts up to `max_rows` more entries; returns `through_id`. A call that sees other
/// transactions running (other tests share the server) counts only up to what the previous
/// call saw, so this calls again until the count moves (or a few times, for a test that
/// expects it not to).
fn count(conn: &mut PgConnection, log: &AuditLog, max_rows: i64) -> i64 {
    let through = |conn: &mut PgConnection| {
        value(
            conn,
            &format!("SELECT through_id FROM ({}) c", log.count_sql(max_rows)),
        )
        .as_i64()
        .unwrap()
    };
    let before = through(conn);
    let mut now = before;
    for _ in 0..50 {
        if now != before {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        now = through(conn);
    }
    now
}

/// The ids the activity lists for `filter`, every page of `size` followed.
fn listed(conn: &mut PgConnection, filter: &Activity, size: u32) -> Vec<i64> {
    let reader = AuditReader::new();
    let mut out = Vec::new();
    let mut page = Page::first(size);
    loop {
        let entries = reader.activity(conn, filter, page).unwrap();
        out.extend(entries.iter().map(|e| e.id));
        match entries.last() {
            Some(last) if entries.len() == size as usize => {
                page = Page {
                    limit: size,
                    before: Some(last.id),
                }
            }
            _ => return out,
        }
    }
}

/// The ids the log itself holds for `filter` (the filters as plain SQL), newest first.
fn expected(conn: &mut PgConnection, filter: &Activity) -> Vec<i64> {
    let mut clauses = vec!["true".to_owned()];
    if let Some(t) = &filter.table {
        clauses.push(format!("table_name = '{t}'"));
    }
    if let Some(o) = filter.operation {
        clauses.push(format!("operation = '{}'", o.keyword()));
    }
    if let Some(u) = &filter.user_id {
        clauses.push(format!("context->>'user_id' = '{u}'"));
    }
    if let Some(r) = &filter.request_id {
        clauses.push(format!("context->>'request_id' = '{r}'"));
    }
    if filter.range.from.is_some() {
        clauses.push("changed_at >= now() - interval '1 day 12 hours'".to_owned());
    }
    rows(
        conn,
        &format!(
            "SELECT id FROM audit.auditlog WHERE {} ORDER BY id DESC",
            clauses.join(" AND ")
        ),
    )
    .iter()
    .map(|r| r["id"].as_i64().unwrap())
    .collect()
}

fn filters() -> Vec<Activity> {
    let since = SystemTime::now() - Duration::from_secs(36 * 3600);
    let mut out = Vec::new();
    for table in [None, Some("a"), Some("b")] {
        for operation in [None, Some(Operation::Delete), Some(Operation::Truncate)] {
            for user in [None, Some("ann"), Some("rare"), Some("nobody")] {
                for request in [None, Some("r3"), Some("r-none")] {
                    for from in [None, Some(since)] {
                        let filter = Activity {
                            table: table.map(str::to_owned),
                            operation,
                            user_id: user.map(str::to_owned),
                            request_id: request.map(str::to_owned),
                            range: TimeRange { from, until: None },
                            ..Activity::default()
                        };
                        if filter != Activity::default() {
                            out.push(filter);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Whatever part of the log is counted — none, part, all — every filter lists exactly the
/// entries the log holds, newest first, each once across pages.
#[test]
fn filtered_listings_equal_the_log_however_far_it_is_counted() {
    let (_db, mut conn, log) = setup("counts_listings", 400);
    let total = value(&mut conn, "SELECT max(id) FROM audit.auditlog")
        .as_i64()
        .unwrap();
    assert!(
        total > 4 * BLOCK_IDS,
        "the entries span several blocks ({total})"
    );
    let mut checked = 0;
    for max_rows in [0, 150, total] {
        let through = if max_rows == 0 {
            0
        } else {
            count(&mut conn, &log, max_rows)
        };
        assert!(through <= total);
        for filter in filters() {
            let want = expected(&mut conn, &filter);
            for size in [7, 50] {
                assert_eq!(
                    listed(&mut conn, &filter, size),
                    want,
                    "{filter:?}, pages of {size}, counted through {through}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100);
    // A user's and a request's whole listings, oldest first, read the same way.
    let reader = AuditReader::new();
    for user in ["ann", "rare", "nobody"] {
        let filter = Activity {
            user_id: Some(user.to_owned()),
            ..Activity::default()
        };
        let mut want = expected(&mut conn, &filter);
        want.reverse();
        let got: Vec<i64> = reader
            .by_user(&mut conn, user, TimeRange::default())
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, want, "{user}");
    }
    for request in ["r3", "r-none"] {
        let filter = Activity {
            request_id: Some(request.to_owned()),
            ..Activity::default()
        };
        let mut want = expected(&mut conn, &filter);
        want.reverse();
        let got: Vec<i64> = reader
            .request(&mut conn, request, TimeRange::default())
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, want, "{request}");
    }
    // Both ways of reading a block were taken: by its entries' ids, and walked.
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FILTER (WHERE ids IS NULL) > 0 AND count(*) FILTER (WHERE ids IS NOT NULL) > 0
               FROM audit.auditlog_counts"
        ),
        json!(true)
    );
    // Counted to the end: the counts hold every entry.
    assert_eq!(
        value(
            &mut conn,
            "SELECT sum(entries)::bigint FROM audit.auditlog_counts"
        ),
        value(&mut conn, "SELECT count(*) FROM audit.auditlog")
    );
}

/// The admin's chart reads per-day counts; the counted days plus the uncounted tail equal the
/// log's own per-day counts.
#[test]
fn days_from_the_counts_and_the_tail_equal_the_log() {
    let (_db, mut conn, log) = setup("counts_days", 120);
    count(&mut conn, &log, 60);
    exec(&mut conn, "INSERT INTO a VALUES (1000, 1), (1001, 2)");
    let days = |conn: &mut PgConnection| {
        rows(
            conn,
            &log.days_sql()
                .replace("$1", "'public'")
                .replace("$2", "'a'")
                .replace("$3", "29"),
        )
    };
    let want = rows(
        &mut conn,
        "SELECT date_trunc('day', changed_at, 'UTC') AS day, count(*) AS changes FROM audit.auditlog
          WHERE table_name = 'a' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(days(&mut conn), want);
    let tables = |conn: &mut PgConnection| {
        rows(
            conn,
            &format!(
                "SELECT * FROM ({}) t ORDER BY table_name",
                log.tables_days_sql().replace("$1", "29")
            ),
        )
    };
    let want_tables = rows(
        &mut conn,
        "SELECT schema_name, table_name, count(*) AS changes FROM audit.auditlog
          GROUP BY 1, 2 ORDER BY table_name",
    );
    assert_eq!(tables(&mut conn), want_tables);
    count(&mut conn, &log, 1_000_000);
    assert_eq!(days(&mut conn), want);
    assert_eq!(tables(&mut conn), want_tables);
}

/// Counting and sealing never pass a transaction still writing — also when it is the newest
/// transaction, which a snapshot's list of running transactions leaves out: its entries are
/// counted and sealed once it ends, never skipped.
#[test]
fn counting_and_sealing_stop_at_a_transaction_still_writing() {
    for committed_after in [false, true] {
        let (db, mut conn, log) = setup(&format!("counts_horizon_{committed_after}"), 5);
        let mut open = db.conn();
        exec(
            &mut open,
            "BEGIN; SET LOCAL pg_audit.context = '{\"user_id\": \"late\"}'; INSERT INTO a VALUES (500, 1);",
        );
        let in_flight = value(&mut open, "SELECT max(id) FROM audit.auditlog")
            .as_i64()
            .unwrap();
        if committed_after {
            // A writer that began later and committed: the open one is no longer the newest.
            exec(&mut conn, "INSERT INTO a VALUES (501, 1)");
        }
        let sealed_through = |conn: &mut PgConnection| {
            exec(conn, "SELECT * FROM audit.auditlog_seal()");
            value(
                conn,
                "SELECT coalesce(max(last_id), 0) FROM audit.auditlog_seals",
            )
            .as_i64()
            .unwrap()
        };
        for _ in 0..2 {
            let through = count(&mut conn, &log, 1_000_000);
            assert!(through < in_flight, "{through} < {in_flight}");
            let sealed = sealed_through(&mut conn);
            assert!(sealed < in_flight, "sealed {sealed} < {in_flight}");
        }
        exec(&mut open, "COMMIT");
        // Until both reach the end: other tests' transactions on the shared server hold them
        // back a while.
        let last = value(&mut conn, "SELECT max(id) FROM audit.auditlog")
            .as_i64()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while count(&mut conn, &log, 1_000_000) < last || sealed_through(&mut conn) < last {
            assert!(
                std::time::Instant::now() < deadline,
                "never counted or sealed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            value(
                &mut conn,
                "SELECT sum(entries)::bigint FROM audit.auditlog_counts"
            ),
            value(&mut conn, "SELECT count(*) FROM audit.auditlog")
        );
        // Every seal holds every row of its range: none was inserted after it.
        assert_eq!(
            value(
                &mut conn,
                "SELECT bool_and(s.row_count = (SELECT count(*) FROM audit.auditlog AS l
                                               WHERE l.id BETWEEN s.first_id AND s.last_id))
                      AND max(s.last_id) >= (SELECT max(id) FROM audit.auditlog)
                   FROM audit.auditlog_seals AS s"
            ),
            json!(true)
        );
        let late = Activity {
            user_id: Some("late".into()),
            ..Activity::default()
        };
        assert_eq!(listed(&mut conn, &late, 50), [in_flight]);
        assert_eq!(expected(&mut conn, &late), [in_flight]);
    }
}

/// At REPEATABLE READ a count would pass over rows committed while it starts: it is refused,
/// naming the level to use.
#[test]
fn counting_refuses_repeatable_read() {
    let (_db, mut conn, _log) = setup("counts_isolation", 3);
    let e = pg_audit_tests::exec_err(
        &mut conn,
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM audit.auditlog_count();",
    );
    assert!(
        e.contains("sealing and counting run at READ COMMITTED, not repeatable read"),
        "{e}"
    );
}

/// Erasing a user erases their counts — also ones a count still running is writing (the
/// erasure waits for it) — and moves them to the erasure marker's, as the entries' user id
/// becomes it: the counts never keep an erased id, and the marker's listing stays exact.
#[test]
fn erasing_a_user_erases_their_counts() {
    let (db, mut conn, log) = setup("counts_erase", 60);
    count(&mut conn, &log, 1_000_000);
    exec(
        &mut conn,
        "BEGIN; SET LOCAL pg_audit.context = '{\"user_id\": \"ann\"}'; INSERT INTO b VALUES (900, 1); COMMIT;",
    );
    // A count of ann's newest entry, not committed yet, while the erasure runs.
    let mut counter = db.conn();
    exec(&mut counter, "BEGIN");
    let mut counted = 0;
    for _ in 0..50 {
        counted = rows(&mut counter, &log.count_sql(1_000_000)).len();
        if value(
            &mut counter,
            "SELECT max(through_id) FROM audit.auditlog_counts_state",
        ) == value(&mut counter, "SELECT max(id) FROM audit.auditlog")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counted, 1);
    let held = |conn: &mut PgConnection| {
        value(
            conn,
            "SELECT count(*) FROM audit.auditlog_context_counts WHERE field = 'user_id' AND value_hash = hashtextextended('ann', 0)",
        )
    };
    let url = db.url().to_owned();
    let insert = log
        .insert_redaction_sql()
        .replace("$1", "'a request'")
        .replace("$2", "NULL")
        .replace("$3", "NULL")
        .replace("$4::text::jsonb", "NULL::jsonb")
        .replace("$5::text[]", "NULL::text[]")
        .replace("$6", "'context user_id'");
    let redact = log
        .redact_sql("audit.auditlog")
        .replace(
            "$1",
            "(SELECT max(redaction_id) FROM audit.auditlog_redactions)",
        )
        .replace("$2", "NULL")
        .replace("$3", "NULL")
        .replace("$4::text::jsonb", "NULL::jsonb")
        .replace("$5::text[]", "NULL::text[]")
        .replace("$6", "'ann'");
    let eraser = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        exec(&mut conn, &format!("BEGIN; {insert}; {redact}; COMMIT;"));
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!eraser.is_finished(), "the erasure waits for the count");
    exec(&mut counter, "COMMIT");
    eraser.join().unwrap();
    assert_eq!(held(&mut conn), json!(0));
    // The entries now carry the marker, and so do their counts.
    let marker = Activity {
        user_id: Some("[redacted]".into()),
        ..Activity::default()
    };
    let want = expected(&mut conn, &marker);
    assert!(want.len() >= 2, "{want:?}");
    assert_eq!(listed(&mut conn, &marker, 1), want);
}
