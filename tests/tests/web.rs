//! End to end: the example service (`pg-audit-admin/examples/axum_app.rs`, included as it is)
//! on a loopback port, real HTTP requests, and the audit rows they leave.

use std::net::SocketAddr;
use std::sync::Arc;

use pg_audit_diesel::log::AuditEntry;
use pg_audit_tests::http::{self, HttpResponse, request, send};
use pg_audit_tests::{TestDb, rows};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

#[allow(dead_code, unreachable_pub)]
#[path = "../../pg-audit-admin/examples/axum_app.rs"]
mod axum_app;

/// The example service on a loopback port, with a database of its own.
struct Service {
    // Dropped first: the server and its pool go before the database.
    _runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    db: TestDb,
}

fn start(hint: &str, trusted_proxies: &[&str]) -> Service {
    let db = TestDb::new(hint);
    let pool = axum_app::connect(db.url()).expect("set up the service's database");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = axum_app::app(
        pool,
        trusted_proxies.iter().map(|p| p.parse().unwrap()).collect(),
    );
    let addr = http::serve(&runtime, app);
    Service {
        _runtime: runtime,
        addr,
        db,
    }
}

impl Service {
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> HttpResponse {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        request(self.addr, method, path, &headers, body.as_ref())
    }

    /// The log's rows, oldest first: operation, table, key and the context's fields.
    fn audit(&self) -> Vec<Value> {
        rows(
            &mut self.db.conn(),
            "SELECT operation, table_name, record_pk, new_values, context FROM audit.auditlog ORDER BY id",
        )
    }
}

fn bearer(user: &str) -> String {
    format!("Bearer {user}-token")
}

#[test]
fn writes_carry_the_request_id_client_user_agent_user_and_reason() {
    let service = start("web_context", &[]);
    let alice = bearer("alice");
    let created = service.call(
        "POST",
        "/products",
        &[
            ("Authorization", &alice),
            ("X-Request-ID", "req-e2e-1"),
            ("User-Agent", "e2e-test/1.0"),
        ],
        Some(json!({"title": "Lamp", "price_cents": 2500})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("x-request-id"), Some("req-e2e-1"));
    let id = created.json()["id"].clone();

    // No request id given: one is made, echoed, and logged.
    let bob = bearer("bob");
    let updated = service.call(
        "PATCH",
        &format!("/products/{id}"),
        &[("Authorization", &bob), ("X-Change-Reason", "Spring sale")],
        Some(json!({"price_cents": 2200})),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    let generated = updated.header("x-request-id").unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    // A write refused by the application logs nothing.
    let refused = service.call(
        "PATCH",
        &format!("/products/{id}"),
        &[("Authorization", &bob)],
        Some(json!({"price_cents": -1})),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);

    let audit = service.audit();
    assert_eq!(
        audit,
        [
            json!({
                "operation": "INSERT", "table_name": "products", "record_pk": {"id": id},
                "new_values": {"title": "Lamp", "price_cents": 2500},
                "context": {
                    "user_id": "alice", "request_id": "req-e2e-1", "client_addr": "127.0.0.1",
                    "source": "http POST /products", "metadata": {"user_agent": "e2e-test/1.0"},
                },
            }),
            json!({
                "operation": "UPDATE", "table_name": "products", "record_pk": {"id": id},
                "new_values": {"title": "Lamp", "price_cents": 2200},
                "context": {
                    "user_id": "bob", "request_id": generated, "client_addr": "127.0.0.1",
                    "source": "http PATCH /products/{id}", "change_reason": "Spring sale",
                },
            }),
        ]
    );

    // The history route tells the same story, newest first.
    let history = service
        .call("GET", &format!("/products/{id}/history"), &[], None)
        .json();
    assert_eq!(history[0]["context"]["user_id"], "bob");
    assert_eq!(history[0]["context"]["change_reason"], "Spring sale");
    assert_eq!(history[0]["changes"], json!({"price_cents": [2500, 2200]}));
    assert_eq!(history[1]["context"]["request_id"], "req-e2e-1");
    assert_eq!(
        history[1]["context"]["metadata"]["user_agent"],
        "e2e-test/1.0"
    );
    // The entry serializes as it is stored, and reads back.
    let first: AuditEntry = serde_json::from_value(history[0].clone()).unwrap();
    assert_eq!(first.context.user_id.as_deref(), Some("bob"));
    assert!(
        history[0]["changed_at"].as_str().unwrap().ends_with('Z'),
        "{history}"
    );
}

#[test]
fn delete_restore_and_an_excluded_password_through_the_api() {
    let service = start("web_restore", &[]);
    let carol = bearer("carol");
    let auth = [("Authorization", carol.as_str())];
    let id = service
        .call(
            "POST",
            "/products",
            &auth,
            Some(json!({"title": "Desk", "price_cents": 12000})),
        )
        .json()["id"]
        .clone();
    let deleted = service.call("DELETE", &format!("/products/{id}"), &auth, None);
    assert_eq!(deleted.status, 204);
    let restored = service.call(
        "POST",
        &format!("/products/{id}/restore"),
        &[
            ("Authorization", &carol),
            ("X-Change-Reason", "Deleted by mistake"),
        ],
        None,
    );
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(restored.json()["title"], "Desk");
    let history = service
        .call("GET", &format!("/products/{id}/history"), &[], None)
        .json();
    let ops: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["operation"])
        .collect();
    assert_eq!(ops, ["INSERT", "DELETE", "INSERT"]);
    assert_eq!(
        history[0]["context"]["change_reason"],
        "Deleted by mistake; restored"
    );
    assert_eq!(
        history[0]["context"]["source"],
        "http POST /products/{id}/restore"
    );

    let customer = service.call(
        "POST",
        "/customers",
        &auth,
        Some(json!({"name": "Ann", "email": "a@x", "password": "hunter2"})),
    );
    assert_eq!(customer.status, 201, "{}", customer.body);
    let cid = customer.json()["id"].clone();
    service.call(
        "PATCH",
        &format!("/customers/{cid}"),
        &auth,
        Some(json!({"password": "correct horse"})),
    );
    let log = service
        .audit()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(
        !log.contains("demo-hash") && !log.contains("password"),
        "{log}"
    );
    // Changing only the password changed no audited column: nothing logged.
    let history = service
        .call("GET", &format!("/customers/{cid}/history"), &[], None)
        .json();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");

    // Writes need a user; reads do not.
    let anonymous = service.call(
        "POST",
        "/products",
        &[],
        Some(json!({"title": "x", "price_cents": 1})),
    );
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        service
            .call("GET", &format!("/products/{id}"), &[], None)
            .status,
        200
    );
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let post = |service: &Service, xff: &str| {
        let alice = bearer("alice");
        let r = service.call(
            "POST",
            "/products",
            &[("Authorization", &alice), ("X-Forwarded-For", xff)],
            Some(json!({"title": "t", "price_cents": 1})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        service.audit().last().unwrap()["context"]["client_addr"].clone()
    };
    // Not behind a trusted proxy: the header is the client's word, and ignored.
    let direct = start("web_xff_direct", &[]);
    assert_eq!(post(&direct, "203.0.113.9"), "127.0.0.1");
    // Behind one (loopback, here): the nearest untrusted hop; forged hops to its left are not.
    let proxied = start("web_xff_proxied", &["127.0.0.1/32", "10.0.0.0/8"]);
    assert_eq!(
        post(&proxied, "198.51.100.1, 203.0.113.9, 10.1.2.3"),
        "203.0.113.9"
    );
    assert_eq!(post(&proxied, "not-an-address"), "127.0.0.1");
}

#[test]
fn malformed_and_oversized_headers_never_fail_a_request() {
    let service = start("web_bad_headers", &["127.0.0.1/32", "10.0.0.0/8"]);
    let body = json!({"title": "t", "price_cents": 1});
    let cases: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![("X-Request-ID", b"has spaces and 'quotes'".to_vec())],
        vec![("X-Request-ID", vec![b'r'; 500])],
        vec![
            ("X-Request-ID", b"one".to_vec()),
            ("X-Request-ID", b"two".to_vec()),
        ],
        vec![("X-Request-ID", b"\xff\xfe".to_vec())],
        vec![(
            "User-Agent",
            [b"agent \xff\t".to_vec(), vec![b'u'; 8000]].concat(),
        )],
        vec![("X-Change-Reason", vec![b'w'; 20_000])],
        vec![("X-Change-Reason", b"\xe2\x82".to_vec())],
        vec![("X-Forwarded-For", b"\xff, , ::::, 999.1.1.1".to_vec())],
        (0..40)
            .map(|i| ("X-Forwarded-For", format!("10.0.0.{i}").into_bytes()))
            .collect(),
    ];
    for case in &cases {
        let mut headers: Vec<(&str, &[u8])> = vec![("Authorization", b"Bearer alice-token")];
        headers.extend(case.iter().map(|(n, v)| (*n, v.as_slice())));
        let r = request(service.addr, "POST", "/products", &headers, Some(&body));
        assert_eq!(r.status, 201, "{case:?}: {}", r.body);
        let echoed = r.header("x-request-id").unwrap();
        let context = service.audit().last().unwrap()["context"].clone();
        assert_eq!(context["request_id"], echoed, "{case:?}");
        assert!(echoed.len() <= 128, "{echoed}");
        for (field, max) in [("change_reason", 1024), ("source", 300)] {
            let n = context[field].as_str().map_or(0, |s| s.chars().count());
            assert!(n <= max, "{field} is {n} characters: {case:?}");
        }
        let agent = context["metadata"]["user_agent"].as_str().unwrap_or("");
        assert!(agent.chars().count() <= 256, "{agent}");
        assert!(!agent.contains('\t'), "{agent:?}");
    }
    let audit = service.audit();
    assert_eq!(audit.len(), cases.len());
    // The malformed request ids were replaced by generated ones; the others are bounded.
    for row in &audit[..4] {
        assert_eq!(
            row["context"]["request_id"].as_str().unwrap().len(),
            36,
            "{row}"
        );
    }
    assert!(
        audit[4]["context"]["metadata"]["user_agent"]
            .as_str()
            .unwrap()
            .starts_with("agent \u{fffd}uuu")
    );
    assert_eq!(
        audit[5]["context"]["change_reason"].as_str().unwrap().len(),
        1024
    );
    assert_eq!(audit[7]["context"]["client_addr"], "127.0.0.1");
    // 40 trusted hops: the walk stops after 32, at a trusted address.
    assert_eq!(audit[8]["context"]["client_addr"], "10.0.0.8");

    // Bytes the HTTP parser itself refuses get its 400, and the service keeps serving.
    let garbage = send(
        service.addr,
        b"POST /products HTTP/1.1\r\nHost: x\r\nX-Bad\x00: y\r\n\r\n",
    );
    assert_eq!(garbage.status, 400);
    assert_eq!(service.call("GET", "/products/1", &[], None).status, 200);
}

#[test]
fn concurrent_users_never_see_each_others_context() {
    let service = Arc::new(start("web_concurrent", &[]));
    let users = ["alice", "bob", "carol"];
    // One product per user, each then updated by its user many times at once.
    let ids: Vec<Value> = users
        .iter()
        .map(|u| {
            service
                .call(
                    "POST",
                    "/products",
                    &[("Authorization", &bearer(u))],
                    Some(json!({"title": u, "price_cents": 0})),
                )
                .json()["id"]
                .clone()
        })
        .collect();
    const PER_CLIENT: usize = 25;
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let service = service.clone();
            let user = users[client % users.len()];
            let id = ids[client % users.len()].clone();
            std::thread::spawn(move || {
                for i in 0..PER_CLIENT {
                    let request_id = format!("{user}-{client}-{i}");
                    let reason = format!("reason of {request_id}");
                    let r = service.call(
                        "PATCH",
                        &format!("/products/{id}"),
                        &[
                            ("Authorization", &bearer(user)),
                            ("X-Request-ID", &request_id),
                            ("X-Change-Reason", &reason),
                            ("User-Agent", &format!("client {client}")),
                        ],
                        Some(json!({"price_cents": client * 1000 + i + 1})),
                    );
                    assert_eq!(r.status, 200, "{}", r.body);
                    assert_eq!(r.header("x-request-id"), Some(request_id.as_str()));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let updates: Vec<Value> = service
        .audit()
        .into_iter()
        .filter(|r| r["operation"] == "UPDATE")
        .collect();
    assert_eq!(updates.len(), 6 * PER_CLIENT);
    let mut seen = std::collections::BTreeSet::new();
    for row in &updates {
        let ctx = &row["context"];
        let request_id = ctx["request_id"].as_str().unwrap();
        let mut parts = request_id.split('-');
        let (user, client) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(ctx["user_id"], user, "{row}");
        assert_eq!(
            ctx["change_reason"],
            format!("reason of {request_id}"),
            "{row}"
        );
        assert_eq!(
            ctx["metadata"]["user_agent"],
            format!("client {client}"),
            "{row}"
        );
        assert_eq!(row["new_values"]["title"], user, "{row}");
        assert!(
            seen.insert(request_id.to_owned()),
            "{request_id} logged twice"
        );
    }
}

/// Everything `tracing` writes in this test binary, as text. Installed once, globally: the
/// service's handlers and blocking threads run on the runtime's threads.
fn trace_output() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static OUTPUT: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    OUTPUT
        .get_or_init(|| {
            let output = Arc::new(std::sync::Mutex::new(Vec::new()));
            let writer = Arc::clone(&output);
            struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
            impl std::io::Write for Capture {
                fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                    self.0.lock().unwrap().extend_from_slice(buf);
                    Ok(buf.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            tracing_subscriber::fmt()
                .with_env_filter("pg_audit=info")
                .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
                .with_ansi(false)
                .with_writer(move || Capture(Arc::clone(&writer)))
                .init();
            output
        })
        .clone()
}

#[test]
fn a_trace_shows_the_transactions_span_with_its_request_id_and_the_row_keeps_the_trace_id() {
    let output = trace_output();
    let service = start("web_trace", &[]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = service.call(
        "POST",
        "/products",
        &[
            ("Authorization", &bearer("alice")),
            ("X-Request-ID", "req-traced-1"),
            ("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01")),
        ],
        Some(json!({"title": "Traced", "price_cents": 100})),
    );
    assert_eq!(response.status, 201, "{}", response.body);

    let text = String::from_utf8(output.lock().unwrap().clone()).unwrap();
    let span = text
        .lines()
        .find(|line| line.contains("req-traced-1"))
        .unwrap_or_else(|| panic!("no span with the request id in the trace:\n{text}"));
    assert!(span.contains("pg_audit.transaction{"), "{span}");
    assert!(span.contains("request_id=\"req-traced-1\""), "{span}");
    assert!(span.contains("user_id=\"alice\""), "{span}");
    assert!(span.contains(&format!("trace_id=\"{trace_id}\"")), "{span}");
    assert!(span.contains("outcome=\"commit\""), "{span}");
    assert!(span.contains("close"), "{span}");

    let row = service.audit().pop().unwrap();
    assert_eq!(row["context"]["trace_id"], trace_id, "{row}");
    assert_eq!(row["context"]["request_id"], "req-traced-1", "{row}");

    // A malformed traceparent is left out rather than failing the request.
    let response = service.call(
        "POST",
        "/products",
        &[
            ("Authorization", &bearer("alice")),
            ("traceparent", "00-<script>-00f067aa0ba902b7-01"),
        ],
        Some(json!({"title": "Untraced", "price_cents": 100})),
    );
    assert_eq!(response.status, 201, "{}", response.body);
    let row = service.audit().pop().unwrap();
    assert_eq!(row["context"].get("trace_id"), None, "{row}");
}

/// tower-http's `SetRequestIdLayer` outside the audit layer: its id is the one logged. Without
/// it, the audit layer's id is set as the extension for the handlers.
#[test]
fn the_layer_reads_and_sets_tower_https_request_id() {
    use axum::routing::get;
    use pg_audit_diesel::web::{AuditLayer, RequestId};
    use tower_http::request_id::{MakeRequestId, SetRequestIdLayer};

    #[derive(Clone)]
    struct Fixed;
    impl MakeRequestId for Fixed {
        fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
            Some(RequestId::new(axum::http::HeaderValue::from_static(
                "from-tower-http-7",
            )))
        }
    }
    let seen = |request: axum::extract::Request| async move {
        let ctx = pg_audit_diesel::ambient::current();
        let extension = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.header_value().to_str().unwrap().to_owned());
        format!(
            "{}|{}",
            ctx.request_id.unwrap_or_default(),
            extension.unwrap_or_default()
        )
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let with_tower_http = axum::Router::new()
        .route("/", get(seen))
        .layer(AuditLayer::new())
        .layer(SetRequestIdLayer::new(
            axum::http::HeaderName::from_static("x-correlation-id"),
            Fixed,
        ));
    let addr = http::serve(&runtime, with_tower_http);
    // Under another header name, so only the extension carries tower-http's id here; it wins
    // over the client's X-Request-ID.
    let body = request(addr, "GET", "/", &[("X-Request-ID", b"from-client")], None).body;
    assert_eq!(body, "from-tower-http-7|from-tower-http-7");
    // tower-http keeps a client's id in its own header; the audit layer logs what it settled on.
    let body = request(
        addr,
        "GET",
        "/",
        &[("X-Correlation-ID", b"from-client")],
        None,
    )
    .body;
    assert_eq!(body, "from-client|from-client");

    let alone = axum::Router::new()
        .route("/", get(seen))
        .layer(AuditLayer::new());
    let addr = http::serve(&runtime, alone);
    let response = request(addr, "GET", "/", &[], None);
    let (logged, extension) = response.body.split_once('|').unwrap();
    assert_eq!(logged.len(), 36, "a new UUID: {}", response.body);
    assert_eq!(logged, extension);
    let echoed = response
        .headers
        .iter()
        .find(|(name, _)| name == "x-request-id")
        .map(|(_, value)| value.as_str());
    assert_eq!(echoed, Some(logged));
}

/// The example service serves the audit admin under /audit: a sign-in prompt without a user,
/// the trail for a signed-in one, and revert forms only for the one allowed to write.
#[test]
fn the_example_service_serves_the_admin_under_audit() {
    let service = start("web_admin", &[]);
    let created = service.call(
        "POST",
        "/products",
        &[("Authorization", &bearer("alice"))],
        Some(json!({"title": "Lamp", "price_cents": 2500})),
    );
    assert_eq!(created.status, 201);
    let anonymous = service.call("GET", "/audit", &[], None);
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v.starts_with("Basic")),
        "{:?}",
        anonymous.headers
    );
    // bob:bob-token reads; alice:alice-token may also revert.
    let bob = service.call(
        "GET",
        "/audit",
        &[("Authorization", "Basic Ym9iOmJvYi10b2tlbg==")],
        None,
    );
    assert_eq!(bob.status, 200, "{}", bob.body);
    assert!(
        bob.body.contains("public.products") && bob.body.contains("Lamp"),
        "{}",
        bob.body
    );
    let record = "/audit/record?table=public.products&key=%7B%22id%22%3A1%7D";
    let as_bob = service.call(
        "GET",
        record,
        &[("Authorization", "Basic Ym9iOmJvYi10b2tlbg==")],
        None,
    );
    assert!(!as_bob.body.contains("method=\"post\""), "{}", as_bob.body);
    let as_alice = service.call(
        "GET",
        record,
        &[("Authorization", "Basic YWxpY2U6YWxpY2UtdG9rZW4=")],
        None,
    );
    assert!(
        as_alice.body.contains("method=\"post\""),
        "{}",
        as_alice.body
    );
}
