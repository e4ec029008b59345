//! Diesel integration of pg-audit. The SQL engine it builds on is re-exported as [`sql`].
#![warn(missing_docs)]

pub use pg_audit as sql;
