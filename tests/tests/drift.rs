//! `check` compares what is installed with what the install intended: every trigger's whole
//! definition, the trigger function's security, ownership, and the privileges on the log.

use diesel::prelude::*;
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};
use pg_audit_tests::{Roles, TestDb, exec, value};
use serde_json::Value;

fn problems(conn: &mut PgConnection, log: &AuditLog) -> Vec<String> {
    pg_audit_tests::check_problems(conn, log)
}

fn spec() -> TriggerSpec {
    TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
        .track_only(["name"])
        .build()
        .unwrap()
}

fn setup(hint: &str) -> (TestDb, PgConnection, AuditLog) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text)",
    );
    exec(&mut conn, &spec().install_sql(&log));
    assert_eq!(problems(&mut conn, &log), Vec::<String>::new());
    (db, conn, log)
}

fn assert_reports(problems: &[String], expected: &str) {
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "`{expected}` not in {problems:?}"
    );
}

#[test]
fn a_changed_trigger_is_reported_with_what_it_is_now() {
    let (_db, mut conn, log) = setup("drift_triggers");
    let function = spec().function_name(&log);
    for (change, expected) in [
        (
            format!(
                "DROP TRIGGER pg_audit_update ON users;
                 CREATE TRIGGER pg_audit_update AFTER UPDATE OF name ON users FOR EACH ROW
                   WHEN (false) EXECUTE FUNCTION {function}();"
            ),
            "trigger pg_audit_update was changed since the install: it is now CREATE TRIGGER pg_audit_update AFTER UPDATE OF name ON public.users FOR EACH ROW WHEN (false)",
        ),
        (
            format!(
                "DROP TRIGGER pg_audit_update ON users;
                 CREATE TRIGGER pg_audit_update AFTER UPDATE OF email ON users FOR EACH ROW
                   EXECUTE FUNCTION {function}();"
            ),
            "AFTER UPDATE OF email ON public.users",
        ),
        (
            format!(
                "DROP TRIGGER pg_audit_delete ON users;
                 CREATE TRIGGER pg_audit_delete AFTER DELETE OR TRUNCATE ON users
                   FOR EACH STATEMENT EXECUTE FUNCTION {function}();"
            ),
            "trigger pg_audit_delete was changed since the install: it is now CREATE TRIGGER pg_audit_delete AFTER DELETE OR TRUNCATE ON public.users",
        ),
    ] {
        exec(&mut conn, &change);
        assert_reports(&problems(&mut conn, &log), expected);
        exec(&mut conn, &spec().install_sql(&log));
        assert_eq!(problems(&mut conn, &log), Vec::<String>::new());
    }
}

#[test]
fn the_trigger_functions_security_is_checked() {
    let (_db, mut conn, log) = setup("drift_function");
    let function = spec().function_name(&log);
    for (change, expected) in [
        (
            format!("GRANT EXECUTE ON FUNCTION {function}() TO PUBLIC"),
            "EXECUTE on trigger function \"audit\".\"auditlog_users_af4ee53a\" is granted to PUBLIC",
        ),
        (
            format!("ALTER FUNCTION {function}() RESET search_path"),
            "does not pin search_path=pg_catalog, pg_temp, so the writing session's settings can change what is logged",
        ),
        (
            format!("ALTER FUNCTION {function}() SECURITY INVOKER"),
            "is no longer SECURITY DEFINER",
        ),
    ] {
        exec(&mut conn, &change);
        assert_reports(&problems(&mut conn, &log), expected);
        exec(&mut conn, &spec().install_sql(&log));
        exec(
            &mut conn,
            &format!("REVOKE ALL ON FUNCTION {function}() FROM PUBLIC"),
        );
        assert_eq!(problems(&mut conn, &log), Vec::<String>::new());
    }
}

#[test]
fn ownership_and_privileges_are_checked() {
    let roles = Roles::new("drift_roles", &["app"]);
    let app = roles.name("app");
    let (_db, mut conn, log) = setup("drift_roles");
    exec(
        &mut conn,
        &format!(
            "GRANT INSERT, DELETE ON audit.auditlog TO {app};
             GRANT SELECT ON audit.auditlog TO {app};
             GRANT UPDATE ON audit.auditlog_default TO {app};
             GRANT EXECUTE ON FUNCTION audit.auditlog_ensure_partitions(integer) TO {app};
             ALTER TABLE users OWNER TO {app};"
        ),
    );
    let found = problems(&mut conn, &log);
    let app = app.trim_matches('"');
    for expected in [
        format!("audit.auditlog grants INSERT to {app}"),
        format!("audit.auditlog grants DELETE to {app}"),
        format!("audit.auditlog_default grants UPDATE to {app}"),
        format!("EXECUTE on audit.auditlog_ensure_partitions(integer) is granted to {app}"),
        format!("the table public.users is owned by {app}, not by the log's owner"),
    ] {
        assert_reports(&found, &expected);
    }
    // Reading is what the read grant is for: not a problem.
    assert!(!found.iter().any(|p| p.contains("SELECT")), "{found:?}");
}

#[test]
fn a_log_schema_on_the_installers_path_is_not_a_false_alarm() {
    let db = TestDb::new("drift_path");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text);
         SET search_path = audit, public;",
    );
    exec(&mut conn, &spec().install_sql(&log));
    exec(&mut conn, "RESET search_path");
    assert_eq!(problems(&mut conn, &log), Vec::<String>::new());
    // And the trigger still logs.
    exec(&mut conn, "INSERT INTO users VALUES (1, 'a', 'b')");
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM audit.auditlog"),
        Value::from(1)
    );
}
