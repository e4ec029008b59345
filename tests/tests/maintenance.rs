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
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (url, stop) = (db.url().to_owned(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).expect("connect");
                let mut written = 0;
                while !stop.load(Ordering::Relaxed) {
                    diesel::sql_query("INSERT INTO events VALUES ($1)")
                        .bind::<Integer, _>(t * 1_000_000 + written)
                        .execute(&mut conn)
                        .unwrap_or_else(|e| {
                            panic!("an audited write failed during maintenance: {e}")
                        });
                    written += 1;
                }
                written
            })
        })
        .collect();

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
