//! Ambient context from `#[with_change_reason]`, guards and scopes, in sync code and across
//! `.await`, task and thread boundaries on a multi-threaded runtime.

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit::AuditLog;
use pg_audit_diesel::{AuditConnectionExt, AuditContext, ambient, with_change_reason};
use pg_audit_tests::{TestDb, audit_rows, audited_items};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

type PgPool = Pool<ConnectionManager<PgConnection>>;

fn setup(hint: &str) -> (TestDb, PgPool) {
    let (db, _conn) = audited_items(hint);
    let pool = Pool::builder()
        .max_size(4)
        .build(ConnectionManager::<PgConnection>::new(db.url()))
        .unwrap();
    (db, pool)
}

fn insert(pool: &PgPool, name: &str) -> QueryResult<usize> {
    pool.get().expect("connection").audited_transaction(|conn| {
        diesel::sql_query("INSERT INTO items (name) VALUES ($1)")
            .bind::<diesel::sql_types::Text, _>(name)
            .execute(conn)
    })
}

fn reasons(pool: &PgPool) -> Vec<Value> {
    audit_rows(&mut pool.get().unwrap(), &AuditLog::new())
        .into_iter()
        .map(|r| json!([r["new_values"]["name"], r["change_reason"]]))
        .collect()
}

#[with_change_reason("Bulk update for compliance")]
fn bulk_update(pool: &PgPool) -> QueryResult<usize> {
    insert(pool, "sync")
}

#[with_change_reason("Nightly cleanup")]
async fn cleanup(pool: PgPool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Yield, so the rest may run on another worker thread.
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let p = pool.clone();
    // Blocking work gets the context only when it is passed on.
    ambient::spawn_blocking(move || insert(&p, "spawn_blocking helper")).await??;
    let p = pool.clone();
    tokio::task::spawn_blocking(move || insert(&p, "plain spawn_blocking")).await??;
    let p = pool.clone();
    ambient::spawn(
        async move { ambient::spawn_blocking(move || insert(&p, "spawn helper")).await },
    )
    .await???;
    let p = pool.clone();
    let ctx = ambient::current();
    tokio::task::spawn_blocking(move || ctx.enter(|| insert(&p, "entered by hand"))).await??;
    Ok(())
}

#[test]
fn a_sync_function_runs_with_its_change_reason() {
    let (_db, pool) = setup("ambient_sync");
    bulk_update(&pool).unwrap();
    insert(&pool, "after").unwrap();
    assert_eq!(
        reasons(&pool),
        [
            json!(["sync", "Bulk update for compliance"]),
            json!(["after", null])
        ]
    );
}

#[test]
fn an_async_function_keeps_its_change_reason_across_await_and_threads() {
    let (_db, pool) = setup("ambient_async");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let outer = AuditContext::new().user_id("scheduler");
        outer.scope(cleanup(pool.clone())).await.unwrap();
    });
    assert_eq!(
        reasons(&pool),
        [
            json!(["spawn_blocking helper", "Nightly cleanup"]),
            json!(["plain spawn_blocking", null]),
            json!(["spawn helper", "Nightly cleanup"]),
            json!(["entered by hand", "Nightly cleanup"]),
        ]
    );
    let users: Vec<Value> = audit_rows(&mut pool.get().unwrap(), &AuditLog::new())
        .into_iter()
        .map(|r| r["user_id"].clone())
        .collect();
    assert_eq!(
        users,
        [
            json!("scheduler"),
            json!(null),
            json!("scheduler"),
            json!("scheduler")
        ]
    );
}

#[test]
fn concurrent_tasks_never_see_each_others_context() {
    let (_db, pool) = setup("ambient_tasks");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> =
            (0..16)
                .map(|i| {
                    let pool = pool.clone();
                    tokio::spawn(AuditContext::new().user_id(format!("user-{i}")).scope(
                        async move {
                            for step in 0..3 {
                                tokio::task::yield_now().await;
                                let p = pool.clone();
                                ambient::spawn_blocking(move || insert(&p, &format!("{i}-{step}")))
                                    .await
                                    .unwrap()
                                    .unwrap();
                            }
                        },
                    ))
                })
                .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rows = audit_rows(&mut pool.get().unwrap(), &AuditLog::new());
    assert_eq!(rows.len(), 48);
    for row in rows {
        let name = row["new_values"]["name"].as_str().unwrap();
        let task = name.split('-').next().unwrap();
        assert_eq!(row["user_id"], json!(format!("user-{task}")), "{row}");
    }
}

#[test]
fn a_panic_never_leaves_its_context_to_the_next_work_on_the_thread() {
    let ctx = || AuditContext::new().user_id("alice").request_id("req-A");
    // A scoped future that panics, then an unrelated task on the same (only) thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen = runtime.block_on(async {
        let failed = tokio::spawn(ctx().scope(async {
            tokio::task::yield_now().await;
            panic!("the handler failed");
        }))
        .await;
        assert!(failed.unwrap_err().is_panic());
        tokio::spawn(async { ambient::current() }).await.unwrap()
    });
    assert!(seen.is_empty(), "the next task saw {seen:?}");
    assert!(ambient::current().is_empty());

    // A guard unwinding.
    let unwound = std::panic::catch_unwind(|| {
        let _guard = ambient::use_context(&ctx());
        panic!("the closure failed");
    });
    assert!(unwound.is_err());
    assert!(ambient::current().is_empty());

    // A blocking task that panics, then the next one on the same blocking thread.
    let seen = runtime.block_on(async {
        let failed = ctx()
            .scope(async { ambient::spawn_blocking(|| panic!("the job failed")).await })
            .await;
        assert!(failed.unwrap_err().is_panic());
        tokio::task::spawn_blocking(ambient::current).await.unwrap()
    });
    assert!(seen.is_empty(), "the next blocking task saw {seen:?}");
}
