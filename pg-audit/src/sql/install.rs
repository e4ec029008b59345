//! The install record: every install of a table's audit (triggers or capture from the
//! write-ahead log) records what it installed in the log's `<log>_tables`, which the drift
//! check ([`crate::sql::check`]) compares with what the database holds, and readers read a
//! table's key from. The record's shape is written and read only here.

use std::fmt::Write as _;

use crate::ident::{QualifiedName, text_literal};
use crate::sql::create_function;
use crate::sql::names::LogNames;
use crate::sql::shape::Operation;

/// The field listing the audited operations' keywords, in the order of [`TRIGGERS_FIELD`].
pub(crate) const OPERATIONS_FIELD: &str = "operations";

/// The install record's field holding the key columns, in key order.
pub const KEY_FIELD: &str = "primary_key";
/// The install record's field saying which columns reach the log: `"all"`, or an object with
/// [`TRACK_ONLY_FIELD`] or [`EXCLUDE_FIELD`] listing columns.
pub const AUDITED_FIELD: &str = "audited";
/// In [`AUDITED_FIELD`]: only these columns are logged.
pub const TRACK_ONLY_FIELD: &str = "track_only";
/// In [`AUDITED_FIELD`]: these columns are never logged.
pub const EXCLUDE_FIELD: &str = "exclude_fields";
/// The install record's field listing the masked columns (absent when none are).
pub const MASK_FIELD: &str = "mask";
/// The install record's field saying where changes are captured: `"wal"`, or absent for
/// triggers (records written before capture from the write-ahead log existed have none).
pub const CAPTURE_FIELD: &str = "capture";
/// The field listing the triggers the install created.
pub(crate) const TRIGGERS_FIELD: &str = "triggers";
/// The field listing every column the configuration names.
pub(crate) const COLUMNS_FIELD: &str = "columns";

/// What one install recorded: the configuration as JSON, what `check` compares and what
/// readers need (the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InstallRecord {
    /// The key columns, in key order.
    pub(crate) primary_key: Vec<String>,
    /// `"all"`, `{"track_only": [...]}` or `{"exclude_fields": [...]}`, as JSON.
    pub(crate) audited: Audited,
    /// The masked columns.
    pub(crate) mask: Vec<String>,
    /// The condition as written.
    pub(crate) condition: Option<String>,
    /// The audited operations' keywords.
    pub(crate) operations: Vec<String>,
    /// `insert:statement`, ...: the level each operation's trigger was created at.
    pub(crate) levels: Vec<String>,
    /// The triggers created.
    pub(crate) triggers: Vec<String>,
    /// Every column the configuration names, for the dropped-column check.
    pub(crate) columns: Vec<String>,
    /// Captured from the write-ahead log rather than by triggers.
    pub(crate) wal: bool,
}

/// Which columns an install audits, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Audited {
    All,
    TrackOnly(Vec<String>),
    Exclude(Vec<String>),
}

impl InstallRecord {
    /// The record as a JSON object.
    pub(crate) fn to_json(&self) -> String {
        let audited = match &self.audited {
            Audited::All => "\"all\"".to_owned(),
            Audited::TrackOnly(cols) => {
                format!("{{{}:{}}}", json_string(TRACK_ONLY_FIELD), json_list(cols))
            }
            Audited::Exclude(cols) => {
                format!("{{{}:{}}}", json_string(EXCLUDE_FIELD), json_list(cols))
            }
        };
        let condition = self
            .condition
            .as_deref()
            .map_or_else(|| "null".to_owned(), json_string);
        let capture = if self.wal {
            format!(",{}:{}", json_string(CAPTURE_FIELD), json_string("wal"))
        } else {
            String::new()
        };
        let mask = if self.mask.is_empty() {
            String::new()
        } else {
            format!(",{}:{}", json_string(MASK_FIELD), json_list(&self.mask))
        };
        format!(
            "{{{}:{},{}:{audited}{mask},\"condition\":{condition},{}:{},\"levels\":{},{}:{},{}:{}{capture}}}",
            json_string(KEY_FIELD),
            json_list(&self.primary_key),
            json_string(AUDITED_FIELD),
            json_string(OPERATIONS_FIELD),
            json_list(&self.operations),
            json_list(&self.levels),
            json_string(TRIGGERS_FIELD),
            json_list(&self.triggers),
            json_string(COLUMNS_FIELD),
            json_list(&self.columns),
        )
    }

    /// SQL recording this install of `table`'s trigger function `function` in `config`,
    /// replacing an earlier record of the same table.
    /// The function's name is recorded as written (schema-qualified), not as `regproc`
    /// prints it, which leaves out a schema on the installer's search_path; and each trigger's
    /// full definition as `definitions` (a function of the log's, with a pinned search_path)
    /// gives it.
    pub(crate) fn insert_sql(
        &self,
        names: &LogNames,
        table: &QualifiedName,
        function: &QualifiedName,
    ) -> String {
        let table_lit = table.literal();
        let function_lit = function.literal();
        let config = names.config_table();
        let definitions = names.function("trigger_definitions");
        format!(
            "INSERT INTO {config} AS r (table_schema, table_name, trigger_function, config, function_md5, definitions)
SELECT n.nspname, c.relname, {function_lit}, {config_json}::jsonb, pg_catalog.md5(p.prosrc), {definitions}(c.oid)
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN pg_catalog.pg_proc AS p ON p.oid OPERATOR(pg_catalog.=) {function_lit}::regproc
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
ON CONFLICT (table_schema, table_name) DO UPDATE
   SET trigger_function = EXCLUDED.trigger_function, config = EXCLUDED.config,
       function_md5 = EXCLUDED.function_md5, definitions = EXCLUDED.definitions,
       installed_at = pg_catalog.now();",
            config_json = text_literal(&self.to_json()),
        )
    }
}

impl InstallRecord {
    /// SQL recording this install of `table` for capture from the write-ahead log: no trigger
    /// function (`trigger_function` and `function_md5` empty, no definitions).
    pub(crate) fn insert_wal_sql(&self, names: &LogNames, table: &QualifiedName) -> String {
        format!(
            "INSERT INTO {config} AS r (table_schema, table_name, trigger_function, config, function_md5, definitions)
SELECT n.nspname, c.relname, '', {config_json}::jsonb, '', NULL
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
ON CONFLICT (table_schema, table_name) DO UPDATE
   SET trigger_function = EXCLUDED.trigger_function, config = EXCLUDED.config,
       function_md5 = EXCLUDED.function_md5, definitions = EXCLUDED.definitions,
       installed_at = pg_catalog.now();",
            config = names.config_table(),
            table_lit = table.literal(),
            config_json = text_literal(&self.to_json()),
        )
    }
}

/// SQL removing `table`'s record from `config`.
pub(crate) fn delete_sql(config: &QualifiedName, table: &QualifiedName) -> String {
    format!(
        "DELETE FROM {config} AS r
 USING pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({})
   AND r.table_schema OPERATOR(pg_catalog.=) n.nspname::text AND r.table_name OPERATOR(pg_catalog.=) c.relname::text;",
        table.literal(),
    )
}

/// SQL returning the key columns recorded in `config` for a table, as a JSON array in key order
/// (`primary_key`): parameters `$1` the table name (text), `$2` its schema (text, NULL for any).
pub(crate) fn recorded_key_sql(config: &QualifiedName) -> String {
    format!(
        "SELECT r.config OPERATOR(pg_catalog.->) {} AS primary_key FROM {config} AS r
 WHERE r.table_name OPERATOR(pg_catalog.=) $1::text
   AND ($2::text IS NULL OR r.table_schema OPERATOR(pg_catalog.=) $2::text)",
        text_literal(KEY_FIELD),
    )
}

/// SQL telling whether a table is installed as declared: one row (`same`, bool) when the table
/// exists, true when its install record holds the declared configuration and is this table's
/// (not one dropped and created again under the name since, whose triggers went with it);
/// false when the record differs, is another table's, or is missing (the triggers removed by
/// hand). No row when there is no such table. Parameters `$1` the declared configuration
/// (jsonb, `TriggerSpec::config_json`), `$2` the table as `to_regclass` reads it (text).
pub(crate) fn recorded_config_same_sql(config: &QualifiedName) -> String {
    format!(
        "SELECT (r.config OPERATOR(pg_catalog.=) $1::jsonb
           AND (r.relid IS NULL OR r.relid OPERATOR(pg_catalog.=) c.oid)) IS TRUE AS same
   FROM pg_catalog.pg_class AS c
   JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
   LEFT JOIN {config} AS r ON r.table_schema OPERATOR(pg_catalog.=) n.nspname::text
                          AND r.table_name OPERATOR(pg_catalog.=) c.relname::text
  WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($2::text)"
    )
}

/// DDL of the record table and of the definitions function (the check function comes last,
/// [`crate::sql::check::check_function_sql`], as it compares every other function with what it
/// should be).
pub(crate) fn objects_sql(names: &LogNames) -> String {
    let (config, check, definitions) = (
        names.config_table(),
        names.function("check"),
        names.function("trigger_definitions"),
    );
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {config} (
    table_schema text NOT NULL,
    table_name text NOT NULL,
    trigger_function text NOT NULL,
    config jsonb NOT NULL,
    function_md5 text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (table_schema, table_name)
);
ALTER TABLE {config} ADD COLUMN IF NOT EXISTS definitions jsonb;
COMMENT ON TABLE {config} IS {comment};
",
        comment = text_literal(&format!(
            "pg-audit: the audit triggers installed, as installed; see {check}()"
        )),
    );
    let all_triggers = Operation::all_trigger_names_array();
    let definitions_body = format!(
        "
    SELECT pg_catalog.jsonb_object_agg(tg.tgname, pg_catalog.pg_get_triggerdef(tg.oid))
      FROM pg_catalog.pg_trigger AS tg
     WHERE tg.tgrelid = rel AND tg.tgname = ANY ({all_triggers})
"
    );
    let _ = writeln!(
        sql,
        "{}\n",
        create_function(
            &format!("{definitions}(rel regclass)"),
            "jsonb",
            "sql STABLE",
            false,
            &definitions_body
        )
    );
    sql
}

fn json_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| json_string(s))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// `value` as a JSON string literal.
fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            json_string("a\"b\\c\n\u{1}é"),
            "\"a\\\"b\\\\c\\u000a\\u0001é\""
        );
    }
}
