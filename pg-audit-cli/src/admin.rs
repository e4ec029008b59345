//! `pg-audit admin`: the audit admin's pages served on their own.
//!
//! It binds to loopback unless given credentials: on another address it refuses to start
//! without `--token` or `--basic-auth`, so the trail is never served to a network unasked.
//! With credentials every request must present them (a bearer token, or HTTP basic auth,
//! which browsers ask for), and may revert and restore as that user; without them (loopback
//! only) the pages are read-only, since a change must name who made it.

use std::net::SocketAddr;

use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit_admin::Access;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::options::{Db, Result};

/// How a request proves who it is.
#[derive(Debug, Clone)]
enum Credentials {
    /// None needed (loopback): read-only.
    Open,
    /// `Authorization: Bearer <token>`, or basic auth with the token as password.
    Token(String),
    /// Basic auth with this user and password.
    Basic { user: String, password: String },
}

/// `pg-audit admin`.
pub(crate) fn serve(
    listen: SocketAddr,
    token: Option<String>,
    basic_auth: Option<String>,
    metrics_listen: Option<SocketAddr>,
    db: &Db,
) -> Result<()> {
    let credentials = match (token, basic_auth) {
        (Some(_), Some(_)) => return Err("give --token or --basic-auth, not both".into()),
        (Some(token), None) if token.len() < 16 => {
            return Err(
                "the --token is too short to guess-proof: use at least 16 characters".into(),
            );
        }
        (Some(token), None) => Credentials::Token(token),
        (None, Some(pair)) => {
            match pair.split_once(':') {
                Some((user, password)) if !user.is_empty() && password.len() >= 8 => {
                    Credentials::Basic {
                        user: user.to_owned(),
                        password: password.to_owned(),
                    }
                }
                _ => {
                    return Err("--basic-auth takes USER:PASSWORD, with a password of at least 8 characters".into());
                }
            }
        }
        (None, None) if !listen.ip().is_loopback() => {
            return Err(format!(
                "refusing to serve the audit trail on {listen} without credentials: pass --token \
                 or --basic-auth USER:PASSWORD, or listen on loopback (127.0.0.1)"
            )
            .into());
        }
        (None, None) => Credentials::Open,
    };
    let url = db.pinned_url()?;
    let log = db.log()?;
    let pool = Pool::builder()
        .max_size(8)
        .connection_customizer(Box::new(StatementTimeout))
        .build(ConnectionManager::<PgConnection>::new(url.clone()))
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let open = matches!(credentials, Credentials::Open);
    let port = listen.port();
    // The metrics and the health check read through a connection of their own, never
    // waiting long for it: a flood of scrapes cannot starve the pages, and a database that
    // does not answer makes /health say so in seconds.
    let metrics = metrics_listen.map(|addr| {
        let pool = Pool::builder()
            .max_size(1)
            .connection_timeout(std::time::Duration::from_secs(5))
            .connection_customizer(Box::new(StatementTimeout))
            .build_unchecked(ConnectionManager::<PgConnection>::new(url.clone()));
        let (metrics, registry) = Metrics::new(pool, log.clone());
        (addr, metrics, registry)
    });
    let admin = pg_audit_admin::router(pool)
        .log(log)
        .authorize(move |request| {
            // Open on loopback: only requests addressed to loopback, so a web page whose name
            // an attacker rebinds to 127.0.0.1 cannot read the trail.
            if open && !loopback_host(request, port) {
                return Access::None;
            }
            authorize(&credentials, request)
        });
    // Ask browsers for credentials instead of a bare 403.
    let app = admin.layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| async move {
            if response.status() == StatusCode::FORBIDDEN && !open {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"pg-audit\", charset=\"UTF-8\""),
                );
            }
            response
        },
    ));
    // Requests are timed only when the metrics are served.
    let app = match &metrics {
        Some((_, timed, _)) => {
            let timed = timed.clone();
            app.layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let timed = timed.clone();
                    async move { timed.time(request, next).await }
                },
            ))
        }
        None => app,
    };
    crate::options::block_on(async move {
        if let Some((addr, metrics, registry)) = metrics {
            crate::metrics::serve(addr, "pg-audit admin", registry, metrics).await?;
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        crate::output::diagnostic(
            crate::output::Level::Info,
            &format!(
                "pg-audit admin on http://{addr}/ ({}); Ctrl-C to stop",
                if open {
                    "read-only: pass --token or --basic-auth to revert and restore"
                } else {
                    "sign in with the credentials given"
                }
            ),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?
}

/// A metric for each set of labels, made by a plain function.
type Family<L, M> = prometheus_client::metrics::family::Family<L, M, fn() -> M>;

/// The admin server's metrics: requests and their durations by page (the route's pattern,
/// so a page's many addresses count once), and at each scrape the seals' age and the ids past
/// them.
#[derive(Clone)]
struct Metrics {
    requests: Family<Vec<(String, String)>, Counter>,
    seconds: Family<Vec<(String, String)>, Histogram>,
    seal_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    past_seals: Gauge,
    pool: Pool<ConnectionManager<PgConnection>>,
    log: pg_audit::AuditLog,
}

#[derive(diesel::QueryableByName)]
struct SealMetrics {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    seal_age_seconds: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ids_past_seals: i64,
}

impl Metrics {
    /// The metrics, and the registry holding them.
    fn new(
        pool: Pool<ConnectionManager<PgConnection>>,
        log: pg_audit::AuditLog,
    ) -> (Metrics, prometheus_client::registry::Registry) {
        fn histogram() -> Histogram {
            // 1 ms to 16 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            ))
        }
        let requests: Family<_, Counter> = Family::new_with_constructor(Counter::default);
        let seconds: Family<_, Histogram> = Family::new_with_constructor(histogram);
        let seal_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let past_seals = Gauge::default();
        let mut registry = prometheus_client::registry::Registry::default();
        let r = registry.sub_registry_with_prefix("pg_audit_admin");
        r.register(
            "requests",
            "Requests answered, by page and status",
            requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to answer a request, by page",
            seconds.clone(),
        );
        let r = registry.sub_registry_with_prefix("pg_audit");
        r.register(
            "seal_age_seconds",
            "Seconds since the newest seal was made (-1 before the first)",
            seal_age.clone(),
        );
        r.register(
            "ids_past_seals",
            "Log ids handed out past the last sealed one",
            past_seals.clone(),
        );
        let metrics = Metrics {
            requests,
            seconds,
            seal_age,
            past_seals,
            pool,
            log,
        };
        (metrics, registry)
    }

    /// Answers `request`, counting it and its duration under its page.
    async fn time(
        &self,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let page = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
        let start = std::time::Instant::now();
        let response = next.run(request).await;
        let labels = vec![("page".to_owned(), page.clone())];
        self.seconds
            .get_or_create(&labels)
            .observe(start.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&vec![
                ("page".to_owned(), page),
                ("status".to_owned(), response.status().as_u16().to_string()),
            ])
            .inc();
        response
    }

    /// Reads the seals' state; `false` when the database does not answer.
    fn refresh(&self) -> bool {
        use diesel::RunQueryDsl as _;
        let Ok(mut conn) = self.pool.get() else {
            return false;
        };
        match diesel::sql_query(self.log.seal_metrics_sql()).get_result::<SealMetrics>(&mut conn) {
            Ok(m) => {
                self.seal_age.set(m.seal_age_seconds.unwrap_or(-1.0));
                self.past_seals.set(m.ids_past_seals);
                true
            }
            Err(e) => {
                tracing::warn!(error = %pg_audit::error_chain(&e), "pg-audit admin: reading the seals for the metrics");
                false
            }
        }
    }
}

impl crate::metrics::Watched for Metrics {
    async fn check(&self) -> (bool, &'static str) {
        let metrics = self.clone();
        match tokio::task::spawn_blocking(move || metrics.refresh()).await {
            Ok(true) => (true, "ok\n"),
            _ => (false, "the database does not answer\n"),
        }
    }
}

/// No page may hold a connection for long: a query of the admin's over a huge log is cut off.
#[derive(Debug)]
struct StatementTimeout;

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for StatementTimeout {
    fn on_acquire(&self, conn: &mut PgConnection) -> std::result::Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection as _;
        conn.batch_execute("SET statement_timeout = '30s'")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Whether the request's `Host` names loopback (`127.0.0.1`, `[::1]` or `localhost`), on our
/// port.
fn loopback_host(request: &Parts, port: u16) -> bool {
    let Some(host) = request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    ["127.0.0.1", "[::1]", "localhost"]
        .iter()
        .any(|name| host == format!("{name}:{port}") || (port == 80 && host == *name))
}

/// What a request may do under `credentials`.
fn authorize(credentials: &Credentials, request: &Parts) -> Access {
    let given = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (scheme, rest) = given.split_once(' ').unwrap_or(("", ""));
    let basic = pg_audit_admin::basic_credentials(&request.headers);
    match credentials {
        Credentials::Open => Access::Read,
        Credentials::Token(token) => {
            let presented = Some(rest.trim().to_owned())
                .filter(|_| scheme.eq_ignore_ascii_case("bearer"))
                .or_else(|| basic.as_ref().map(|(_, p)| p.clone()));
            match presented {
                // A shared token says nothing about who holds it: the user is not taken from
                // the request, where anyone with the token could name anyone.
                Some(p) if same(&p, token) => Access::Write {
                    user: "pg-audit admin (token)".to_owned(),
                },
                _ => Access::None,
            }
        }
        Credentials::Basic { user, password } => match basic {
            Some((u, p)) if same(&u, user) && same(&p, password) => Access::Write { user: u },
            _ => Access::None,
        },
    }
}

/// Equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = axum::http::Request::builder();
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_open_server_answers_only_requests_addressed_to_loopback() {
        let with_host = |host: &str| {
            axum::http::Request::builder()
                .header(header::HOST, host)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert!(loopback_host(&with_host("127.0.0.1:8080"), 8080));
        assert!(loopback_host(&with_host("LOCALHOST:8080"), 8080));
        assert!(loopback_host(&with_host("[::1]:8080"), 8080));
        assert!(!loopback_host(&with_host("attacker.example:8080"), 8080));
        assert!(!loopback_host(&with_host("127.0.0.1:9090"), 8080));
        assert!(!loopback_host(&parts(None), 8080));
    }

    #[test]
    fn credentials_decide_access() {
        let token = Credentials::Token("0123456789abcdef".into());
        assert_eq!(authorize(&token, &parts(None)), Access::None);
        let by_token = Access::Write {
            user: "pg-audit admin (token)".into(),
        };
        assert_eq!(
            authorize(&token, &parts(Some("Bearer 0123456789abcdef"))),
            by_token
        );
        // "ann:0123456789abcdef": the token as password, but the user is not ann's to choose.
        assert_eq!(
            authorize(&token, &parts(Some("basic YW5uOjAxMjM0NTY3ODlhYmNkZWY="))),
            by_token
        );
        assert_eq!(
            authorize(&token, &parts(Some("Bearer 0123456789abcdeX"))),
            Access::None
        );
        let basic = Credentials::Basic {
            user: "ann".into(),
            password: "0123456789abcdef".into(),
        };
        assert_eq!(
            authorize(&basic, &parts(Some("Basic YW5uOjAxMjM0NTY3ODlhYmNkZWY="))),
            Access::Write { user: "ann".into() }
        );
        assert_eq!(authorize(&basic, &parts(Some("Basic !!!"))), Access::None);
        assert_eq!(authorize(&Credentials::Open, &parts(None)), Access::Read);
    }
}
