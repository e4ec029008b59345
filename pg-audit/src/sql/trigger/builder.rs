//! Building a [`TriggerSpec`]: each option as given, then [`TriggerSpecBuilder::build`] checks
//! the whole configuration at once.

use super::{Columns, TriggerLevel, TriggerSpec};
use crate::Error;
use crate::ident::{Ident, QualifiedName};
use crate::sql::capture::Capture;
use crate::sql::condition::Condition;
use crate::sql::shape::Operation;

/// Builds a [`TriggerSpec`]; [`TriggerSpecBuilder::build`] checks the whole configuration.
#[derive(Debug, Clone)]
#[must_use]
pub struct TriggerSpecBuilder {
    table: QualifiedName,
    primary_key: Vec<String>,
    track_only: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    mask: Option<Vec<String>>,
    condition: Option<String>,
    operations: Option<Vec<Operation>>,
    level: TriggerLevel,
    capture: Capture,
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl TriggerSpecBuilder {
    /// The defaults of [`TriggerSpec::builder`].
    pub(super) fn new(table: QualifiedName) -> Self {
        TriggerSpecBuilder {
            table,
            primary_key: vec!["id".to_owned()],
            track_only: None,
            exclude: None,
            mask: None,
            condition: None,
            operations: None,
            level: TriggerLevel::Auto,
            capture: Capture::Trigger,
        }
    }

    /// The columns identifying a row: the primary key or a unique index (default: `id`).
    pub fn primary_key<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.primary_key = strings(columns);
        self
    }

    /// Logs only these columns.
    pub fn track_only<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.track_only = Some(strings(columns));
        self
    }

    /// Keeps these columns' values out of the log.
    pub fn exclude_fields<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        columns: I,
    ) -> Self {
        self.exclude = Some(strings(columns));
        self
    }

    /// Logs these columns as keyed digests (see [`crate::sql::mask`]): that they changed, and
    /// whether two values are equal, never the values.
    pub fn mask<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.mask = Some(strings(columns));
        self
    }

    /// Logs only rows for which this SQL boolean over `NEW` and `OLD` is true (see
    /// [`crate::Condition`] for what `NEW` and `OLD` mean on INSERT and DELETE).
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.condition = Some(condition.into());
        self
    }

    /// The operations to audit (default: all four, [`Operation::DEFAULT`]).
    pub fn operations<I: IntoIterator<Item = Operation>>(mut self, operations: I) -> Self {
        self.operations = Some(operations.into_iter().collect());
        self
    }

    /// The trigger level (default [`TriggerLevel::Auto`]).
    pub fn level(mut self, level: TriggerLevel) -> Self {
        self.level = level;
        self
    }

    /// Where changes are captured (default [`Capture::Trigger`]; see [`crate::sql::capture`]).
    pub fn capture(mut self, capture: Capture) -> Self {
        self.capture = capture;
        self
    }

    /// Checks the configuration and returns the spec, or the first mistake found.
    pub fn build(self) -> Result<TriggerSpec, Error> {
        let primary_key = column_list("primary_key", self.primary_key)?;
        let columns = match (self.track_only, self.exclude) {
            (Some(_), Some(_)) => return Err(Error::TrackOnlyWithExclude),
            (Some(cols), None) => Columns::TrackOnly(column_list("track_only", cols)?),
            (None, Some(cols)) => {
                let cols = column_list("exclude_fields", cols)?;
                if let Some(pk) = cols.iter().find(|c| primary_key.contains(c)) {
                    return Err(Error::ExcludedPrimaryKey {
                        column: pk.as_str().to_owned(),
                    });
                }
                Columns::Exclude(cols)
            }
            (None, None) => Columns::All,
        };
        let mask = match self.mask {
            Some(cols) => column_list("mask", cols)?,
            None => Vec::new(),
        };
        for column in &mask {
            let name = || column.as_str().to_owned();
            if primary_key.contains(column) {
                return Err(Error::MaskedPrimaryKey { column: name() });
            }
            match &columns {
                Columns::Exclude(cols) if cols.contains(column) => {
                    return Err(Error::MaskedNotLogged {
                        column: name(),
                        option: "exclude_fields",
                    });
                }
                Columns::TrackOnly(cols) if !cols.contains(column) => {
                    return Err(Error::MaskedNotLogged {
                        column: name(),
                        option: "track_only",
                    });
                }
                _ => {}
            }
        }
        let condition = self
            .condition
            .as_deref()
            .map(Condition::parse)
            .transpose()?;
        let mut operations = self
            .operations
            .unwrap_or_else(|| Operation::DEFAULT.to_vec());
        operations.sort();
        operations.dedup();
        if operations.is_empty() {
            return Err(Error::NoOperations);
        }
        Ok(TriggerSpec {
            table: self.table,
            primary_key,
            columns,
            mask,
            condition,
            operations,
            level: self.level,
            capture: self.capture,
        })
    }
}

fn column_list(option: &'static str, names: Vec<String>) -> Result<Vec<Ident>, Error> {
    if names.is_empty() {
        return Err(Error::EmptyList { option });
    }
    let mut out: Vec<Ident> = Vec::with_capacity(names.len());
    for name in names {
        let ident = Ident::with_kind(name, "column")?;
        if out.contains(&ident) {
            return Err(Error::DuplicateColumn {
                option,
                column: ident.as_str().to_owned(),
            });
        }
        out.push(ident);
    }
    Ok(out)
}
