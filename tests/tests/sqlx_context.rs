//! sqlx's context-carrying transactions against a real server: a transaction carries its
//! context and the next one on the same connection none, savepoints nest and put the outer
//! context back, rolled-back ones leave nothing, an invalid context is refused before anything
//! is sent, and behind a real PgBouncer in transaction pooling mode every transaction carries
//! exactly its own.

use pg_audit::AuditLog;
use pg_audit_sqlx::{AuditContext, AuditedBegin as _, InvalidContext, ambient, begin_audited};
use pg_audit_tests::pgbouncer::PgBouncer;
use pg_audit_tests::{audit_rows, audited_items, runtime};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};

async fn pool(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .connect(url)
        .await
        .unwrap()
}

async fn insert(conn: &mut PgConnection, name: &str) {
    sqlx::query("INSERT INTO items (name) VALUES ($1)")
        .bind(name)
        .execute(conn)
        .await
        .unwrap();
}

/// The logged rows: each inserted name with its user, request id and change reason.
fn logged(conn: &mut diesel::PgConnection) -> Vec<(String, Value, Value, Value)> {
    audit_rows(conn, &AuditLog::new())
        .into_iter()
        .map(|r| {
            (
                r["new_values"]["name"].as_str().unwrap().to_owned(),
                r["user_id"].clone(),
                r["request_id"].clone(),
                r["change_reason"].clone(),
            )
        })
        .collect()
}

fn row(
    name: &str,
    user: Option<&str>,
    request: Option<&str>,
    reason: Option<&str>,
) -> (String, Value, Value, Value) {
    let v = |s: Option<&str>| s.map_or(Value::Null, |s| Value::String(s.to_owned()));
    (name.to_owned(), v(user), v(request), v(reason))
}

#[test]
fn a_transaction_carries_its_context_and_the_next_on_the_connection_none() {
    let (db, mut conn) = audited_items("sqlx_top");
    runtime().block_on(async {
        // One connection, so every transaction below runs on the same session.
        let pool = pool(db.url(), 1).await;
        let ctx = AuditContext::new().user_id("u1").request_id("r1");
        let mut tx = pool.begin_audited(&ctx).await.unwrap();
        insert(&mut tx, "with").await;
        tx.commit().await.unwrap();

        let mut tx = pool.begin().await.unwrap();
        insert(&mut tx, "plain after commit").await;
        tx.commit().await.unwrap();

        // Rolled back, then dropped: nothing logged, and nothing carried over.
        let mut tx = begin_audited(&pool, &ctx.clone().request_id("r2"))
            .await
            .unwrap();
        insert(&mut tx, "rolled back").await;
        tx.rollback().await.unwrap();
        {
            let mut tx = pool.begin_with_change_reason("dropped").await.unwrap();
            insert(&mut tx, "dropped").await;
        }
        let mut tx = pool.begin().await.unwrap();
        insert(&mut tx, "plain after rollback").await;
        tx.commit().await.unwrap();

        // On a connection of its own, outside a transaction: a top-level transaction.
        let mut own = PgConnection::connect(db.url()).await.unwrap();
        let mut tx = own
            .begin_audited(&AuditContext::new().user_id("u3"))
            .await
            .unwrap();
        insert(&mut tx, "own connection").await;
        tx.commit().await.unwrap();
        insert(&mut own, "own autocommit").await;
    });
    assert_eq!(
        logged(&mut conn),
        [
            row("with", Some("u1"), Some("r1"), None),
            row("plain after commit", None, None, None),
            row("plain after rollback", None, None, None),
            row("own connection", Some("u3"), None, None),
            row("own autocommit", None, None, None),
        ]
    );
}

#[test]
fn savepoints_nest_their_context_and_put_the_outer_one_back() {
    let (db, mut conn) = audited_items("sqlx_nested");
    runtime().block_on(async {
        let pool = pool(db.url(), 1).await;
        let outer = AuditContext::new().user_id("u").change_reason("outer");
        let mut tx = pool.begin_audited(&outer).await.unwrap();
        insert(&mut tx, "a").await;
        {
            let mut inner = tx.begin_with_change_reason("inner").await.unwrap();
            insert(&mut inner, "b").await;
            {
                // Two levels down, on the savepoint itself.
                let ctx = AuditContext::new().user_id("v");
                let mut deeper = inner.begin_audited(&ctx).await.unwrap();
                insert(&mut deeper, "c").await;
                deeper.commit().await.unwrap();
            }
            insert(&mut inner, "d").await;
            inner.commit().await.unwrap();
        }
        insert(&mut tx, "e").await;
        {
            let mut inner = tx.begin_with_change_reason("undone").await.unwrap();
            insert(&mut inner, "f").await;
            inner.rollback().await.unwrap();
        }
        insert(&mut tx, "g").await;
        {
            // Dropped without a commit: rolled back with its setting.
            let mut inner = tx.begin_with_change_reason("dropped").await.unwrap();
            insert(&mut inner, "h").await;
        }
        insert(&mut tx, "i").await;
        {
            // The same context as the one in force: nothing to set or restore.
            let mut same = tx.begin_audited(&AuditContext::new()).await.unwrap();
            insert(&mut same, "j").await;
            same.commit().await.unwrap();
        }
        // A savepoint through the connection inside the transaction, as code handed
        // `&mut PgConnection` would open one.
        {
            let conn: &mut PgConnection = &mut tx;
            let mut inner = conn.begin_with_change_reason("via conn").await.unwrap();
            insert(&mut inner, "k").await;
            inner.commit().await.unwrap();
        }
        insert(&mut tx, "l").await;
        tx.commit().await.unwrap();
    });
    let o = Some("outer");
    assert_eq!(
        logged(&mut conn),
        [
            row("a", Some("u"), None, o),
            row("b", Some("u"), None, Some("outer; inner")),
            row("c", Some("v"), None, Some("outer; inner")),
            row("d", Some("u"), None, Some("outer; inner")),
            row("e", Some("u"), None, o),
            row("g", Some("u"), None, o),
            row("i", Some("u"), None, o),
            row("j", Some("u"), None, o),
            row("k", Some("u"), None, Some("outer; via conn")),
            row("l", Some("u"), None, o),
        ]
    );
}

#[test]
fn the_ambient_context_reaches_sqlx_transactions() {
    let (db, mut conn) = audited_items("sqlx_ambient");
    runtime().block_on(async {
        let pool = pool(db.url(), 2).await;
        let request = AuditContext::new().request_id("req-1").user_id("alice");
        request
            .scope(async {
                let mut tx = pool.begin_with_change_reason("why").await.unwrap();
                insert(&mut tx, "scoped").await;
                tx.commit().await.unwrap();
            })
            .await;
        let _guard = ambient::use_change_reason("guarded");
        let begun = pool.begin_audited(&AuditContext::new());
        drop(_guard);
        // The context is the caller's when the future was made, not when it runs.
        let mut tx = begun.await.unwrap();
        insert(&mut tx, "guard").await;
        tx.commit().await.unwrap();
    });
    assert_eq!(
        logged(&mut conn),
        [
            row("scoped", Some("alice"), Some("req-1"), Some("why")),
            row("guard", None, None, Some("guarded")),
        ]
    );
}

#[test]
fn an_invalid_context_is_refused_before_anything_is_sent() {
    let (db, mut conn) = audited_items("sqlx_invalid");
    runtime().block_on(async {
        let pool = pool(db.url(), 1).await;
        let bad = AuditContext::new().user_id("a\0b");
        let err = pool.begin_audited(&bad).await.unwrap_err();
        let sqlx::Error::Encode(source) = &err else {
            panic!("not an encode error: {err:?}");
        };
        let invalid = source
            .downcast_ref::<InvalidContext>()
            .expect("InvalidContext");
        assert_eq!(invalid.field, "user_id");
        // Inside a transaction too, and the transaction goes on.
        let mut tx = pool.begin().await.unwrap();
        assert!(tx.begin_audited(&bad).await.is_err());
        insert(&mut tx, "after").await;
        tx.commit().await.unwrap();
    });
    assert_eq!(logged(&mut conn), [row("after", None, None, None)]);
}

const CLIENTS: usize = 8;
const TRANSACTIONS: usize = 25;

#[test]
fn each_transaction_carries_its_own_context_through_transaction_pooling() {
    let (db, mut conn) = audited_items("sqlx_pgbouncer");
    let bouncer = PgBouncer::start(db.url(), 2);
    let url = bouncer.url(db.name());
    runtime().block_on(async {
        // Named statements cannot follow a client across server connections (PgBouncer before
        // 1.21): sqlx's statement cache off, as behind any transaction pooler.
        let options: PgConnectOptions = url.parse().unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(CLIENTS as u32)
            .connect_with(options.statement_cache_capacity(0))
            .await
            .unwrap();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for n in 0..TRANSACTIONS {
                        let ctx = AuditContext::new()
                            .user_id(format!("u{client}"))
                            .request_id(format!("r{client}-{n}"));
                        let mut tx = pool.begin_audited(&ctx).await.unwrap();
                        insert(&mut tx, &format!("s {client} {n}")).await;
                        {
                            let mut inner = tx.begin_with_change_reason("nested").await.unwrap();
                            insert(&mut inner, &format!("n {client} {n}")).await;
                            inner.commit().await.unwrap();
                        }
                        tx.commit().await.unwrap();
                        let mut tx = pool.begin().await.unwrap();
                        insert(&mut tx, &format!("plain {client} {n}")).await;
                        tx.commit().await.unwrap();
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.expect("a client failed");
        }
    });
    drop(bouncer);

    let rows = logged(&mut conn);
    assert_eq!(rows.len(), CLIENTS * TRANSACTIONS * 3);
    for (name, user, request, reason) in rows {
        match name.split(' ').collect::<Vec<_>>().as_slice() {
            ["plain", _, _] => assert!(
                user.is_null() && request.is_null() && reason.is_null(),
                "{name} ran without a context but carries one"
            ),
            [kind, client, n] => {
                assert_eq!(user, format!("u{client}"), "{name}");
                assert_eq!(request, format!("r{client}-{n}"), "{name}");
                let expected = if *kind == "n" {
                    Value::from("nested")
                } else {
                    Value::Null
                };
                assert_eq!(reason, expected, "{name}");
            }
            _ => panic!("unexpected row {name}"),
        }
    }
}
