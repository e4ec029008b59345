//! sqlx integration of pg-audit: transactions whose audit rows carry who, why and from where
//! ([`AuditedBegin`], [`begin_audited`]), the log and each table's triggers as migrations
//! ([`AuditMigrations`]), the log read back ([`AuditReader`]: history, state at a time, diff,
//! revert and restore, activity, the same questions as Diesel's reader), and the web layer (feature `tower`, `axum`) shared with the Diesel
//! runtime.
//!
//! ```no_run
//! use pg_audit_sqlx::{AuditContext, AuditMigrations, AuditedBegin as _};
//! use pg_audit_sqlx::sql::{QualifiedName, TriggerSpec};
//! # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! AuditMigrations::new()
//!     .table(TriggerSpec::builder(QualifiedName::parse("products")?).build()?)
//!     .run(&pool)
//!     .await?;
//!
//! let mut tx = pool.begin_audited(&AuditContext::new().user_id("42").change_reason("restock")).await?;
//! sqlx::query("UPDATE products SET stock = stock + 10 WHERE id = $1")
//!     .bind(7)
//!     .execute(&mut *tx)
//!     .await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `tokio`: `ambient::spawn` and `spawn_blocking`, carrying the ambient context into new
//!   tasks and threads.
//! - `tower`, `axum`: `web::AuditLayer`, each request's
//!   context, which [`begin_audited`] takes as the ambient context.
//! - `tracing`, `opentelemetry`: events for transactions and migrations, and the trace id of
//!   the current span.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod migration;
mod reader;
mod transaction;

/// The log's entries and what the reader's questions take and give (shared with every
/// runtime).
pub mod log {
    pub use pg_audit_runtime::log::{
        Activity, AuditEntry, Blame, Diff, Page, PathChange, RowAt, TableAt, TimeRange,
        changed_columns, changed_paths, key_object, key_text, parse_key, value_text,
    };
}

/// The SQL engine (the `pg-audit` crate): the log, its partitions and the triggers as SQL text.
pub use ::pg_audit as sql;
pub use migration::{AuditMigrations, MIGRATIONS_TABLE};
pub use pg_audit_runtime::migration::{FileError, SqlMigration};
/// The audit context of each HTTP request: the tower/axum layer every runtime shares.
#[cfg(feature = "tower")]
pub use pg_audit_runtime::web;
pub use pg_audit_runtime::{
    AuditContext, InvalidContext, MAX_CONTEXT_LEN, MAX_VALUE_LEN, REASON_SEPARATOR, ambient,
    emit_context_to_wal,
};
pub use reader::{AuditReader, ReadError, SqlxDriver};
pub use transaction::{AuditedBegin, AuditedTransaction, BoxFuture, begin_audited};
