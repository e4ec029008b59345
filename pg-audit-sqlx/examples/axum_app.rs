//! pg-audit in a web service on sqlx: a small REST API over two audited tables, where every
//! change is logged with its request's id, client address, user, user agent and reason, each
//! record's history is one GET away, and the audit admin is mounted at `/audit`.
//!
//! ```sh
//! cargo run -p pg-audit-sqlx --features axum --example axum_app
//! ```
//!
//! Open `/audit/` in a browser and sign in as `alice` with the password `alice-token` (she may
//! revert and restore), or as `bob` / `bob-token` (read only). Writes need `Authorization:
//! Bearer <token>` with one of the demo tokens `alice-token`, `bob-token`, `carol-token`; a
//! reason for a change goes in the `X-Change-Reason` header.
//!
//! It listens on `127.0.0.1:3001` (`ADDR` to change it) and stores its data in a scratch
//! database: on the server of `DATABASE_URL` when set, else on a throwaway PostgreSQL started
//! from the local binaries.
//!
//! | route | |
//! |---|---|
//! | `POST /products` `{"title", "price_cents"}` | create |
//! | `GET /products/{id}` | read |
//! | `PATCH /products/{id}` `{"title"?, "price_cents"?}` | change |
//! | `DELETE /products/{id}` | delete |
//! | `POST /products/{id}/restore` | put a deleted product back, as it was |
//! | `GET /products/{id}/history` `?limit=&before=` | who changed it, when, why, from where |
//! | `POST /customers` `{"name", "email", "password"}` | the password's hash is never logged |
//! | `/audit/` | the audit admin (HTTP basic auth with the demo users) |

use std::net::SocketAddr;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pg_audit_sqlx::log::Page;
use pg_audit_sqlx::sql::{QualifiedName, TriggerSpec};
use pg_audit_sqlx::web::AuditLayer;
use pg_audit_sqlx::{AuditContext, AuditMigrations, AuditReader, AuditedBegin as _};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row as _};

/// The service's tables. A real service keeps them in its own migrations
/// (`sqlx::migrate!()`), run before pg-audit's.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id serial PRIMARY KEY,
    title text NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents >= 0),
    updated_at timestamp NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    password_hash text NOT NULL
);
";

/// What is audited, declared once: title and price of products (`updated_at` alone changing
/// logs nothing), and every column of customers but the password hash.
pub fn audited() -> Result<AuditMigrations, pg_audit_sqlx::sql::Error> {
    Ok(AuditMigrations::new()
        .table(
            TriggerSpec::builder(QualifiedName::parse("products")?)
                .track_only(["title", "price_cents"])
                .build()?,
        )
        .table(
            TriggerSpec::builder(QualifiedName::parse("customers")?)
                .exclude_fields(["password_hash"])
                .build()?,
        ))
}

/// Stand-in for real authentication: bearer tokens and their users.
const TOKENS: [(&str, &str); 3] = [
    ("alice-token", "alice"),
    ("bob-token", "bob"),
    ("carol-token", "carol"),
];

/// The authenticated user, put in the request's extensions by [`authenticate`].
#[derive(Debug, Clone)]
pub struct CurrentUser(pub String);

/// The service's pool and the admin's (the admin reads through its own, Diesel, pool), after
/// creating the service's tables and running pg-audit's migrations.
pub async fn connect(
    url: &str,
) -> Result<(PgPool, pg_audit_admin::DbPool), Box<dyn std::error::Error + Send + Sync>> {
    let pool = PgPoolOptions::new().max_connections(8).connect(url).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    audited()?.run(&pool).await?;
    let admin = pg_audit_admin::DbPool::builder()
        .max_size(2)
        .build(diesel::r2d2::ConnectionManager::new(url))?;
    Ok((pool, admin))
}

/// The service. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`, so the
/// audit layer sees each client's address.
pub fn app(pool: PgPool, admin: pg_audit_admin::DbPool) -> Router {
    let admin = pg_audit_admin::router(admin).authorize(|request| {
        match request
            .extensions
            .get::<CurrentUser>()
            .map(|u| u.0.as_str())
        {
            Some("alice") => pg_audit_admin::Access::Write {
                user: "alice".to_owned(),
            },
            Some(_) => pg_audit_admin::Access::Read,
            None => pg_audit_admin::Access::None,
        }
    });
    // The same layer as Diesel's: each request's context is the ambient context of its
    // handler, which `begin_audited` takes.
    let audit = AuditLayer::new()
        .change_reason_header(HeaderName::from_static("x-change-reason"))
        .user_id(|request| request.extensions.get::<CurrentUser>().map(|u| u.0.clone()));
    Router::new()
        .route("/products", post(create_product))
        .route(
            "/products/{id}",
            get(get_product)
                .patch(update_product)
                .delete(delete_product),
        )
        .route("/products/{id}/restore", post(restore_product))
        .route("/products/{id}/history", get(product_history))
        .route("/customers", post(create_customer))
        .nest_service("/audit", admin.layer(middleware::from_fn(sign_in)))
        // Layers run outside in: authentication first, so the audit layer sees the user.
        .layer(audit)
        .layer(middleware::from_fn(authenticate))
        .with_state(pool)
}

/// Asks a browser without a user to sign in (HTTP basic auth), for the admin.
async fn sign_in(request: Request, next: Next) -> Response {
    if request.extensions().get::<CurrentUser>().is_some() {
        return next.run(request).await;
    }
    let challenge = [("www-authenticate", "Basic realm=\"pg-audit example\"")];
    (
        StatusCode::UNAUTHORIZED,
        challenge,
        "sign in as alice / alice-token\n",
    )
        .into_response()
}

/// Reads the bearer token, or basic-auth credentials whose password is a token; a write
/// without a known one is refused.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = bearer.or_else(|| {
        pg_audit_admin::basic_credentials(request.headers()).map(|(_, password)| password)
    });
    match TOKENS.iter().find(|(t, _)| Some(*t) == token.as_deref()) {
        Some((_, user)) => {
            request
                .extensions_mut()
                .insert(CurrentUser((*user).to_owned()));
        }
        None if request.method() != axum::http::Method::GET => {
            return AppError(StatusCode::UNAUTHORIZED, "a bearer token is needed".into())
                .into_response();
        }
        None => {}
    }
    next.run(request).await
}

fn product(row: &sqlx::postgres::PgRow) -> Value {
    json!({"id": row.get::<i32, _>("id"), "title": row.get::<String, _>("title"),
           "price_cents": row.get::<i32, _>("price_cents")})
}

#[derive(Deserialize)]
struct ProductInput {
    title: Option<String>,
    price_cents: Option<i32>,
}

async fn create_product(
    State(pool): State<PgPool>,
    Json(new): Json<ProductInput>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    // The request's context (request id, user, client, reason) is the ambient context here.
    let mut tx = pool.begin_audited(&AuditContext::new()).await?;
    let row = sqlx::query(
        "INSERT INTO products (title, price_cents) VALUES ($1, $2)
         RETURNING id, title, price_cents",
    )
    .bind(new.title)
    .bind(new.price_cents)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(product(&row))))
}

async fn get_product(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Json<Value>, AppError> {
    let row = sqlx::query("SELECT id, title, price_cents FROM products WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    Ok(Json(product(&row)))
}

async fn update_product(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
    Json(changes): Json<ProductInput>,
) -> Result<Json<Value>, AppError> {
    let mut tx = pool.begin_audited(&AuditContext::new()).await?;
    let row = sqlx::query(
        "UPDATE products SET title = coalesce($2, title),
                price_cents = coalesce($3, price_cents), updated_at = now()
          WHERE id = $1 RETURNING id, title, price_cents",
    )
    .bind(id)
    .bind(changes.title)
    .bind(changes.price_cents)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(product(&row)))
}

async fn delete_product(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<StatusCode, AppError> {
    let mut tx = pool.begin_audited(&AuditContext::new()).await?;
    let done = sqlx::query("DELETE FROM products WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    match done.rows_affected() {
        0 => Err(AppError(StatusCode::NOT_FOUND, "no such product".into())),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

fn products() -> QualifiedName {
    QualifiedName::parse("products").expect("a valid name")
}

async fn restore_product(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Json<Value>, AppError> {
    let mut conn = pool.acquire().await?;
    AuditReader::new()
        .restore(&mut conn, &products(), &json!({ "id": id }), "restored")
        .await
        .map_err(|e| AppError(StatusCode::CONFLICT, e.to_string()))?;
    get_product(State(pool), Path(id)).await
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

/// A product's history, newest first: each entry as the log holds it, with the columns it
/// changed as `{"column": [before, after]}`.
async fn product_history(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let page = Page {
        limit: q.limit.unwrap_or(50).clamp(1, 500),
        before: q.before,
    };
    let mut conn = pool.acquire().await?;
    let entries = AuditReader::new()
        .history(&mut conn, &products(), &json!({ "id": id }), page)
        .await
        .map_err(|e| AppError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| {
                let changes = json!(e.changes());
                let mut entry = serde_json::to_value(e).expect("an entry serializes");
                entry["changes"] = changes;
                entry
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
struct CustomerInput {
    name: String,
    email: String,
    password: String,
}

async fn create_customer(
    State(pool): State<PgPool>,
    Json(input): Json<CustomerInput>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    // A real service hashes with argon2 or similar; the log never sees either.
    let hash = format!("demo-hash:{}", input.password.len());
    let mut tx = pool.begin_with_change_reason("sign-up").await?;
    let id: i32 = sqlx::query_scalar(
        "INSERT INTO customers (name, email, password_hash) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(&input.name)
    .bind(&input.email)
    .bind(hash)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": input.name, "email": input.email})),
    ))
}

/// An error as a JSON body with its status.
#[derive(Debug)]
pub struct AppError(StatusCode, String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => AppError(StatusCode::NOT_FOUND, "not found".into()),
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23514") => {
                AppError(StatusCode::UNPROCESSABLE_ENTITY, d.message().to_owned())
            }
            _ => AppError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3001".to_owned())
        .parse()?;
    let server = pg_audit_tempdb::shared()?;
    let database = server.create_database("sqlx_axum_app")?;
    let (pool, admin) = connect(database.url()).await?;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({e}); set ADDR to another address"))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!(
        "pg-audit example service on sqlx at {base} (Ctrl-C to stop). Try:

  curl -s -X POST {base}/products -H 'Authorization: Bearer alice-token' \\
       -H 'Content-Type: application/json' -d '{{\"title\": \"Lamp\", \"price_cents\": 2500}}'
  curl -s -X PATCH {base}/products/1 -H 'Authorization: Bearer bob-token' \\
       -H 'X-Change-Reason: Spring sale' -H 'X-Request-ID: req-42' \\
       -H 'Content-Type: application/json' -d '{{\"price_cents\": 2200}}'
  curl -s -X DELETE {base}/products/1 -H 'Authorization: Bearer carol-token'
  curl -s -X POST {base}/products/1/restore -H 'Authorization: Bearer alice-token'
  curl -s {base}/products/1/history

The audit admin: {base}/audit/ (sign in as alice / alice-token)
"
    );
    axum::serve(
        listener,
        app(pool, admin).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    drop(database);
    Ok(())
}
