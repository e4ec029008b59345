//! What the reader's questions fail with, whatever the runtime.

use std::fmt;

use super::row::DecodeError;

/// Why a question to the log failed: the runtime's database error `E`, or what the log says.
/// Each runtime turns it into its own error type, each printing its cause once.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError<E> {
    /// The database's error, as it is.
    Database(E),
    /// A value the reader could not read.
    Decode(DecodeError),
    /// A name read back from the log or the catalogue is not an identifier.
    Name(pg_audit::Error),
    /// The entry to revert to is not in the record's history.
    NotInHistory {
        /// The entry id.
        entry: i64,
        /// The record's key.
        key: serde_json::Value,
    },
    /// A restore was asked for a record the log has no entry of.
    NoHistory {
        /// The record's key.
        key: serde_json::Value,
    },
    /// A restore was asked for a record whose last change is not a DELETE.
    NotDeleted {
        /// The record's key.
        key: serde_json::Value,
    },
    /// A record cannot be re-inserted from the log: columns the log does not hold (excluded
    /// or not tracked) are `NOT NULL` without a default.
    MissingValues {
        /// The table.
        table: String,
        /// The columns.
        columns: Vec<String>,
    },
    /// A revert to an entry holding columns the table has dropped since.
    SchemaChanged {
        /// The entry.
        entry: i64,
        /// The table.
        table: String,
        /// The columns dropped since.
        columns: Vec<String>,
    },
    /// A table has no install recorded in the log: it is not audited there.
    NotAudited {
        /// The table.
        table: String,
    },
    /// A key that cannot name a record of the table: not an object of exactly its key columns
    /// (recorded at install).
    BadKey {
        /// The table.
        table: String,
        /// The key given.
        key: serde_json::Value,
        /// The key columns recorded for each audited table of that name.
        expected: Vec<Vec<String>>,
    },
    /// A table the revert was to write is gone.
    NoTable {
        /// The table.
        table: String,
    },
}

impl<E> From<DecodeError> for ReadError<E> {
    fn from(e: DecodeError) -> Self {
        ReadError::Decode(e)
    }
}

impl<E: fmt::Display> fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Database(e) => e.fmt(f),
            ReadError::Decode(e) => e.fmt(f),
            ReadError::Name(e) => write!(f, "a name read from the log: {e}"),
            ReadError::NotInHistory { entry, key } => {
                write!(
                    f,
                    "audit entry {entry} is not in the history of record {key}"
                )
            }
            ReadError::NoHistory { key } => write!(
                f,
                "record {key} has no audit entries, so there is nothing to restore; check the key"
            ),
            ReadError::NotDeleted { key } => write!(
                f,
                "record {key} cannot be restored: its last logged change is not a DELETE"
            ),
            ReadError::MissingValues { table, columns } => write!(
                f,
                "cannot re-insert the record into {table}: {} {} NOT NULL without a default and \
                 not in the log (excluded, not tracked, or masked); give values for them with \
                 `AuditReader::restore_with`",
                columns.join(", "),
                if columns.len() == 1 { "is" } else { "are" }
            ),
            ReadError::SchemaChanged {
                entry,
                table,
                columns,
            } => write!(
                f,
                "cannot put back {table} as it was after entry {entry}: {} {} dropped from the table since (a recorded schema change); nothing was written",
                columns.join(", "),
                if columns.len() == 1 { "was" } else { "were" }
            ),
            ReadError::NotAudited { table } => write!(
                f,
                "{table} is not audited in this log (no install is recorded for it); check the \
                 name, or read the log it is audited in"
            ),
            ReadError::BadKey {
                table,
                key,
                expected,
            } => {
                let columns: Vec<String> = expected
                    .iter()
                    .map(|cols| format!("{{{}}}", cols.join(", ")))
                    .collect();
                write!(
                    f,
                    "key {key} cannot name a record of {table}: give a JSON object of its key \
                     columns, {}",
                    columns.join(" or ")
                )
            }
            ReadError::NoTable { table } => write!(f, "table {table} no longer exists"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ReadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Printed as they are: their own causes follow.
            ReadError::Database(e) => e.source(),
            ReadError::Name(e) => Some(e),
            _ => None,
        }
    }
}
