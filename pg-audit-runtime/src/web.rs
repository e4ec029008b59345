//! The audit context of each HTTP request: a tower [`Layer`](tower_layer::Layer) (feature
//! `tower`; feature `axum` adds axum's matched route and peer address).
//!
//! ```no_run
//! # use std::net::SocketAddr;
//! # use axum::{Router, middleware, routing::patch, http::HeaderName};
//! # #[derive(Clone)] struct CurrentUser { id: i64 }
//! # async fn update_product() {}
//! # async fn authenticate(req: axum::extract::Request, next: middleware::Next) -> axum::response::Response { next.run(req).await }
//! # async fn f(listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
//! use pg_audit_runtime::web::AuditLayer; // also `pg_audit_diesel::web`, `pg_audit_sqlx::web`
//!
//! let app = Router::new()
//!     .route("/products/{id}", patch(update_product))
//!     .layer(
//!         AuditLayer::new()
//!             .trusted_proxies(["10.0.0.0/8".parse()?])
//!             .change_reason_header(HeaderName::from_static("x-change-reason"))
//!             .user_id(|req| req.extensions.get::<CurrentUser>().map(|u| u.id.to_string())),
//!     )
//!     .layer(middleware::from_fn(authenticate)); // outside the audit layer: runs first
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! For each request the layer builds an [`AuditContext`] and runs the inner service with it as
//! the ambient context ([`AuditContext::scope`]), so every transaction pg-audit opens while
//! the request is handled carries it:
//!
//! | field | from |
//! |---|---|
//! | `request_id` | tower-http's [`RequestId`] extension when a `SetRequestIdLayer` outside this layer set one; else `X-Request-ID`, when the request has exactly one; either only when it is 1 to 128 of `A-Z a-z 0-9 - _ . : / + = @`; otherwise a new UUID. Echoed in the response's `X-Request-ID`, and set as the [`RequestId`] extension when there was none, so tower-http's `PropagateRequestIdLayer`, its `TraceLayer` spans and the handlers see the same id. |
//! | `trace_id` | the W3C `traceparent` header, when the request has exactly one and it is valid ([`AuditContext::trace_id_from_traceparent`]); with the feature `opentelemetry` and no header, the current OpenTelemetry span's trace id when a transaction begins |
//! | `client_addr` | the peer's IP address; when the peer is a trusted proxy, the nearest address in `X-Forwarded-For` that is not a trusted proxy (so a client cannot forge it) |
//! | `source` | `http`, the method, and the route: axum's matched path (`/products/{id}`) or, without it, the request path |
//! | `user_id` | the function given to [`AuditLayer::user_id`], from the request's head |
//! | `change_reason` | the header given to [`AuditLayer::change_reason_header`], if any |
//! | `metadata` | `{"user_agent": ...}` |
//!
//! Headers never fail a request: a malformed request id is replaced, malformed
//! `X-Forwarded-For` hops end the walk at the last good one, and every value is bounded
//! (request id 128 bytes, user agent 256 characters, change reason 1024 characters, route 256
//! bytes, method 16 bytes; a user id over 256 bytes or holding a control character is left
//! out) and stripped of control characters, so the context is always valid and a write never
//! fails for it. A header given twice is treated as absent.
//!
//! The peer address comes from axum's `ConnectInfo<SocketAddr>` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`) or, for other tower servers, a
//! [`SocketAddr`] request extension.
//!
//! Writes made in the handler carry the context, one line each:
//!
//! - sqlx (`pg-audit-sqlx`): `pool.begin_audited(&AuditContext::new())` (or with more
//!   context), directly in the handler;
//! - sync Diesel on a blocking thread: `ambient::spawn_blocking` (feature
//!   `tokio`) instead of `tokio::task::spawn_blocking`, then `conn.audited_transaction(..)` or
//!   `conn.with_change_reason(..)`;
//! - `AuditedConnection` from a pool (feature `connection-wrapper`): the same
//!   `spawn_blocking`, then plain Diesel;
//! - diesel-async (feature `async`): `conn.audited_transaction(async |conn| ..)` or
//!   `with_change_reason` (`AsyncAuditConnectionExt`), directly in the handler.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::{Request, Response};
use serde_json::json;
/// tower-http's request id extension, read and set by the layer.
pub use tower_http::request_id::RequestId;

use crate::AuditContext;
use crate::ambient::Scoped;

/// An IP network, for [`AuditLayer::trusted_proxies`]: `"10.0.0.0/8".parse()?`.
pub use ipnet::IpNet;

/// The request id header, read and echoed.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The W3C Trace Context header the trace id is read from.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The longest request id taken from a request.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// The longest user agent recorded, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 256;
/// The longest route recorded, in bytes.
pub const MAX_ROUTE_LEN: usize = 256;
/// The longest user id recorded; a longer one is left out.
pub const MAX_USER_ID_LEN: usize = 256;
/// The longest change reason taken from a header, in characters.
pub const MAX_REASON_CHARS: usize = 1024;
/// The most `X-Forwarded-For` hops examined.
pub const MAX_FORWARDED_HOPS: usize = 32;

type UserIdFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// Fills the ambient audit context of each request; see the [module docs](self).
#[derive(Clone, Default)]
pub struct AuditLayer {
    config: Arc<Config>,
}

#[derive(Clone, Default)]
struct Config {
    trusted_proxies: Vec<IpNet>,
    user_id: Option<Arc<UserIdFn>>,
    reason_header: Option<HeaderName>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("trusted_proxies", &self.config.trusted_proxies)
            .field("user_id", &self.config.user_id.as_ref().map(|_| "fn"))
            .field("change_reason_header", &self.config.reason_header)
            .finish()
    }
}

impl AuditLayer {
    /// A layer trusting no proxy and recording no user id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Peers whose `X-Forwarded-For` is believed: the load balancers and reverse proxies in
    /// front of the service (`"10.0.0.0/8".parse()?`, `"127.0.0.1/32".parse()?`).
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.config_mut().trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// The user id of a request, from its head: typically an extension an authentication
    /// layer (placed outside this one) inserted. A user known only inside the handler is set
    /// there: `ambient::current().user_id(id).scope(async { .. })`.
    pub fn user_id(
        mut self,
        f: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().user_id = Some(Arc::new(f));
        self
    }

    /// Takes the change reason from this request header (`"x-change-reason"`), when the
    /// request has exactly one: its text, without control characters, at most
    /// [`MAX_REASON_CHARS`] characters. Reasons given in the handler chain after it.
    pub fn change_reason_header(mut self, name: HeaderName) -> Self {
        self.config_mut().reason_header = Some(name);
        self
    }

    /// The configuration to change; a layer configured after it was cloned changes alone.
    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }
}

impl<S> tower_layer::Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> AuditService<S> {
        AuditService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`AuditLayer`] wraps around another.
#[derive(Clone)]
pub struct AuditService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for AuditService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for AuditService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let (ctx, request_id) = self.config.context(&parts);
        // Later layers and handlers see the same id through tower-http's extension.
        if parts.extensions.get::<RequestId>().is_none()
            && let Ok(value) = HeaderValue::from_str(&request_id)
        {
            parts.extensions.insert(RequestId::new(value));
        }
        let request = Request::from_parts(parts, body);
        // Services may start work in `call`: run it with the context too.
        let future = ctx.clone().enter(|| self.inner.call(request));
        ResponseFuture {
            future: ctx.scope(future),
            request_id: HeaderValue::from_str(&request_id).ok(),
        }
    }
}

/// The response future of [`AuditService`]: the inner one, run with the request's context,
/// adding `X-Request-ID` to the response.
pub struct ResponseFuture<F> {
    future: Scoped<F>,
    request_id: Option<HeaderValue>,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = std::task::ready!(Pin::new(&mut self.future).poll(cx))?;
        if let Some(id) = self.request_id.take() {
            response
                .headers_mut()
                .entry(X_REQUEST_ID.clone())
                .or_insert(id);
        }
        Poll::Ready(Ok(response))
    }
}

impl Config {
    /// The context of a request, and its request id.
    fn context(&self, parts: &http::request::Parts) -> (AuditContext, String) {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .and_then(|id| valid_request_id(id.header_value()))
            .or_else(|| request_id(&parts.headers))
            .unwrap_or_else(|| uuid::Uuid::new_v4().hyphenated().to_string());
        let mut ctx = AuditContext::new()
            .request_id(request_id.clone())
            .source(format!(
                "http {} {}",
                bounded(parts.method.as_str(), 16),
                route(parts)
            ));
        if let Some(addr) = self.client_addr(parts) {
            ctx = ctx.client_addr(addr.to_string());
        }
        if let Some(user) = self.user_id.as_ref().and_then(|f| f(parts)).filter(|u| {
            !u.is_empty() && u.len() <= MAX_USER_ID_LEN && !u.chars().any(char::is_control)
        }) {
            ctx = ctx.user_id(user);
        }
        if let Some(agent) = header_text(&parts.headers, &USER_AGENT, MAX_USER_AGENT_CHARS) {
            ctx = ctx.metadata(json!({ "user_agent": agent }));
        }
        if let Some(reason) = self
            .reason_header
            .as_ref()
            .and_then(|name| header_text(&parts.headers, name, MAX_REASON_CHARS))
        {
            ctx = ctx.change_reason(reason);
        }
        if let Some(trace_id) = single(&parts.headers, &TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(AuditContext::trace_id_from_traceparent)
        {
            ctx = ctx.trace_id(trace_id);
        }
        (ctx, request_id)
    }

    /// The peer, or when it is a trusted proxy the nearest untrusted `X-Forwarded-For` hop.
    fn client_addr(&self, parts: &http::request::Parts) -> Option<IpAddr> {
        let mut client = peer_addr(&parts.extensions)?.ip().to_canonical();
        if !self.trusted(client) {
            return Some(client);
        }
        // Right to left: each hop was appended by the proxy after it.
        let hops = parts
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.trusted(ip) {
                        break;
                    }
                }
                // Garbage: stop at the last proxy that is known to be honest.
                None => break,
            }
        }
        Some(client)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The request's `X-Request-ID`, if it has exactly one and it is well-formed.
fn request_id(headers: &HeaderMap) -> Option<String> {
    valid_request_id(single(headers, &X_REQUEST_ID)?)
}

/// A request id as the context takes it: 1 to [`MAX_REQUEST_ID_LEN`] of a safe alphabet.
fn valid_request_id(value: &HeaderValue) -> Option<String> {
    let value = value.to_str().ok()?;
    let ok = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b));
    ok.then(|| value.to_owned())
}

/// The one value of `name`, or `None` if absent or repeated.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// The text of header `name` when the request has exactly one: decoded leniently, without
/// control characters, at most `max` characters; `None` if that leaves nothing.
fn header_text(headers: &HeaderMap, name: &HeaderName, max: usize) -> Option<String> {
    let value = single(headers, name)?;
    let text: String = String::from_utf8_lossy(value.as_bytes())
        .chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// An address in `X-Forwarded-For`: `203.0.113.9`, `2001:db8::1`, `[2001:db8::1]:443` or
/// `203.0.113.9:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

#[cfg(feature = "axum")]
fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| extensions.get::<SocketAddr>().copied())
}

#[cfg(not(feature = "axum"))]
fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions.get::<SocketAddr>().copied()
}

/// The route template when the router knows it, else the path; bounded.
fn route(parts: &http::request::Parts) -> String {
    #[cfg(feature = "axum")]
    if let Some(path) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return bounded(path.as_str(), MAX_ROUTE_LEN).to_owned();
    }
    bounded(parts.uri.path(), MAX_ROUTE_LEN).to_owned()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn bounded(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(
        build: impl FnOnce(http::request::Builder) -> http::request::Builder,
    ) -> http::request::Parts {
        build(Request::builder().uri("/products/7"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn with_peer(peer: &str, xff: &[&str]) -> http::request::Parts {
        let mut p = parts(|mut b| {
            for v in xff {
                b = b.header("x-forwarded-for", *v);
            }
            b
        });
        p.extensions.insert(peer.parse::<SocketAddr>().unwrap());
        p
    }

    fn proxies() -> Config {
        Config {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..Config::default()
        }
    }

    fn addr(config: &Config, p: &http::request::Parts) -> Option<String> {
        config.client_addr(p).map(|a| a.to_string())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let c = proxies();
        // A client claiming to be someone else.
        let p = with_peer("198.51.100.7:5000", &["203.0.113.9"]);
        assert_eq!(addr(&c, &p).as_deref(), Some("198.51.100.7"));
        // Through a trusted proxy.
        let p = with_peer("10.0.0.2:5000", &["203.0.113.9"]);
        assert_eq!(addr(&c, &p).as_deref(), Some("203.0.113.9"));
        // A forged hop to the left of the real one is ignored.
        let p = with_peer("10.0.0.2:5000", &["1.2.3.4, 203.0.113.9, 10.0.0.3"]);
        assert_eq!(addr(&c, &p).as_deref(), Some("203.0.113.9"));
        // Several headers are one list.
        let p = with_peer("10.0.0.2:5000", &["1.2.3.4", "203.0.113.9"]);
        assert_eq!(addr(&c, &p).as_deref(), Some("203.0.113.9"));
        // Garbage stops the walk at the last honest proxy.
        let p = with_peer("10.0.0.2:5000", &["203.0.113.9, <script>"]);
        assert_eq!(addr(&c, &p).as_deref(), Some("10.0.0.2"));
        // Ports, brackets and IPv4-mapped IPv6.
        let p = with_peer("[::1]:5000", &["[2001:db8::1]:443"]);
        assert_eq!(addr(&c, &p).as_deref(), Some("2001:db8::1"));
        let p = with_peer("[::ffff:10.0.0.2]:5000", &["203.0.113.9:443"]);
        assert_eq!(addr(&c, &p).as_deref(), Some("203.0.113.9"));
        // No peer known: no address, whatever the header says.
        let p = parts(|b| b.header("x-forwarded-for", "203.0.113.9"));
        assert_eq!(addr(&c, &p), None);
        // Nothing trusted: the header is never read.
        let p = with_peer("10.0.0.2:5000", &["203.0.113.9"]);
        assert_eq!(addr(&Config::default(), &p).as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn request_ids_are_taken_only_when_well_formed() {
        let id = |values: &[&str]| {
            let p = parts(|mut b| {
                for v in values {
                    b = b.header("x-request-id", *v);
                }
                b
            });
            request_id(&p.headers)
        };
        assert_eq!(id(&["req-4f2a"]).as_deref(), Some("req-4f2a"));
        assert_eq!(
            id(&["a1:b2/c3+d=e@f_g.h"]).as_deref(),
            Some("a1:b2/c3+d=e@f_g.h")
        );
        assert_eq!(id(&[]), None);
        assert_eq!(id(&["a", "b"]), None);
        assert_eq!(id(&["has space"]), None);
        assert_eq!(id(&["quote'"]), None);
        assert_eq!(
            id(&[&"x".repeat(MAX_REQUEST_ID_LEN)]).map(|s| s.len()),
            Some(128)
        );
        assert_eq!(id(&[&"x".repeat(MAX_REQUEST_ID_LEN + 1)]), None);
        // A generated one is a UUID.
        let (ctx, generated) =
            Config::default().context(&parts(|b| b.header("x-request-id", "bad id")));
        assert_eq!(generated.len(), 36);
        assert_eq!(ctx.request_id.as_deref(), Some(generated.as_str()));
    }

    #[test]
    fn every_value_is_bounded_and_valid() {
        let config = Config {
            trusted_proxies: vec![],
            user_id: Some(Arc::new(|p| {
                p.headers
                    .get("x-user")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            })),
            reason_header: Some(HeaderName::from_static("x-change-reason")),
        };
        let long_agent = format!("Mozilla/5.0 \t{}", "é".repeat(1000));
        let p = parts(|b| {
            b.method(http::Method::from_bytes(&[b'X'; 100]).unwrap())
                .uri(format!("/{}", "a".repeat(10_000)))
                .header(
                    "user-agent",
                    HeaderValue::from_bytes(long_agent.as_bytes()).unwrap(),
                )
                .header("x-user", "u".repeat(MAX_USER_ID_LEN + 1))
        });
        let (ctx, _) = config.context(&p);
        ctx.validate().unwrap();
        assert_eq!(ctx.user_id.as_deref(), None);
        let agent = ctx.metadata.as_ref().unwrap()["user_agent"]
            .as_str()
            .unwrap();
        assert_eq!(agent.chars().count(), MAX_USER_AGENT_CHARS);
        assert!(agent.starts_with("Mozilla/5.0 é"), "{agent}");
        let source = ctx.source.as_deref().unwrap();
        assert_eq!(
            source.len(),
            "http ".len() + 16 + 1 + MAX_ROUTE_LEN,
            "{source}"
        );

        let p = parts(|b| {
            b.header("x-user", "alice")
                .header("user-agent", &[0xff, 0xfe][..])
                .header("x-change-reason", format!(" Typo\t{}", "r".repeat(5000)))
        });
        let (ctx, _) = config.context(&p);
        assert_eq!(ctx.user_id.as_deref(), Some("alice"));
        let reason = ctx.change_reason.as_deref().unwrap();
        assert!(reason.starts_with("Typorrr"), "{reason}");
        // 1024 characters, less the leading space trimmed.
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS - 1);
        // Twice is as if absent.
        let p = parts(|b| {
            b.header("x-change-reason", "a")
                .header("x-change-reason", "b")
        });
        assert_eq!(config.context(&p).0.change_reason.as_deref(), None);
        assert_eq!(ctx.source.as_deref(), Some("http GET /products/7"));
        assert_eq!(
            ctx.metadata.as_ref().unwrap()["user_agent"],
            "\u{fffd}\u{fffd}"
        );
    }
}
