use std::fmt;

/// What went wrong auditing models, naming the model or table concerned and the fix.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A model's configuration cannot produce a trigger (caught at compile time where rustc
    /// can; what remains, such as excluding a primary-key column, is caught here).
    Config {
        /// The model.
        model: &'static str,
        /// What is wrong.
        source: pg_audit::Error,
    },
    /// The registry holds no `#[pg_audit]` model.
    NoModels,
    /// Two models audit the same table.
    SameTable {
        /// The table.
        table: String,
        /// One model.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A database error.
    Database(diesel::result::Error),
    /// A key given for a model does not fit its primary key.
    BadKey {
        /// The model.
        model: &'static str,
        /// What does not fit.
        problem: String,
    },
    /// The entry to revert to is not in the record's history.
    NotInHistory {
        /// The entry id.
        entry: i64,
        /// The record's key.
        key: serde_json::Value,
    },
    /// A restore was asked for a record whose last change is not a DELETE.
    NotDeleted {
        /// The record's key.
        key: serde_json::Value,
    },
    /// Diesel wrote a model's table or key in a form pg-audit does not read.
    Rendering {
        /// The model.
        model: &'static str,
        /// What Diesel wrote.
        sql: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { model, source } => write!(f, "#[pg_audit] on `{model}`: {source}"),
            Error::NoModels => f.write_str(
                "no #[pg_audit] model is registered: either no model has the attribute, or the \
                 crate defining them is not linked into this program (the linker drops crates \
                 the program never refers to); refer to a model from the program, or list the \
                 models with `ModelSet::new().with::<Model>()`",
            ),
            Error::SameTable {
                table,
                first,
                second,
            } => write!(
                f,
                "`{first}` and `{second}` both audit table {table}; keep #[pg_audit] on one of them"
            ),
            Error::Database(e) => write!(f, "{e}"),
            Error::BadKey { model, problem } => write!(f, "bad key for `{model}`: {problem}"),
            Error::NotInHistory { entry, key } => {
                write!(
                    f,
                    "audit entry {entry} is not in the history of record {key}"
                )
            }
            Error::NotDeleted { key } => write!(
                f,
                "record {key} cannot be restored: its last logged change is not a DELETE"
            ),
            Error::Rendering { model, sql } => write!(
                f,
                "cannot read the table or primary key of `{model}` from Diesel's SQL `{sql}`"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config { source, .. } => Some(source),
            Error::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Database(e)
    }
}
