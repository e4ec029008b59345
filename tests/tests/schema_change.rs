//! What happens when an audited table gains, drops or renames a column: writes keep working
//! and log the new shape, or fail naming the column, and nothing is silently lost.

use diesel::prelude::*;
use pg_audit::{AuditLog, QualifiedName, TriggerSpec, TriggerSpecBuilder};
use pg_audit_tests::{TestDb, audit_rows, exec, exec_err};
use serde_json::json;

fn audited(
    hint: &str,
    spec: impl FnOnce(TriggerSpecBuilder) -> TriggerSpecBuilder,
) -> (TestDb, PgConnection) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE people (id int PRIMARY KEY, name text, email text)",
    );
    exec(
        &mut conn,
        &spec(TriggerSpec::builder(
            QualifiedName::parse("public.people").unwrap(),
        ))
        .build()
        .unwrap()
        .install_sql(&log),
    );
    (db, conn)
}

#[test]
fn with_all_columns_audited_the_log_follows_the_table() {
    let (_db, mut conn) = audited("schema_all", |s| s);
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    exec(&mut conn, "ALTER TABLE people ADD COLUMN phone text");
    exec(&mut conn, "UPDATE people SET phone = '555'");
    exec(&mut conn, "ALTER TABLE people DROP COLUMN email");
    exec(
        &mut conn,
        "ALTER TABLE people RENAME COLUMN name TO full_name",
    );
    exec(&mut conn, "UPDATE people SET full_name = 'Anna'");
    exec(&mut conn, "DELETE FROM people");
    let values: Vec<_> = audit_rows(&mut conn, &AuditLog::new())
        .into_iter()
        .map(|r| json!([r["operation"], r["new_values"]]))
        .collect();
    assert_eq!(
        values,
        [
            json!(["INSERT", {"id": 1, "name": "Ann", "email": "a@x"}]),
            json!(["UPDATE", {"id": 1, "name": "Ann", "email": "a@x", "phone": "555"}]),
            json!(["UPDATE", {"id": 1, "full_name": "Anna", "phone": "555"}]),
            json!(["DELETE", null]),
        ]
    );
}

#[test]
fn a_tracked_column_renamed_fails_writes_naming_it() {
    let (_db, mut conn) = audited("schema_tracked_rename", |s| s.track_only(["name"]));
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    exec(
        &mut conn,
        "ALTER TABLE people RENAME COLUMN name TO full_name",
    );
    // The configuration names a column the table no longer has: writes fail, loudly, and the
    // change is not applied without its audit row.
    let e = exec_err(&mut conn, "INSERT INTO people VALUES (2, 'Bob', 'b@x')");
    assert!(e.contains("name"), "{e}");
    assert!(
        e.contains("does not exist") || e.contains("has no field"),
        "{e}"
    );
    let count = pg_audit_tests::value(&mut conn, "SELECT count(*) FROM people");
    assert_eq!(count, json!(1));
}

#[test]
fn a_tracked_column_cannot_be_dropped_from_under_its_trigger() {
    let (_db, mut conn) = audited("schema_tracked_drop", |s| {
        s.track_only(["name"]).condition("NEW.email IS NOT NULL")
    });
    let e = exec_err(&mut conn, "ALTER TABLE people DROP COLUMN name");
    assert!(
        e.contains("cannot drop column name of table people because other objects depend on it"),
        "{e}"
    );
    let e = exec_err(&mut conn, "ALTER TABLE people DROP COLUMN email");
    assert!(e.contains("cannot drop column email"), "{e}");
}

#[test]
fn a_renamed_key_column_fails_writes_naming_it() {
    let (_db, mut conn) = audited("schema_key_rename", |s| s);
    exec(
        &mut conn,
        "ALTER TABLE people RENAME COLUMN id TO person_id",
    );
    let e = exec_err(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    assert!(e.contains("id"), "{e}");
    assert_eq!(
        pg_audit_tests::value(&mut conn, "SELECT count(*) FROM people"),
        json!(0)
    );
}
