//! CSRF tokens, double-submitted: a random token in a `SameSite=Strict`, `HttpOnly` cookie,
//! repeated in a hidden field of every form; a POST whose field does not equal its cookie is
//! refused. Another site can neither read the cookie nor make the browser send it.

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HeaderValue, SET_COOKIE};

const COOKIE_NAME: &str = "pg_audit_csrf";

/// The request's token, if its cookie holds a well-formed one.
pub(crate) fn from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
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
