//! The audit log as Diesel sees it: its `table!`, a typed entry, and the reader
//! (`pg_audit_runtime::log`'s questions, run on Diesel's connections) that answers "what
//! happened to this record, who did it, why, and what did it look like then".
//!
//! ```no_run
//! # use diesel::prelude::*;
//! # use pg_audit_diesel::pg_audit;
//! # diesel::table! { users (id) { id -> Int4, name -> Text } }
//! # #[pg_audit] #[derive(Queryable)] #[diesel(table_name = users)] pub struct User { pub id: i32 }
//! # fn main() -> Result<(), pg_audit_diesel::Error> {
//! # let mut conn = PgConnection::establish("").unwrap();
//! # let yesterday = std::time::SystemTime::now();
//! use pg_audit_diesel::log::{AuditReader, Page};
//!
//! let reader = AuditReader::new();                       // audit.auditlog
//! let history = reader.history::<User>(&mut conn, 42, Page::first(20))?;
//! for entry in &history {
//!     println!("{:?} by {:?}: {:?}", entry.operation, entry.context.user_id, entry.changes());
//! }
//! let then = reader.state_at::<User>(&mut conn, 42, yesterday)?;     // the row as it was
//! reader.revert::<User>(&mut conn, 42, history[3].id, "Undo vandalism")?;
//! # Ok(()) }
//! ```
//!
#![cfg_attr(
    feature = "async",
    doc = "With the feature `async`, [`AsyncAuditReader`] asks the same on diesel-async's connection."
)]
#![cfg_attr(
    not(feature = "async"),
    doc = "With the feature `async`, `AsyncAuditReader` asks the same on diesel-async's connection."
)]
//!
//! Queries name the log through [`pg_audit::AuditLog`], so a log with another schema or name
//! works the same; [`schema::auditlog`] is the `table!` of the default one, for Diesel's query
//! builder.

mod drift;
mod driver;
pub(crate) use driver::query_error;
pub mod json;
mod reader;

use std::time::SystemTime;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, Timestamptz};
use pg_audit_runtime::log::row::{pg_epoch, pg_micros};

pub use drift::{Drift, drift};
pub use pg_audit_runtime::log::{
    Activity, AuditEntry, Blame, Diff, KeyMismatch, Page, PathChange, RowAt, TableAt, TimeRange,
    changed_columns, changed_paths, key_object, key_text, parse_key, value_text,
};
#[cfg(feature = "async")]
pub use reader::AsyncAuditReader;
pub use reader::AuditReader;

/// The `table!` of the default audit log, `audit.auditlog`.
pub mod schema {
    diesel::table! {
        /// The audit log: one row per audited change.
        audit.auditlog (id) {
            /// Increasing id.
            id -> Int8,
            /// Start of the statement that made the change (the partition key).
            changed_at -> Timestamptz,
            /// Start of the transaction.
            tx_started_at -> Timestamptz,
            /// Transaction id.
            txid -> Int8,
            /// INSERT, UPDATE, DELETE or TRUNCATE.
            operation -> Text,
            /// Schema of the changed table.
            schema_name -> Text,
            /// Name of the changed table.
            table_name -> Text,
            /// Indexed hash of table and key.
            record_key -> Nullable<Int8>,
            /// The row's key as a JSON object.
            record_pk -> Nullable<Jsonb>,
            /// The audited columns before (UPDATE, DELETE).
            old_values -> Nullable<Jsonb>,
            /// The audited columns after (INSERT, UPDATE).
            new_values -> Nullable<Jsonb>,
            /// The database role that connected.
            db_user -> Text,
            /// The audit context.
            context -> Nullable<Json>,
            /// An UPDATE that changed the key: the key before.
            old_record_pk -> Nullable<Jsonb>,
            /// Indexed hash of table and the key before.
            old_record_key -> Nullable<Int8>,
        }
    }
}

/// A `timestamptz` as a [`SystemTime`], without a date-time crate, for Diesel's queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, AsExpression, FromSqlRow)]
#[diesel(sql_type = Timestamptz)]
pub struct LogTime(pub SystemTime);

impl FromSql<Timestamptz, Pg> for LogTime {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let micros = <i64 as FromSql<BigInt, Pg>>::from_sql(value)?;
        let offset = std::time::Duration::from_micros(micros.unsigned_abs());
        Ok(LogTime(if micros >= 0 {
            pg_epoch() + offset
        } else {
            pg_epoch() - offset
        }))
    }
}

impl ToSql<Timestamptz, Pg> for LogTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <i64 as ToSql<BigInt, Pg>>::to_sql(&pg_micros(self.0), &mut out.reborrow())
    }
}

impl From<LogTime> for SystemTime {
    fn from(t: LogTime) -> SystemTime {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{BigInt, Json, Jsonb, Nullable, Text, Timestamptz};
    use diesel::{Column, Expression, QueryDsl};
    use pg_audit::LOG_COLUMNS;

    use super::schema::auditlog;

    /// A Diesel SQL type as the engine names it.
    trait SqlName {
        const NAME: &'static str;
        const NULLABLE: bool = false;
    }
    impl SqlName for BigInt {
        const NAME: &'static str = "bigint";
    }
    impl SqlName for Timestamptz {
        const NAME: &'static str = "timestamptz";
    }
    impl SqlName for Text {
        const NAME: &'static str = "text";
    }
    impl SqlName for Jsonb {
        const NAME: &'static str = "jsonb";
    }
    impl SqlName for Json {
        const NAME: &'static str = "json";
    }
    impl<T: SqlName> SqlName for Nullable<T> {
        const NAME: &'static str = T::NAME;
        const NULLABLE: bool = true;
    }

    macro_rules! described {
        ($($column:ident),* $(,)?) => {
            vec![$((
                <auditlog::$column as Column>::NAME,
                <<auditlog::$column as Expression>::SqlType as SqlName>::NAME,
                <<auditlog::$column as Expression>::SqlType as SqlName>::NULLABLE,
            )),*]
        };
    }

    #[test]
    fn the_table_macro_matches_the_engines_log() {
        let engine: Vec<(&str, &str, bool)> = LOG_COLUMNS
            .iter()
            .map(|c| (c.name, c.sql_type, c.nullable))
            .collect();
        let diesel = described!(
            id,
            changed_at,
            tx_started_at,
            txid,
            operation,
            schema_name,
            table_name,
            record_key,
            record_pk,
            old_values,
            new_values,
            db_user,
            context,
            old_record_pk,
            old_record_key,
        );
        let sorted = |mut v: Vec<(&'static str, &'static str, bool)>| {
            v.sort();
            v
        };
        assert_eq!(sorted(diesel), sorted(engine.clone()), "columns and types");
        // The order too: `SELECT *` through the table! reads columns in table order.
        let query = diesel::debug_query::<diesel::pg::Pg, _>(
            &auditlog::table.select(auditlog::all_columns),
        )
        .to_string();
        let names: Vec<&str> = engine.iter().map(|c| c.0).collect();
        let listed: Vec<&str> = query
            .split(" FROM ")
            .next()
            .unwrap()
            .trim_start_matches("SELECT ")
            .split(", ")
            .map(|c| c.rsplit('.').next().unwrap().trim_matches('"'))
            .collect();
        assert_eq!(listed, names);
    }
}
