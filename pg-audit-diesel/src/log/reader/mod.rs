//! The reader on Diesel's connections: [`AuditReader`] (`sync_api.rs`) runs
//! `pg_audit_runtime::log::reader`'s questions on a `PgConnection`, whose futures are ready at
//! once, and [`AsyncAuditReader`] (`async_api.rs`, feature `async`) on diesel-async's
//! `AsyncPgConnection`; both are thin. `model.rs` names a model's record (its table and its
//! key as a JSON object).

#[cfg(feature = "async")]
mod async_api;
mod model;
mod sync_api;

#[cfg(feature = "async")]
pub use async_api::AsyncAuditReader;
pub use sync_api::AuditReader;
