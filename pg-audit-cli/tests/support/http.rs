//! Plain HTTP/1.1 requests to the program's servers on loopback (the admin, the metrics).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

/// Status line and body of `GET path` on the loopback `port`, with this `Host` header and,
/// when given, this `Authorization`.
pub(crate) fn get(
    port: u16,
    host: &str,
    path: &str,
    authorization: Option<&str>,
) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}
