//! Forged requests: a change is accepted only from the admin's own pages. The browser says
//! where a form was sent from (`Sec-Fetch-Site`, else `Origin` against `Host`): anything but
//! the same origin is refused — which also stops a page on another port of the same host,
//! which browsers count as the same *site*. And a token, double-submitted: random, in a
//! `SameSite=Strict`, `HttpOnly` cookie, repeated in a hidden field of every form; a POST
//! whose field does not equal its cookie is refused.

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HOST, HeaderValue, ORIGIN, SET_COOKIE};

const COOKIE_NAME: &str = "pg_audit_csrf";

/// The request's token, if its cookie holds a well-formed one.
pub(crate) fn from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .find(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The token for a page with a form: the cookie's, or a new one with the header setting it.
pub(crate) fn token(headers: &HeaderMap, base: &str) -> (String, Option<HeaderValue>) {
    match from_cookie(headers) {
        Some(token) => (token, None),
        None => {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let path = if base.is_empty() { "/" } else { base };
            let cookie = format!("{COOKIE_NAME}={token}; Path={path}; HttpOnly; SameSite=Strict");
            (token, HeaderValue::from_str(&cookie).ok())
        }
    }
}

/// Whether the browser says the request comes from the admin's own origin. A client that is
/// not a browser sends neither header; it still needs the token.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    match headers.get(ORIGIN) {
        None => true,
        Some(origin) => {
            let origin = origin.to_str().unwrap_or("");
            let host = origin.split_once("://").map_or("", |(_, rest)| rest);
            headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| !host.is_empty() && h.eq_ignore_ascii_case(host))
        }
    }
}

/// Whether a form's token matches the request's cookie (in constant time).
pub(crate) fn valid(headers: &HeaderMap, submitted: &str) -> bool {
    let Some(expected) = from_cookie(headers) else {
        return false;
    };
    expected.len() == submitted.len()
        && expected
            .bytes()
            .zip(submitted.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The response header that sets the cookie, when a new token was made.
pub(crate) fn set_cookie(
    cookie: Option<HeaderValue>,
) -> axum::response::AppendHeaders<Vec<(axum::http::HeaderName, HeaderValue)>> {
    axum::response::AppendHeaders(cookie.map(|c| vec![(SET_COOKIE, c)]).unwrap_or_default())
}
