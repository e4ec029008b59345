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

use std::fmt::Write as _;
use std::str::FromStr;

use crate::Error;
use crate::ident::{Ident, QualifiedName, dollar_quote, ident_literal, quote_literal, short_hash};
use crate::sql::condition::{Condition, RowRef};
use crate::sql::table::AuditLog;

/// A change that can be audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `INSERT` (including the insert arm of `INSERT ... ON CONFLICT` and `MERGE`).
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `TRUNCATE`: one log row per statement, with no row values.
    Truncate,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 4] = [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ];

    /// The operations audited when none are chosen: INSERT, UPDATE and DELETE.
    pub const DEFAULT: [Operation; 3] = [Operation::Insert, Operation::Update, Operation::Delete];

    /// The SQL keyword, as stored in the log's `operation` column.
    pub fn keyword(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Truncate => "TRUNCATE",
        }
    }

    /// The name of this operation's trigger on the audited table.
    pub fn trigger_name(self) -> Ident {
        let name = match self {
            Operation::Insert => "pg_audit_insert",
            Operation::Update => "pg_audit_update",
            Operation::Delete => "pg_audit_delete",
            Operation::Truncate => "pg_audit_truncate",
        };
        Ident::new(name).expect("valid")
    }
}

impl FromStr for Operation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Operation::ALL
            .into_iter()
            .find(|op| op.keyword().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownOperation { name: s.to_owned() })
    }
}

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

impl FromStr for TriggerLevel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(TriggerLevel::Auto),
            "row" => Ok(TriggerLevel::Row),
            "statement" => Ok(TriggerLevel::Statement),
            _ => Err(Error::UnknownLevel { name: s.to_owned() }),
        }
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
/// assert!(sql.contains(r#"CREATE TRIGGER "pg_audit_update" AFTER UPDATE ON "public"."users""#));
/// # Ok::<(), pg_audit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSpec {
    table: QualifiedName,
    primary_key: Vec<Ident>,
    columns: Columns,
    condition: Option<Condition>,
    operations: Vec<Operation>,
    level: TriggerLevel,
}

/// Builds a [`TriggerSpec`]; [`TriggerSpecBuilder::build`] checks the whole configuration.
#[derive(Debug, Clone)]
#[must_use]
pub struct TriggerSpecBuilder {
    table: QualifiedName,
    primary_key: Vec<String>,
    track_only: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    condition: Option<String>,
    operations: Option<Vec<Operation>>,
    level: TriggerLevel,
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl TriggerSpecBuilder {
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

    /// Logs only rows for which this SQL boolean over `NEW` and `OLD` is true (see
    /// [`crate::Condition`] for what `NEW` and `OLD` mean on INSERT and DELETE).
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.condition = Some(condition.into());
        self
    }

    /// The operations to audit (default: INSERT, UPDATE, DELETE).
    pub fn operations<I: IntoIterator<Item = Operation>>(mut self, operations: I) -> Self {
        self.operations = Some(operations.into_iter().collect());
        self
    }

    /// Row-level (default) or statement-level triggers.
    pub fn level(mut self, level: TriggerLevel) -> Self {
        self.level = level;
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
            condition,
            operations,
            level: self.level,
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

/// Names of the transition tables and of the row aliases in statement-level functions.
const NEW_ROWS: &str = "pg_audit_new_rows";
const OLD_ROWS: &str = "pg_audit_old_rows";

impl TriggerSpec {
    /// Starts a spec for `table` with the defaults: key `id`, all columns, INSERT, UPDATE and
    /// DELETE, row-level triggers.
    pub fn builder(table: QualifiedName) -> TriggerSpecBuilder {
        TriggerSpecBuilder {
            table,
            primary_key: vec!["id".to_owned()],
            track_only: None,
            exclude: None,
            condition: None,
            operations: None,
            level: TriggerLevel::Auto,
        }
    }

    /// The audited table.
    pub fn table(&self) -> &QualifiedName {
        &self.table
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
    /// the triggers, removing triggers of operations no longer audited. Run it in one
    /// transaction; the audit log must exist ([`AuditLog::create_sql`]).
    pub fn install_sql(&self, log: &AuditLog) -> String {
        let function = self.function_name(log);
        let mut sql = String::new();
        let _ = writeln!(sql, "-- pg-audit: audit triggers on {}", self.table);
        let _ = writeln!(sql, "DO {};\n", dollar_quote(&self.check_body()));
        let _ = writeln!(
            sql,
            "CREATE OR REPLACE FUNCTION {function}()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS {};\n",
            dollar_quote(&self.function_body(log))
        );
        // Triggers run their function whatever the writer's privileges; revoking EXECUTE only
        // stops other roles attaching it to tables of their own to forge audit rows.
        let _ = writeln!(sql, "REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;");
        let _ = writeln!(
            sql,
            "COMMENT ON FUNCTION {function}() IS {};\n",
            quote_literal(&format!("pg-audit trigger function for {}", self.table))
                .expect("no NUL")
        );
        for op in Operation::ALL {
            let _ = writeln!(
                sql,
                "DROP TRIGGER IF EXISTS {} ON {};",
                op.trigger_name(),
                self.table
            );
        }
        for &op in &self.operations {
            let _ = writeln!(sql, "{}", self.create_trigger(op, &function));
        }
        let _ = writeln!(sql, "\n{}", self.record_install_sql(log, &function));
        sql
    }

    /// SQL that removes this spec's triggers and function. The log keeps its rows.
    pub fn uninstall_sql(&self, log: &AuditLog) -> String {
        let mut sql = String::new();
        for op in Operation::ALL {
            let _ = writeln!(
                sql,
                "DROP TRIGGER IF EXISTS {} ON {};",
                op.trigger_name(),
                self.table
            );
        }
        let _ = writeln!(
            sql,
            "DROP FUNCTION IF EXISTS {}();",
            self.function_name(log)
        );
        let _ = writeln!(sql, "{}", self.record_uninstall_sql(log));
        sql
    }

    fn table_literal(&self) -> String {
        quote_literal(&self.table.to_string()).expect("no NUL")
    }

    /// Every column the spec names, deduplicated, in order of first mention.
    pub(crate) fn named_columns(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .primary_key
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        if let Columns::TrackOnly(cols) | Columns::Exclude(cols) = &self.columns {
            names.extend(cols.iter().map(|c| c.as_str().to_owned()));
        }
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

    /// A DO block that fails, with a message naming the problem and the fix, when the table is
    /// missing, lacks a named column, or is not keyed by the spec's key.
    fn check_body(&self) -> String {
        let table_lit = self.table_literal();
        let literals = |names: &[String]| {
            names
                .iter()
                .map(|n| quote_literal(n).expect("no NUL"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let columns = literals(&self.named_columns());
        let key: Vec<String> = self
            .primary_key
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        let key_list = literals(&key);
        let key_text = quote_literal(
            &self
                .primary_key
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )
        .expect("no NUL");
        format!(
            r#"
DECLARE
    tbl regclass := pg_catalog.to_regclass({table_lit});
    missing text;
    actual text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'pg-audit: table % does not exist; create it (run the application''s own migrations) before installing its audit triggers', {table_lit};
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') INTO missing
      FROM pg_catalog.unnest(ARRAY[{columns}]::text[]) AS c
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: table % has no column %', tbl, missing
            USING HINT = 'Column names are case-sensitive and taken as written; correct the audit configuration or the table.';
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_index AS i
         WHERE i.indrelid = tbl AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
           AND (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname::text)
                  FROM pg_catalog.pg_attribute AS a
                 WHERE a.attrelid = tbl AND a.attnum = ANY (i.indkey))
             = (SELECT pg_catalog.array_agg(k ORDER BY k) FROM pg_catalog.unnest(ARRAY[{key_list}]::text[]) AS k)
    ) THEN
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n) INTO actual
          FROM pg_catalog.pg_index AS i
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = tbl AND i.indisprimary;
        IF actual IS NULL THEN
            RAISE EXCEPTION 'pg-audit: table % has no primary key or unique index on (%)', tbl, {key_text}
                USING HINT = 'The log identifies rows by their key: add a primary key to the table, or audit it by the columns of a unique index.';
        ELSE
            RAISE EXCEPTION 'pg-audit: (%) is not a key of table %', {key_text}, tbl
                USING HINT = pg_catalog.format('Its primary key is (%s): give that as the audit key.', actual);
        END IF;
    END IF;
END
"#
        )
    }

    /// The JSON object of the audited columns of `row` (an expression of the table's row type).
    fn values_json(&self, row: &str) -> String {
        match &self.columns {
            Columns::All => format!("pg_catalog.to_jsonb({row})"),
            Columns::TrackOnly(cols) => json_object(row, cols),
            Columns::Exclude(cols) => format!(
                "(pg_catalog.to_jsonb({row}) OPERATOR(pg_catalog.-) ARRAY[{}]::text[])",
                cols.iter()
                    .map(ident_literal)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn key_json(&self, row: &str) -> String {
        json_object(row, &self.primary_key)
    }

    /// The `record_key` and `record_pk` expressions for the row `row`.
    fn key_exprs(&self, row: &str) -> (String, String) {
        let pk = self.key_json(row);
        (
            crate::sql::table::record_key_expr("TG_TABLE_SCHEMA", "TG_TABLE_NAME", &pk),
            pk,
        )
    }

    /// `record_key, record_pk` for the row `row`, as a VALUES or SELECT list fragment.
    fn key_values(&self, row: &str) -> String {
        let (key, pk) = self.key_exprs(row);
        format!("{key}, {pk}")
    }

    /// The condition for `op`, with `NEW` and `OLD` written as `new` and `old` (see
    /// [`crate::Condition`] for INSERT and DELETE).
    fn condition_for(&self, op: Operation, new: &str, old: &str) -> Option<String> {
        let condition = self.condition.as_ref()?;
        let (new, old) = match op {
            Operation::Insert => (new, new),
            Operation::Delete => (old, old),
            Operation::Update => (new, old),
            Operation::Truncate => return None,
        };
        Some(condition.render(|row| match row {
            RowRef::New => new.to_owned(),
            RowRef::Old => old.to_owned(),
        }))
    }

    /// The tracked columns' byte images differ: a filter that works for every type, including
    /// those without `=` (json, point, ...).
    fn tracked_changed(&self, cols: &[Ident]) -> String {
        let list = |row: &str| {
            cols.iter()
                .map(|c| format!("{row}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "pg_catalog.record_image_ne(ROW({}), ROW({}))",
            list("OLD"),
            list("NEW")
        )
    }

    fn function_body(&self, log: &AuditLog) -> String {
        let insert_into = format!(
            "INSERT INTO {} (operation, schema_name, table_name, record_key, record_pk, old_values, new_values, context)",
            log.table()
        );
        let context = crate::context::read_expr();
        let mut branches = Vec::new();
        for &op in &self.operations {
            let kw = op.keyword();
            let statement = self.level_for(op) == TriggerLevel::Statement;
            let branch = match (statement, op) {
                (_, Operation::Truncate) => format!(
                    "{insert_into}\n        VALUES ('TRUNCATE', TG_TABLE_SCHEMA, TG_TABLE_NAME, NULL, NULL, NULL, NULL, {context});"
                ),
                (false, Operation::Insert) => format!(
                    "{insert_into}\n        VALUES ('{kw}', TG_TABLE_SCHEMA, TG_TABLE_NAME, {}, NULL, {}, {context});",
                    self.key_values("NEW"),
                    self.values_json("NEW")
                ),
                (false, Operation::Delete) => format!(
                    "{insert_into}\n        VALUES ('{kw}', TG_TABLE_SCHEMA, TG_TABLE_NAME, {}, {}, NULL, {context});",
                    self.key_values("OLD"),
                    self.values_json("OLD")
                ),
                // Whole audited rows before and after: cheaper than computing a diff in the
                // trigger (docs/performance.md); readers compute the diff. A JSON-equal pair
                // (an update that changed nothing audited) is not logged.
                (false, Operation::Update) => format!(
                    "v_old := {};
        v_new := {};
        IF v_old OPERATOR(pg_catalog.<>) v_new THEN
            {insert_into}
            VALUES ('{kw}', TG_TABLE_SCHEMA, TG_TABLE_NAME, {}, v_old, v_new, {context});
        END IF;",
                    self.values_json("OLD"),
                    self.values_json("NEW"),
                    self.key_values("NEW"),
                ),
                (true, Operation::Insert | Operation::Delete) => {
                    let (rows, alias) = if op == Operation::Insert {
                        (NEW_ROWS, "pg_audit_new")
                    } else {
                        (OLD_ROWS, "pg_audit_old")
                    };
                    let (old_values, new_values) = if op == Operation::Insert {
                        ("NULL::jsonb".to_owned(), self.values_json(alias))
                    } else {
                        (self.values_json(alias), "NULL::jsonb".to_owned())
                    };
                    let filter = self
                        .condition_for(op, alias, alias)
                        .map(|c| format!("\n         WHERE ({c})"))
                        .unwrap_or_default();
                    // The key is built once per row (OFFSET 0 keeps the subquery from being
                    // flattened, which would build it twice).
                    format!(
                        "v_context := {context};
        {insert_into}
        SELECT '{kw}', TG_TABLE_SCHEMA, TG_TABLE_NAME, {}, c.record_pk, c.old_values, c.new_values, v_context
          FROM (SELECT {} AS record_pk, {old_values} AS old_values, {new_values} AS new_values
                  FROM {rows} AS {alias}{filter}
                OFFSET 0) AS c;",
                        crate::sql::table::record_key_expr("TG_TABLE_SCHEMA", "TG_TABLE_NAME", "c.record_pk"),
                        self.key_json(alias),
                    )
                }
                (true, Operation::Update) => {
                    // Transition tables hold the old and new versions of the rows in the same
                    // order, so pairing them by position is right even when the key changed.
                    let (old, new) = ("(pg_audit_old.r)", "(pg_audit_new.r)");
                    let filter = self
                        .condition_for(op, new, old)
                        .map(|c| format!(" AND ({c})"))
                        .unwrap_or_default();
                    format!(
                        "v_context := {context};
        {insert_into}
        SELECT '{kw}', TG_TABLE_SCHEMA, TG_TABLE_NAME, {}, c.record_pk, c.old_values, c.new_values, v_context
          FROM (SELECT {} AS record_pk, {} AS old_values, {} AS new_values
                  FROM (SELECT pg_catalog.row_number() OVER () AS ordinal, t AS r FROM {OLD_ROWS} AS t) AS pg_audit_old
                  JOIN (SELECT pg_catalog.row_number() OVER () AS ordinal, t AS r FROM {NEW_ROWS} AS t) AS pg_audit_new
                    ON pg_audit_new.ordinal OPERATOR(pg_catalog.=) pg_audit_old.ordinal
                 WHERE TRUE{filter}
                OFFSET 0) AS c
         WHERE c.old_values OPERATOR(pg_catalog.<>) c.new_values;",
                        crate::sql::table::record_key_expr("TG_TABLE_SCHEMA", "TG_TABLE_NAME", "c.record_pk"),
                        self.key_json(new),
                        self.values_json(old),
                        self.values_json(new),
                    )
                }
            };
            branches.push((kw, branch));
        }
        let mut body = String::from(
            "\nDECLARE\n    v_old jsonb;\n    v_new jsonb;\n    v_context json;\nBEGIN\n",
        );
        for (i, (kw, branch)) in branches.iter().enumerate() {
            let keyword = if i == 0 { "IF" } else { "ELSIF" };
            let _ = writeln!(
                body,
                "    {keyword} TG_OP OPERATOR(pg_catalog.=) '{kw}' THEN\n        {branch}"
            );
        }
        body.push_str("    END IF;\n    RETURN NULL;\nEND\n");
        body
    }

    fn create_trigger(&self, op: Operation, function: &QualifiedName) -> String {
        let name = op.trigger_name();
        let table = &self.table;
        let kw = op.keyword();
        if op == Operation::Truncate {
            return format!(
                "CREATE TRIGGER {name} AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {function}();"
            );
        }
        match self.level_for(op) {
            TriggerLevel::Row | TriggerLevel::Auto => {
                let mut when = Vec::new();
                if let (Operation::Update, Columns::TrackOnly(cols)) = (op, &self.columns) {
                    when.push(self.tracked_changed(cols));
                }
                if let Some(c) = self.condition_for(op, "NEW", "OLD") {
                    when.push(format!("({c})"));
                }
                let when = if when.is_empty() {
                    String::new()
                } else {
                    format!("\n    WHEN ({})", when.join(" AND "))
                };
                let create = |event: &str| {
                    format!(
                        "CREATE TRIGGER {name} AFTER {event} ON {table}\n    FOR EACH ROW{when}\n    EXECUTE FUNCTION {function}();"
                    )
                };
                match (op, &self.columns) {
                    (Operation::Update, Columns::TrackOnly(cols)) => self.update_of(
                        cols,
                        &create(kw),
                        &create(&format!(
                            "UPDATE OF {}",
                            cols.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    ),
                    _ => create(kw),
                }
            }
            TriggerLevel::Statement => {
                let referencing = match op {
                    Operation::Insert => format!("NEW TABLE AS {NEW_ROWS}"),
                    Operation::Delete => format!("OLD TABLE AS {OLD_ROWS}"),
                    _ => format!("OLD TABLE AS {OLD_ROWS} NEW TABLE AS {NEW_ROWS}"),
                };
                format!(
                    "CREATE TRIGGER {name} AFTER {kw} ON {table}\n    REFERENCING {referencing}\n    FOR EACH STATEMENT\n    EXECUTE FUNCTION {function}();"
                )
            }
        }
    }

    /// Creates the UPDATE trigger with `UPDATE OF` the tracked columns, so an UPDATE whose SET
    /// list names none of them skips the trigger at no cost; unless the table has another
    /// BEFORE UPDATE row trigger or a tracked column is generated: PostgreSQL then decides
    /// `UPDATE OF` from the SET list alone and would miss a change made by the trigger or the
    /// generation expression, so the plain form (filtered by `WHEN`) is created instead.
    fn update_of(&self, cols: &[Ident], plain: &str, column_list: &str) -> String {
        let table_lit = self.table_literal();
        let names = cols
            .iter()
            .map(ident_literal)
            .collect::<Vec<_>>()
            .join(", ");
        let body = format!(
            r#"
DECLARE
    tbl regclass := pg_catalog.to_regclass({table_lit});
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger AS t
                WHERE t.tgrelid OPERATOR(pg_catalog.=) tbl AND NOT t.tgisinternal
                  AND t.tgname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_audit_insert', 'pg_audit_update', 'pg_audit_delete', 'pg_audit_truncate']::name[])
                  AND (t.tgtype::int OPERATOR(pg_catalog.&) 19) OPERATOR(pg_catalog.=) 19)
       OR EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                   WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attgenerated OPERATOR(pg_catalog.<>) ''
                     AND a.attname OPERATOR(pg_catalog.=) ANY (ARRAY[{names}]::name[])) THEN
        RAISE NOTICE 'pg-audit: % has a BEFORE UPDATE trigger or a generated tracked column; its UPDATE trigger fires on every UPDATE', tbl;
        EXECUTE {};
    ELSE
        EXECUTE {};
    END IF;
END
"#,
            quote_literal(plain).expect("no NUL"),
            quote_literal(column_list).expect("no NUL"),
        );
        format!("DO {};", dollar_quote(&body))
    }
}

fn json_object(row: &str, columns: &[Ident]) -> String {
    let args: Vec<String> = columns
        .iter()
        .map(|c| format!("{}, {row}.{c}", ident_literal(c)))
        .collect();
    format!("pg_catalog.jsonb_build_object({})", args.join(", "))
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
    fn row_level_update_trigger_filters_in_when() {
        let spec = users()
            .track_only(["name", "email"])
            .condition("NEW.active -- only live users")
            .level(TriggerLevel::Row)
            .build()
            .unwrap();
        let function = spec.function_name(&AuditLog::new());
        let update = spec.create_trigger(Operation::Update, &function);
        // UPDATE OF the tracked columns, unless the table's other triggers make it unsafe.
        assert!(update.contains(
            "AFTER UPDATE OF \"name\", \"email\" ON \"public\".\"users\"\n    FOR EACH ROW\n    WHEN (pg_catalog.record_image_ne(ROW(OLD.\"name\", OLD.\"email\"), ROW(NEW.\"name\", NEW.\"email\")) AND (NEW.active  ))"
        ), "{update}");
        assert!(
            update.contains("AFTER UPDATE ON \"public\".\"users\""),
            "{update}"
        );
        // On DELETE the condition reads the deleted row.
        assert!(
            spec.create_trigger(Operation::Delete, &function)
                .contains("WHEN ((OLD.active  ))")
        );
        // All columns: no WHEN, the function compares the rows.
        let all = users().level(TriggerLevel::Row).build().unwrap();
        assert_eq!(
            all.create_trigger(Operation::Update, &function),
            format!(
                "CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE ON \"public\".\"users\"\n    FOR EACH ROW\n    EXECUTE FUNCTION {function}();"
            )
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
    fn statement_level_triggers_reference_transition_tables() {
        let spec = users().level(TriggerLevel::Statement).build().unwrap();
        let function = spec.function_name(&AuditLog::new());
        assert_eq!(
            spec.create_trigger(Operation::Update, &function),
            format!(
                "CREATE TRIGGER \"pg_audit_update\" AFTER UPDATE ON \"public\".\"users\"
    REFERENCING OLD TABLE AS pg_audit_old_rows NEW TABLE AS pg_audit_new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION {function}();"
            )
        );
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
    fn excluded_columns_are_removed_before_anything_is_stored() {
        let spec = users().exclude_fields(["password_hash"]).build().unwrap();
        assert_eq!(
            spec.values_json("NEW"),
            "(pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) ARRAY['password_hash']::text[])"
        );
    }
}
