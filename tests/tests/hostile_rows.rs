//! No row an application can make its triggers write makes a reader fail: every method of
//! the reader, and every page of the admin (crawled), read the hostile rows of
//! `pg-audit-cli/tests/support/hostile.rs` — numbers out of `f64`'s range, documents nested 300
//! deep, a context key given twice — and show them. (The program's commands:
//! `pg-audit-cli/tests/trust.rs`.)

#[path = "../../pg-audit-cli/tests/support/hostile.rs"]
mod hostile;
#[path = "../../pg-audit-cli/tests/support/planted.rs"]
mod planted;

use std::time::{Duration, SystemTime};

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};
use pg_audit_diesel::log::{Activity, AuditReader, Page, TimeRange};
use pg_audit_tests::{TestDb, exec, http, value};
use serde_json::json;

#[test]
fn no_row_a_writer_stores_makes_a_reader_or_a_page_fail() {
    let db = TestDb::new("hostile_rows");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, hostile::TABLE);
    exec(
        &mut conn,
        &TriggerSpec::builder(QualifiedName::parse("public.h").unwrap())
            .build()
            .unwrap()
            .install_sql(&log),
    );
    exec(&mut conn, &hostile::writes());
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(5)
    );
    // A key given twice is stored once, with the value every reader takes.
    let stored = value(
        &mut conn,
        "SELECT context::text FROM audit.auditlog WHERE context ->> 'user_id' = 'other-user' LIMIT 1",
    );
    assert!(!stored.as_str().unwrap().contains("victim"), "{stored}");

    let reader = AuditReader::with_log(log.clone());
    let table = QualifiedName::parse("public.h").unwrap();
    let all = TimeRange::default();
    let later = SystemTime::now() + Duration::from_secs(60);
    for id in [1, 2] {
        let key = json!({"id": id});
        let history = reader
            .history_of(&mut conn, &table, &key, Page::first(50))
            .unwrap();
        assert!(!history.is_empty());
        for e in &history {
            let _ = e.changes();
            reader.transaction(&mut conn, e.txid).unwrap();
        }
        reader.state_of_at(&mut conn, &table, &key, later).unwrap();
        reader.blame_of(&mut conn, &table, &key).unwrap();
    }
    let by_mallory = reader.by_user(&mut conn, "mallory", all).unwrap();
    assert_eq!(
        by_mallory[0].context.metadata,
        Some(json!(format!("1{}", "0".repeat(400)))),
        "a number out of range is read as the string of its digits"
    );
    let entries = reader
        .activity(&mut conn, &Activity::default(), Page::first(50))
        .unwrap();
    assert_eq!(entries.len(), 5);
    let updated = entries
        .iter()
        .find(|e| {
            e.operation == pg_audit::Operation::Update && e.record_pk == Some(json!({"id": 1}))
        })
        .unwrap();
    assert_eq!(
        updated.old_values.as_ref().unwrap()["n"],
        json!(format!("1{}", "0".repeat(400)))
    );
    reader.request(&mut conn, "r-big", all).unwrap();
    reader.by_user(&mut conn, "5", all).unwrap();
    reader.by_user(&mut conn, "other-user", all).unwrap();
    reader.table_at(&mut conn, &table, later, None, 50).unwrap();
    reader.recorded_keys(&mut conn, &table).unwrap();

    // Every page of the admin, crawled.
    let pool = Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<PgConnection>::new(db.url()))
        .unwrap();
    let admin = pg_audit_admin::router(pool).authorize(|_| pg_audit_admin::Access::Read);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = http::serve(&runtime, axum::Router::new().nest_service("/audit", admin));
    let txid = entries[0].txid.to_string();
    let samples = [
        ("table", "public.h"),
        ("user", "mallory"),
        ("request", "r-big"),
        ("tx", txid.as_str()),
        ("key", r#"{"id": 2}"#),
        ("at", "2100-01-01T00:00"),
    ];
    let crawl = planted::crawl(addr, "/audit", &[], &samples, false, &mut |_| {});
    for route in pg_audit_admin::ROUTES
        .iter()
        .filter(|r| !r.starts_with("/record/"))
    {
        assert!(
            crawl.reached("/audit", route),
            "the crawl never reached {route}: {:?}",
            crawl.paths()
        );
    }
}
