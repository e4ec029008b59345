//! The `#[pg_audit(...)]` attribute of pg-audit. Use it through `pg-audit-diesel`, which
//! re-exports it together with the runtime the generated code needs.
#![warn(missing_docs)]
