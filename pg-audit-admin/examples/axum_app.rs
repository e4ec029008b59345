//! pg-audit in a web service: a small REST API over two audited models, where every change
//! is logged with its request's id, client address, user, user agent and reason, and each
//! record's history is one GET away.
//!
//! ```sh
//! cargo run -p pg-audit-admin --example axum_app
//! ```
//!
//! The audit admin is mounted at `/audit`: open it in a browser and sign in as `alice` with the
//! password `alice-token` (she may revert and restore), or as `bob` / `bob-token` (read only).
//!
//! It logs to stderr through `tracing` (`RUST_LOG`, default `pg_audit=info`): each audited
//! transaction's span closes with its request id, user, trace id and outcome. Send a W3C
//! `traceparent` header and the audit rows carry its trace id.
//!
//! It listens on `127.0.0.1:3000` (`ADDR` to change it), trusts `X-Forwarded-For` from the
//! proxies in `TRUSTED_PROXIES` (`10.0.0.0/8,127.0.0.1/32`; none by default), and stores its
//! data in a scratch database: on the server of `DATABASE_URL` when set, else on a throwaway
//! PostgreSQL started from the local binaries. Writes need `Authorization: Bearer <token>`
//! with one of the demo tokens `alice-token`, `bob-token`, `carol-token`.
//!
//! | route | |
//! |---|---|
//! | `POST /products` `{"title", "price_cents"}` | create |
//! | `GET /products/{id}` | read |
//! | `PATCH /products/{id}` `{"title"?, "price_cents"?}` | change |
//! | `DELETE /products/{id}` | delete |
//! | `POST /products/{id}/restore` | put a deleted product back, as it was |
//! | `GET /products/{id}/history` `?limit=&before=` | who changed it, when, why, from where |
//! | `POST /customers`, `PATCH /customers/{id}` `{"name", "email", "password"}` | the password's hash is never logged |
//! | `GET /customers/{id}/history` | |
//! | `/audit/` | the audit admin (HTTP basic auth with the demo users) |
//!
//! A reason for a change goes in the `X-Change-Reason` header.

use std::net::SocketAddr;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PoolError};
use diesel_migrations::MigrationHarness;
use pg_audit_diesel::log::{AuditEntry, AuditReader, Page};
use pg_audit_diesel::web::{AuditLayer, IpNet};
use pg_audit_diesel::{AuditConnectionExt, Audited, ambient, pg_audit};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod schema {
    diesel::table! {
        products (id) {
            id -> Int4,
            title -> Text,
            price_cents -> Int4,
            updated_at -> Timestamp,
        }
    }

    diesel::table! {
        customers (id) {
            id -> Int4,
            name -> Text,
            email -> Text,
            password_hash -> Text,
        }
    }
}

use schema::{customers, products};

/// Title and price are audited; `updated_at` alone changing logs nothing.
#[pg_audit(track_only = [title, price_cents])]
#[derive(Debug, Queryable, Selectable, Serialize)]
#[diesel(table_name = products)]
pub struct Product {
    pub id: i32,
    pub title: String,
    pub price_cents: i32,
}

/// Everything but the password hash is audited.
#[pg_audit(exclude_fields = [password_hash])]
#[derive(Debug, Queryable, Selectable, Serialize)]
#[diesel(table_name = customers)]
pub struct Customer {
    pub id: i32,
    pub name: String,
    pub email: String,
}

pub type DbPool = Pool<ConnectionManager<PgConnection>>;

/// The service's tables. A real service keeps them in its Diesel migrations, run before
/// pg-audit's (as the quickstart does); here they are inline so the end-to-end tests can
/// include this file as it is.
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

/// Stand-in for real authentication: bearer tokens and their users.
const TOKENS: [(&str, &str); 3] = [
    ("alice-token", "alice"),
    ("bob-token", "bob"),
    ("carol-token", "carol"),
];

/// The authenticated user, put in the request's extensions by [`authenticate`].
#[derive(Debug, Clone)]
pub struct CurrentUser(pub String);

/// A pool on `url`, after creating the service's tables and running pg-audit's migrations.
pub fn connect(url: &str) -> Result<DbPool, Box<dyn std::error::Error + Send + Sync>> {
    let pool = Pool::builder()
        .max_size(8)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    let mut conn = pool.get()?;
    conn.batch_execute(SCHEMA)?;
    conn.run_pending_migrations(pg_audit_diesel::migrations())?;
    Ok(pool)
}

/// The service. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`, so the
/// audit layer sees each client's address.
pub fn app(pool: DbPool, trusted_proxies: Vec<IpNet>) -> Router {
    // The audit admin: alice may revert and restore, the other users read; anyone else is
    // asked to sign in.
    let admin = pg_audit_admin::router(pool.clone()).authorize(|request| {
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
    let audit = AuditLayer::new()
        .trusted_proxies(trusted_proxies)
        .change_reason_header(HeaderName::from_static("x-change-reason"))
        .user_id(|request| {
            request
                .extensions
                .get::<CurrentUser>()
                .map(|user| user.0.clone())
        });
    Router::new()
        .route("/products", post(create_product))
        .route(
            "/products/{id}",
            get(get_product)
                .patch(update_product)
                .delete(delete_product),
        )
        .route("/products/{id}/restore", post(restore_product))
        .route("/products/{id}/history", get(history::<Product>))
        .route("/customers", post(create_customer))
        .route("/customers/{id}", get(get_customer).patch(update_customer))
        .route("/customers/{id}/history", get(history::<Customer>))
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
    (
        StatusCode::UNAUTHORIZED,
        [(
            "www-authenticate",
            "Basic realm=\"pg-audit example\", charset=\"UTF-8\"",
        )],
        "sign in as alice / alice-token (or bob / bob-token)\n",
    )
        .into_response()
}

/// Reads the bearer token, or basic-auth credentials whose password is a token; a write
/// without a known one is refused.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let basic = pg_audit_admin::basic_credentials(request.headers()).map(|(_, password)| password);
    let token = authorization
        .strip_prefix("Bearer ")
        .map(str::to_owned)
        .or(basic);
    let token = token.as_deref();
    match TOKENS.iter().find(|(t, _)| Some(*t) == token) {
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

/// Runs `f` on a pooled connection on a blocking thread. pg-audit's `spawn_blocking` carries
/// the request's audit context there (tokio's would not).
async fn db<T: Send + 'static>(
    pool: &DbPool,
    f: impl FnOnce(&mut PgConnection) -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    let pool = pool.clone();
    ambient::spawn_blocking(move || f(&mut *pool.get()?))
        .await
        .map_err(|e| AppError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

#[derive(Deserialize)]
struct NewProduct {
    title: String,
    price_cents: i32,
}

async fn create_product(
    State(pool): State<DbPool>,
    Json(new): Json<NewProduct>,
) -> Result<(StatusCode, Json<Product>), AppError> {
    let product = db(&pool, move |conn| {
        Ok(conn.audited_transaction(|conn| {
            diesel::insert_into(products::table)
                .values((
                    products::title.eq(new.title),
                    products::price_cents.eq(new.price_cents),
                ))
                .returning(Product::as_returning())
                .get_result(conn)
        })?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(product)))
}

async fn get_product(
    State(pool): State<DbPool>,
    Path(id): Path<i32>,
) -> Result<Json<Product>, AppError> {
    let product = db(&pool, move |conn| {
        Ok(products::table
            .find(id)
            .select(Product::as_select())
            .first(conn)?)
    })
    .await?;
    Ok(Json(product))
}

#[derive(Deserialize, AsChangeset)]
#[diesel(table_name = products)]
struct ProductChanges {
    title: Option<String>,
    price_cents: Option<i32>,
}

async fn update_product(
    State(pool): State<DbPool>,
    Path(id): Path<i32>,
    Json(changes): Json<ProductChanges>,
) -> Result<Json<Product>, AppError> {
    if changes.title.is_none() && changes.price_cents.is_none() {
        return Err(AppError(
            StatusCode::BAD_REQUEST,
            "give title or price_cents".into(),
        ));
    }
    let product = db(&pool, move |conn| {
        Ok(conn.audited_transaction(|conn| {
            diesel::update(products::table.find(id))
                .set((&changes, products::updated_at.eq(diesel::dsl::now)))
                .returning(Product::as_returning())
                .get_result(conn)
        })?)
    })
    .await?;
    Ok(Json(product))
}

async fn delete_product(
    State(pool): State<DbPool>,
    Path(id): Path<i32>,
) -> Result<StatusCode, AppError> {
    let deleted = db(&pool, move |conn| {
        Ok(conn
            .audited_transaction(|conn| diesel::delete(products::table.find(id)).execute(conn))?)
    })
    .await?;
    match deleted {
        0 => Err(AppError(StatusCode::NOT_FOUND, "no such product".into())),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

async fn restore_product(
    State(pool): State<DbPool>,
    Path(id): Path<i32>,
) -> Result<Json<Product>, AppError> {
    let product = db(&pool, move |conn| {
        AuditReader::new()
            .restore::<Product>(conn, id, "restored")
            .map_err(|e| AppError(StatusCode::CONFLICT, e.to_string()))?;
        Ok(products::table
            .find(id)
            .select(Product::as_select())
            .first(conn)?)
    })
    .await?;
    Ok(Json(product))
}

#[derive(Deserialize)]
struct CustomerInput {
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

#[derive(AsChangeset)]
#[diesel(table_name = customers)]
struct CustomerChanges {
    name: Option<String>,
    email: Option<String>,
    password_hash: Option<String>,
}

impl From<CustomerInput> for CustomerChanges {
    fn from(input: CustomerInput) -> Self {
        CustomerChanges {
            name: input.name,
            email: input.email,
            // A real service hashes with argon2 or similar; the log never sees either.
            password_hash: input.password.map(|p| format!("demo-hash:{}", p.len())),
        }
    }
}

async fn create_customer(
    State(pool): State<DbPool>,
    Json(input): Json<CustomerInput>,
) -> Result<(StatusCode, Json<Customer>), AppError> {
    let CustomerChanges {
        name: Some(name),
        email: Some(email),
        password_hash: Some(hash),
    } = input.into()
    else {
        return Err(AppError(
            StatusCode::BAD_REQUEST,
            "give name, email and password".into(),
        ));
    };
    let customer = db(&pool, move |conn| {
        Ok(conn.audited_transaction(|conn| {
            diesel::insert_into(customers::table)
                .values((
                    customers::name.eq(name),
                    customers::email.eq(email),
                    customers::password_hash.eq(hash),
                ))
                .returning(Customer::as_returning())
                .get_result(conn)
        })?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

async fn get_customer(
    State(pool): State<DbPool>,
    Path(id): Path<i32>,
) -> Result<Json<Customer>, AppError> {
    let customer = db(&pool, move |conn| {
        Ok(customers::table
            .find(id)
            .select(Customer::as_select())
            .first(conn)?)
    })
    .await?;
    Ok(Json(customer))
}

async fn update_customer(
    State(pool): State<DbPool>,
    Path(id): Path<i32>,
    Json(input): Json<CustomerInput>,
) -> Result<Json<Customer>, AppError> {
    let changes = CustomerChanges::from(input);
    if changes.name.is_none() && changes.email.is_none() && changes.password_hash.is_none() {
        return Err(AppError(
            StatusCode::BAD_REQUEST,
            "give name, email or password".into(),
        ));
    }
    let customer = db(&pool, move |conn| {
        Ok(conn.audited_transaction(|conn| {
            diesel::update(customers::table.find(id))
                .set(&changes)
                .returning(Customer::as_returning())
                .get_result(conn)
        })?)
    })
    .await?;
    Ok(Json(customer))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

/// An entry as the log holds it (times in RFC 3339, the context as its JSON object), with the
/// columns it changed as `{"column": [before, after]}`.
#[derive(Serialize)]
struct HistoryEntry {
    #[serde(flatten)]
    entry: AuditEntry,
    changes: std::collections::BTreeMap<String, (Value, Value)>,
}

/// A record's history, newest first.
async fn history<T: Audited + Send + 'static>(
    State(pool): State<DbPool>,
    Path(id): Path<i32>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<HistoryEntry>>, AppError> {
    let page = Page {
        limit: q.limit.unwrap_or(50).clamp(1, 500),
        before: q.before,
    };
    let entries = db(&pool, move |conn| {
        AuditReader::new()
            .history::<T>(conn, id, page)
            .map_err(|e| AppError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|entry| HistoryEntry {
                changes: entry.changes(),
                entry,
            })
            .collect(),
    ))
}

/// An error as a status and a JSON body.
#[derive(Debug)]
pub struct AppError(StatusCode, String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => AppError(StatusCode::NOT_FOUND, "not found".into()),
            Error::DatabaseError(DatabaseErrorKind::CheckViolation, info) => {
                AppError(StatusCode::UNPROCESSABLE_ENTITY, info.message().to_owned())
            }
            e => AppError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<PoolError> for AppError {
    fn from(e: PoolError) -> Self {
        AppError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// Logs to stderr: pg-audit's events, and each audited transaction's span when it closes.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::format::FmtSpan;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("pg_audit=info")),
        )
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    init_tracing();
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;
    let trusted_proxies = std::env::var("TRUSTED_PROXIES")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<IpNet>())
        .collect::<Result<Vec<_>, _>>()?;

    let server = pg_audit_tempdb::shared()?;
    let database = server.create_database("axum_app")?;
    let pool = connect(database.url())?;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({e}); set ADDR to another address"))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!(
        "pg-audit example service on {base} (Ctrl-C to stop). Try:

  curl -s -X POST {base}/products -H 'Authorization: Bearer alice-token' \\
       -H 'Content-Type: application/json' -d '{{\"title\": \"Lamp\", \"price_cents\": 2500}}'
  curl -s -X PATCH {base}/products/1 -H 'Authorization: Bearer bob-token' \\
       -H 'X-Change-Reason: Spring sale' -H 'X-Request-ID: req-42' \\
       -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \\
       -H 'Content-Type: application/json' -d '{{\"price_cents\": 2200}}'
  curl -s -X DELETE {base}/products/1 -H 'Authorization: Bearer carol-token'
  curl -s -X POST {base}/products/1/restore -H 'Authorization: Bearer alice-token'
  curl -s {base}/products/1/history

The audit admin: {base}/audit/ (sign in as alice / alice-token)
"
    );
    axum::serve(
        listener,
        app(pool, trusted_proxies).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    drop(database);
    Ok(())
}
