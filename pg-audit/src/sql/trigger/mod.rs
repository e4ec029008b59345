//! Audit triggers for one table, from a [`TriggerSpec`].
//!
//! Each audited operation gets its own `AFTER` trigger (`pg_audit_insert`, `pg_audit_update`,
//! `pg_audit_delete`, `pg_audit_truncate`) calling one generated function per table, which lives
//! in the audit log's schema, runs `SECURITY DEFINER` with a pinned `search_path`, and inserts
//! into the log. Two shapes can be emitted ([`TriggerLevel`]): row-level triggers, whose `WHEN`
//! clauses keep rows that are not logged from calling any function, and statement-level
//! triggers reading transition tables, which log a whole statement with one `INSERT ... SELECT`.
//!
//! What an UPDATE logs: the audited columns of the row before (`old_values`) and after
//! (`new_values`); readers compute which changed. An UPDATE that changes no audited column (the
//! two JSON objects are equal) logs nothing; setting a column to NULL is a change. With
//! `track_only`, the row-level UPDATE trigger is `UPDATE OF` the tracked columns with a `WHEN`
//! comparing their byte images, so other updates cost no function call — unless the table has
//! a BEFORE UPDATE trigger or a generated tracked column, which `UPDATE OF` would miss.
//!
//! The spec and its methods live here; each part of the install is rendered by a module of
//! its own: `guard` (the install's checks of the table), `body` (the trigger function),
//! `create` (the `CREATE TRIGGER` statements) and `row` (expressions over one row), and
//! the install record by [`crate::sql::install`].

use std::fmt::Write as _;
use std::str::FromStr;

use crate::Error;
use crate::ident::{Ident, QualifiedName, dollar_quote, short_hash, text_literal};
use crate::sql::capture::Capture;
use crate::sql::condition::Condition;
use crate::sql::create_function;
use crate::sql::install::{self, Audited, InstallRecord};
use crate::sql::log::AuditLog;
use crate::sql::shape::Operation;

mod body;
mod builder;
mod create;

mod guard;
mod row;
mod wal;

pub use builder::TriggerSpecBuilder;
pub(crate) use row::{condition_for, key_json, values_json};

/// Which columns of the audited table reach the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Columns {
    /// Every column.
    All,
    /// Only these columns; changes to the others are not logged.
    TrackOnly(Vec<Ident>),
    /// Every column but these, whose values never reach the log in any form.
    Exclude(Vec<Ident>),
}

/// Whether triggers fire once per row or once per statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TriggerLevel {
    /// Chosen per operation by measurement (`docs/performance.md`): statement-level for
    /// INSERT, DELETE and UPDATE — as cheap as row-level for one row and 1.4–2.5× cheaper for
    /// bulk statements — except row-level for UPDATE with `track_only`, whose `UPDATE OF` and
    /// `WHEN` filters let updates of other columns skip the trigger entirely.
    #[default]
    Auto,
    /// `FOR EACH ROW`, with `WHEN` clauses filtering rows that are not logged before any
    /// function is called.
    Row,
    /// `FOR EACH STATEMENT` with transition tables: one set-based insert per statement.
    Statement,
}

impl TriggerLevel {
    /// Every level.
    pub const ALL: [TriggerLevel; 3] = [
        TriggerLevel::Auto,
        TriggerLevel::Row,
        TriggerLevel::Statement,
    ];

    /// `auto`, `row` or `statement`.
    pub fn name(self) -> &'static str {
        match self {
            TriggerLevel::Auto => "auto",
            TriggerLevel::Row => "row",
            TriggerLevel::Statement => "statement",
        }
    }
}

impl FromStr for TriggerLevel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        TriggerLevel::ALL
            .into_iter()
            .find(|level| level.name() == s)
            .ok_or_else(|| Error::UnknownLevel { name: s.to_owned() })
    }
}

/// The audit configuration of one table.
///
/// ```
/// use pg_audit::{AuditLog, QualifiedName, TriggerSpec};
/// let spec = TriggerSpec::builder(QualifiedName::parse("public.users")?)
///     .primary_key(["id"])
///     .track_only(["name", "email"])
///     .condition("NEW.is_active")
///     .build()?;
/// let sql = spec.install_sql(&AuditLog::new());
/// assert!(sql.contains(r#"CREATE TRIGGER "pg_audit_update" AFTER UPDATE OF "name", "email", "id" ON "#));
/// # Ok::<(), pg_audit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSpec {
    table: QualifiedName,
    primary_key: Vec<Ident>,
    columns: Columns,
    mask: Vec<Ident>,
    condition: Option<Condition>,
    operations: Vec<Operation>,
    level: TriggerLevel,
    capture: Capture,
}

impl TriggerSpec {
    /// Starts a spec for `table` with the defaults: key `id`, all columns, INSERT, UPDATE and
    /// DELETE, [`TriggerLevel::Auto`].
    pub fn builder(table: QualifiedName) -> TriggerSpecBuilder {
        TriggerSpecBuilder::new(table)
    }

    /// The audited table.
    pub fn table(&self) -> &QualifiedName {
        &self.table
    }

    /// SQL listing the columns this spec keeps out of the log by name (excluded, masked) that
    /// its table no longer has (`name`): renamed since, their values would reach the log in
    /// clear, so a baseline or an import refuses to run. `None` without such columns.
    pub fn missing_kept_out_sql(&self) -> Option<String> {
        let names = body::kept_out(self);
        if names.is_empty() {
            return None;
        }
        let list: Vec<String> = names.iter().map(|c| c.literal()).collect();
        Some(format!(
            "SELECT c.name FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS c(name)
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({}) AND a.attname OPERATOR(pg_catalog.=) c.name
                      AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped)",
            list.join(", "),
            self.table.literal()
        ))
    }

    /// The masked columns (logged as keyed digests).
    pub fn mask(&self) -> &[Ident] {
        &self.mask
    }

    /// The key columns.
    pub fn primary_key(&self) -> &[Ident] {
        &self.primary_key
    }

    /// Which columns are logged.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// The condition, if any.
    pub fn condition(&self) -> Option<&Condition> {
        self.condition.as_ref()
    }

    /// The audited operations, in [`Operation`] order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The trigger level as configured.
    pub fn level(&self) -> TriggerLevel {
        self.level
    }

    /// Where changes are captured.
    pub fn capture(&self) -> Capture {
        self.capture
    }

    /// The level `op`'s trigger is created at: [`TriggerLevel::Row`] or
    /// [`TriggerLevel::Statement`], resolving [`TriggerLevel::Auto`]. TRUNCATE is always
    /// statement-level.
    pub fn level_for(&self, op: Operation) -> TriggerLevel {
        match (self.level, op, &self.columns) {
            (_, Operation::Truncate, _) => TriggerLevel::Statement,
            (TriggerLevel::Auto, Operation::Update, Columns::TrackOnly(_)) => TriggerLevel::Row,
            (TriggerLevel::Auto, _, _) => TriggerLevel::Statement,
            (level, _, _) => level,
        }
    }

    /// The trigger function this spec installs, in the log's schema. Its name carries a hash of
    /// the audited table's schema and name, so two tables never share a function.
    pub fn function_name(&self, log: &AuditLog) -> QualifiedName {
        let schema = self.table.schema.as_ref().map_or("", Ident::as_str);
        let hash = short_hash(&[schema, self.table.name.as_str()]);
        QualifiedName::new(
            Some(log.schema().clone()),
            Ident::generated(
                &format!("{}_{}", log.table().name.as_str(), self.table.name.as_str()),
                &format!("_{hash}"),
            ),
        )
    }

    /// SQL that checks the table against this spec, then (re)creates the trigger function and
    /// the triggers, removing triggers of operations no longer audited, and records the install
    /// for the drift check. Run it in one transaction; the audit log must exist
    /// ([`AuditLog::create_sql`]).
    pub fn install_sql(&self, log: &AuditLog) -> String {
        if self.capture == Capture::Wal {
            return self.wal_install_sql(log, &guard::check_body(self), &self.drop_triggers_sql());
        }
        let function = self.function_name(log);
        let mut sql = String::new();
        let _ = writeln!(sql, "-- pg-audit: audit triggers on {}", self.table);
        let _ = writeln!(sql, "DO {};\n", dollar_quote(&guard::check_body(self)));
        let _ = writeln!(
            sql,
            "{}\n",
            create_function(
                &format!("{function}()"),
                "trigger",
                "plpgsql",
                true,
                &body::function_body(self, log)
            )
        );
        // Triggers run their function whatever the writer's privileges; revoking EXECUTE only
        // stops other roles attaching it to tables of their own to forge audit rows.
        let _ = writeln!(sql, "REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;");
        let _ = writeln!(
            sql,
            "COMMENT ON FUNCTION {function}() IS {};\n",
            text_literal(&format!("pg-audit trigger function for {}", self.table))
        );
        let _ = writeln!(
            sql,
            "DO {};",
            dollar_quote(&create::triggers_body(
                self,
                &function,
                &log.names().function("unaudited_partition")
            ))
        );
        let _ = writeln!(sql, "{}", self.wal_uninstall_sql(log));
        let _ = writeln!(
            sql,
            "\n{}",
            self.install_record()
                .insert_sql(log.names(), &self.table, &function)
        );
        let _ = writeln!(
            sql,
            "{}",
            crate::sql::schema::install_sql(log.names(), &self.table.literal())
        );
        // A partitioned table's partitions get triggers of their own (after the record, which
        // says which).
        let _ = writeln!(
            sql,
            "DO {};",
            dollar_quote(&format!(
                "\nBEGIN\n    PERFORM {}(pg_catalog.to_regclass({}));\nEND\n",
                log.names().function("adopt_partitions"),
                self.table.literal()
            ))
        );
        sql
    }

    /// SQL that removes this spec's triggers and function. The log keeps its rows.
    pub fn uninstall_sql(&self, log: &AuditLog) -> String {
        let mut sql = self.drop_triggers_sql();
        let _ = writeln!(sql, "{}", self.wal_uninstall_sql(log));
        let _ = writeln!(
            sql,
            "DROP FUNCTION IF EXISTS {}();",
            self.function_name(log)
        );
        let _ = writeln!(
            sql,
            "{}",
            install::delete_sql(&log.config_table(), &self.table)
        );
        let _ = writeln!(
            sql,
            "DO {};",
            dollar_quote(&format!(
                "\nBEGIN\n    {}\nEND\n",
                crate::sql::baseline::forget_plpgsql(log.names(), &self.table.literal())
            ))
        );
        sql
    }

    /// Whether `op`'s trigger fires per row (otherwise per statement).
    /// SQL dropping the table's pg-audit triggers and its partitions' own.
    fn drop_triggers_sql(&self) -> String {
        let mut sql = String::new();
        let _ = writeln!(
            sql,
            "DO {};",
            dollar_quote(&format!(
                "
DECLARE
    part regclass;
    pg_audit_trigger name;
BEGIN
    -- The table's triggers, and its partitions' own (the guard's clones go with the table's).
    FOR part IN SELECT t.rel FROM (SELECT pg_catalog.to_regclass({table}) AS rel
                                   UNION
                                   SELECT p.relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass({table})) AS p) AS t
                 WHERE t.rel IS NOT NULL LOOP
        {}
    END LOOP;
END
",
                Operation::drop_triggers_plpgsql("part", &Operation::all_trigger_names_array(), "        "),
                table = self.table.literal()
            ))
        );
        sql
    }

    fn is_row_level(&self, op: Operation) -> bool {
        self.level_for(op) == TriggerLevel::Row
    }

    /// Every column the spec names, deduplicated, in order of first mention.
    fn named_columns(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .primary_key
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        if let Columns::TrackOnly(cols) | Columns::Exclude(cols) = &self.columns {
            names.extend(cols.iter().map(|c| c.as_str().to_owned()));
        }
        names.extend(self.mask.iter().map(|c| c.as_str().to_owned()));
        if let Some(condition) = &self.condition {
            names.extend(condition.column_refs().into_iter().map(|r| r.column));
        }
        let mut seen = Vec::new();
        names.retain(|n| {
            let new = !seen.contains(n);
            seen.push(n.clone());
            new
        });
        names
    }

    /// What the install records for the drift check and readers.
    pub(crate) fn install_record(&self) -> InstallRecord {
        let names = |cols: &[Ident]| cols.iter().map(|c| c.as_str().to_owned()).collect();
        // Captured from the write-ahead log: no triggers, no levels.
        let triggered = if self.capture == Capture::Wal {
            &[][..]
        } else {
            &self.operations[..]
        };
        InstallRecord {
            primary_key: names(&self.primary_key),
            audited: match &self.columns {
                Columns::All => Audited::All,
                Columns::TrackOnly(cols) => Audited::TrackOnly(names(cols)),
                Columns::Exclude(cols) => Audited::Exclude(names(cols)),
            },
            mask: names(&self.mask),
            condition: self.condition.as_ref().map(|c| c.as_str().to_owned()),
            operations: self
                .operations
                .iter()
                .map(|op| op.keyword().to_owned())
                .collect(),
            levels: triggered
                .iter()
                .map(|&op| format!("{}:{:?}", op.keyword(), self.level_for(op)).to_lowercase())
                .collect(),
            triggers: triggered
                .iter()
                .map(|op| op.trigger_name().as_str().to_owned())
                .collect(),
            columns: self.named_columns(),
            wal: self.capture == Capture::Wal,
        }
    }

    /// The configuration as the install records it (JSON): what `check` compares and what
    /// readers need (the key).
    pub fn config_json(&self) -> String {
        self.install_record().to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn users() -> TriggerSpecBuilder {
        TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
    }

    #[test]
    fn configuration_mistakes_are_named() {
        assert_eq!(
            users().track_only(["a"]).exclude_fields(["b"]).build(),
            Err(Error::TrackOnlyWithExclude)
        );
        assert_eq!(
            users().track_only(Vec::<String>::new()).build(),
            Err(Error::EmptyList {
                option: "track_only"
            })
        );
        assert_eq!(
            users().exclude_fields(["a", "a"]).build(),
            Err(Error::DuplicateColumn {
                option: "exclude_fields",
                column: "a".into()
            })
        );
        assert_eq!(
            users().exclude_fields(["id"]).build(),
            Err(Error::ExcludedPrimaryKey {
                column: "id".into()
            })
        );
        assert_eq!(users().operations([]).build(), Err(Error::NoOperations));
        assert_eq!(users().condition(" ").build(), Err(Error::EmptyCondition));
        assert_eq!(
            "upsert".parse::<Operation>(),
            Err(Error::UnknownOperation {
                name: "upsert".into()
            })
        );
    }

    #[test]
    fn auto_picks_the_measured_level_per_operation() {
        let all = users().build().unwrap();
        assert_eq!(all.level_for(Operation::Insert), TriggerLevel::Statement);
        assert_eq!(all.level_for(Operation::Update), TriggerLevel::Statement);
        assert_eq!(all.level_for(Operation::Delete), TriggerLevel::Statement);
        let tracked = users().track_only(["name"]).build().unwrap();
        assert_eq!(tracked.level_for(Operation::Update), TriggerLevel::Row);
        let row = users().level(TriggerLevel::Row).build().unwrap();
        assert_eq!(row.level_for(Operation::Truncate), TriggerLevel::Statement);
        assert_eq!(row.level_for(Operation::Delete), TriggerLevel::Row);
    }

    #[test]
    fn function_names_are_per_table_and_fit() {
        let log = AuditLog::new();
        let a = users().build().unwrap().function_name(&log);
        let b = TriggerSpec::builder(QualifiedName::parse("other.users").unwrap())
            .build()
            .unwrap()
            .function_name(&log);
        assert_ne!(a, b);
        assert!(a.name.as_str().starts_with("auditlog_users_"));
        let long = TriggerSpec::builder(QualifiedName::parse(&"t".repeat(63)).unwrap())
            .build()
            .unwrap()
            .function_name(&log);
        assert_eq!(long.name.as_str().len(), 63);
    }

    #[test]
    fn config_json_describes_the_spec() {
        let spec = users()
            .track_only(["name"])
            .condition("NEW.\"x\" > 1")
            .build()
            .unwrap();
        assert_eq!(
            spec.config_json(),
            r#"{"primary_key":["id"],"audited":{"track_only":["name"]},"condition":"NEW.\"x\" > 1","operations":["INSERT","UPDATE","DELETE","TRUNCATE"],"levels":["insert:statement","update:row","delete:statement","truncate:statement"],"triggers":["pg_audit_insert","pg_audit_update","pg_audit_delete","pg_audit_truncate"],"columns":["id","name","x"]}"#
        );
    }
}
