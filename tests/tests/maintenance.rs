//! Partition maintenance while audited writes go on: creating partitions over a DEFAULT
//! partition that is filling up, and retention, neither fail a write nor lose or duplicate a
//! row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::Integer;
use pg_audit::{AuditLog, QualifiedName, Retention, TriggerSpec};
use pg_audit_tests::{TestDb, drop_current_partition, exec, rows, value};
use serde_json::json;

#[test]
fn partitions_are_created_and_pruned_while_writes_continue() {
    let db = TestDb::new("maint_concurrent");
    let mut conn = db.conn();
    let log = AuditLog::new().premake(0);
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, "CREATE TABLE events (id int PRIMARY KEY)");
    exec(
        &mut conn,
        &TriggerSpec::builder(QualifiedName::parse("public.events").unwrap())
            .build()
            .unwrap()
            .install_sql(&log),
    );
    // Lose the current partition, so writes land in DEFAULT until maintenance runs; and keep an
    // old partition for retention to remove.
    drop_current_partition(&mut conn, &log);
    exec(
        &mut conn,
        "CREATE TABLE audit.auditlog_p20200101 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-01-01 UTC') TO ('2020-02-01 UTC');",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writers = writers(db.url(), &stop, None);

    std::thread::sleep(Duration::from_millis(700));
    let created = rows(&mut conn, &log.ensure_partitions_sql(2));
    assert_eq!(created.len(), 3, "{created:?}");
    assert!(
        created[0]["moved_rows"].as_i64().unwrap() > 0,
        "rows were moved out of DEFAULT: {created:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let pruned = rows(
        &mut conn,
        &log.prune_partitions_sql("1 year", Retention::Drop).unwrap(),
    );
    assert_eq!(
        pruned[0]["partition_name"],
        json!("audit.auditlog_p20200101")
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let written: i32 = writers.into_iter().map(|w| w.join().expect("writer")).sum();

    assert!(written > 100, "writes went on ({written})");
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM events"),
        json!(written)
    );
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(written)
    );
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(DISTINCT record_pk) FROM audit.auditlog"
        ),
        json!(written)
    );
    // Nothing of the current period is left behind in DEFAULT.
    let stranded = value(
        &mut conn,
        "SELECT count(*) FROM audit.auditlog_default WHERE changed_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    );
    assert_eq!(stranded, json!(0));
}

/// Three writers inserting into `events` until `until` is set, each with `statement_timeout`
/// when given (and then pausing 5 ms between writes); returns how many rows each wrote. A
/// failed write panics its writer.
fn writers(
    url: &str,
    until: &Arc<AtomicBool>,
    statement_timeout: Option<&str>,
) -> Vec<std::thread::JoinHandle<i32>> {
    (0..3)
        .map(|t| {
            let (url, stop) = (url.to_owned(), Arc::clone(until));
            let statement_timeout = statement_timeout.map(str::to_owned);
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).expect("connect");
                if let Some(timeout) = &statement_timeout {
                    exec(&mut conn, &format!("SET statement_timeout = '{timeout}'"));
                }
                let mut written = 0;
                while !stop.load(Ordering::Relaxed) {
                    diesel::sql_query("INSERT INTO events VALUES ($1)")
                        .bind::<Integer, _>(t * 1_000_000 + written)
                        .execute(&mut conn)
                        .unwrap_or_else(|e| {
                            panic!("an audited write failed during maintenance: {e}")
                        });
                    written += 1;
                    if statement_timeout.is_some() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                written
            })
        })
        .collect()
}

#[test]
fn maintenance_waiting_on_a_long_reader_never_stalls_writes() {
    let db = TestDb::new("maint_long_reader");
    let mut conn = db.conn();
    let log = AuditLog::new().premake(0);
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, "CREATE TABLE events (id int PRIMARY KEY)");
    exec(
        &mut conn,
        &TriggerSpec::builder(QualifiedName::parse("public.events").unwrap())
            .build()
            .unwrap()
            .install_sql(&log),
    );
    drop_current_partition(&mut conn, &log);
    exec(
        &mut conn,
        "CREATE TABLE audit.auditlog_p20200101 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-01-01 UTC') TO ('2020-02-01 UTC');",
    );
    // A long report holds the log (and every partition) open.
    let mut reader = db.conn();
    exec(&mut reader, "BEGIN; SELECT count(*) FROM audit.auditlog;");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = writers(db.url(), &stop, Some("1s"));
    std::thread::sleep(Duration::from_millis(300));
    // Maintenance runs meanwhile: it must create the current period's partition (moving rows
    // out of DEFAULT) and detach an old one, both of which need the reader gone.
    let maintenance = {
        let (url, log) = (db.url().to_owned(), log.clone());
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).expect("connect");
            let created = rows(&mut conn, &log.ensure_partitions_sql(1));
            let pruned = rows(
                &mut conn,
                &log.prune_partitions_sql("1 year", Retention::Drop).unwrap(),
            );
            (created, pruned)
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !maintenance.is_finished(),
        "maintenance waits for the reader"
    );
    exec(&mut reader, "COMMIT");
    let (created, pruned) = maintenance.join().expect("maintenance completes");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let written: i32 = writers
        .into_iter()
        .map(|w| w.join().expect("no write failed"))
        .sum();

    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created[0]["moved_rows"].as_i64().unwrap() > 0,
        "{created:?}"
    );
    assert_eq!(
        pruned[0]["partition_name"],
        json!("audit.auditlog_p20200101")
    );
    assert!(written > 100, "writes went on ({written})");
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(written)
    );
}

#[test]
fn new_partitions_are_written_only_by_the_owner_whatever_the_default_privileges() {
    let roles = pg_audit_tests::Roles::new("maint_grants", &["app"]);
    let app = roles.name("app");
    let db = TestDb::new("maint_grants");
    let mut conn = db.conn();
    exec(&mut conn, "CREATE SCHEMA audit");
    // A common set-up: the application may write whatever the owner creates.
    exec(
        &mut conn,
        &format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA audit GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app};
             GRANT USAGE ON SCHEMA audit TO {app};"
        ),
    );
    let log = AuditLog::new().premake(0);
    exec(&mut conn, &log.create_sql());
    drop_current_partition(&mut conn, &log);
    let created = rows(&mut conn, &log.ensure_partitions_sql(2));
    assert_eq!(created.len(), 3);
    let privileges = |conn: &mut PgConnection, relation: &str| {
        value(
            conn,
            &format!(
                "SELECT coalesce(json_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type), '[]')
                   FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
                  WHERE c.oid = '{relation}'::regclass AND a.grantee = '{role}'::regrole",
                role = app.trim_matches('"')
            ),
        )
    };
    for partition in created {
        let name = partition["partition_name"].as_str().unwrap().to_owned();
        assert_eq!(privileges(&mut conn, &name), json!([]), "{name}");
    }
    assert_eq!(privileges(&mut conn, "audit.auditlog_default"), json!([]));
    // The log itself keeps only what reading needs.
    assert_eq!(privileges(&mut conn, "audit.auditlog"), json!(["SELECT"]));
    exec(&mut conn, &format!("SET ROLE {app}"));
    let e = pg_audit_tests::exec_err(
        &mut conn,
        "INSERT INTO audit.auditlog (operation, schema_name, table_name) VALUES ('INSERT', 'x', 'y')",
    );
    assert!(e.contains("permission denied"), "{e}");
    exec(&mut conn, "RESET ROLE");
}
