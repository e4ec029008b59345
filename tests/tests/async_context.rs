//! The context helpers on diesel-async's `AsyncPgConnection`, through a deadpool pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::InstrumentationEvent;
use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use pg_audit::AuditLog;
use pg_audit_diesel::{AsyncAuditConnectionExt, AuditContext, with_change_reason};
use pg_audit_tests::{TestDb, audit_rows, audited_items};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

diesel::table! {
    items (id) {
        id -> Int4,
        name -> Text,
    }
}

type AsyncPool = Pool<AsyncPgConnection>;

fn setup(hint: &str) -> (TestDb, AsyncPool) {
    let (db, _conn) = audited_items(hint);
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(db.url());
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    (db, pool)
}

async fn add(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values(items::name.eq(name))
        .execute(conn)
        .await
}

fn who_why(db: &TestDb) -> Vec<Value> {
    audit_rows(&mut db.conn(), &AuditLog::new())
        .into_iter()
        .map(|r| json!([r["new_values"]["name"], r["user_id"], r["change_reason"]]))
        .collect()
}

#[with_change_reason("Nightly cleanup")]
async fn cleanup(pool: &AsyncPool) -> QueryResult<usize> {
    tokio::task::yield_now().await;
    let mut conn = pool.get().await.expect("connection");
    conn.audited_transaction(async |conn| add(conn, "cleanup").await)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_async_connections_carry_context_and_never_leak_it() {
    let (db, pool) = setup("async_pool");
    {
        let mut conn = pool.get().await.unwrap();
        conn.with_change_reason("User requested password reset", async |conn| {
            add(conn, "a").await
        })
        .await
        .unwrap();
        let ctx = AuditContext::new().user_id("42").request_id("req-1");
        conn.with_audit_context(&ctx, async |conn| {
            add(conn, "b").await?;
            conn.with_change_reason("inner", async |conn| add(conn, "c").await)
                .await?;
            add(conn, "d").await
        })
        .await
        .unwrap();
    }
    {
        let mut conn = pool.get().await.unwrap(); // the same connection: max_size is 1
        add(&mut conn, "e").await.unwrap();
        conn.transaction(async |conn| add(conn, "f").await)
            .await
            .unwrap();
    }
    cleanup(&pool).await.unwrap();
    assert_eq!(
        who_why(&db),
        [
            json!(["a", null, "User requested password reset"]),
            json!(["b", "42", null]),
            json!(["c", "42", "inner"]),
            json!(["d", "42", null]),
            json!(["e", null, null]),
            json!(["f", null, null]),
            json!(["cleanup", null, "Nightly cleanup"]),
        ]
    );
}

#[tokio::test]
async fn a_failing_closure_rolls_back_and_an_invalid_value_is_refused() {
    let (db, pool) = setup("async_refused");
    let mut conn = pool.get().await.unwrap();
    let failed: QueryResult<()> = conn
        .with_change_reason("fails", async |conn| {
            add(conn, "rolled back").await?;
            Err(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(failed.is_err());
    let refused = conn
        .with_change_reason("nul\0", async |conn| add(conn, "never").await)
        .await;
    let e = refused.unwrap_err().to_string();
    assert!(e.contains("`change_reason` contains a NUL byte"), "{e}");
    add(&mut conn, "after").await.unwrap();
    assert_eq!(who_why(&db), [json!(["after", null, null])]);
}

#[tokio::test]
async fn context_costs_no_extra_round_trip() {
    let (_db, pool) = setup("async_round_trips");
    let mut conn = pool.get().await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    conn.transaction(async |conn| add(conn, "plain").await)
        .await
        .unwrap();
    let plain = count.swap(0, Ordering::SeqCst);
    conn.with_audit_context(
        &AuditContext::new().user_id("u").change_reason("r"),
        async |conn| add(conn, "audited").await,
    )
    .await
    .unwrap();
    assert_eq!(count.swap(0, Ordering::SeqCst), plain);
    assert_eq!(plain, 3);
}
