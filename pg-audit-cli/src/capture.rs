//! `pg-audit capture`: the capture worker as a long-running process, its status, and the
//! removal of its slot.

use clap::{Args, Subcommand};

use crate::options::{LogArgs, Result};
use crate::output;

/// `pg-audit capture [status | drop-slot]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct CaptureArgs {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    conn: Conn,
    /// The longest a captured change waits before it is written, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    batch_wait_ms: u64,
    /// Write a batch once it holds this many changes.
    #[arg(long, value_name = "ROWS", default_value_t = 10_000)]
    batch_rows: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (lag in bytes and seconds, batches,
    /// changes, entries, errors, reconnects) and a health check at /health (200 while
    /// streaming, 503 otherwise), e.g. 127.0.0.1:9187.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// How far the log is behind: the slot's lag in bytes and seconds, the last commit
    /// captured, the WAL the slot holds on the server.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Drop the replication slot (so the server stops keeping WAL for it) and forget its
    /// progress. Stop the worker first. Tables stay in the log's publication until they are
    /// uninstalled (`pg-audit sql trigger --table TABLE --uninstall`); `DROP PUBLICATION` removes it.
    DropSlot {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where to read and write.
#[derive(Debug, Args)]
struct Conn {
    /// The database whose tables are captured, as a role with the REPLICATION attribute.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The database holding the log, when it is not the source (`pg-audit sql table` there
    /// first).
    #[arg(
        long,
        env = "PG_AUDIT_TARGET_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    target_url: Option<String>,
    /// The replication slot (default: the log's publication name).
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

impl Conn {
    fn worker(&self) -> Result<pg_audit_capture::Worker> {
        let url = self
            .database_url
            .as_deref()
            .ok_or("no database to capture: pass --database-url or set DATABASE_URL")?;
        let mut worker = pg_audit_capture::Worker::new(url)?.log(self.log.log()?);
        if let Some(target) = &self.target_url {
            worker = worker.target(target)?;
        }
        if let Some(slot) = &self.slot {
            worker = worker.slot(slot.clone());
        }
        Ok(worker)
    }
}

pub(crate) fn run(args: CaptureArgs) -> Result<()> {
    crate::options::block_on(async move {
        match args.action {
            None => {
                let worker = args
                    .conn
                    .worker()?
                    .batch_rows(args.batch_rows)
                    .batch_wait(std::time::Duration::from_millis(args.batch_wait_ms));
                tracing::info!(slot = worker.slot_name(), "pg-audit capture: starting");
                if let Some(addr) = args.metrics_listen {
                    serve_metrics(addr, worker.metrics()).await?;
                }
                worker.run(shutdown()).await?;
                Ok(())
            }
            Some(Action::Status { conn, json }) => {
                let status = pg_audit_capture::status(&conn.worker()?).await?;
                print_status(&status, json);
                Ok(())
            }
            Some(Action::DropSlot { conn }) => {
                let worker = conn.worker()?;
                let dropped = pg_audit_capture::drop_slot(&worker).await?;
                output::line(&if dropped {
                    format!(
                        "dropped replication slot {} and its progress",
                        worker.slot_name()
                    )
                } else {
                    format!(
                        "no replication slot {}; its progress is forgotten",
                        worker.slot_name()
                    )
                });
                Ok(())
            }
        }
    })?
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_status(status: &pg_audit_capture::Status, json: bool) {
    let last_commit = status.last_commit.map(pg_audit_diesel::rfc3339);
    if json {
        let value = serde_json::json!({
            "slot": status.slot,
            "slot_exists": status.slot_exists,
            "active": status.active,
            "lag_bytes": status.lag_bytes,
            "lag_seconds": status.lag_seconds,
            "last_commit": last_commit,
            "progress_lsn": status.progress_lsn,
            "retained_bytes": status.retained_bytes,
            "issues": status.issues,
            "latest_issues": serde_json::from_str::<serde_json::Value>(&status.latest_issues).unwrap_or_default(),
        });
        output::line(&value.to_string());
        return;
    }
    let or = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    output::line(&format!(
        "slot          {}{}",
        status.slot,
        match (status.slot_exists, status.active) {
            (false, _) => " (missing)",
            (true, true) => " (a worker is connected)",
            (true, false) => " (no worker connected)",
        }
    ));
    output::line(&format!(
        "lag           {} bytes, {} s",
        or(status.lag_bytes.map(|b| b.to_string())),
        or(status.lag_seconds.map(|s| format!("{s:.1}")))
    ));
    output::line(&format!("last commit   {}", or(last_commit)));
    output::line(&format!(
        "progress      {}",
        or(status.progress_lsn.clone())
    ));
    output::line(&format!(
        "WAL retained  {} bytes",
        or(status.retained_bytes.map(|b| b.to_string()))
    ));
    output::line(&format!(
        "issues        {}{}",
        status.issues,
        if status.issues > 0 {
            " (values logged as the JSON string of their text, or changes set aside whole; newest first below)"
        } else {
            ""
        }
    ));
    let latest: Vec<serde_json::Value> =
        serde_json::from_str(&status.latest_issues).unwrap_or_default();
    for issue in &latest {
        let field = |k: &str| match &issue[k] {
            serde_json::Value::String(s) => output::escape_controls(s),
            serde_json::Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        output::line(&format!(
            "  {} tx {} {} key {} column {}: {}",
            field("noted_at"),
            field("txid"),
            field("table"),
            field("record_pk"),
            field("column_name"),
            field("issue")
        ));
    }
}

/// The worker, as its metrics server watches it: healthy while it streams.
#[derive(Clone)]
struct Streaming(std::sync::Arc<pg_audit_capture::Metrics>);

impl crate::metrics::Watched for Streaming {
    async fn check(&self) -> (bool, &'static str) {
        if self.0.is_streaming() {
            (true, "streaming\n")
        } else {
            (false, "not streaming\n")
        }
    }
}

/// Serves the worker's metrics and health at `addr` for as long as the program runs.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: std::sync::Arc<pg_audit_capture::Metrics>,
) -> Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    crate::metrics::serve(addr, "pg-audit capture", registry, Streaming(metrics)).await
}
