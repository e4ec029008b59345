//! A partitioned table is audited as one table: writes through the table or straight into
//! any partition — including partitions created or attached after the install — are logged
//! once, under the table's own name and key, and a row an UPDATE moves between partitions is
//! one UPDATE entry.

use diesel::prelude::*;
use pg_audit::{AuditLog, QualifiedName, TriggerLevel, TriggerSpec};
use pg_audit_diesel::log::{AuditReader, Page};
use pg_audit_tests::{TestDb, exec, exec_err, value};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

const EVENTS: &str =
    "CREATE TABLE events (id int, region text, payload text, PRIMARY KEY (id, region))
                        PARTITION BY LIST (region);
                      CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
                      CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');";

fn setup(hint: &str, level: TriggerLevel) -> (TestDb, PgConnection, AuditLog) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, EVENTS);
    let spec = TriggerSpec::builder(QualifiedName::parse("events").unwrap())
        .primary_key(["id", "region"])
        .level(level)
        .build()
        .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    (db, conn, log)
}

/// `[operation, table_name, record_pk, old payload/region, new payload/region]` per entry.
fn entries(conn: &mut PgConnection) -> Value {
    value(
        conn,
        "SELECT coalesce(json_agg(json_build_array(operation, table_name, record_pk,
                    old_values ->> 'region', old_values ->> 'payload',
                    new_values ->> 'region', new_values ->> 'payload') ORDER BY id), '[]')
           FROM audit.auditlog",
    )
}

#[test]
fn every_write_to_any_partition_is_logged_once_under_the_tables_name() {
    for level in [
        TriggerLevel::Auto,
        TriggerLevel::Row,
        TriggerLevel::Statement,
    ] {
        let (_db, mut conn, log) = setup(&format!("parted_{level:?}"), level);
        exec(
            &mut conn,
            "INSERT INTO events VALUES (1, 'eu', 'a'), (2, 'us', 'b');
             INSERT INTO events_eu VALUES (3, 'eu', 'c');
             UPDATE events_eu SET payload = 'c2' WHERE id = 3;
             DELETE FROM events_eu WHERE id = 3;
             UPDATE events SET region = 'us' WHERE id = 1;
             TRUNCATE events_us;",
        );
        assert_eq!(
            entries(&mut conn),
            json!([
                ["INSERT", "events", {"id": 1, "region": "eu"}, null, null, "eu", "a"],
                ["INSERT", "events", {"id": 2, "region": "us"}, null, null, "us", "b"],
                ["INSERT", "events", {"id": 3, "region": "eu"}, null, null, "eu", "c"],
                ["UPDATE", "events", {"id": 3, "region": "eu"}, "eu", "c", "eu", "c2"],
                ["DELETE", "events", {"id": 3, "region": "eu"}, "eu", "c2", null, null],
                // Moved between partitions: one UPDATE.
                ["UPDATE", "events", {"id": 1, "region": "us"}, "eu", "a", "us", "a"],
                ["TRUNCATE", "events", null, null, null, null, null],
            ]),
            "{level:?}"
        );
        // The reader and the check see one table.
        let history = AuditReader::with_log(log.clone())
            .history_of(
                &mut conn,
                &QualifiedName::parse("events").unwrap(),
                &json!({"id": 3, "region": "eu"}),
                Page::first(10),
            )
            .unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(
            pg_audit_tests::check_problems(&mut conn, &log),
            Vec::<String>::new()
        );
    }
}

#[test]
fn partitions_made_after_the_install_are_audited_too() {
    let (_db, mut conn, log) = setup("parted_later", TriggerLevel::Auto);
    // The event trigger (the log was installed by a superuser) audits new partitions as they
    // are created or attached, sub-partitioned ones included.
    exec(
        &mut conn,
        "CREATE TABLE events_asia PARTITION OF events FOR VALUES IN ('asia');
         CREATE TABLE events_jp (id int, region text, payload text, PRIMARY KEY (id, region));
         ALTER TABLE events ATTACH PARTITION events_jp FOR VALUES IN ('jp');
         CREATE TABLE events_sa PARTITION OF events FOR VALUES IN ('br', 'ar') PARTITION BY LIST (region);
         CREATE TABLE events_br PARTITION OF events_sa FOR VALUES IN ('br');
         INSERT INTO events_asia VALUES (1, 'asia', 'x');
         INSERT INTO events_jp VALUES (2, 'jp', 'y');
         INSERT INTO events_br VALUES (3, 'br', 'z');
         INSERT INTO events_sa VALUES (4, 'br', 'w');
         INSERT INTO events VALUES (5, 'br', 'v');",
    );
    let logged = |conn: &mut PgConnection| {
        value(
            conn,
            "SELECT json_agg(record_pk ->> 'id' ORDER BY id) FROM audit.auditlog WHERE table_name = 'events'",
        )
    };
    assert_eq!(logged(&mut conn), json!(["1", "2", "3", "4", "5"]));

    // Without the event trigger (a log installed by a non-superuser), a new partition refuses
    // writes until its triggers are made, rather than take writes nobody logs.
    exec(
        &mut conn,
        "ALTER EVENT TRIGGER pg_audit_audit_auditlog_partitions DISABLE",
    );
    exec(
        &mut conn,
        "CREATE TABLE events_af PARTITION OF events FOR VALUES IN ('af')",
    );
    for write in [
        "INSERT INTO events_af VALUES (6, 'af', 'u')",
        "INSERT INTO events VALUES (6, 'af', 'u')",
    ] {
        let e = exec_err(&mut conn, write);
        assert!(
            e.contains(
                "pg-audit: partition public.events_af of an audited table has no audit triggers yet"
            ),
            "{e}"
        );
    }
    assert_eq!(
        value(
            &mut conn,
            &format!(
                "SELECT json_agg(partition_name) FROM ({}) a",
                log.adopt_partitions_sql()
            )
        ),
        json!(["public.events_af"])
    );
    exec(&mut conn, "INSERT INTO events_af VALUES (6, 'af', 'u')");
    assert_eq!(logged(&mut conn), json!(["1", "2", "3", "4", "5", "6"]));
}

#[test]
fn inheritance_children_are_refused_at_install() {
    let db = TestDb::new("inherited");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE things (id int PRIMARY KEY, name text);
         CREATE TABLE special_things (extra text) INHERITS (things);",
    );
    let spec = TriggerSpec::builder(QualifiedName::parse("things").unwrap())
        .build()
        .unwrap();
    let e = exec_err(&mut conn, &spec.install_sql(&log));
    assert!(
        e.contains("pg-audit: table things has inheritance children (public.special_things), whose writes its triggers would not see"),
        "{e}"
    );
}

#[test]
fn uninstall_removes_the_partitions_triggers() {
    let (_db, mut conn, log) = setup("parted_uninstall", TriggerLevel::Auto);
    let spec = TriggerSpec::builder(QualifiedName::parse("events").unwrap())
        .primary_key(["id", "region"])
        .build()
        .unwrap();
    exec(&mut conn, &spec.uninstall_sql(&log));
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg_audit%'"
        ),
        json!(0)
    );
    exec(&mut conn, "INSERT INTO events_eu VALUES (1, 'eu', 'a')");
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(0)
    );
}

#[test]
fn check_sees_a_partition_logging_elsewhere_or_refusing_writes() {
    let (_db, mut conn, log) = setup("parted_check", TriggerLevel::Auto);
    let problems =
        |conn: &mut PgConnection| serde_json::json!(pg_audit_tests::check_problems(conn, &log));
    // A partition trigger recreated to log under another name.
    let function = TriggerSpec::builder(QualifiedName::parse("events").unwrap())
        .primary_key(["id", "region"])
        .build()
        .unwrap()
        .function_name(&log);
    exec(
        &mut conn,
        &format!(
            "DROP TRIGGER pg_audit_insert ON events_eu;
             CREATE TRIGGER pg_audit_insert AFTER INSERT ON events_eu REFERENCING NEW TABLE AS pg_audit_new_rows
               FOR EACH STATEMENT EXECUTE FUNCTION {function}('public', 'decoy');"
        ),
    );
    let found = problems(&mut conn).to_string();
    assert!(
        found.contains(
            "trigger pg_audit_insert on partition public.events_eu was changed since the install"
        ),
        "{found}"
    );
    // Detached and attached again: its guard is back, and it refuses writes.
    exec(
        &mut conn,
        "ALTER TABLE events DETACH PARTITION events_us;
         ALTER EVENT TRIGGER pg_audit_audit_auditlog_partitions DISABLE;
         ALTER TABLE events ATTACH PARTITION events_us FOR VALUES IN ('us');",
    );
    let found = problems(&mut conn).to_string();
    assert!(
        found.contains("partition public.events_us refuses writes: its guard is enabled"),
        "{found}"
    );
    // adopt_partitions repairs both.
    value(
        &mut conn,
        &format!("SELECT count(*) FROM ({}) a", log.adopt_partitions_sql()),
    );
    exec(&mut conn, "INSERT INTO events_us VALUES (9, 'us', 'x')");
    let found = problems(&mut conn);
    assert!(!found.to_string().contains("refuses writes"), "{found}");
}
