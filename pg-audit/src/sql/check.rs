//! Drift detection: every install records what it installed in `<log>_tables`, and
//! `<log>_check()` compares that record with what the database holds now.
//!
//! ```sql
//! SELECT * FROM audit.auditlog_check();
//! --  table_schema | table_name | problem
//! --  public       | users      | trigger pg_audit_update is disabled
//! ```
//!
//! Problems found: the audited table is gone; the trigger function is missing or its body was
//! edited since the install; a trigger is missing, disabled (or enabled only for replicas), or
//! calls another function; a column the configuration names (key, `track_only`,
//! `exclude_fields`, condition) was dropped or renamed; a BEFORE UPDATE trigger was added to a
//! table whose UPDATE trigger relies on `UPDATE OF`, and could change a tracked column unseen;
//! and `pg_audit_*` triggers that no install recorded.

use std::fmt::Write as _;

use crate::ident::{QualifiedName, dollar_quote, quote_literal};
use crate::sql::table::AuditLog;
use crate::sql::trigger::{Columns, TriggerSpec};

impl AuditLog {
    /// The table recording each audited table's installed configuration.
    pub fn config_table(&self) -> QualifiedName {
        self.function("tables")
    }

    /// DDL of the configuration table and of the check function.
    pub(crate) fn check_objects_sql(&self) -> String {
        let config = self.config_table();
        let check = self.function("check");
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
COMMENT ON TABLE {config} IS {comment};
",
            comment = quote_literal(&format!(
                "pg-audit: the audit triggers installed, as installed; see {check}()"
            ))
            .expect("no NUL"),
        );
        let body = format!(
            r#"
    SELECT t.table_schema, t.table_name, p.problem
      FROM {config} AS t
     CROSS JOIN LATERAL (
            SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', t.table_schema, t.table_name)) AS rel,
                   pg_catalog.to_regprocedure(t.trigger_function OPERATOR(pg_catalog.||) '()') AS fn
           ) AS o
     CROSS JOIN LATERAL (
            SELECT 'the table is missing' AS problem
             WHERE o.rel IS NULL
            UNION ALL
            SELECT pg_catalog.format('trigger function %s is missing', t.trigger_function)
             WHERE o.fn IS NULL
            UNION ALL
            SELECT pg_catalog.format('trigger function %s was edited after it was installed', t.trigger_function)
              FROM pg_catalog.pg_proc AS f
             WHERE f.oid OPERATOR(pg_catalog.=) o.fn AND pg_catalog.md5(f.prosrc) OPERATOR(pg_catalog.<>) t.function_md5
            UNION ALL
            SELECT CASE
                       WHEN tg.oid IS NULL THEN pg_catalog.format('trigger %s is missing', e.name)
                       WHEN tg.tgenabled OPERATOR(pg_catalog.=) 'D' THEN pg_catalog.format('trigger %s is disabled', e.name)
                       WHEN tg.tgenabled OPERATOR(pg_catalog.=) 'R' THEN pg_catalog.format('trigger %s is enabled only for replicas', e.name)
                       ELSE pg_catalog.format('trigger %s calls another function', e.name)
                   END
              FROM pg_catalog.jsonb_array_elements_text(t.config -> 'triggers') AS e(name)
              LEFT JOIN pg_catalog.pg_trigger AS tg
                ON tg.tgrelid OPERATOR(pg_catalog.=) o.rel AND tg.tgname OPERATOR(pg_catalog.=) e.name
             WHERE o.rel IS NOT NULL
               AND (tg.oid IS NULL OR tg.tgenabled OPERATOR(pg_catalog.=) ANY (ARRAY['D', 'R']::"char"[])
                    OR tg.tgfoid OPERATOR(pg_catalog.<>) o.fn)
            UNION ALL
            SELECT pg_catalog.format('audited column %s was dropped or renamed', pg_catalog.quote_ident(c.name))
              FROM pg_catalog.jsonb_array_elements_text(t.config -> 'columns') AS c(name)
             WHERE o.rel IS NOT NULL
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                                WHERE a.attrelid OPERATOR(pg_catalog.=) o.rel AND a.attname OPERATOR(pg_catalog.=) c.name
                                  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped)
            UNION ALL
            SELECT pg_catalog.format('BEFORE UPDATE trigger %s can change tracked columns unseen by the UPDATE OF trigger; reinstall', b.tgname)
              FROM pg_catalog.pg_trigger AS u
              JOIN pg_catalog.pg_trigger AS b ON b.tgrelid OPERATOR(pg_catalog.=) u.tgrelid
             WHERE u.tgrelid OPERATOR(pg_catalog.=) o.rel AND u.tgname OPERATOR(pg_catalog.=) 'pg_audit_update'
               AND pg_catalog.array_length(u.tgattr::int2[], 1) OPERATOR(pg_catalog.>) 0
               AND NOT b.tgisinternal
               AND (b.tgtype::int OPERATOR(pg_catalog.&) 19) OPERATOR(pg_catalog.=) 19
           ) AS p
    UNION ALL
    SELECT n.nspname::text, c.relname::text,
           pg_catalog.format('trigger %s was not installed by pg-audit (no record in %s)', tg.tgname, {config_lit})
      FROM pg_catalog.pg_trigger AS tg
      JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) tg.tgrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE tg.tgname OPERATOR(pg_catalog.=) ANY (ARRAY['pg_audit_insert', 'pg_audit_update', 'pg_audit_delete', 'pg_audit_truncate']::name[])
       AND NOT EXISTS (SELECT FROM {config} AS r
                        WHERE r.table_schema OPERATOR(pg_catalog.=) n.nspname::text
                          AND r.table_name OPERATOR(pg_catalog.=) c.relname::text)
     ORDER BY 1, 2, 3
"#,
            config_lit = quote_literal(&config.to_string()).expect("no NUL"),
        );
        let _ = writeln!(
            sql,
            "CREATE OR REPLACE FUNCTION {check}()
RETURNS TABLE (table_schema text, table_name text, problem text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS {};",
            dollar_quote(&body)
        );
        sql
    }
}

impl TriggerSpec {
    /// SQL recording this install in the log's configuration table.
    pub(crate) fn record_install_sql(&self, log: &AuditLog, function: &QualifiedName) -> String {
        let table_lit = quote_literal(&self.table().to_string()).expect("no NUL");
        let function_lit = quote_literal(&function.to_string()).expect("no NUL");
        format!(
            "INSERT INTO {config} AS r (table_schema, table_name, trigger_function, config, function_md5)
SELECT n.nspname, c.relname, {function_lit}::regproc::text, {config_json}::jsonb, pg_catalog.md5(p.prosrc)
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN pg_catalog.pg_proc AS p ON p.oid OPERATOR(pg_catalog.=) {function_lit}::regproc
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
ON CONFLICT (table_schema, table_name) DO UPDATE
   SET trigger_function = EXCLUDED.trigger_function, config = EXCLUDED.config,
       function_md5 = EXCLUDED.function_md5, installed_at = pg_catalog.now();",
            config = log.config_table(),
            config_json = quote_literal(&self.config_json()).expect("no NUL"),
        )
    }

    /// SQL removing this table's record from the configuration table.
    pub(crate) fn record_uninstall_sql(&self, log: &AuditLog) -> String {
        let table_lit = quote_literal(&self.table().to_string()).expect("no NUL");
        format!(
            "DELETE FROM {config} AS r
 USING pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table_lit})
   AND r.table_schema OPERATOR(pg_catalog.=) n.nspname::text AND r.table_name OPERATOR(pg_catalog.=) c.relname::text;",
            config = log.config_table(),
        )
    }

    /// The configuration as JSON: what `check` compares and what readers need (the key).
    pub fn config_json(&self) -> String {
        let list = |items: &mut dyn Iterator<Item = String>| {
            format!(
                "[{}]",
                items.map(|s| json_string(&s)).collect::<Vec<_>>().join(",")
            )
        };
        let key = list(&mut self.primary_key().iter().map(|c| c.as_str().to_owned()));
        let columns = match self.columns() {
            Columns::All => "\"all\"".to_owned(),
            Columns::TrackOnly(cols) => format!(
                "{{\"track_only\":{}}}",
                list(&mut cols.iter().map(|c| c.as_str().to_owned()))
            ),
            Columns::Exclude(cols) => format!(
                "{{\"exclude_fields\":{}}}",
                list(&mut cols.iter().map(|c| c.as_str().to_owned()))
            ),
        };
        let condition = self
            .condition()
            .map_or_else(|| "null".to_owned(), |c| json_string(c.as_str()));
        let operations = list(&mut self.operations().iter().map(|op| op.keyword().to_owned()));
        let triggers = list(
            &mut self
                .operations()
                .iter()
                .map(|op| op.trigger_name().as_str().to_owned()),
        );
        let named = list(&mut self.named_columns().into_iter());
        let levels = list(
            &mut self
                .operations()
                .iter()
                .map(|&op| format!("{}:{:?}", op.keyword(), self.level_for(op)).to_lowercase()),
        );
        format!(
            "{{\"primary_key\":{key},\"audited\":{columns},\"condition\":{condition},\"operations\":{operations},\"levels\":{levels},\"triggers\":{triggers},\"columns\":{named}}}"
        )
    }
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
    use crate::QualifiedName;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            json_string("a\"b\\c\n\u{1}é"),
            "\"a\\\"b\\\\c\\u000a\\u0001é\""
        );
    }

    #[test]
    fn config_json_describes_the_spec() {
        let spec = TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
            .track_only(["name"])
            .condition("NEW.\"x\" > 1")
            .build()
            .unwrap();
        assert_eq!(
            spec.config_json(),
            r#"{"primary_key":["id"],"audited":{"track_only":["name"]},"condition":"NEW.\"x\" > 1","operations":["INSERT","UPDATE","DELETE"],"levels":["insert:statement","update:row","delete:statement"],"triggers":["pg_audit_insert","pg_audit_update","pg_audit_delete"],"columns":["id","name","x"]}"#
        );
    }
}
