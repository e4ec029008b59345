//! The metrics servers of `pg-audit capture --metrics-listen` and `pg-audit admin
//! --metrics-listen`: a Prometheus registry at `/metrics` and a health check at `/health`, on
//! an address of their own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::options::Result;

/// What a metrics server watches.
pub(crate) trait Watched: Clone + Send + Sync + 'static {
    /// Brings the metrics up to date (before each scrape and health check), and says whether
    /// what is watched is healthy, with the health check's text.
    fn check(&self) -> impl Future<Output = (bool, &'static str)> + Send;
}

/// Serves `registry` at http://`addr`/metrics and `watched`'s health at /health while the
/// program runs; `who` names the server in its log lines.
pub(crate) async fn serve(
    addr: SocketAddr,
    who: &'static str,
    registry: Registry,
    watched: impl Watched,
) -> Result<()> {
    let registry = Arc::new(registry);
    let scrape = watched.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                scrape.check().await;
                let mut text = String::new();
                let status = match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => StatusCode::OK,
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (
                    status,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }),
        )
        .route(
            "/health",
            get(move || async move {
                match watched.check().await {
                    (true, text) => (StatusCode::OK, text),
                    (false, text) => (StatusCode::SERVICE_UNAVAILABLE, text),
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    tracing::info!(%addr, "{who}: serving metrics at /metrics and health at /health");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "{who}: the metrics server stopped");
        }
    });
    Ok(())
}
