//! The SQL engine of pg-audit: the audit log, its partition maintenance and its triggers, as SQL
//! text any PostgreSQL client can run. No Diesel here; `pg-audit-diesel` builds on this crate.
//!
//! pg-audit records every INSERT, UPDATE and DELETE on chosen tables into one audit log,
//! range-partitioned by time, with who, when, why and from where. Capture happens in triggers,
//! so every write is caught whatever made it, and an audit row commits exactly when its change
//! does.
//!
//! # Without Diesel
//!
//! Generate the SQL and run it with any client; here it is piped into `psql`:
//!
//! ```no_run
//! use std::io::Write;
//! use std::process::{Command, Stdio};
//! use pg_audit::{AuditLog, QualifiedName, TriggerSpec};
//!
//! let log = AuditLog::new(); // audit.auditlog, monthly partitions
//! let users = TriggerSpec::builder(QualifiedName::parse("public.users")?)
//!     .primary_key(["id"])
//!     .exclude_fields(["password_hash"])
//!     .build()?;
//! let sql = format!("BEGIN;\n{}\n{}\nCOMMIT;\n", log.create_sql(), users.install_sql(&log));
//!
//! let mut psql = Command::new("psql")
//!     .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "postgres://localhost/app"])
//!     .stdin(Stdio::piped())
//!     .spawn()?;
//! psql.stdin.take().unwrap().write_all(sql.as_bytes())?;
//! assert!(psql.wait()?.success());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The repository's `pg-audit/examples/without_diesel.rs` does this against a throwaway server
//! and shows the rows a change leaves in the log. Context travels in transaction-local settings
//! named in [`context`]:
//!
//! ```sql
//! BEGIN;
//! SELECT set_config('pg_audit.context', json_build_object('user_id', 'alice')::text, true);
//! UPDATE users SET email = 'alice@example.com' WHERE id = 1;
//! COMMIT;
//! ```
#![warn(missing_docs)]

pub mod calendar;
pub mod conninfo;
pub mod context;
mod error;
pub mod ident;
pub mod session;
pub mod sql;

pub use error::{Error, error_chain};
pub use ident::{Ident, QualifiedName, dollar_quote, quote_literal};
pub use sql::capture::Capture;
pub use sql::condition::{ColumnRef, Condition, RowRef};
pub use sql::log::{AuditLog, PartitionPeriod, Retention};
pub use sql::shape::{LOG_COLUMNS, LogColumn, Operation};
pub use sql::trigger::{Columns, TriggerLevel, TriggerSpec, TriggerSpecBuilder};
