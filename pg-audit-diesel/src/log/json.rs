//! The log's JSON read whatever a writer stored in it (`pg_audit_runtime::log::json`'s
//! parser), for Diesel's queries: `json` and `jsonb` columns read as [`LogJson`] and
//! [`NullableLogJson`].

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::{Json, Jsonb, Nullable};
use serde_json::Value;

pub use pg_audit_runtime::log::json::{MAX_DEPTH, parse};

/// The text of a `json` or `jsonb` value as PostgreSQL sends it (`jsonb` prefixed by its
/// format version, 1).
fn text_of<'a>(value: &'a PgValue<'_>, jsonb: bool) -> deserialize::Result<&'a str> {
    Ok(pg_audit_runtime::log::json::text_of(
        value.as_bytes(),
        jsonb,
    )?)
}

/// A JSON value of the log, read by [`parse`].
#[derive(Debug, FromSqlRow)]
#[doc(hidden)]
pub struct LogJson(pub Value);

impl FromSql<Jsonb, Pg> for LogJson {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(LogJson(parse(text_of(&value, true)?)?))
    }
}

impl From<LogJson> for Value {
    fn from(v: LogJson) -> Value {
        v.0
    }
}

/// A nullable JSON value of the log (`json` or `jsonb`), read by [`parse`].
#[derive(Debug, FromSqlRow)]
#[doc(hidden)]
pub struct NullableLogJson(pub Option<Value>);

impl NullableLogJson {
    fn read(value: Option<PgValue<'_>>, jsonb: bool) -> deserialize::Result<Self> {
        match value {
            None => Ok(NullableLogJson(None)),
            Some(v) => Ok(NullableLogJson(Some(parse(text_of(&v, jsonb)?)?))),
        }
    }
}

impl FromSql<Nullable<Jsonb>, Pg> for NullableLogJson {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        Self::read(Some(value), true)
    }

    fn from_nullable_sql(value: Option<PgValue<'_>>) -> deserialize::Result<Self> {
        Self::read(value, true)
    }
}

impl FromSql<Nullable<Json>, Pg> for NullableLogJson {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        Self::read(Some(value), false)
    }

    fn from_nullable_sql(value: Option<PgValue<'_>>) -> deserialize::Result<Self> {
        Self::read(value, false)
    }
}

impl From<NullableLogJson> for Option<Value> {
    fn from(v: NullableLogJson) -> Option<Value> {
        v.0
    }
}
