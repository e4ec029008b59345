//! End to end on sqlx: the example service (`pg-audit-sqlx/examples/axum_app.rs`, included as
//! it is) on a loopback port, real HTTP requests, the audit rows they leave with each
//! request's context, its history and restore routes, and the admin mounted beside it.

use std::net::SocketAddr;

use pg_audit_tests::http::{self, HttpResponse, request};
use pg_audit_tests::{TestDb, rows, runtime};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

#[allow(dead_code, unreachable_pub)]
#[path = "../../pg-audit-sqlx/examples/axum_app.rs"]
mod axum_app;

struct Service {
    // Dropped first: the server and its pools go before the database.
    _runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    db: TestDb,
}

fn start(hint: &str) -> Service {
    let db = TestDb::new(hint);
    let runtime = runtime();
    let (pool, admin) = runtime
        .block_on(axum_app::connect(db.url()))
        .expect("set up the service's database");
    let addr = http::serve(&runtime, axum_app::app(pool, admin));
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

    fn audit(&self) -> Vec<Value> {
        rows(
            &mut self.db.conn(),
            "SELECT operation, table_name, record_pk, new_values, context FROM audit.auditlog ORDER BY id",
        )
    }
}

#[test]
fn requests_leave_entries_with_their_context_and_the_admin_shows_them() {
    let service = start("sqlx_web");
    let created = service.call(
        "POST",
        "/products",
        &[
            ("Authorization", "Bearer alice-token"),
            ("X-Request-ID", "req-sqlx-1"),
            ("User-Agent", "e2e-test/1.0"),
        ],
        Some(json!({"title": "Lamp", "price_cents": 2500})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].clone();
    let updated = service.call(
        "PATCH",
        &format!("/products/{id}"),
        &[
            ("Authorization", "Bearer bob-token"),
            ("X-Change-Reason", "Spring sale"),
        ],
        Some(json!({"price_cents": 2200})),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    let generated = updated.header("x-request-id").unwrap().to_owned();
    // Refused by the table's CHECK: nothing logged.
    let refused = service.call(
        "PATCH",
        &format!("/products/{id}"),
        &[("Authorization", "Bearer bob-token")],
        Some(json!({"price_cents": -1})),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    let customer = service.call(
        "POST",
        "/customers",
        &[("Authorization", "Bearer carol-token")],
        Some(json!({"name": "Cy", "email": "cy@x", "password": "hunter2"})),
    );
    assert_eq!(customer.status, 201, "{}", customer.body);

    let audit = service.audit();
    assert_eq!(
        audit[..2],
        [
            json!({
                "operation": "INSERT", "table_name": "products", "record_pk": {"id": id},
                "new_values": {"title": "Lamp", "price_cents": 2500},
                "context": {
                    "user_id": "alice", "request_id": "req-sqlx-1", "client_addr": "127.0.0.1",
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
    // The customer without its password hash, with the handler's reason.
    assert_eq!(
        audit[2]["new_values"],
        json!({"id": 1, "name": "Cy", "email": "cy@x"})
    );
    assert_eq!(audit[2]["context"]["change_reason"], "sign-up");
    assert_eq!(audit.len(), 3);

    // History, newest first; delete and restore.
    let history = service
        .call("GET", &format!("/products/{id}/history"), &[], None)
        .json();
    assert_eq!(history[0]["changes"], json!({"price_cents": [2500, 2200]}));
    assert_eq!(history[0]["context"]["change_reason"], "Spring sale");
    let auth = [("Authorization", "Bearer carol-token")];
    assert_eq!(
        service
            .call("DELETE", &format!("/products/{id}"), &auth, None)
            .status,
        204
    );
    let restored = service.call("POST", &format!("/products/{id}/restore"), &auth, None);
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(restored.json()["price_cents"], 2200);
    let last = service.audit().pop().unwrap();
    assert_eq!(last["operation"], "INSERT");
    assert_eq!(last["context"]["user_id"], "carol");
    assert_eq!(last["context"]["change_reason"], "restored");

    // The admin, mounted beside the API: sign-in asked, then the activity with the entries.
    assert_eq!(service.call("GET", "/audit/", &[], None).status, 401);
    let basic = "Basic YWxpY2U6YWxpY2UtdG9rZW4="; // alice:alice-token
    let page = service.call("GET", "/audit/", &[("Authorization", basic)], None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Spring sale"), "{}", page.body);
    assert!(page.body.contains("req-sqlx-1"), "{}", page.body);
}
