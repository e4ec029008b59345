use std::fmt;

/// The reader's failures, printed by the runtime-neutral reader's words.
type Read = pg_audit_runtime::log::ReadError<std::convert::Infallible>;

/// What went wrong auditing models, naming the model or table concerned and the fix.
///
/// Each variant prints its cause once: a configuration mistake is part of the message (it is
/// the message), a database error is passed through as it is (`source()` goes on to its own
/// cause), so `anyhow`'s `{:#}` reads cleanly.
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
    /// A database error, displayed as it is.
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
    /// A table no longer has columns its audit keeps out of the log by name (excluded or
    /// masked): renamed since, their values would be logged in clear.
    KeptOutRenamed {
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
            // The reader's failures, in the words every runtime uses.
            Error::NotInHistory { entry, key } => Read::NotInHistory {
                entry: *entry,
                key: key.clone(),
            }
            .fmt(f),
            Error::NoHistory { key } => Read::NoHistory { key: key.clone() }.fmt(f),
            Error::NotDeleted { key } => Read::NotDeleted { key: key.clone() }.fmt(f),
            Error::MissingValues { table, columns } => Read::MissingValues {
                table: table.clone(),
                columns: columns.clone(),
            }
            .fmt(f),
            Error::KeptOutRenamed { table, columns } => write!(
                f,
                "{table} has no column {}, which its audit keeps out of the log (excluded or masked): renamed or dropped since the audit was installed, its values would reach the log in clear; install the table's audit again with the new name first",
                columns.join(", ")
            ),
            Error::SchemaChanged {
                entry,
                table,
                columns,
            } => Read::SchemaChanged {
                entry: *entry,
                table: table.clone(),
                columns: columns.clone(),
            }
            .fmt(f),
            Error::NotAudited { table } => Read::NotAudited {
                table: table.clone(),
            }
            .fmt(f),
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
            // Transparent: the message is the database error's own, so its cause comes next.
            Error::Database(e) => e.source(),
            // `Config` prints its configuration error in its message.
            _ => None,
        }
    }
}

impl From<pg_audit_runtime::log::ReadError<diesel::result::Error>> for Error {
    fn from(e: pg_audit_runtime::log::ReadError<diesel::result::Error>) -> Self {
        use pg_audit_runtime::log::ReadError as R;
        match e {
            R::Database(e) => Error::Database(e),
            R::Name(source) => Error::Config {
                model: "history",
                source,
            },
            R::NotInHistory { entry, key } => Error::NotInHistory { entry, key },
            R::NoHistory { key } => Error::NoHistory { key },
            R::NotDeleted { key } => Error::NotDeleted { key },
            R::MissingValues { table, columns } => Error::MissingValues { table, columns },
            R::SchemaChanged {
                entry,
                table,
                columns,
            } => Error::SchemaChanged {
                entry,
                table,
                columns,
            },
            R::NotAudited { table } => Error::NotAudited { table },
            other => Error::Database(crate::log::query_error(other)),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Database(e)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An error and its causes as `anyhow`'s `{:#}` prints them, one message per cause.
    pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut messages = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            messages.push(c.to_string());
            cause = c.source();
        }
        messages
    }

    /// No message of the chain repeats a later one.
    pub(crate) fn assert_prints_once(e: &(dyn std::error::Error + 'static)) {
        let messages = chain(e);
        for (i, outer) in messages.iter().enumerate() {
            for inner in &messages[i + 1..] {
                assert!(
                    !outer.contains(inner.as_str()),
                    "`{inner}` is printed twice in {messages:?}"
                );
            }
        }
    }

    #[test]
    fn every_error_prints_its_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such thing");
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(Error::Config {
                model: "User",
                source: pg_audit::Error::TrackOnlyWithExclude,
            }),
            Box::new(Error::NoModels),
            Box::new(Error::SameTable {
                table: "users".into(),
                first: "A",
                second: "B",
            }),
            Box::new(Error::Database(diesel::result::Error::NotFound)),
            Box::new(Error::Database(
                diesel::result::Error::DeserializationError(Box::new(io)),
            )),
            Box::new(Error::BadKey {
                model: "User",
                problem: "two values".into(),
            }),
            Box::new(Error::NotInHistory {
                entry: 1,
                key: serde_json::json!({"id": 1}),
            }),
            Box::new(Error::NotDeleted {
                key: serde_json::json!({"id": 1}),
            }),
            Box::new(Error::MissingValues {
                table: "users".into(),
                columns: vec!["password_hash".into()],
            }),
            Box::new(Error::Rendering {
                model: "User",
                sql: "x".into(),
            }),
            Box::new(crate::WriteError::Models(Error::Config {
                model: "User",
                source: pg_audit::Error::NoOperations,
            })),
            Box::new(crate::WriteError::Io {
                path: "migrations".into(),
                source: std::io::Error::other("disk full"),
            }),
            Box::new(crate::InvalidContext {
                field: "user_id",
                problem: "is too long".into(),
            }),
        ];
        for e in &errors {
            assert_prints_once(e.as_ref());
        }
        assert_eq!(
            chain(errors[3].as_ref()),
            ["Record not found"],
            "a database error reads as itself"
        );
        assert_eq!(
            chain(errors[11].as_ref()),
            ["cannot write migrations", "disk full"]
        );
    }
}
