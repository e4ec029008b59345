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

#[test]
fn hooks_on_the_log_and_its_tables_are_reported() {
    let (_db, mut conn, log) = setup("drift_log_hooks");
    for (change, expected) in [
        (
            "CREATE FUNCTION public.swallow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER swallow BEFORE INSERT ON audit.auditlog FOR EACH ROW EXECUTE FUNCTION public.swallow();",
            "trigger swallow on audit.auditlog was not installed by pg-audit",
        ),
        (
            "CREATE RULE quiet AS ON INSERT TO audit.auditlog DO INSTEAD NOTHING",
            "rule quiet on audit.auditlog rewrites what is written to or read from it",
        ),
        (
            "ALTER TABLE audit.auditlog ALTER COLUMN db_user SET DEFAULT 'forged'",
            "column db_user of audit.auditlog defaults to 'forged'::text, not SESSION_USER",
        ),
        (
            "ALTER TABLE audit.auditlog ADD CONSTRAINT picky CHECK (table_name <> 'users')",
            "constraint picky on audit.auditlog was not installed by pg-audit",
        ),
        (
            "ALTER TABLE audit.auditlog ENABLE ROW LEVEL SECURITY;
             ALTER TABLE audit.auditlog FORCE ROW LEVEL SECURITY;
             CREATE POLICY hide ON audit.auditlog USING (table_name <> 'users');",
            "audit.auditlog has row-level security enabled and forced on its owner",
        ),
        (
            "ALTER TABLE audit.auditlog_seals DISABLE TRIGGER append_only",
            "audit.auditlog_seals is not append-only: its trigger append_only is disabled",
        ),
        (
            "CREATE TRIGGER extra AFTER INSERT ON audit.auditlog_redactions FOR EACH ROW EXECUTE FUNCTION public.swallow()",
            "trigger extra on audit.auditlog_redactions was not installed by pg-audit",
        ),
    ] {
        exec(&mut conn, change);
        assert_reports(&problems(&mut conn, &log), expected);
    }
    let found = problems(&mut conn, &log);
    assert_reports(
        &found,
        "policy hide on audit.auditlog was not installed by pg-audit",
    );
}

#[test]
fn a_narrowed_publication_is_reported() {
    let (_db, mut conn, log) = setup("drift_publication");
    // What a WAL-captured install leaves (the publication of the log, with the install
    // records), then narrowed: only inserts, a row filter, a column list.
    exec(
        &mut conn,
        "CREATE TABLE events (id int PRIMARY KEY, kind text, secret text);
         CREATE PUBLICATION pg_audit_audit_auditlog FOR TABLE audit.auditlog_tables
           WITH (publish = 'insert', publish_via_partition_root = false);
         ALTER PUBLICATION pg_audit_audit_auditlog ADD TABLE users WHERE (id > 5);
         ALTER PUBLICATION pg_audit_audit_auditlog ADD TABLE events (id, kind);",
    );
    let found = problems(&mut conn, &log);
    for expected in [
        "publication pg_audit_audit_auditlog publishes insert, not through the partition root",
        "publication pg_audit_audit_auditlog filters the rows of public.users (WHERE (id > 5))",
        "publication pg_audit_audit_auditlog publishes only some columns of public.events",
    ] {
        assert_reports(&found, expected);
    }
}

#[test]
fn settings_and_grants_that_switch_triggers_off_are_reported() {
    let roles = Roles::new("drift_srr", &["app"]);
    let app = roles.name("app");
    let (db, mut conn, log) = setup("drift_srr");
    // The grant is cluster-wide: made and checked in a transaction rolled back after, so
    // tests running beside this one in other databases never see it.
    exec(
        &mut conn,
        &format!(
            "BEGIN;
             ALTER ROLE {app} IN DATABASE \"{db}\" SET session_replication_role = replica;
             ALTER DATABASE \"{db}\" SET session_replication_role = replica;
             GRANT SET ON PARAMETER session_replication_role TO {app};",
            db = db.name()
        ),
    );
    let found = problems(&mut conn, &log);
    let bare = app.trim_matches('"');
    for expected in [
        format!(
            "role {bare} has session_replication_role = replica by default: its writes skip every audit trigger"
        ),
        format!(
            "database {} has session_replication_role = replica by default",
            db.name()
        ),
        format!("{bare} may set session_replication_role (GRANT SET ON PARAMETER)"),
    ] {
        assert_reports(&found, &expected);
    }
    exec(&mut conn, "ROLLBACK");
}

#[test]
fn a_partition_owned_by_another_role_is_reported() {
    let roles = Roles::new("drift_part_owner", &["other"]);
    let other = roles.name("other");
    let db = TestDb::new("drift_part_owner");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE events (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');",
    );
    exec(
        &mut conn,
        &TriggerSpec::builder(QualifiedName::parse("public.events").unwrap())
            .primary_key(["id", "region"])
            .build()
            .unwrap()
            .install_sql(&log),
    );
    assert_eq!(problems(&mut conn, &log), Vec::<String>::new());
    exec(
        &mut conn,
        &format!("ALTER TABLE events_eu OWNER TO {other}"),
    );
    let bare = other.trim_matches('"');
    assert_reports(
        &problems(&mut conn, &log),
        &format!(
            "partition public.events_eu is owned by {bare}, not by the log's owner postgres: {bare} can disable its audit triggers"
        ),
    );
    exec(&mut conn, "ALTER TABLE events_eu OWNER TO postgres");
}
