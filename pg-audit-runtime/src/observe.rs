//! What pg-audit tells `tracing` (feature `tracing`) and the trace id it takes from
//! OpenTelemetry (feature `opentelemetry`), in one place. Without the features every function
//! here does nothing and costs nothing.
//!
//! | target `pg_audit` | level | fields |
//! |---|---|---|
//! | span `pg_audit.transaction`, around an audited transaction or savepoint (a savepoint's span is a child of its transaction's, with the fields its own context sets) | INFO | `request_id`, `user_id`, `trace_id`, `nested`, `outcome` (`commit` or `rollback`) |
//! | event when `AuditedConnection` begins a transaction | DEBUG | `request_id`, `user_id`, `trace_id` |
//! | span `pg_audit.migrations` around `run_migrations` and `AuditMigrations::reinstall` | INFO | `run` |
//! | event `migration ran` per migration (the log, each model's triggers) | INFO | `version`, `direction`, `description` |
//! | event per model reinstalled because its installed configuration differed | WARN | `table` |

use crate::AuditContext;

/// A span around an audited transaction; without the feature `tracing`, nothing.
#[cfg(feature = "tracing")]
pub type Span = tracing::Span;

/// A span around an audited transaction; without the feature `tracing`, nothing.
#[cfg(not(feature = "tracing"))]
#[derive(Debug, Clone)]
pub struct Span;

/// The guard of an entered [`Span`]; without the feature `tracing`, nothing.
#[cfg(not(feature = "tracing"))]
pub struct Entered;

#[cfg(not(feature = "tracing"))]
impl Span {
    /// Enters the span (nothing without the feature).
    pub fn enter(&self) -> Entered {
        Entered
    }
}

/// The span of an audited transaction carrying `ctx`.
pub fn transaction_span(ctx: &AuditContext) -> Span {
    #[cfg(feature = "tracing")]
    {
        tracing::info_span!(
            target: "pg_audit",
            "pg_audit.transaction",
            request_id = ctx.request_id.as_deref(),
            user_id = ctx.user_id.as_deref(),
            trace_id = ctx.trace_id.as_deref(),
            nested = tracing::field::Empty,
            outcome = tracing::field::Empty,
        )
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = ctx;
        Span
    }
}

/// Records whether the transaction is a savepoint inside an open one (once: a field recorded
/// twice is printed twice).
pub fn record_nested(span: &Span, nested: bool) {
    #[cfg(feature = "tracing")]
    span.record("nested", nested);
    #[cfg(not(feature = "tracing"))]
    let _ = (span, nested);
}

/// Records whether the transaction committed.
pub fn record_outcome(span: &Span, committed: bool) {
    #[cfg(feature = "tracing")]
    span.record("outcome", if committed { "commit" } else { "rollback" });
    #[cfg(not(feature = "tracing"))]
    let _ = (span, committed);
}

/// Runs `future` inside `span`.
pub async fn instrument<F: std::future::Future>(span: Span, future: F) -> F::Output {
    #[cfg(feature = "tracing")]
    {
        tracing::Instrument::instrument(future, span).await
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = span;
        future.await
    }
}

/// `AuditedConnection` began a transaction carrying `ctx` (it has no closure to wrap in a span).
pub fn transaction_begun(ctx: &AuditContext) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        target: "pg_audit",
        request_id = ctx.request_id.as_deref(),
        user_id = ctx.user_id.as_deref(),
        trace_id = ctx.trace_id.as_deref(),
        "audited transaction begun"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = ctx;
}

/// The span of a run of pg-audit's migrations (`run_migrations`, `reinstall`).
pub fn migrations_span(what: &'static str) -> Span {
    #[cfg(feature = "tracing")]
    {
        tracing::info_span!(target: "pg_audit", "pg_audit.migrations", run = what)
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = what;
        Span
    }
}

/// A migration's SQL ran: the log or a model's triggers installed (`up`) or removed.
pub fn migration_ran(description: &str, version: &str, up: bool) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        target: "pg_audit",
        version,
        direction = if up { "up" } else { "down" },
        description,
        "migration ran"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (description, version, up);
}

/// A table's triggers were reinstalled because the installed configuration differed from the
/// one the program declares.
pub fn model_reinstalled(table: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: "pg_audit",
        table,
        "audit triggers reinstalled: the installed configuration differed from the model's"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = table;
}

/// `ctx` with the trace id of the current OpenTelemetry span when it has none (feature
/// `opentelemetry`: the span of the current `tracing` span through tracing-opentelemetry, else
/// OpenTelemetry's current context); otherwise `ctx` as it is.
pub fn with_current_trace_id(ctx: AuditContext) -> AuditContext {
    #[cfg(feature = "opentelemetry")]
    if ctx.trace_id.is_none() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let valid = |cx: opentelemetry::Context| {
            let span = cx.span();
            let context = span.span_context();
            context.is_valid().then(|| context.trace_id().to_string())
        };
        if let Some(id) = valid(tracing::Span::current().context())
            .or_else(|| valid(opentelemetry::Context::current()))
        {
            return ctx.trace_id(id);
        }
    }
    ctx
}
