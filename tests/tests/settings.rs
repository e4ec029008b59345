//! The writer's session settings change nothing that is logged: the trigger functions pin
//! every setting that shapes a value's text or how a condition reads (`extra_float_digits`,
//! `TimeZone`, `DateStyle`, `IntervalStyle`, `bytea_output`, `lc_monetary`,
//! `standard_conforming_strings`, `transform_null_equals`, `array_nulls`, and around a
//! condition `timezone_abbreviations`), and conditions are evaluated in the function, never in
//! a `WHEN` clause that would run with the writer's settings.

use diesel::prelude::*;
use pg_audit::{AuditLog, QualifiedName, TriggerLevel, TriggerSpec};
use pg_audit_diesel::log::AuditReader;
use pg_audit_tests::{TestDb, exec, value};
use serde_json::json;

/// What a hostile writer sets before writing.
const HOSTILE: &str = "SET extra_float_digits = -15;
     SET TimeZone = 'Asia/Kolkata';
     SET DateStyle = 'SQL, DMY';
     SET IntervalStyle = 'sql_standard';
     SET bytea_output = 'escape';
     SET standard_conforming_strings = off;
     SET transform_null_equals = on;
     SET timezone_abbreviations = 'India';
     SET array_nulls = off;";

fn setup(hint: &str) -> (TestDb, PgConnection, AuditLog) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE m (id int PRIMARY KEY, f float8, ts timestamptz, iv interval, b bytea, d date, note text)",
    );
    (db, conn, log)
}

#[test]
fn values_are_logged_the_same_whatever_the_writers_settings() {
    for level in [TriggerLevel::Row, TriggerLevel::Statement] {
        let (_db, mut conn, log) = setup("settings_values");
        let spec = TriggerSpec::builder(QualifiedName::parse("public.m").unwrap())
            .level(level)
            .build()
            .unwrap();
        exec(&mut conn, &spec.install_sql(&log));
        let row = "(f, ts, iv, b, d) = (123456.789, '2026-01-01 23:30:00+00', '1 day -02:00:00', '\\x00ff', '2026-02-03')";
        exec(
            &mut conn,
            &format!("INSERT INTO m (id) VALUES (1); UPDATE m SET {row} WHERE id = 1;"),
        );
        // The same writes by a hostile session, on another connection.
        let mut hostile = _db.conn();
        // (Set in a statement of its own: a string's literals are read before any of it runs.)
        exec(&mut hostile, HOSTILE);
        exec(
            &mut hostile,
            &format!(
                "INSERT INTO m (id) VALUES (2); UPDATE m SET {} WHERE id = 2;",
                row.replace('\\', "\\\\")
            ),
        );
        let logged = |conn: &mut PgConnection, id: i32| {
            value(
                conn,
                &format!(
                    "SELECT new_values - 'id' FROM audit.auditlog WHERE operation = 'UPDATE' AND record_pk = '{{\"id\": {id}}}'"
                ),
            )
        };
        assert_eq!(logged(&mut conn, 2), logged(&mut conn, 1), "{level:?}");
        assert_eq!(
            logged(&mut conn, 1),
            json!({
                "f": 123456.789,
                "ts": "2026-01-01T23:30:00+00:00",
                "iv": "1 day -02:00:00",
                "b": "\\x00ff",
                "d": "2026-02-03",
                "note": null
            }),
            "{level:?}"
        );
        // A change that rounding would hide is a change.
        exec(
            &mut hostile,
            "UPDATE m SET f = 149999.99 WHERE id = 2; UPDATE m SET f = 149999.991 WHERE id = 2;",
        );
        assert_eq!(
            value(
                &mut conn,
                "SELECT json_agg(new_values -> 'f' ORDER BY id) FROM audit.auditlog WHERE record_pk = '{\"id\": 2}' AND operation = 'UPDATE'"
            ),
            json!([123456.789, 149999.99, 149999.991]),
            "{level:?}"
        );
        // Revert, from the hostile session, puts back exactly what was there.
        let entry: i64 = serde_json::from_value(value(
            &mut conn,
            "SELECT id FROM audit.auditlog WHERE record_pk = '{\"id\": 2}' AND new_values ->> 'f' = '149999.99'",
        ))
        .unwrap();
        exec(&mut hostile, "SET standard_conforming_strings = on");
        AuditReader::new()
            .revert_of(
                &mut hostile,
                &QualifiedName::parse("public.m").unwrap(),
                &json!({"id": 2}),
                entry,
                "Undo",
            )
            .unwrap();
        assert_eq!(
            value(&mut conn, "SELECT f = 149999.99 FROM m WHERE id = 2"),
            json!(true)
        );
    }
}

#[test]
fn conditions_decide_the_same_whatever_the_writers_settings() {
    for level in [TriggerLevel::Row, TriggerLevel::Statement] {
        let (db, mut conn, log) = setup("settings_conditions");
        // The date of the change in UTC; a comparison with NULL, which is never true; a zone
        // abbreviation (IST is Israel's, +02, by default, India's, +05:30, with the `India`
        // abbreviations: 23:30 UTC on 1 January is before 05:00 IST on 2 January in Israel,
        // not in India); an array literal's NULL (a string 'NULL' with `array_nulls` off).
        let spec = TriggerSpec::builder(QualifiedName::parse("public.m").unwrap())
            .condition(
                "NEW.ts::date = '2026-01-01' AND NOT (NEW.note = NULL) IS NOT DISTINCT FROM true
                 AND NEW.ts < '2026-01-02 05:00 IST'::timestamptz AND ('{NULL}'::text[])[1] IS NULL",
            )
            .level(level)
            .build()
            .unwrap();
        exec(&mut conn, &spec.install_sql(&log));
        let mut hostile = db.conn();
        // 23:30 UTC on 1 January is 2 January in Kolkata; with `transform_null_equals`,
        // `note = NULL` would mean `note IS NULL`.
        exec(&mut hostile, HOSTILE);
        exec(
            &mut hostile,
            "INSERT INTO m (id, ts) VALUES (1, '2026-01-01 23:30:00+00');
             INSERT INTO m (id, ts) VALUES (2, '2026-01-02 00:30:00+00');",
        );
        // The abbreviations are set around the condition only: the writer's stay its own,
        // in its transaction and after.
        exec(
            &mut hostile,
            "BEGIN; INSERT INTO m (id, ts) VALUES (5, '2026-01-02 00:30:00+00')",
        );
        let abbreviations = "SELECT to_jsonb(current_setting('timezone_abbreviations'))";
        assert_eq!(value(&mut hostile, abbreviations), json!("India"));
        exec(&mut hostile, "COMMIT");
        assert_eq!(value(&mut hostile, abbreviations), json!("India"));
        exec(
            &mut conn,
            "INSERT INTO m (id, ts) VALUES (3, '2026-01-01 23:30:00+00');
             INSERT INTO m (id, ts) VALUES (4, '2026-01-02 00:30:00+00');",
        );
        assert_eq!(
            value(
                &mut conn,
                "SELECT json_agg(record_pk -> 'id' ORDER BY id) FROM audit.auditlog"
            ),
            json!([1, 3]),
            "{level:?}: logged as UTC decides, whoever wrote"
        );
    }
}

#[test]
fn check_reports_a_trigger_function_without_the_pins() {
    let (_db, mut conn, log) = setup("settings_check");
    let spec = TriggerSpec::builder(QualifiedName::parse("public.m").unwrap())
        .build()
        .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    let function = spec.function_name(&log);
    exec(
        &mut conn,
        &format!(
            "ALTER FUNCTION {function}() RESET extra_float_digits; ALTER FUNCTION {function}() RESET TimeZone"
        ),
    );
    let problems = pg_audit_tests::check_problems(&mut conn, &log);
    assert!(
        problems.iter().any(|p| p.contains("does not pin extra_float_digits=1, TimeZone=UTC, so the writing session's settings can change what is logged")),
        "{problems:?}"
    );
}
