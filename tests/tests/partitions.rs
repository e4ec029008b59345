//! The log's partitions against a real server: created ahead, idempotent, rows moved out of the
//! DEFAULT partition without loss, retention.

use diesel::pg::PgConnection;
use pg_audit::{AuditLog, PartitionPeriod, Retention};
use pg_audit_tests::{TestDb, drop_current_partition, exec, rows, value};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

fn partitions(conn: &mut PgConnection, log: &AuditLog) -> Vec<Value> {
    rows(
        conn,
        &format!(
            "SELECT partition_name, is_default,
                    to_char(range_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS from,
                    to_char(range_end AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS to
               FROM ({}) AS p",
            log.list_partitions_sql()
        ),
    )
}

/// Inserts `n` log rows stamped `at` (an SQL timestamptz expression), as a maintenance test
/// would find them.
fn insert_rows_at(conn: &mut PgConnection, n: u32, at: &str) {
    exec(
        conn,
        &format!(
            "INSERT INTO audit.auditlog (changed_at, operation, schema_name, table_name, record_pk)
             SELECT {at}, 'INSERT', 'public', 't', jsonb_build_object('id', g)
               FROM generate_series(1, {n}) AS g"
        ),
    );
}

#[test]
fn monthly_partitions_are_created_ahead_and_idempotently() {
    let db = TestDb::new("partitions_ahead");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    let expected = value(
        &mut conn,
        "SELECT jsonb_agg(to_char(m, 'YYYY-MM-DD') ORDER BY m) FROM generate_series(
             date_trunc('month', now() AT TIME ZONE 'UTC'),
             date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months', interval '1 month') AS m",
    );
    let listed = partitions(&mut conn, &log);
    assert_eq!(
        listed[0],
        json!({"partition_name": "audit.auditlog_default", "is_default": true, "from": null, "to": null})
    );
    let starts: Vec<Value> = listed[1..].iter().map(|p| p["from"].clone()).collect();
    assert_eq!(Value::Array(starts), expected);
    for p in &listed[1..] {
        let from = p["from"].as_str().unwrap().replace('-', "");
        assert_eq!(
            p["partition_name"],
            json!(format!("audit.auditlog_p{from}"))
        );
    }
    // Again: nothing new, nothing fails.
    exec(&mut conn, &log.create_sql());
    let created = rows(&mut conn, &log.ensure_partitions_sql(3));
    assert_eq!(created, Vec::<Value>::new());
    assert_eq!(partitions(&mut conn, &log), listed);
    // Further ahead adds only the missing ones.
    let created = rows(&mut conn, &log.ensure_partitions_sql(5));
    assert_eq!(created.len(), 2);
}

#[test]
fn daily_and_weekly_periods() {
    let db = TestDb::new("partitions_periods");
    let mut conn = db.conn();
    for (name, period, days) in [
        ("daily_log", PartitionPeriod::Daily, 1),
        ("weekly_log", PartitionPeriod::Weekly, 7),
    ] {
        let log = AuditLog::named("audit", name)
            .unwrap()
            .period(period)
            .premake(2);
        exec(&mut conn, &log.create_sql());
        let spans = rows(
            &mut conn,
            &format!(
                "SELECT extract(epoch FROM range_end - range_start) / 86400 AS days,
                        extract(isodow FROM range_start AT TIME ZONE 'UTC') AS dow
                   FROM ({}) p WHERE NOT is_default",
                log.list_partitions_sql()
            ),
        );
        assert_eq!(spans.len(), 3, "{name}");
        for span in spans {
            assert_eq!(span["days"].as_f64(), Some(f64::from(days)), "{name}");
            if period == PartitionPeriod::Weekly {
                assert_eq!(span["dow"].as_f64(), Some(1.0), "weeks start on Monday");
            }
        }
    }
}

#[test]
fn rows_in_the_default_partition_move_into_a_new_partition() {
    let db = TestDb::new("partitions_move");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    // Six months ahead has no partition yet, so these land in DEFAULT.
    let in_six_months = "date_trunc('month', now()) + interval '6 months 3 days'";
    insert_rows_at(&mut conn, 250, in_six_months);
    insert_rows_at(&mut conn, 10, "now() + interval '20 years'");
    let in_default = value(&mut conn, "SELECT count(*) FROM audit.auditlog_default");
    assert_eq!(in_default, json!(260));
    let ids_before = value(
        &mut conn,
        "SELECT jsonb_agg(id ORDER BY id) FROM audit.auditlog",
    );

    let created = rows(&mut conn, &log.ensure_partitions_sql(8));
    let moved: i64 = created
        .iter()
        .map(|p| p["moved_rows"].as_i64().unwrap())
        .sum();
    assert_eq!(created.len(), 5);
    assert_eq!(moved, 250);
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog_default"),
        json!(10)
    );
    // Nothing lost, nothing duplicated, and the rows are where the range says.
    assert_eq!(
        value(
            &mut conn,
            "SELECT jsonb_agg(id ORDER BY id) FROM audit.auditlog"
        ),
        ids_before
    );
    let misplaced = value(
        &mut conn,
        "SELECT count(*) FROM audit.auditlog a
           JOIN pg_class c ON c.oid = a.tableoid
          WHERE c.relname <> 'auditlog_default'
            AND c.relname <> 'auditlog_p' || to_char(date_trunc('month', a.changed_at AT TIME ZONE 'UTC'), 'YYYYMMDD')",
    );
    assert_eq!(misplaced, json!(0));
    // The new partition has the log's indexes (record key, old record key, id, time).
    let indexes = value(
        &mut conn,
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
          WHERE c.relname = (SELECT relname FROM pg_class p JOIN audit.auditlog a ON a.tableoid = p.oid
                              WHERE a.changed_at > now() + interval '5 months' AND a.changed_at < now() + interval '1 year' LIMIT 1)",
    );
    assert_eq!(indexes, json!(4));
}

#[test]
fn missing_current_partition_is_created_over_a_non_empty_default() {
    let db = TestDb::new("partitions_current");
    let mut conn = db.conn();
    let log = AuditLog::new().premake(0);
    exec(&mut conn, &log.create_sql());
    // Lose the current partition: its rows would go to DEFAULT.
    drop_current_partition(&mut conn, &log);
    insert_rows_at(&mut conn, 100, "now()");
    let created = rows(&mut conn, &log.ensure_partitions_sql(0));
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["moved_rows"], json!(100));
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog_default"),
        json!(0)
    );
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(100)
    );
}

#[test]
fn retention_detaches_or_drops_old_partitions() {
    let db = TestDb::new("partitions_retention");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    // Two old partitions, as a log running for years would have.
    exec(
        &mut conn,
        "CREATE TABLE audit.auditlog_p20200101 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-01-01 UTC') TO ('2020-02-01 UTC');
         CREATE TABLE audit.auditlog_p20200201 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-02-01 UTC') TO ('2020-03-01 UTC');",
    );
    insert_rows_at(&mut conn, 5, "'2020-01-15 UTC'");
    insert_rows_at(&mut conn, 7, "'2020-02-15 UTC'");
    insert_rows_at(&mut conn, 3, "'2019-06-01 UTC'"); // in DEFAULT
    insert_rows_at(&mut conn, 2, "now()");

    let detached = rows(
        &mut conn,
        &log.prune_partitions_sql("1 year", Retention::Detach)
            .unwrap(),
    );
    let summary: Vec<Value> = detached
        .iter()
        .map(|r| json!([r["partition_name"], r["action"], r["rows"]]))
        .collect();
    assert_eq!(
        summary,
        [
            json!(["audit.auditlog_p20200101", "detached", 5]),
            json!(["audit.auditlog_p20200201", "detached", 7])
        ]
    );
    // Detached tables keep their rows; the DEFAULT partition keeps its old rows.
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog_p20200101"),
        json!(5)
    );
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(5)
    );

    exec(
        &mut conn,
        "CREATE TABLE audit.auditlog_p20200301 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-03-01 UTC') TO ('2020-04-01 UTC');",
    );
    insert_rows_at(&mut conn, 4, "'2020-03-15 UTC'");
    let dropped = rows(
        &mut conn,
        &log.prune_partitions_sql("1 year", Retention::Drop).unwrap(),
    );
    let summary: Vec<Value> = dropped
        .iter()
        .map(|r| json!([r["partition_name"], r["action"], r["rows"]]))
        .collect();
    assert_eq!(
        summary,
        [
            json!(["audit.auditlog_p20200301", "dropped", 4]),
            json!(["audit.auditlog_default", "deleted old rows", 3])
        ]
    );
    assert_eq!(
        value(
            &mut conn,
            "SELECT to_regclass('audit.auditlog_p20200301') IS NULL"
        ),
        json!(true)
    );
    // Recent rows and current partitions are untouched.
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(2)
    );
    let current = value(
        &mut conn,
        &format!(
            "SELECT count(*) FROM ({}) p WHERE NOT is_default",
            log.list_partitions_sql()
        ),
    );
    assert_eq!(current, json!(4));
    // A bad interval is the server's clear error, not an injection.
    let e = pg_audit_tests::exec_err(
        &mut conn,
        &log.prune_partitions_sql("-1 day", Retention::Drop).unwrap(),
    );
    assert!(e.contains("older_than must be a positive interval"), "{e}");
}
