//! A table captured from the write-ahead log, declared to sqlx's migrations: the declaration
//! makes sqlx's transactions emit their context (in a test binary of its own, as the decision
//! is the process's), and the capture worker attaches it — nested contexts and rolled-back
//! savepoints as the triggers record them.

use std::time::{Duration, Instant};

use pg_audit::{Capture, QualifiedName, TriggerSpec};
use pg_audit_sqlx::{AuditContext, AuditMigrations, AuditedBegin as _};
use pg_audit_tempdb::Cluster;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

async fn insert(conn: &mut PgConnection, id: i32, name: &str) {
    sqlx::query("INSERT INTO events VALUES ($1, $2, 's3cr3t')")
        .bind(id)
        .bind(name)
        .execute(conn)
        .await
        .unwrap();
}

async fn entries(pool: &PgPool) -> Vec<Value> {
    sqlx::query_scalar::<_, String>(
        "SELECT json_build_array(operation, new_values ->> 'name', context ->> 'user_id', context ->> 'change_reason', new_values ? 'secret')::text
           FROM audit.auditlog ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|e| serde_json::from_str(&e).unwrap())
    .collect()
}

#[test]
fn sqlx_transactions_context_reaches_wal_captured_entries() {
    let cluster = Cluster::start_private(
        "sqlx-capture-context",
        &[
            ("wal_level", "logical"),
            ("max_replication_slots", "4"),
            ("max_wal_senders", "4"),
        ],
    )
    .unwrap();
    let server = cluster.server();
    let db = server.create_database("sqlx_capture_context").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = runtime.block_on(async {
        let pool = PgPool::connect(db.url()).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE events (id int PRIMARY KEY, name text NOT NULL, secret text NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        AuditMigrations::new()
            .table(
                TriggerSpec::builder(QualifiedName::parse("events").unwrap())
                    .exclude_fields(["secret"])
                    .capture(Capture::Wal)
                    .build()
                    .unwrap(),
            )
            .run(&pool)
            .await
            .unwrap();
        pool
    });

    let worker = pg_audit_capture::Worker::new(db.url()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT FROM pg_replication_slots)")
            .fetch_one(&pool)
            .await
            .unwrap()
        {
            assert!(Instant::now() < deadline, "the worker made no slot");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mut tx = pool.begin_with_change_reason("imported").await.unwrap();
        insert(&mut tx, 1, "a").await;
        tx.commit().await.unwrap();
        let alice = AuditContext::new().user_id("alice").change_reason("outer");
        let mut tx = pool.begin_audited(&alice).await.unwrap();
        insert(&mut tx, 2, "b").await;
        let mut inner = tx.begin_with_change_reason("inner").await.unwrap();
        insert(&mut inner, 3, "c").await;
        inner.commit().await.unwrap();
        // A rolled-back savepoint: neither its row nor its context is logged.
        let mut undone = tx.begin_with_change_reason("rolled back").await.unwrap();
        insert(&mut undone, 4, "d").await;
        undone.rollback().await.unwrap();
        insert(&mut tx, 5, "e").await;
        tx.commit().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        insert(&mut tx, 6, "f").await;
        tx.commit().await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(60);
        let found = loop {
            let found = entries(&pool).await;
            if found.len() >= 5 {
                break found;
            }
            assert!(Instant::now() < deadline, "the worker wrote {found:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            found,
            [
                json!(["INSERT", "a", null, "imported", false]),
                json!(["INSERT", "b", "alice", "outer", false]),
                json!(["INSERT", "c", "alice", "outer; inner", false]),
                json!(["INSERT", "e", "alice", "outer", false]),
                json!(["INSERT", "f", null, null, false]),
            ]
        );
    });
    let _ = stop.send(());
    runtime.block_on(task).unwrap().unwrap();
}
