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
        .build(ConnectionManager::<PgConnection>::new(url))
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let open = matches!(credentials, Credentials::Open);
    let port = listen.port();
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
    crate::options::block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "pg-audit admin on http://{addr}/ ({}); Ctrl-C to stop",
            if open {
                "read-only: pass --token or --basic-auth to revert and restore"
            } else {
                "sign in with the credentials given"
            }
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?
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
