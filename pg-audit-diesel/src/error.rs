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
            _ => None,
        }
    }
}
