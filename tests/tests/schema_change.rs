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
    let rows = audit_rows(&mut conn, &AuditLog::new());
    // The three schema changes are entries of their own (see the last test).
    assert_eq!(rows.iter().filter(|r| r["operation"] == "DDL").count(), 3);
    let values: Vec<_> = rows
        .into_iter()
        .filter(|r| r["operation"] != "DDL")
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

/// Schema changes are entries of the log, and the reader follows a column across a rename:
/// history, state, blame and revert read one column; a revert across a drop is refused; a
/// change made while nothing records it is reported by the check, and recorded by the next
/// install.
#[test]
fn schema_changes_are_logged_and_readers_follow_renamed_columns() {
    use pg_audit_diesel::log::{AuditReader, Page};
    let (_db, mut conn) = audited("schema_follow", |s| s);
    let log = AuditLog::new();
    let table = QualifiedName::parse("people").unwrap();
    let key = json!({"id": 1});
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    exec(
        &mut conn,
        "BEGIN;
         SET LOCAL pg_audit.context = '{\"user_id\": \"dba\", \"change_reason\": \"naming\"}';
         ALTER TABLE people RENAME COLUMN name TO full_name;
         COMMIT;",
    );
    exec(&mut conn, "UPDATE people SET full_name = 'Anna'");
    let ddl = pg_audit_tests::rows(
        &mut conn,
        "SELECT operation, table_name, record_pk, new_values -> 'changes' AS changes,
                strpos(new_values ->> 'statement', 'RENAME COLUMN name TO full_name') > 0 AS statement,
                new_values ->> 'recorded_by' AS by,
                context ->> 'user_id' AS user_id
           FROM audit.auditlog WHERE operation = 'DDL' ORDER BY id",
    );
    assert_eq!(
        ddl,
        [json!({
            "operation": "DDL", "table_name": "people", "record_pk": null,
            "changes": [{"renamed": {"from": "name", "to": "full_name"}}],
            "statement": true,
            "by": "event trigger", "user_id": "dba"
        })]
    );
    let reader = AuditReader::new();
    let history = reader
        .history_of(&mut conn, &table, &key, Page::first(10))
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| json!([e.operation.keyword(), e.new_values]))
            .collect::<Vec<_>>(),
        [
            json!(["UPDATE", {"id": 1, "full_name": "Anna", "email": "a@x"}]),
            json!(["INSERT", {"id": 1, "full_name": "Ann", "email": "a@x"}]),
        ]
    );
    assert_eq!(
        history[0].changes().keys().collect::<Vec<_>>(),
        ["full_name"]
    );
    let insert = history[1].id;
    let before_rename = reader
        .state_of_at(
            &mut conn,
            &table,
            &key,
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(before_rename.unwrap()["full_name"], "Anna");
    let blame = reader.blame_of(&mut conn, &table, &key).unwrap();
    assert!(
        blame
            .iter()
            .any(|b| b.column == "full_name" && b.value == "Anna")
    );
    // A revert to the entry from before the rename writes the renamed column.
    diesel::Connection::transaction(&mut conn, |conn| {
        reader
            .revert_of(conn, &table, &key, insert, "undo")
            .map_err(|e| {
                panic!("{e}");
                #[allow(unreachable_code)]
                diesel::result::Error::RollbackTransaction
            })
    })
    .unwrap();
    assert_eq!(
        pg_audit_tests::value(&mut conn, "SELECT full_name FROM people"),
        json!("Ann")
    );
    // A revert to an entry holding a column dropped since is refused, nothing written.
    exec(&mut conn, "ALTER TABLE people DROP COLUMN email");
    let err = reader
        .revert_of(&mut conn, &table, &key, insert, "undo")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("email was dropped from the table since"),
        "{err}"
    );

    // Unrecorded (no event trigger: a log installed without a superuser), then reported,
    // then recorded by the next install.
    exec(
        &mut conn,
        "ALTER EVENT TRIGGER pg_audit_audit_auditlog_partitions DISABLE",
    );
    exec(&mut conn, "ALTER TABLE people ADD COLUMN phone text");
    let drift = pg_audit_diesel::log::drift(&mut conn, &log).unwrap();
    assert!(
        drift.iter().any(|d| d
            .problem
            .contains("changed since the log last recorded them")),
        "{drift:?}"
    );
    exec(
        &mut conn,
        &TriggerSpec::builder(QualifiedName::parse("public.people").unwrap())
            .build()
            .unwrap()
            .install_sql(&log),
    );
    assert_eq!(
        pg_audit_tests::value(
            &mut conn,
            "SELECT json_build_array(new_values -> 'changes', new_values ->> 'recorded_by', new_values ->> 'statement')
               FROM audit.auditlog WHERE operation = 'DDL' ORDER BY id DESC LIMIT 1"
        ),
        json!([[{"added": {"column": "phone", "type": "text"}}], "install", null])
    );
    assert!(
        pg_audit_diesel::log::drift(&mut conn, &log)
            .unwrap()
            .is_empty()
    );
}
