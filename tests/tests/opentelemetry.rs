//! Features `tracing` and `opentelemetry`: a transaction's span and its fields; a transaction
//! begun inside an OpenTelemetry span (through tracing-opentelemetry) stores that span's trace
//! id; one set explicitly wins.

use diesel::RunQueryDsl as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use pg_audit_diesel::{AuditConnectionExt as _, AuditContext};
use pg_audit_tests::{audited_items, rows};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[test]
fn transactions_take_the_trace_id_of_the_current_span() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("pg-audit-test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let (_db, mut conn) = audited_items("otel_trace_id");

    let span = tracing::info_span!("handle_request");
    let trace_id = span.context().span().span_context().trace_id().to_string();
    assert_eq!(trace_id.len(), 32);
    span.in_scope(|| {
        conn.audited_transaction(|conn| {
            diesel::sql_query("INSERT INTO items (name) VALUES ('traced')").execute(conn)
        })
        .unwrap();
        let explicit = AuditContext::new().trace_id("0af7651916cd43dd8448eb211c80319c");
        conn.with_audit_context(&explicit, |conn| {
            diesel::sql_query("INSERT INTO items (name) VALUES ('explicit')").execute(conn)
        })
        .unwrap();
    });
    // Outside any span: no trace id.
    conn.audited_transaction(|conn| {
        diesel::sql_query("INSERT INTO items (name) VALUES ('untraced')").execute(conn)
    })
    .unwrap();

    let stored: Vec<serde_json::Value> = rows(
        &mut conn,
        "SELECT context->>'trace_id' AS trace_id FROM audit.auditlog ORDER BY id",
    )
    .into_iter()
    .map(|row| row["trace_id"].clone())
    .collect();
    assert_eq!(
        stored,
        [
            serde_json::json!(trace_id),
            serde_json::json!("0af7651916cd43dd8448eb211c80319c"),
            serde_json::Value::Null
        ]
    );
}

#[test]
fn a_savepoints_span_is_nested_in_its_transactions_and_says_so_once() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let output = Capture(Arc::new(Mutex::new(Vec::new())));
    let writer = output.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let (_db, mut conn) = audited_items("tracing_nested");
    let outer = AuditContext::new().user_id("ops").request_id("req-n");
    let result: Result<(), diesel::result::Error> = conn.with_audit_context(&outer, |conn| {
        conn.with_change_reason("inner", |conn| {
            diesel::sql_query("INSERT INTO items (name) VALUES ('x')").execute(conn)
        })?;
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(result.is_err());

    let text = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
    let closes: Vec<&str> = text.lines().filter(|l| l.contains(" close ")).collect();
    assert_eq!(closes.len(), 2, "{text}");
    // The savepoint's span closes first, inside the transaction's, whose fields it inherits.
    assert!(
        closes[0].contains(
            "pg_audit.transaction{request_id=\"req-n\" user_id=\"ops\" nested=false}:\
             pg_audit.transaction{nested=true outcome=\"commit\"}"
        ),
        "{text}"
    );
    assert!(
        closes[1].contains("nested=false outcome=\"rollback\"}"),
        "{text}"
    );
    assert!(!text.contains("nested=false nested"), "{text}");
}
