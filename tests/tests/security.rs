//! Append-only for the application: with the documented role setup, an application role that
//! writes audited tables can neither touch the log nor switch auditing off, and hostile objects
//! in its schemas are never called by the audit code.

use diesel::prelude::*;
use pg_audit::{AuditLog, Ident, QualifiedName, TriggerSpec};
use pg_audit_tests::{Roles, TestDb, audit_rows, exec, exec_err, value};
use serde_json::json;

/// A database where `owner` (not a superuser) installed the log and audits `app.items`, and
/// `app` may only write `app.items` and read the log.
fn setup(hint: &str) -> (Roles, TestDb, PgConnection, String, String) {
    let roles = Roles::new(hint, &["owner", "app"]);
    let db = TestDb::new(hint);
    let (owner, app) = (roles.name("owner"), roles.name("app"));
    let mut conn = db.conn();
    exec(
        &mut conn,
        &format!(
            "GRANT CREATE ON DATABASE \"{db}\" TO {owner};
             SET ROLE {owner};
             CREATE SCHEMA app;
             CREATE TABLE app.items (id serial PRIMARY KEY, name text NOT NULL);
             GRANT USAGE ON SCHEMA app TO {app};
             GRANT SELECT, INSERT, UPDATE, DELETE ON app.items TO {app};
             GRANT USAGE ON SEQUENCE app.items_id_seq TO {app};",
            db = db.name()
        ),
    );
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    let spec = TriggerSpec::builder(QualifiedName::parse("app.items").unwrap())
        .build()
        .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    exec(
        &mut conn,
        &log.grant_read_sql(&Ident::new(app.trim_matches('"')).unwrap()),
    );
    exec(&mut conn, "RESET ROLE");
    (roles, db, conn, owner, app)
}

#[test]
fn the_application_writes_audited_tables_but_cannot_touch_the_log() {
    let (_roles, _db, mut conn, _owner, app) = setup("sec_append_only");
    exec(&mut conn, &format!("SET ROLE {app}"));
    exec(
        &mut conn,
        "INSERT INTO app.items (name) VALUES ('a');
         UPDATE app.items SET name = 'b';
         DELETE FROM app.items;",
    );
    // It may read the log...
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(3)
    );
    // ...and nothing else.
    for (sql, expected) in [
        (
            "UPDATE audit.auditlog SET operation = 'DELETE'",
            "permission denied for table auditlog",
        ),
        (
            "DELETE FROM audit.auditlog",
            "permission denied for table auditlog",
        ),
        (
            "TRUNCATE audit.auditlog",
            "permission denied for table auditlog",
        ),
        (
            "INSERT INTO audit.auditlog (operation, schema_name, table_name) VALUES ('INSERT', 'app', 'items')",
            "permission denied for table auditlog",
        ),
        (
            "UPDATE audit.auditlog_default SET operation = 'X'",
            "permission denied for table auditlog_default",
        ),
        (
            "DROP TRIGGER pg_audit_insert ON app.items",
            "must be owner of",
        ),
        (
            "ALTER TABLE app.items DISABLE TRIGGER ALL",
            "must be owner of",
        ),
        (
            "SET session_replication_role = replica",
            "permission denied to set parameter",
        ),
        (
            "SELECT * FROM audit.auditlog_ensure_partitions(1)",
            "permission denied for function",
        ),
        (
            "SELECT * FROM audit.auditlog_prune_partitions('1 day', true)",
            "permission denied for function",
        ),
        (
            "CREATE TABLE audit.forged PARTITION OF audit.auditlog FOR VALUES FROM ('2000-01-01') TO ('2000-02-01')",
            "permission denied for schema audit",
        ),
        (
            "ALTER TABLE audit.auditlog DETACH PARTITION audit.auditlog_default",
            "must be owner of",
        ),
        ("DROP TABLE audit.auditlog", "must be owner of"),
    ] {
        let e = exec_err(&mut conn, sql);
        assert!(e.contains(expected), "{sql}: {e}");
    }
    exec(&mut conn, "RESET ROLE");
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        json!(3)
    );
}

#[test]
fn the_trigger_function_cannot_be_borrowed_to_forge_rows() {
    let (_roles, _db, mut conn, owner, app) = setup("sec_borrow");
    // Give the application a schema of its own, as many do.
    exec(
        &mut conn,
        &format!(
            "SET ROLE {owner}; CREATE SCHEMA mine; GRANT USAGE, CREATE ON SCHEMA mine TO {app}; RESET ROLE;"
        ),
    );
    let function = TriggerSpec::builder(QualifiedName::parse("app.items").unwrap())
        .build()
        .unwrap()
        .function_name(&AuditLog::new());
    exec(
        &mut conn,
        &format!("SET ROLE {app}; CREATE TABLE mine.fake (id int PRIMARY KEY);"),
    );
    let e = exec_err(
        &mut conn,
        &format!(
            "CREATE TRIGGER forge AFTER INSERT ON mine.fake FOR EACH ROW EXECUTE FUNCTION {function}()"
        ),
    );
    assert!(e.contains("permission denied for function"), "{e}");
}

#[test]
fn hostile_objects_in_the_callers_path_are_never_called() {
    let (_roles, _db, mut conn, owner, app) = setup("sec_hostile");
    exec(
        &mut conn,
        &format!(
            "SET ROLE {owner}; CREATE SCHEMA evil; GRANT USAGE, CREATE ON SCHEMA evil TO {app}; RESET ROLE;"
        ),
    );
    // Objects named like those the audit code uses, which would make the write fail (or
    // forge the log) if they were ever called.
    exec(
        &mut conn,
        &format!(
            "SET ROLE {app};
             CREATE FUNCTION evil.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'hostile to_jsonb called'; END $$;
             CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'hostile current_setting called'; END $$;
             CREATE FUNCTION evil.hashtext(text) RETURNS integer LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'hostile hashtext called'; END $$;
             CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'hostile = called'; END $$;
             CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
             CREATE FUNCTION evil.jsonbne(jsonb, jsonb) RETURNS boolean LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'hostile <> called'; END $$;
             CREATE OPERATOR evil.<> (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = evil.jsonbne);
             SET search_path = evil, app, pg_catalog;
             SET pg_audit.context = '{{\"user_id\": \"u\"}}';
             INSERT INTO items (name) VALUES ('a');
             UPDATE items SET name = 'b';
             DELETE FROM items;
             RESET search_path;
             RESET ROLE;"
        ),
    );
    let rows = audit_rows(&mut conn, &AuditLog::new());
    let ops: Vec<_> = rows.iter().map(|r| r["operation"].clone()).collect();
    assert_eq!(ops, [json!("INSERT"), json!("UPDATE"), json!("DELETE")]);
    assert_eq!(rows[1]["new_values"], json!({"id": 1, "name": "b"}));
    assert!(rows.iter().all(|r| r["user_id"] == "u"));
}
