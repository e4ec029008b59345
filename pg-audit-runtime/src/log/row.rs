//! The reader's queries as any runtime runs them: SQL with its parameters ([`Query`],
//! [`Param`]), and rows read by column name from PostgreSQL's binary values ([`LogRow`],
//! [`FromLogRow`]), so the reader is written once and each runtime only moves bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pg_audit::Operation;
use serde_json::Value;

use crate::AuditContext;

/// A parameter of a reader's query, typed as the SQL expects it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// `text`.
    Text(Option<String>),
    /// `bigint`.
    BigInt(Option<i64>),
    /// `bigint[]`.
    BigIntArray(Vec<i64>),
    /// `jsonb`.
    Jsonb(Option<Value>),
    /// `timestamptz`.
    Timestamptz(Option<SystemTime>),
}

macro_rules! params {
    ($($variant:ident: $($t:ty => |$v:ident| $e:expr),*;)*) => {$($(
        impl From<$t> for Param {
            fn from($v: $t) -> Param {
                Param::$variant($e)
            }
        }
    )*)*};
}

params! {
    Text: &str => |v| Some(v.to_owned()), String => |v| Some(v), &String => |v| Some(v.clone()),
        Option<&str> => |v| v.map(str::to_owned), Option<String> => |v| v;
    BigInt: i64 => |v| Some(v), Option<i64> => |v| v;
    BigIntArray: Vec<i64> => |v| v, &[i64] => |v| v.to_vec();
    Jsonb: &Value => |v| Some(v.clone()), Value => |v| Some(v), Option<&Value> => |v| v.cloned();
    Timestamptz: SystemTime => |v| Some(v), Option<SystemTime> => |v| v;
}

/// SQL with its parameters (`$1`, `$2`, ... in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The SQL.
    pub sql: String,
    /// The parameters, `$1` first.
    pub params: Vec<Param>,
}

impl Query {
    /// `sql`, with no parameter bound yet.
    pub fn new(sql: impl Into<String>) -> Query {
        Query {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// Binds the next parameter.
    #[must_use]
    pub fn bind(mut self, param: impl Into<Param>) -> Query {
        self.params.push(param.into());
        self
    }
}

/// A column's value as PostgreSQL sends it in binary: its type's OID and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    /// The type's OID.
    pub oid: u32,
    /// The binary value.
    pub bytes: &'a [u8],
}

/// A row of a reader's query, as a runtime received it.
pub trait LogRow {
    /// Calls `read` with the value of `column` (`None` for NULL); an error when the row has no
    /// such column or the value is not in binary.
    fn visit(&self, column: &str, read: &mut dyn FnMut(Option<Raw<'_>>))
    -> Result<(), DecodeError>;
}

/// A value the reader could not read, naming its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The column.
    pub column: String,
    /// What is wrong.
    pub problem: String,
}

impl DecodeError {
    /// `problem` with `column`.
    pub fn new(column: &str, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            column: column.to_owned(),
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read column `{}`: {}", self.column, self.problem)
    }
}

impl std::error::Error for DecodeError {}

/// A value read from one column.
pub trait Column: Sized {
    /// Reads `raw` (`None`: NULL); the error says what is wrong.
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String>;
}

/// `column` of `row`, read as `T`.
pub fn get<T: Column>(row: &dyn LogRow, column: &str) -> Result<T, DecodeError> {
    let mut value = None;
    row.visit(column, &mut |raw| value = Some(T::read(raw)))?;
    value
        .ok_or_else(|| DecodeError::new(column, "the runtime gave no value"))?
        .map_err(|problem| DecodeError::new(column, problem))
}

/// A type a row of a reader's query reads into.
pub trait FromLogRow: Sized {
    /// Reads `row`.
    fn from_row(row: &dyn LogRow) -> Result<Self, DecodeError>;
}

/// A struct read from a row, each field from the column of its name.
macro_rules! log_row {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),*
        }

        impl $crate::log::row::FromLogRow for $name {
            fn from_row(
                row: &dyn $crate::log::row::LogRow,
            ) -> Result<Self, $crate::log::row::DecodeError> {
                Ok($name {
                    $($field: $crate::log::row::get(row, stringify!($field))?),*
                })
            }
        }
    };
}
pub(crate) use log_row;

const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const JSON: u32 = 114;
const NAME: u32 = 19;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const TIMESTAMPTZ: u32 = 1184;
const INT8_ARRAY: u32 = 1016;
const JSONB: u32 = 3802;

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes
        .try_into()
        .map_err(|_| format!("{} bytes where {N} were expected", bytes.len()))
}

fn not_null<T>(
    raw: Option<Raw<'_>>,
    f: impl FnOnce(Raw<'_>) -> Result<T, String>,
) -> Result<T, String> {
    f(raw.ok_or("NULL where a value was expected")?)
}

fn unexpected(raw: Raw<'_>, wanted: &str) -> String {
    format!(
        "a value of type OID {} where {wanted} was expected",
        raw.oid
    )
}

impl Column for i64 {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        not_null(raw, |raw| match raw.oid {
            INT8 => Ok(i64::from_be_bytes(fixed(raw.bytes)?)),
            INT4 => Ok(i32::from_be_bytes(fixed(raw.bytes)?).into()),
            INT2 => Ok(i16::from_be_bytes(fixed(raw.bytes)?).into()),
            _ => Err(unexpected(raw, "an integer")),
        })
    }
}

impl Column for i32 {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        let wide = i64::read(raw)?;
        i32::try_from(wide).map_err(|_| format!("{wide} is out of range for a 32-bit integer"))
    }
}

impl Column for bool {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        not_null(raw, |raw| match (raw.oid, raw.bytes) {
            (BOOL, [b]) => Ok(*b != 0),
            _ => Err(unexpected(raw, "a boolean")),
        })
    }
}

impl Column for String {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        not_null(raw, |raw| match raw.oid {
            TEXT | VARCHAR | NAME | BPCHAR => std::str::from_utf8(raw.bytes)
                .map(str::to_owned)
                .map_err(|e| e.to_string()),
            _ => Err(unexpected(raw, "text")),
        })
    }
}

/// `json` and `jsonb`, read by [`super::json::parse`]: whatever a writer stored.
impl Column for Value {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        not_null(raw, |raw| {
            let text = match raw.oid {
                JSON => super::json::text_of(raw.bytes, false)?,
                JSONB => super::json::text_of(raw.bytes, true)?,
                _ => return Err(unexpected(raw, "json")),
            };
            super::json::parse(text).map_err(|e| e.to_string())
        })
    }
}

/// `timestamptz`: microseconds since 2000-01-01 UTC.
impl Column for SystemTime {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        not_null(raw, |raw| {
            if raw.oid != TIMESTAMPTZ {
                return Err(unexpected(raw, "a timestamptz"));
            }
            let micros = i64::from_be_bytes(fixed(raw.bytes)?);
            let epoch = pg_epoch();
            let offset = Duration::from_micros(micros.unsigned_abs());
            Ok(if micros >= 0 {
                epoch + offset
            } else {
                epoch - offset
            })
        })
    }
}

/// PostgreSQL's epoch, 2000-01-01 UTC.
pub fn pg_epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(pg_audit::calendar::PG_EPOCH_UNIX_SECS.unsigned_abs())
}

/// `t` as microseconds since PostgreSQL's epoch, as a `timestamptz` is sent.
pub fn pg_micros(t: SystemTime) -> i64 {
    match t.duration_since(pg_epoch()) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// `bigint[]` of one dimension (NULL elements refused).
impl Column for Vec<i64> {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        not_null(raw, |raw| {
            if raw.oid != INT8_ARRAY {
                return Err(unexpected(raw, "a bigint[]"));
            }
            let word = |at: usize| -> Result<i32, String> {
                let b = raw.bytes.get(at..at + 4).ok_or("a truncated array")?;
                Ok(i32::from_be_bytes(fixed(b)?))
            };
            let dims = word(0)?;
            if dims == 0 {
                return Ok(Vec::new());
            }
            if dims != 1 {
                return Err(format!("an array of {dims} dimensions"));
            }
            let len = usize::try_from(word(12)?).map_err(|_| "a negative length")?;
            let mut at = 20;
            let mut out = Vec::with_capacity(len);
            for _ in 0..len {
                let size = word(at)?;
                if size != 8 {
                    return Err("a NULL or malformed element".to_owned());
                }
                let b = raw.bytes.get(at + 4..at + 12).ok_or("a truncated array")?;
                out.push(i64::from_be_bytes(fixed(b)?));
                at += 12;
            }
            Ok(out)
        })
    }
}

/// The `operation` column.
impl Column for Operation {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        let text = String::read(raw)?;
        Operation::from_logged(&text)
            .ok_or_else(|| format!("the log holds an unknown operation `{text}`"))
    }
}

/// The `context` column (NULL: no context).
impl Column for AuditContext {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        Ok(AuditContext::from(Option::<Value>::read(raw)?))
    }
}

impl<T: Column> Column for Option<T> {
    fn read(raw: Option<Raw<'_>>) -> Result<Self, String> {
        raw.map(|raw| T::read(Some(raw))).transpose()
    }
}

/// Diesel's rows read by column name (feature `diesel`), and every [`FromLogRow`] type loaded
/// by Diesel's raw queries through [`diesel_rows::Loaded`].
#[cfg(feature = "diesel")]
pub mod diesel_rows {
    use diesel::deserialize::{self, QueryableByName};
    use diesel::pg::Pg;
    use diesel::row::{Field as _, NamedRow, Row};

    use super::{DecodeError, FromLogRow, LogRow, Raw};

    /// A Diesel row read by column name.
    pub struct Columns<'r, R>(pub &'r R);

    impl<'a, R: NamedRow<'a, Pg>> LogRow for Columns<'_, R> {
        fn visit(
            &self,
            column: &str,
            read: &mut dyn FnMut(Option<Raw<'_>>),
        ) -> Result<(), DecodeError> {
            let field = Row::get(self.0, column)
                .ok_or_else(|| DecodeError::new(column, "not in the query's row"))?;
            let value = field.value();
            read(value.as_ref().map(|v| Raw {
                oid: v.get_oid().get(),
                bytes: v.as_bytes(),
            }));
            Ok(())
        }
    }

    /// A reader's row type as Diesel's raw queries load it.
    pub struct Loaded<U>(pub U);

    impl<U: FromLogRow> QueryableByName<Pg> for Loaded<U> {
        fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
            Ok(Loaded(U::from_row(&Columns(row))?))
        }
    }

    /// An entry loaded by `diesel::sql_query("SELECT * FROM audit.auditlog ...")`.
    impl QueryableByName<Pg> for crate::log::AuditEntry {
        fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
            Ok(Self::from_row(&Columns(row))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(oid: u32, bytes: &[u8]) -> Option<Raw<'_>> {
        Some(Raw { oid, bytes })
    }

    #[test]
    fn binary_values_read_by_type() {
        assert_eq!(i64::read(raw(INT8, &(-5i64).to_be_bytes())), Ok(-5));
        assert_eq!(i64::read(raw(INT4, &7i32.to_be_bytes())), Ok(7));
        assert!(i32::read(raw(INT8, &i64::MAX.to_be_bytes())).is_err());
        assert_eq!(Option::<i64>::read(None), Ok(None));
        assert!(i64::read(None).is_err());
        assert_eq!(bool::read(raw(BOOL, &[1])), Ok(true));
        assert_eq!(String::read(raw(TEXT, b"a")), Ok("a".to_owned()));
        assert!(String::read(raw(INT8, &[0; 8])).is_err());
        assert_eq!(
            Value::read(raw(JSONB, b"\x01{\"n\": 1e400}")),
            Ok(serde_json::json!({"n": "1e400"}))
        );
        assert_eq!(Value::read(raw(JSON, b"[1]")), Ok(serde_json::json!([1])));
        let t = pg_epoch() + Duration::from_micros(1_500_000);
        assert_eq!(
            SystemTime::read(raw(TIMESTAMPTZ, &1_500_000i64.to_be_bytes())),
            Ok(t)
        );
        assert_eq!(pg_micros(t), 1_500_000);
        let before = pg_epoch() - Duration::from_micros(3);
        assert_eq!(
            SystemTime::read(raw(TIMESTAMPTZ, &(-3i64).to_be_bytes())),
            Ok(before)
        );
        assert_eq!(pg_micros(before), -3);
        let mut array = Vec::new();
        for w in [1i32, 0, INT8 as i32, 2, 1] {
            array.extend(w.to_be_bytes());
        }
        for v in [4i64, -9] {
            array.extend(8i32.to_be_bytes());
            array.extend(v.to_be_bytes());
        }
        assert_eq!(Vec::<i64>::read(raw(INT8_ARRAY, &array)), Ok(vec![4, -9]));
        assert_eq!(Operation::read(raw(TEXT, b"UPDATE")), Ok(Operation::Update));
    }
}
