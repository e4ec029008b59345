//! Feature `opentelemetry`: a transaction begun inside an OpenTelemetry span (through
//! tracing-opentelemetry) stores that span's trace id; one set explicitly wins.

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
