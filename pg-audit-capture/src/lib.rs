//! Capture from the write-ahead log for pg-audit: a worker that reads a logical replication
//! slot and writes the same audit log the triggers write, so history, the reader, the CLI and
//! the admin work alike whichever path captured a change.
//!
//! Tables opt in with `#[pg_audit(capture = wal)]` (or `pg-audit sql trigger --table T --capture wal`);
//! their install adds them to the log's publication and sets `REPLICA IDENTITY FULL`. Then run
//! the worker, as a task of an application or as `pg-audit capture`:
//!
//! ```no_run
//! # async fn run() -> Result<(), pg_audit_capture::Error> {
//! let worker = pg_audit_capture::Worker::new("postgres://capture@db/app")?;
//! // Runs until the future given resolves (here: a channel's message), then writes what it
//! // holds; a connection lost after the start is reconnected.
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let task = tokio::spawn(async move { worker.run(async { let _ = stopped.await; }).await });
//! // ... later:
//! let _ = stop.send(());
//! task.await.expect("the worker does not panic")?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **Exactly once.** The worker writes whole transactions, in commit order, in batches; each
//!   batch commits together with the slot's position in `<log>_capture_progress`, and the slot
//!   is confirmed only after that commit. After a crash of the worker, of the server or of the
//!   connection, the slot replays from the last confirmed position and the worker skips what
//!   its progress says is written.
//! - **Context.** pg-audit's helpers emit each transaction's context as a transactional logical
//!   message (`pg_logical_emit_message(true, 'pg_audit', ...)`) when any table is captured from
//!   the WAL; the worker attaches it to the changes that follow it in that transaction.
//! - **Same entries.** Values are written as `to_jsonb` writes them; `track_only`,
//!   `exclude_fields`, conditions and the operations audited apply as in the triggers.
//!
//! What differs from a trigger's entry: `changed_at` is the commit time (the stream carries no
//! statement time); `tx_started_at`, `txid` and `db_user` come from the context message, and
//! without one they are the commit time, the transaction id widened with the current epoch, and
//! `?`; `timestamptz` values are written in the walsender's time zone (the server's default).
//!
//! # Why this replication client
//!
//! `pgwire-replication` speaks the streaming replication protocol directly (tokio, SCRAM,
//! rustls), parses the transaction boundaries and logical messages, and — what exactly-once
//! needs — reports to the server only the position the consumer says is durable
//! (`update_applied_lsn`, `ack_lsn` at start). `tokio-postgres` has no replication protocol;
//! the SQL interface (`pg_logical_slot_peek_binary_changes`) polls and re-decodes from the
//! slot's start on every call. Ordinary sessions (catalog, conditions, the log's writes) use
//! `tokio-postgres`.

mod message;
mod metrics;
mod pgoutput;
mod setup;
mod value;
mod worker;

use std::fmt;
use std::time::Duration;

use pg_audit::AuditLog;
use pg_audit_connect::ConnInfo;

pub use metrics::Metrics;
pub use setup::{Status, drop_slot, status};

/// What stopped the worker or a command, naming the fix.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A URL that cannot be parsed.
    Url {
        /// Which URL (`source` or `target`).
        which: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// `wal_level` is not `logical`.
    WalLevel {
        /// The server's setting.
        current: String,
    },
    /// The role may not open a replication connection.
    NoReplication {
        /// The role.
        role: String,
    },
    /// No table is installed with `capture = wal`.
    NoPublication {
        /// The publication's name.
        publication: String,
    },
    /// The slot does not exist although the worker wrote progress through it before.
    SlotMissing {
        /// The slot.
        slot: String,
    },
    /// The slot exists but the worker did not create it.
    ForeignSlot {
        /// The slot.
        slot: String,
        /// Why it is not ours.
        reason: String,
    },
    /// A database error from an ordinary session.
    Database {
        /// What the worker was doing.
        doing: &'static str,
        /// The error.
        source: tokio_postgres::Error,
    },
    /// Connecting an ordinary session failed (or its TLS settings are wrong).
    Connect {
        /// What the worker was doing.
        doing: &'static str,
        /// The error.
        source: pg_audit_connect::Error,
    },
    /// The replication stream failed.
    Replication(pgwire_replication::PgWireError),
    /// The stream carried something the worker cannot read.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Url { which, reason } => write!(f, "invalid {which} URL: {reason}"),
            Error::WalLevel { current } => write!(
                f,
                "wal_level is {current}, not logical: capture from the write-ahead log needs \
                 `ALTER SYSTEM SET wal_level = logical` and a server restart (on managed \
                 PostgreSQL, the provider's logical replication setting)"
            ),
            Error::NoReplication { role } => write!(
                f,
                "role {role} cannot open a replication connection: run `ALTER ROLE {role} \
                 REPLICATION` as a superuser (on RDS: `GRANT rds_replication TO {role}`)"
            ),
            Error::NoPublication { publication } => write!(
                f,
                "publication {publication} does not exist: no table is installed with \
                 capture = wal (`#[pg_audit(capture = wal)]`, or `pg-audit sql trigger \
                 --table TABLE --capture wal`)"
            ),
            Error::SlotMissing { slot } => write!(
                f,
                "replication slot {slot} is missing, though this worker wrote through it: \
                 changes since its last progress may not be captured. Check the log against \
                 the tables, then `pg-audit capture drop-slot` to forget its progress and \
                 start again"
            ),
            Error::ForeignSlot { slot, reason } => write!(
                f,
                "replication slot {slot} is not this worker's ({reason}); give this worker \
                 another slot name with --slot"
            ),
            Error::Database { doing, .. } | Error::Connect { doing, .. } => write!(f, "{doing}"),
            Error::Replication(e) => write!(f, "replication stream: {e}"),
            Error::Protocol(what) => write!(f, "replication stream: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database { source, .. } => Some(source),
            Error::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The capture worker's configuration.
#[derive(Debug, Clone)]
pub struct Worker {
    pub(crate) source: ConnInfo,
    pub(crate) target: ConnInfo,
    pub(crate) log: AuditLog,
    pub(crate) slot: String,
    pub(crate) batch_rows: usize,
    pub(crate) batch_wait: Duration,
    pub(crate) metrics: std::sync::Arc<Metrics>,
}

impl Worker {
    /// A worker reading the database at `source_url` (a `postgres://` URL of a role with the
    /// REPLICATION attribute) and writing its log there, with the default log
    /// (`audit.auditlog`) and slot.
    pub fn new(source_url: &str) -> Result<Worker, Error> {
        let source = parse_url("source", source_url)?;
        let log = AuditLog::new();
        Ok(Worker {
            target: source.clone(),
            slot: default_slot(&log, &source),
            source,
            log,
            batch_rows: 10_000,
            batch_wait: Duration::from_millis(100),
            metrics: std::sync::Arc::default(),
        })
    }

    /// Writes the log in another database (which holds the log: `pg-audit sql table` there).
    pub fn target(mut self, target_url: &str) -> Result<Worker, Error> {
        self.target = parse_url("target", target_url)?;
        Ok(self)
    }

    /// The log (default `audit.auditlog`); the slot follows its name unless set.
    pub fn log(mut self, log: AuditLog) -> Worker {
        if self.slot == default_slot(&self.log, &self.source) {
            self.slot = default_slot(&log, &self.source);
        }
        self.log = log;
        self
    }

    /// The replication slot's name (default: the log's publication name and the database's,
    /// since slot names are the server's, shared by its databases).
    pub fn slot(mut self, slot: impl Into<String>) -> Worker {
        self.slot = slot.into();
        self
    }

    /// Writes a batch once it holds this many changes (default 10,000), or
    /// [`Worker::batch_wait`] after its first change.
    pub fn batch_rows(mut self, rows: usize) -> Worker {
        self.batch_rows = rows.max(1);
        self
    }

    /// The longest a captured change waits before its batch is written (default 100 ms).
    pub fn batch_wait(mut self, wait: Duration) -> Worker {
        self.batch_wait = wait;
        self
    }

    /// The worker's metrics ([`Metrics::register`] puts them in a Prometheus registry),
    /// updated while it runs.
    pub fn metrics(&self) -> std::sync::Arc<Metrics> {
        std::sync::Arc::clone(&self.metrics)
    }

    /// The slot's name.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// Captures until `shutdown` resolves, then writes what it holds and returns. Creates the
    /// slot on first run. Errors name the fix (see [`Error`]).
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        worker::run(self, shutdown).await
    }
}

/// The log's default slot for the source's database.
fn default_slot(log: &AuditLog, source: &ConnInfo) -> String {
    log.default_slot(&source.dbname)
}

/// A connection string as libpq reads it ([`pg_audit_connect`]).
fn parse_url(which: &'static str, url: &str) -> Result<ConnInfo, Error> {
    pg_audit_connect::parse(url).map_err(|e| Error::Url {
        which,
        reason: e.to_string(),
    })
}

/// Connects an ordinary session with the settings the triggers run with
/// ([`pg_audit::session`]), from its first statement.
pub(crate) async fn connect(
    info: &ConnInfo,
    doing: &'static str,
) -> Result<tokio_postgres::Client, Error> {
    pg_audit_connect::connect_to(info)
        .await
        .map_err(|source| Error::Connect { doing, source })
}

impl Error {
    /// Whether a connection was lost (a server restart, a network drop), as opposed to an
    /// error that would happen again: what the worker reconnects after.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            // The stream's own errors: the network, or the server going away (its message
            // carries the SQLSTATE); not authentication, TLS or a refusal, which would recur.
            Error::Replication(e) => match e {
                pgwire_replication::PgWireError::Io(_)
                | pgwire_replication::PgWireError::Task(_) => true,
                pgwire_replication::PgWireError::Server(message) => {
                    ["(SQLSTATE 08", "(SQLSTATE 57P", "(SQLSTATE 53"]
                        .iter()
                        .any(|code| message.contains(code))
                }
                _ => false,
            },
            Error::Database { source, .. } => lost(source),
            // Not the connection string or the TLS settings: those would fail again.
            Error::Connect {
                source: pg_audit_connect::Error::Connect { source, .. },
                ..
            } => lost(source),
            _ => false,
        }
    }
}

/// Whether a session's error is its connection lost: no error from the server (the
/// connection failed), a connection_exception, or the server shutting down or crashing.
fn lost(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// An error and its causes on one line, each printed once.
pub(crate) use pg_audit::error_chain as chain;

/// Maps a database error to [`Error::Database`] with what was being done.
pub(crate) fn db(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Database { doing, source }
}
