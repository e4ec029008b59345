use std::fmt;

/// A configuration that cannot produce valid SQL.
///
/// Every variant names the offending value, so the message alone tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// An identifier (table, column, schema, ...) was empty.
    EmptyIdentifier {
        /// What the identifier names, e.g. `"column"`.
        what: &'static str,
    },
    /// An identifier is longer than PostgreSQL's limit of 63 bytes, which PostgreSQL would
    /// silently truncate.
    IdentifierTooLong {
        /// What the identifier names.
        what: &'static str,
        /// The identifier as given.
        name: String,
    },
    /// A name or value contains a NUL byte, which PostgreSQL text cannot hold.
    NulByte {
        /// What the text is, e.g. `"column"` or `"condition"`.
        what: &'static str,
    },
    /// A list option (`track_only`, `exclude_fields`, `primary_key`) was given but empty.
    EmptyList {
        /// The option's name.
        option: &'static str,
    },
    /// A column appears twice in one list.
    DuplicateColumn {
        /// The option's name.
        option: &'static str,
        /// The repeated column.
        column: String,
    },
    /// `track_only` and `exclude_fields` were both given.
    TrackOnlyWithExclude,
    /// A primary-key column is listed in `exclude_fields`: its value is always stored in the
    /// log's `record_pk`, so it cannot also be kept out of the log.
    ExcludedPrimaryKey {
        /// The primary-key column.
        column: String,
    },
    /// A masked column is part of the key, which the log stores as it is.
    MaskedPrimaryKey {
        /// The column.
        column: String,
    },
    /// A masked column is not logged at all (excluded, or not among `track_only`).
    MaskedNotLogged {
        /// The column.
        column: String,
        /// `exclude_fields` or `track_only`.
        option: &'static str,
    },
    /// No operation was selected for auditing.
    NoOperations,
    /// An operation name is not one of insert, update, delete, truncate.
    UnknownOperation {
        /// The name as given.
        name: String,
    },
    /// A partition period name is not one of daily, weekly, monthly.
    UnknownPeriod {
        /// The name as given.
        name: String,
    },
    /// A trigger level name is not `row` or `statement`.
    UnknownLevel {
        /// The name as given.
        name: String,
    },
    /// A capture path name is not `trigger` or `wal`.
    UnknownCapture {
        /// The name as given.
        name: String,
    },
    /// The condition is empty or only whitespace and comments.
    EmptyCondition,
    /// The condition is not a well-formed SQL expression.
    InvalidCondition {
        /// The condition as given.
        condition: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A connection string that cannot be read as libpq reads it.
    Conninfo {
        /// What in it could not be read.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyIdentifier { what } => write!(f, "{what} name is empty"),
            Error::IdentifierTooLong { what, name } => write!(
                f,
                "{what} name `{name}` is {} bytes long; PostgreSQL names are at most 63 bytes",
                name.len()
            ),
            Error::NulByte { what } => {
                write!(f, "{what} contains a NUL byte, which PostgreSQL text cannot hold")
            }
            Error::EmptyList { option } => {
                write!(f, "`{option}` is empty; list at least one column or leave it out")
            }
            Error::DuplicateColumn { option, column } => {
                write!(f, "column `{column}` is listed twice in `{option}`")
            }
            Error::TrackOnlyWithExclude => f.write_str(
                "`track_only` and `exclude_fields` cannot be used together; \
                 use `track_only` to name the audited columns, or `exclude_fields` to name the others",
            ),
            Error::ExcludedPrimaryKey { column } => write!(
                f,
                "primary-key column `{column}` cannot be excluded: the log stores every record's key"
            ),
            Error::MaskedPrimaryKey { column } => write!(
                f,
                "primary-key column `{column}` cannot be masked: the log stores every record's key as it is"
            ),
            Error::MaskedNotLogged { column, option } if *option == "exclude_fields" => write!(
                f,
                "column `{column}` is both masked and excluded: choose one (excluded values never reach the log; masked ones reach it as digests)"
            ),
            Error::MaskedNotLogged { column, .. } => write!(
                f,
                "masked column `{column}` is not among track_only: add it there, or do not mask it"
            ),
            Error::NoOperations => f.write_str(
                "no operation to audit; choose at least one of insert, update, delete, truncate",
            ),
            Error::UnknownOperation { name } => write!(
                f,
                "unknown operation `{name}`, expected one of insert, update, delete, truncate"
            ),
            Error::UnknownPeriod { name } => write!(
                f,
                "unknown partition period `{name}`, expected one of daily, weekly, monthly"
            ),
            Error::UnknownLevel { name } => {
                write!(f, "unknown trigger level `{name}`, expected `row` or `statement`")
            }
            Error::UnknownCapture { name } => {
                write!(f, "unknown capture `{name}`, expected `trigger` or `wal`")
            }
            Error::EmptyCondition => f.write_str("the condition is empty"),
            Error::InvalidCondition { condition, reason } => {
                write!(f, "invalid condition `{condition}`: {reason}")
            }
            Error::Conninfo { reason } => write!(f, "cannot read the connection string: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// An error and its causes on one line, each printed once, as `anyhow`'s `{:#}` prints them:
/// a cause whose text the line already holds (the object store's, Parquet's and some database
/// clients' errors repeat their sources in their own message) is skipped. What the program,
/// the capture worker and the archive print.
///
/// ```
/// let e = std::io::Error::other("disk full");
/// assert_eq!(pg_audit::error_chain(&e), "disk full");
/// ```
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
