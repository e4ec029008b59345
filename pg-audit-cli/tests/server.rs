//! `pg-audit admin`: the admin's pages served on their own, against a real server.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/http.rs"]
mod http;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(url: &str, port: u16, extra: &[&str]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(["admin", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pg-audit admin did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

/// Status line and body of `GET path`.
fn get(port: u16, path: &str, authorization: Option<&str>) -> (String, String) {
    get_as(port, &format!("127.0.0.1:{port}"), path, authorization)
}

/// `GET path` with this `Host` header.
fn get_as(port: u16, host: &str, path: &str, authorization: Option<&str>) -> (String, String) {
    http::get(port, host, path, authorization)
}

fn setup(hint: &str) -> pg_audit_tempdb::TempDatabase<'static> {
    let server = pg_audit_tempdb::shared().unwrap();
    let db = server.create_database(hint).unwrap();
    let sql = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    db.batch_execute("CREATE TABLE users (id int PRIMARY KEY, name text)")
        .unwrap();
    db.batch_execute(&sql(&["sql", "table"])).unwrap();
    db.batch_execute(&sql(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--primary-key",
        "id",
    ]))
    .unwrap();
    db.batch_execute(
        "BEGIN; SET LOCAL pg_audit.context = '{\"user_id\": \"admin-7\", \"change_reason\": \"First user\"}';
         INSERT INTO users VALUES (1, 'Ann'); COMMIT;",
    )
    .unwrap();
    db
}

#[test]
fn on_loopback_without_credentials_the_trail_is_read_only() {
    let db = setup("server_open");
    let port = free_port();
    let _server = start(db.url(), port, &[]);
    let (status, body) = get(port, "/", None);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("First user") && body.contains("admin-7"),
        "{body}"
    );
    let (status, body) = get(
        port,
        "/record?table=public.users&key=%7B%22id%22%3A1%7D",
        None,
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(!body.contains("method=\"post\""), "no write forms: {body}");
    // A page of another site whose name was rebound to 127.0.0.1 reads nothing.
    let (status, _) = get_as(port, &format!("attacker.example:{port}"), "/", None);
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
}

#[test]
fn with_a_token_every_request_signs_in() {
    let db = setup("server_token");
    let port = free_port();
    let _server = start(db.url(), port, &["--token", "0123456789abcdef0123"]);
    let (status, _) = get(port, "/", None);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, _) = get(port, "/", Some("Bearer wrong-token-wrong-token"));
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, body) = get(
        port,
        "/record?table=public.users&key=%7B%22id%22%3A1%7D",
        Some("Bearer 0123456789abcdef0123"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("method=\"post\""), "write forms: {body}");
}

#[test]
fn other_addresses_need_credentials() {
    let out = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args([
            "admin",
            "--listen",
            "0.0.0.0:0",
            "--database-url",
            "postgres://x/y",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: refusing to serve the audit trail on 0.0.0.0:0 without credentials: pass \
         --token or --basic-auth USER:PASSWORD, or listen on loopback (127.0.0.1)"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args([
            "admin",
            "--token",
            "short",
            "--database-url",
            "postgres://x/y",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short"));
}

/// A metric's value in Prometheus's text format: the first line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(prefix)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

/// `--metrics-listen`: requests counted by page (its route, not its address) and status, their
/// durations, the seals' age and what is past them, on a port of their own; /health says
/// whether the database answers.
#[test]
fn metrics_count_pages_and_follow_the_seals() {
    let db = setup("server_metrics");
    let port = free_port();
    let metrics = free_port();
    let _server = start(
        db.url(),
        port,
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", metrics)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the metrics server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        get(metrics, "/health", None),
        ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned())
    );
    for _ in 0..3 {
        assert_eq!(get(port, "/", None).0, "HTTP/1.1 200 OK");
    }
    for id in [1, 2] {
        get(
            port,
            &format!("/record?table=public.users&key=%7B%22id%22%3A{id}%7D"),
            None,
        );
    }
    let (status, text) = get(metrics, "/metrics", None);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        metric(
            &text,
            "pg_audit_admin_requests_total{page=\"/\",status=\"200\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "pg_audit_admin_requests_total{page=\"/record\",status=\"200\"}"
        ),
        2.0,
        "two keys, one page: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "pg_audit_admin_request_duration_seconds_count{page=\"/\"}"
        ),
        3.0
    );
    // Never sealed: -1, and every id is past the seals.
    assert_eq!(metric(&text, "pg_audit_seal_age_seconds"), -1.0);
    assert_eq!(metric(&text, "pg_audit_ids_past_seals"), 1.0);
    // Sealing stops at transactions still open anywhere on the server (other tests' too):
    // seal until the seal exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let sealed = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
            .args(["seal"])
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap();
        assert!(
            sealed.status.success(),
            "{}",
            String::from_utf8_lossy(&sealed.stderr)
        );
        let text = get(metrics, "/metrics", None).1;
        if metric(&text, "pg_audit_seal_age_seconds") != -1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "no seal was made:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let age = metric(&text, "pg_audit_seal_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(metric(&text, "pg_audit_ids_past_seals"), 0.0);
}
