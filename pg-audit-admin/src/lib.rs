//! The audit trail of [pg-audit](https://docs.rs/pg-audit-diesel) in a browser: an axum
//! [`Router`] an application mounts, and the same pages behind `pg-audit admin`.
//!
//! ```no_run
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use pg_audit_admin::Access;
//! # fn f(pool: Pool<ConnectionManager<diesel::PgConnection>>) {
//! let admin = pg_audit_admin::router(pool).authorize(|request| {
//!     // Who may see the trail, and who may revert: from the request's head (a session, a
//!     // header your authentication layer set, ...).
//!     match request.headers.get("x-staff-role").and_then(|v| v.to_str().ok()) {
//!         Some("auditor") => Access::Read,
//!         Some("admin") => Access::Write { user: "admin".into() },
//!         _ => Access::None,
//!     }
//! });
//! let app: axum::Router = axum::Router::new().nest_service("/audit", admin);
//! # }
//! ```
//!
//! **Secure by default.** Nothing is served until [`Admin::authorize`] is given a function:
//! [`router`] returns an [`Admin`], not a `Router`. [`Access::None`] gets 403 on every page,
//! [`Access::Read`] the pages, [`Access::Write`] also revert and restore, which are audited
//! with its user as user id. Every form carries a CSRF token (a `SameSite=Strict` cookie the
//! form must repeat). Every audited value is hostile: maud escapes all text, control and
//! bidirectional characters show as visible escapes, and links carry values only
//! percent-encoded in query strings. Reading needs only what `pg-audit sql grant` gives.
//!
//! **Built to trust.** Server-rendered HTML from maud templates (checked at compile time,
//! escaped by default, no template files to ship), no JavaScript at all, the style sheet
//! compiled in (no CDN), light and dark, readable on a phone.

use std::sync::Arc;

use axum::Router;
use axum::extract::{OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit::AuditLog;
use pg_audit_diesel::AuditConnectionExt as _;

#[cfg(feature = "archive")]
mod archive;
mod csrf;
mod html;
mod pages;

/// The connection pool the admin reads (and, with write access, reverts) through.
pub type DbPool = Pool<ConnectionManager<PgConnection>>;

/// What a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing: every page answers 403.
    None,
    /// Read every page.
    Read,
    /// Read, and revert or restore records; those changes carry `user` as their user id.
    Write {
        /// Who, as the audit log's user id.
        user: String,
    },
}

type AuthorizeFn = dyn Fn(&Parts) -> Access + Send + Sync;

/// The admin before it may serve: give [`Admin::authorize`] a function to get the router.
#[must_use = "nothing is served until `authorize` gives the router"]
pub struct Admin {
    pool: DbPool,
    log: AuditLog,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// The admin over `pool`, reading `audit.auditlog`.
pub fn router(pool: DbPool) -> Admin {
    Admin {
        pool,
        log: AuditLog::new(),
    }
}

impl Admin {
    /// Reads `log` instead of `audit.auditlog`.
    pub fn log(mut self, log: AuditLog) -> Self {
        self.log = log;
        self
    }

    /// The router, answering each request as `authorize` decides from its head.
    pub fn authorize(self, authorize: impl Fn(&Parts) -> Access + Send + Sync + 'static) -> Router {
        let state = Arc::new(AppState {
            pool: self.pool,
            log: self.log,
            authorize: Box::new(authorize),
        });
        ROUTES
            .iter()
            .fold(Router::new(), |router, &path| {
                router.route(path, handler(path))
            })
            .route_layer(middleware::from_fn_with_state(state.clone(), check_access))
            .layer(middleware::map_response(security_headers))
            .with_state(state)
    }
}

/// Every path the admin answers, in the order of its pages (`{txid}` a parameter). The router
/// is built from this list, so tests can check that they reach every page.
#[doc(hidden)]
pub const ROUTES: [&str; 11] = [
    "/",
    "/record",
    "/record/revert",
    "/record/restore",
    "/tx/{txid}",
    "/request",
    "/user",
    "/tables",
    "/table",
    "/partitions",
    "/assets/style.css",
];

/// The handler of a path of [`ROUTES`].
fn handler(path: &str) -> axum::routing::MethodRouter<Shared> {
    match path {
        "/" => get(pages::activity),
        "/record" => get(pages::record),
        "/record/revert" => post(pages::revert),
        "/record/restore" => post(pages::restore),
        "/tx/{txid}" => get(pages::transaction),
        "/request" => get(pages::request),
        "/user" => get(pages::user),
        "/tables" => get(pages::tables),
        "/table" => get(pages::table),
        "/partitions" => get(pages::partitions),
        "/assets/style.css" => get(style),
        other => unreachable!("{other} is not a route of the admin"),
    }
}

/// The user and password of an `Authorization: Basic` header (the scheme in any case), for an
/// authorization function that signs people in with HTTP basic auth.
pub fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(decode_base64(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Standard base64 as browsers send it in `Authorization: Basic`, padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const BASIC: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    BASIC.decode(text).ok()
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) pool: DbPool,
    pub(crate) log: AuditLog,
    authorize: Box<AuthorizeFn>,
}

pub(crate) type Shared = Arc<AppState>;

/// Asks the application's function; refuses what it does not allow.
async fn check_access(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let access = (state.authorize)(&parts);
    let allowed = match (&access, parts.method.is_safe()) {
        (Access::None, _) => false,
        (Access::Read, safe) => safe,
        (Access::Write { .. }, _) => true,
    };
    // PostgreSQL text cannot hold a NUL: a parameter with one is answered here, not by an
    // error from the database.
    if parts
        .uri
        .query()
        .is_some_and(|q| q.to_ascii_lowercase().contains("%00"))
    {
        return PageError::bad_request(
            "a parameter contains a NUL character (%00), which no value in the log can hold",
        )
        .into_response();
    }
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "403 Forbidden: this account may not do this in the audit admin\n",
        )
            .into_response();
    }
    parts.extensions.insert(access);
    next.run(Request::from_parts(parts, body)).await
}

/// Defence in depth beside the escaping: no script may run at all, nothing loads from
/// elsewhere, no other site may frame the pages or sniff types.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        html::STYLE,
    )
}

/// Where the admin is mounted (`/audit` under `.nest("/audit", ...)`, else empty): what every
/// page's links start with, extracted from the request.
pub(crate) struct Mount(pub(crate) String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Mount {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let original = OriginalUri::from_request_parts(parts, state).await?;
        Ok(Mount(base(&original, &parts.uri)))
    }
}

/// [`Mount`] from the original URI and the one the nested router sees.
fn base(original: &OriginalUri, uri: &axum::http::Uri) -> String {
    let full = original.path();
    let inner = uri.path();
    if inner == "/" {
        return full.trim_end_matches('/').to_owned();
    }
    full.strip_suffix(inner).unwrap_or("").to_owned()
}

/// A page's query string, or the admin's error page naming what is wrong with it (axum's own
/// `Query` answers a plain-text "Failed to deserialize query string").
pub(crate) struct Query<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for Query<T>
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(q)) => Ok(Query(q)),
            Err(e) => Err(PageError::bad_request(format!(
                "This page's address is incomplete or wrong ({}). Follow a link from the activity or the tables instead.",
                e.body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}

/// A page's path parameter, or the admin's error page naming what is wrong with it.
pub(crate) struct Path<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S>
    for Path<T>
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(Path(p)),
            Err(e) => Err(PageError::bad_request(format!(
                "This page's address is wrong: {}",
                e.body_text()
            ))),
        }
    }
}

/// An error page's response.
#[derive(Debug)]
pub(crate) struct PageError(StatusCode, String);

impl PageError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        PageError(StatusCode::BAD_REQUEST, message.into())
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        PageError(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = maud::html! {
            (maud::DOCTYPE)
            html lang="en" { head { meta charset="utf-8"; title { "Error · pg-audit" } }
                body { h1 { (self.0.as_u16()) " " (self.0.canonical_reason().unwrap_or("")) }
                       p { (html::text(&self.1)) } } }
        };
        (self.0, body).into_response()
    }
}

impl From<diesel::result::Error> for PageError {
    fn from(e: diesel::result::Error) -> Self {
        PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<pg_audit_diesel::Error> for PageError {
    fn from(e: pg_audit_diesel::Error) -> Self {
        use pg_audit_diesel::Error as E;
        let status = match e {
            E::NotInHistory { .. } | E::NoHistory { .. } | E::NotAudited { .. } => {
                StatusCode::NOT_FOUND
            }
            E::NotDeleted { .. } | E::MissingValues { .. } | E::BadKey { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        PageError(status, e.to_string())
    }
}

impl From<pg_audit::Error> for PageError {
    fn from(e: pg_audit::Error) -> Self {
        PageError::bad_request(e.to_string())
    }
}

/// Runs `f` on a pooled connection on a blocking thread, in a transaction that first pins
/// pg-audit's settings ([`pg_audit::session::set_local_sql`]): the pool is the application's,
/// and its sessions' `search_path` (with whatever another role planted in `public`) and
/// settings must not decide what a page's queries call or read. The pages' queries are
/// schema-qualified too. A page that fails rolls its transaction back.
pub(crate) async fn with_conn<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&mut PgConnection) -> Result<T, PageError> + Send + 'static,
) -> Result<T, PageError> {
    let pool = state.pool.clone();
    pg_audit_diesel::ambient::spawn_blocking(move || {
        let mut conn = pool
            .get()
            .map_err(|e| PageError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        // Opened as an audited transaction: a change a page makes carries the ambient context
        // the page set (revert and restore: the admin's user and source).
        conn.audited_transaction(|conn| {
            diesel::connection::SimpleConnection::batch_execute(
                conn,
                &pg_audit::session::set_local_sql(),
            )?;
            f(conn)
        })
    })
    .await
    .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_in_any_case_and_garbage_is_none() {
        let headers = |value: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        // "ann:pa:ss"
        let ann = Some(("ann".to_owned(), "pa:ss".to_owned()));
        assert_eq!(basic_credentials(&headers("Basic YW5uOnBhOnNz")), ann);
        assert_eq!(basic_credentials(&headers("basic YW5uOnBhOnNz")), ann);
        assert_eq!(basic_credentials(&headers("Bearer YW5uOnBhOnNz")), None);
        assert_eq!(basic_credentials(&headers("Basic !!!")), None);
        assert_eq!(basic_credentials(&axum::http::HeaderMap::new()), None);
    }
}
