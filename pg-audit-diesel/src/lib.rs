//! Diesel integration of pg-audit: mark models with `#[pg_audit(...)]`, and their tables are
//! audited by triggers into one partitioned audit log.
//!
//! The SQL engine this builds on is re-exported as [`mod@sql`].
//!
//! # The `#[pg_audit(...)]` attribute
//!
//! ```no_run
//! use diesel::prelude::*;
//! use pg_audit_diesel::pg_audit;
//! # diesel::table! { users (id) { id -> Int4, name -> Text, email -> Text, password_hash -> Text } }
//! # diesel::table! { products (id) { id -> Int4, title -> Text, created_at -> Timestamp, updated_at -> Timestamp } }
//! # diesel::table! { billing.subscriptions (id) { id -> Int4, is_active -> Bool } }
//!
//! #[pg_audit(track_only = ["name", "email"])]
//! #[derive(Queryable, Selectable)]
//! #[diesel(table_name = users)]
//! pub struct User { pub id: i32, pub name: String, pub email: String, pub password_hash: String }
//!
//! #[pg_audit(exclude_fields = [created_at, updated_at])]
//! #[derive(Queryable)]
//! pub struct Product { pub id: i32 } // table `products`, Diesel's default name
//!
//! #[pg_audit(condition = "NEW.is_active = TRUE", operations = [insert, update])]
//! #[derive(Queryable)]
//! #[diesel(table_name = subscriptions)] // table! { billing.subscriptions (id) { ... } }
//! pub struct Subscription { pub id: i32 }
//! # fn main() {}
//! ```
//!
//! The table is the one Diesel uses for the struct: `#[diesel(table_name = path)]` (a path to
//! the `table!` module, such as `users` or `crate::schema::users`), or Diesel's default, the
//! struct's name in snake case plus `s`. Its SQL schema and name and its primary key (composite
//! keys included) come from the `table!` declaration.
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `track_only` | `["name", "email"]` or `[name, email]` | log only these columns; an UPDATE changing none of them logs nothing |
//! | `exclude_fields` | same | log every column but these; their values never reach the log, in any form |
//! | `condition` | `"NEW.is_active = TRUE"` | log only rows for which this SQL boolean is true (see below) |
//! | `operations` | `[insert, update, delete, truncate]` | the operations to log; default all four |
//!
//! Columns in `track_only` and `exclude_fields` are named as in `table!` (the Rust column
//! names); the log and the triggers use their SQL names, so `#[sql_name = "..."]` is respected.
//! The condition is SQL, so it names columns by their SQL names. In it, on UPDATE `NEW` is the
//! row after and `OLD` the row before; on INSERT both mean the inserted row, and on DELETE both
//! mean the deleted row.
//!
//! Everything is checked at compile time, and all mistakes of one attribute are reported in
//! one compile:
//!
//! - a misspelled or foreign column in `track_only` or `exclude_fields`: rustc's "cannot find
//!   type `nmae` in module `users::columns`", on the misspelled name;
//! - a `NEW.col`/`OLD.col` in `condition` that is not a column of the table: "`NEW.col` in
//!   `condition`: `users` has no column with that SQL name", on the condition;
//! - an unknown key (with a suggestion), a duplicate key, `track_only` together with
//!   `exclude_fields`, an empty list, a column listed twice, an unknown operation, an empty
//!   condition, and a condition that is not well-formed (unbalanced parentheses or quotes, `;`).
//!
//! What only the database knows — the table exists, its key is a primary key or unique index,
//! the condition's SQL compiles — is checked when the triggers are installed, with a message
//! naming the table and the problem. The macro reads no files and opens no database.
//!
//! # Finding the models
//!
//! Every annotated model is entered in a registry ([`ModelSet::registered`]). The linker drops
//! crates a program never refers to, so a model defined in such a crate is silently absent;
//! [`ModelSet::registered`] fails with an explanation when the registry is empty, and
//! [`ModelSet::with`] lists models explicitly.
//!
//! # Features
//!
//! - `tokio`: `ambient::spawn` and `spawn_blocking`, which carry the ambient context
//!   into new tasks and threads.
//! - `async`: the helpers on diesel-async's `AsyncPgConnection` (`AsyncAuditConnectionExt`).
//! - `connection-wrapper` (and `r2d2` for pools): `AuditedConnection`.
//! - `tower`, `axum`: `web::AuditLayer`, the audit context of each HTTP request
//!   (`examples/axum_app.rs` is a whole service).
//!
//! The log itself is read with [`log::AuditReader`].
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "async")]
mod async_conn;
mod baseline;
mod error;
mod files;
pub mod log;
mod migration;
mod model;
mod names;
mod sync_conn;
mod transaction;
#[cfg(feature = "connection-wrapper")]
pub mod wrapper;

/// The SQL engine (the `pg-audit` crate): the log, its partitions and the triggers as SQL text.
pub use ::pg_audit as sql;
pub use pg_audit_derive::{pg_audit, with_change_reason};

#[cfg(feature = "async")]
pub use async_conn::{AsyncAuditConnectionExt, AuditFn};
pub use baseline::{
    Baseline, BaselineOutcome, installed_spec, refuse_renamed_kept_out, take_baseline,
};
pub use error::Error;
pub use files::{WriteError, write_migration_files};
pub use migration::{AuditMigrations, migrations, run_migrations};
pub use model::{AuditConfig, Audited, AuditedModel, ColumnSelection, ModelSet};
pub use pg_audit_runtime::migration::{MIGRATION_LOCK_KEY, SqlMigration};
use pg_audit_runtime::observe;
/// The audit context of each HTTP request: the tower/axum layer, shared with every runtime
/// (`pg-audit-runtime`'s).
#[cfg(feature = "tower")]
pub use pg_audit_runtime::web;
pub use pg_audit_runtime::{
    AuditContext, InvalidContext, MAX_CONTEXT_LEN, MAX_VALUE_LEN, REASON_SEPARATOR, ambient,
    emit_context_to_wal,
};
pub use pg_audit_runtime::{parse_rfc3339, rfc3339, utc_string};
pub use sync_conn::AuditConnectionExt;
#[cfg(feature = "connection-wrapper")]
pub use wrapper::AuditedConnection;

/// What generated code names; not public API.
#[doc(hidden)]
pub mod __private {
    pub use diesel;
    pub use inventory;
    pub use pg_audit::{Capture, Operation};

    pub use crate::names::{ColumnNames, has_column};
}

#[cfg(test)]
mod api_tests {
    /// Types users move across threads and tasks (C-SEND-SYNC), and errors that work with
    /// `?` into `Box<dyn Error + Send + Sync>` and anyhow (C-GOOD-ERR).
    #[test]
    fn public_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn error<T: std::error::Error + Send + Sync + 'static>() {}
        send_sync::<crate::AuditContext>();
        send_sync::<crate::log::AuditEntry>();
        send_sync::<crate::log::AuditReader>();
        send_sync::<crate::log::Page>();
        send_sync::<crate::AuditMigrations>();
        send_sync::<crate::ModelSet>();
        send_sync::<crate::ambient::AuditContext>();
        error::<crate::Error>();
        error::<crate::WriteError>();
        error::<crate::InvalidContext>();
        error::<pg_audit::Error>();
        send_sync::<pg_audit::AuditLog>();
        send_sync::<pg_audit::TriggerSpec>();
        #[cfg(feature = "tower")]
        send_sync::<crate::web::AuditLayer>();
        #[cfg(feature = "async")]
        send_sync::<crate::log::AsyncAuditReader>();
    }
}
