//! What every pg-audit runtime shares, so that Diesel's (`pg-audit-diesel`) and sqlx's
//! (`pg-audit-sqlx`) behave the same and a request's context reaches both the same way:
//!
//! - [`AuditContext`]: who, why and from where — the value, its nesting and validation;
//! - [`ambient`]: the context in force for a scope (thread-local guards, futures);
//! - `web` (feature `tower`, `axum`): the tower layer filling each HTTP request's context;
//! - [`transaction`]: the transaction-and-context protocol (the SQL each level sends, through
//!   the engine's one statement), and whether contexts are emitted to the write-ahead log;
//! - [`log`]: the log's entries and the reader (history, state at a time, diff, revert and
//!   restore, activity, blame, the table at a time), written once over a driver each runtime
//!   implements;
//! - [`migration`]: the log's and each table's installs as migrations (versions, descriptions,
//!   the SQL up and down) and as migration files;
//! - [`observe`]: what pg-audit tells `tracing` (feature `tracing`, `opentelemetry`).
//!
//! Applications use it through their runtime's crate, which re-exports it.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod ambient;
mod context;
mod key;
pub mod log;
pub mod migration;
pub mod observe;
mod time;
pub mod transaction;
#[cfg(feature = "tower")]
pub mod web;

pub use context::{AuditContext, InvalidContext, MAX_CONTEXT_LEN, MAX_VALUE_LEN, REASON_SEPARATOR};
pub use time::{parse_rfc3339, rfc3339, utc_string};
pub use transaction::emit_context_to_wal;
