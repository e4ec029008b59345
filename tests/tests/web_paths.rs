//! End to end: the one-line way for each kind of connection to carry the request's context —
//! sync Diesel through `spawn_blocking`, `AuditedConnection` from an r2d2 pool, diesel-async
//! from a deadpool pool — and what happens without it (tokio's own `spawn_blocking`).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool;
use diesel_migrations::MigrationHarness;
use pg_audit_diesel::web::AuditLayer;
use pg_audit_diesel::{
    AsyncAuditConnectionExt, AuditConnectionExt, AuditMigrations, AuditedConnection, ModelSet,
    ambient, pg_audit,
};
use pg_audit_tests::http::{self, request};
use pg_audit_tests::{TestDb, exec, rows};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

mod schema {
    diesel::table! {
        notes (id) {
            id -> Int4,
            via -> Text,
        }
    }
}

use schema::notes;

#[pg_audit]
#[derive(Queryable)]
#[diesel(table_name = notes)]
pub struct Note {
    pub id: i32,
}

#[derive(Clone)]
struct Pools {
    sync: Pool<ConnectionManager<PgConnection>>,
    wrapped: Pool<ConnectionManager<AuditedConnection>>,
    not_sync: deadpool::Pool<AsyncPgConnection>,
}

type Failure = (StatusCode, String);

fn failed(e: impl std::fmt::Display) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Sync Diesel: pg-audit's `spawn_blocking`, then a helper transaction.
async fn sync(State(p): State<Pools>, Path(id): Path<i32>) -> Result<StatusCode, Failure> {
    ambient::spawn_blocking(move || {
        let mut conn = p.sync.get().map_err(failed)?;
        conn.audited_transaction(|conn| {
            diesel::insert_into(notes::table)
                .values((notes::id.eq(id), notes::via.eq("sync")))
                .execute(conn)
        })
        .map_err(failed)
    })
    .await
    .map_err(failed)??;
    Ok(StatusCode::CREATED)
}

/// `AuditedConnection`: pg-audit's `spawn_blocking`, then plain Diesel.
async fn wrapped(State(p): State<Pools>, Path(id): Path<i32>) -> Result<StatusCode, Failure> {
    ambient::spawn_blocking(move || {
        diesel::insert_into(notes::table)
            .values((notes::id.eq(id), notes::via.eq("wrapper")))
            .execute(&mut p.wrapped.get().map_err(failed)?)
            .map_err(failed)
    })
    .await
    .map_err(failed)??;
    Ok(StatusCode::CREATED)
}

/// diesel-async: a helper transaction, right in the handler.
async fn not_blocking(State(p): State<Pools>, Path(id): Path<i32>) -> Result<StatusCode, Failure> {
    let mut conn = p.not_sync.get().await.map_err(failed)?;
    conn.audited_transaction(async |conn| {
        diesel_async::RunQueryDsl::execute(
            diesel::insert_into(notes::table).values((notes::id.eq(id), notes::via.eq("async"))),
            conn,
        )
        .await
    })
    .await
    .map_err(failed)?;
    Ok(StatusCode::CREATED)
}

/// The mistake the docs warn of: tokio's `spawn_blocking` starts with no context.
async fn tokio_blocking(
    State(p): State<Pools>,
    Path(id): Path<i32>,
) -> Result<StatusCode, Failure> {
    tokio::task::spawn_blocking(move || {
        let mut conn = p.sync.get().map_err(failed)?;
        conn.audited_transaction(|conn| {
            diesel::insert_into(notes::table)
                .values((notes::id.eq(id), notes::via.eq("tokio")))
                .execute(conn)
        })
        .map_err(failed)
    })
    .await
    .map_err(failed)??;
    Ok(StatusCode::CREATED)
}

#[test]
fn each_kind_of_connection_carries_the_request_context() {
    let db = TestDb::new("web_paths");
    let mut conn = db.conn();
    exec(
        &mut conn,
        "CREATE TABLE notes (id int PRIMARY KEY, via text NOT NULL)",
    );
    conn.run_pending_migrations(AuditMigrations::models(ModelSet::new().with::<Note>()))
        .unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pools = runtime.block_on(async {
        Pools {
            sync: Pool::builder()
                .max_size(2)
                .build(ConnectionManager::new(db.url()))
                .unwrap(),
            wrapped: Pool::builder()
                .max_size(2)
                .build(ConnectionManager::new(db.url()))
                .unwrap(),
            not_sync: deadpool::Pool::builder(AsyncDieselConnectionManager::new(db.url()))
                .max_size(2)
                .build()
                .unwrap(),
        }
    });
    let app = Router::new()
        .route("/sync/{id}", post(sync))
        .route("/wrapper/{id}", post(wrapped))
        .route("/async/{id}", post(not_blocking))
        .route("/tokio/{id}", post(tokio_blocking))
        .layer(AuditLayer::new().user_id(|req| {
            req.headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }))
        .with_state(pools);
    let addr = http::serve(&runtime, app);

    for (id, path) in [(1, "sync"), (2, "wrapper"), (3, "async"), (4, "tokio")] {
        let request_id = format!("req-{path}");
        let user = format!("user-{path}");
        let r = request(
            addr,
            "POST",
            &format!("/{path}/{id}"),
            &[
                ("X-Request-ID", request_id.as_bytes()),
                ("X-User", user.as_bytes()),
            ],
            None,
        );
        assert_eq!(r.status, 201, "{path}: {}", r.body);
    }
    let logged = rows(
        &mut conn,
        "SELECT new_values ->> 'via' AS via, context ->> 'user_id' AS user_id,
                context ->> 'request_id' AS request_id, context ->> 'source' AS source
           FROM audit.auditlog ORDER BY id",
    );
    let expected: Vec<Value> = ["sync", "wrapper", "async"]
        .iter()
        .map(|via| {
            json!({
                "via": via, "user_id": format!("user-{via}"), "request_id": format!("req-{via}"),
                "source": format!("http POST /{via}/{{id}}"),
            })
        })
        .chain([json!({"via": "tokio", "user_id": null, "request_id": null, "source": null})])
        .collect();
    assert_eq!(logged, expected);
    drop(runtime);
}
