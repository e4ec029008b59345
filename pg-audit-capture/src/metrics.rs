//! What the worker exposes for monitoring, as Prometheus metrics
//! ([`Metrics::register`]); `pg-audit capture --metrics-listen ADDR` serves them.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The worker's counters and gauges, shared with whoever serves them.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Batches written to the log.
    pub(crate) batches: Counter,
    /// Captured changes written to the log (as entries, before conditions drop any).
    pub(crate) changes: Counter,
    /// Entries written to the log.
    pub(crate) entries: Counter,
    /// Errors that ended an attempt (each followed by a reconnect or the worker's exit).
    pub(crate) errors: Counter,
    /// Reconnect attempts after a lost connection.
    pub(crate) reconnects: Counter,
    /// WAL the server has written that the worker has not confirmed, in bytes.
    pub(crate) lag_bytes: Gauge,
    /// Seconds since the oldest committed transaction the worker holds and has not written
    /// (0 when it holds none).
    pub(crate) lag_seconds: Gauge<f64, AtomicU64>,
    /// 1 while the worker streams, 0 otherwise.
    pub(crate) streaming: Gauge,
}

impl Metrics {
    /// Registers every metric, named `pg_audit_capture_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pg_audit_capture");
        r.register(
            "batches",
            "Batches written to the log",
            self.batches.clone(),
        );
        r.register(
            "changes",
            "Captured changes of audited tables written in batches",
            self.changes.clone(),
        );
        r.register(
            "entries",
            "Entries written to the log",
            self.entries.clone(),
        );
        r.register(
            "errors",
            "Errors that ended a capture attempt",
            self.errors.clone(),
        );
        r.register(
            "reconnects",
            "Reconnect attempts after a lost connection",
            self.reconnects.clone(),
        );
        r.register(
            "lag_bytes",
            "WAL written by the server and not yet confirmed by the worker, in bytes",
            self.lag_bytes.clone(),
        );
        r.register(
            "lag_seconds",
            "Seconds since the oldest committed transaction the worker holds unwritten",
            self.lag_seconds.clone(),
        );
        r.register(
            "streaming",
            "1 while the worker streams from its slot",
            self.streaming.clone(),
        );
    }

    /// Whether the worker is streaming (what a health check asks).
    pub fn is_streaming(&self) -> bool {
        self.streaming.get() == 1
    }
}
