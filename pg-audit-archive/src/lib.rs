//! The archive of a pg-audit log: whole partitions older than a cutoff written as Parquet files
//! (zstd, one file per partition, a record's entries together so that row-group statistics
//! find them), to a local directory or to S3 and its compatibles through `object_store`, read
//! back and checked before the partition is dropped, and listed in the log's archive catalogue
//! (`<log>_archives`). Readers find a record's archived entries reading only the row groups
//! that can hold it; `verify` and redaction load archived rows back into the server, which
//! computes their digests as it does for live rows.
//!
//! The tamper evidence over the log and its archive lives here too: [`verify`] (returning a
//! [`Report`] that `pg-audit verify` prints), the seals and their export ([`seals`],
//! [`write_export`], [`read_export`]), [`redact`], and the export of entries for auditors
//! with the seals that prove them ([`export`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), pg_audit_archive::Error> {
//! use pg_audit_archive::{Archive, connect};
//! let client = connect("postgres://app@localhost/app").await?;
//! let archive = Archive::open("s3://audit-archive/prod")?; // or a directory
//! let log = pg_audit::AuditLog::new();
//! for partition in pg_audit_archive::candidates(&client, &log, "6 months").await? {
//!     let done = pg_audit_archive::archive_partition(&client, &log, &partition, &archive, &|_| {}).await?;
//!     println!("{} rows to {}", done.row_count, done.location);
//! }
//! # Ok(()) }
//! ```
//!
//! S3 takes its settings from the environment, as the AWS tools do: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and for a compatible server `AWS_ENDPOINT_URL` (and
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP one).

mod catalogue;
pub mod digest;
pub mod export;
mod file;
mod partition;
mod read;
mod redact;
mod seal;
mod store;
mod verify;

pub use partition::{Archived, Candidate, archive_partition, candidates};
pub use read::{
    ArchivedFile, ArchivedHistory, archived_files, history, history_from, load_archived,
    record_key_sql,
};
pub use redact::{Erase, Redacted, redact};
pub use seal::{Commit, Made, Seal, Sealing, read_export, seal, seals, write_export};
pub use store::Archive;
pub use verify::{Checkpoint, Options, Prune, Report, Step, prunes, verify};

/// Connects to PostgreSQL with a libpq connection string (URL or `key=value`, the `PG*`
/// variables, the password file, TLS as `sslmode` says: [`pg_audit_connect`]) and drives the
/// connection on the current runtime. The session starts with pg-audit's pinned settings
/// ([`pg_audit::session`]).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, Error> {
    pg_audit_connect::connect(url).await.map_err(Error::Connect)
}

/// What went wrong; each prints its cause once, through `source`.
#[derive(Debug)]
pub enum Error {
    /// The archive location is not one pg-audit can write to, and why.
    Location(String),
    /// The object store (what was being done).
    Store(String, object_store::Error),
    /// Reading or writing Parquet (what was being done).
    Parquet(String, parquet::errors::ParquetError),
    /// The database (what was being done).
    Db(String, tokio_postgres::Error),
    /// Connecting to the database.
    Connect(pg_audit_connect::Error),
    /// What was read back differs from what was written, or the archive catalogue and the
    /// files disagree.
    Mismatch(String),
    /// Refused, and why (with the fix).
    Refused(String),
    /// Reading or writing a local file (what was being done).
    Io(String, std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Location(what)
            | Error::Store(what, _)
            | Error::Parquet(what, _)
            | Error::Db(what, _)
            | Error::Mismatch(what)
            | Error::Refused(what)
            | Error::Io(what, _) => f.write_str(what),
            Error::Connect(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Store(_, e) => Some(e),
            Error::Parquet(_, e) => Some(e),
            Error::Db(_, e) => Some(e),
            Error::Io(_, e) => Some(e),
            Error::Connect(e) => e.source(),
            Error::Location(_) | Error::Mismatch(_) | Error::Refused(_) => None,
        }
    }
}

/// `Error::Db` with what was being done.
pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let what = what.into();
    move |e| Error::Db(what, e)
}

/// `Error::Parquet` with what was being done.
pub(crate) fn pq(what: impl Into<String>) -> impl FnOnce(parquet::errors::ParquetError) -> Error {
    let what = what.into();
    move |e| Error::Parquet(what, e)
}

/// An error and its causes on one line, each printed once ([`pg_audit::error_chain`]).
pub use pg_audit::error_chain as chain;
