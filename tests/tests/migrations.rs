//! Embedded migrations against a real server: install at startup, follow configuration
//! changes, revert, refuse clearly, survive concurrent starts, and write reviewable files.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use pg_audit_diesel::{AuditMigrations, ModelSet, pg_audit};
use pg_audit_tests::{TestDb, audit_rows, changed, exec, rows, value};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

mod schema {
    diesel::table! {
        users (id) {
            id -> Int4,
            name -> Text,
            email -> Text,
        }
    }

    diesel::table! {
        notes (id) {
            id -> Int4,
            body -> Text,
        }
    }

    diesel::table! {
        ghosts (id) {
            id -> Int4,
        }
    }
}

use schema::{ghosts, notes, users};

#[pg_audit(track_only = [name])]
#[derive(Queryable)]
#[diesel(table_name = users)]
pub struct UserV1 {
    pub id: i32,
}

// The same table after a configuration change: `email` added to `track_only`.
#[pg_audit(track_only = [name, email])]
#[derive(Queryable)]
#[diesel(table_name = users)]
pub struct UserV2 {
    pub id: i32,
}

#[pg_audit]
#[derive(Queryable)]
#[diesel(table_name = notes)]
pub struct Note {
    pub id: i32,
}

#[pg_audit]
#[derive(Queryable)]
#[diesel(table_name = ghosts)]
pub struct Ghost {
    pub id: i32,
}

const APP_TABLES: &str = "CREATE TABLE users (id int PRIMARY KEY, name text, email text);
                          CREATE TABLE notes (id int PRIMARY KEY, body text);";

fn app_db(hint: &str) -> (TestDb, PgConnection) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    exec(&mut conn, APP_TABLES);
    (db, conn)
}

fn versions(conn: &mut PgConnection) -> Vec<String> {
    rows(
        conn,
        "SELECT version FROM __diesel_schema_migrations ORDER BY version",
    )
    .into_iter()
    .map(|r| r["version"].as_str().unwrap().to_owned())
    .collect()
}

fn triggers(conn: &mut PgConnection, table: &str) -> Value {
    value(
        conn,
        &format!(
            "SELECT coalesce(jsonb_agg(tgname::text ORDER BY tgname), '[]') FROM pg_trigger
              WHERE tgrelid = '{table}'::regclass AND NOT tgisinternal"
        ),
    )
}

#[test]
fn migrations_install_the_log_and_triggers_once() {
    let (_db, mut conn) = app_db("mig_install");
    let source = AuditMigrations::models(ModelSet::new().with::<UserV1>().with::<Note>());
    let applied = conn.run_pending_migrations(source.clone()).unwrap();
    assert_eq!(applied.len(), 3);
    let recorded = versions(&mut conn);
    assert!(
        recorded[0].starts_with("00000000000001_pg_audit_log_"),
        "{recorded:?}"
    );
    assert!(
        recorded[1..]
            .iter()
            .all(|v| v.starts_with("00000000000002_pg_audit_")),
        "{recorded:?}"
    );
    assert!(
        recorded.iter().all(|v| v.len() <= 50),
        "Diesel's version column is varchar(50)"
    );
    // Nothing pending on the next start.
    assert!(conn.run_pending_migrations(source).unwrap().is_empty());
    exec(
        &mut conn,
        "INSERT INTO users VALUES (1, 'Ann', 'a@x'); UPDATE users SET email = 'b@x'; INSERT INTO notes VALUES (1, 'hi')",
    );
    let logged: Vec<Value> = audit_rows(&mut conn, &pg_audit::AuditLog::new())
        .into_iter()
        .map(|r| json!([r["table_name"], r["operation"], r["new_values"]]))
        .collect();
    assert_eq!(
        logged,
        [
            json!(["users", "INSERT", {"name": "Ann"}]),
            json!(["notes", "INSERT", {"id": 1, "body": "hi"}])
        ]
    );
}

#[test]
fn a_changed_configuration_installs_on_the_next_start() {
    let (_db, mut conn) = app_db("mig_change");
    conn.run_pending_migrations(AuditMigrations::models(ModelSet::new().with::<UserV1>()))
        .unwrap();
    exec(
        &mut conn,
        "INSERT INTO users VALUES (1, 'Ann', 'a@x'); UPDATE users SET email = 'b@x';",
    );
    // The application is redeployed with `email` tracked too.
    let applied = conn
        .run_pending_migrations(AuditMigrations::models(ModelSet::new().with::<UserV2>()))
        .unwrap();
    assert_eq!(applied.len(), 1, "only the changed model's migration runs");
    exec(&mut conn, "UPDATE users SET email = 'c@x'");
    let updates: Vec<Value> = audit_rows(&mut conn, &pg_audit::AuditLog::new())
        .into_iter()
        .filter(|r| r["operation"] == "UPDATE")
        .map(|r| changed(&r["old_values"], &r["new_values"]).1)
        .collect();
    assert_eq!(updates, [json!({"email": "c@x"})]);
}

#[test]
fn reverting_removes_what_was_installed_but_never_the_audit_trail() {
    let (_db, mut conn) = app_db("mig_revert");
    let source = AuditMigrations::models(ModelSet::new().with::<UserV1>());
    conn.run_pending_migrations(source.clone()).unwrap();
    let migrations = MigrationSource::<Pg>::migrations(&source).unwrap();
    assert_eq!(
        triggers(&mut conn, "users"),
        json!([
            "pg_audit_delete",
            "pg_audit_insert",
            "pg_audit_truncate",
            "pg_audit_update"
        ])
    );

    conn.revert_migration(&*migrations[1]).unwrap();
    assert_eq!(triggers(&mut conn, "users"), json!([]));
    assert_eq!(versions(&mut conn).len(), 1);

    // The log holds rows: reverting its migration is refused, naming the reason.
    exec(
        &mut conn,
        "INSERT INTO audit.auditlog (operation, schema_name, table_name) VALUES ('TRUNCATE', 'public', 'x')",
    );
    let e = conn
        .revert_migration(&*migrations[0])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "audit.auditlog holds 1 rows of the audit trail; it is not dropped by a migration revert"
        ),
        "{e}"
    );
    exec(&mut conn, "TRUNCATE audit.auditlog");
    conn.revert_migration(&*migrations[0]).unwrap();
    assert_eq!(
        value(&mut conn, "SELECT to_regclass('audit.auditlog') IS NULL"),
        json!(true)
    );
    assert!(versions(&mut conn).is_empty());
}

#[test]
fn a_model_whose_table_is_missing_names_the_table_and_the_fix() {
    let (_db, mut conn) = app_db("mig_missing_table");
    let e = conn
        .run_pending_migrations(AuditMigrations::models(ModelSet::new().with::<Ghost>()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pg-audit: table \"ghosts\" does not exist; create it (run the application's own migrations) before installing its audit triggers"),
        "{e}"
    );
}

#[test]
fn an_empty_registry_is_explained_when_migrations_are_listed() {
    // This binary registers models, so use an explicit empty list to see the same check.
    let e = MigrationSource::<Pg>::migrations(&AuditMigrations::models(ModelSet::new()))
        .map(|m| m.len());
    assert_eq!(
        e.unwrap(),
        1,
        "an explicit empty list installs just the log"
    );
    let e = MigrationSource::<Pg>::migrations(&pg_audit_diesel::migrations())
        .err()
        .expect("two models on one table")
        .to_string();
    assert!(
        e.contains("both audit table \"users\""),
        "the registry holds UserV1 and UserV2: {e}"
    );
}

/// Starts four processes that run pg-audit's migrations at the same instant (`mode`: `plain`
/// or `locked`, see the helper binary) and checks they all succeed and installed once.
/// Returns how many migrations the processes reported applying in all.
fn migrate_concurrently(hint: &str, mode: &'static str, diesel_table_exists: bool) -> usize {
    let (db, mut conn) = app_db(hint);
    exec(
        &mut conn,
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint)",
    );
    if diesel_table_exists {
        // As after the application's own migrations ran.
        conn.applied_migrations().unwrap();
    }
    let start = SystemTime::now() + Duration::from_millis(3000);
    let start = start
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url().to_owned();
            let start = start.clone();
            std::thread::spawn(move || {
                Command::new(env!("CARGO_BIN_EXE_pg-audit-migrate-concurrently"))
                    .args([url.as_str(), start.as_str(), mode])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let mut applied_total = 0;
    for handle in handles {
        let output = handle.join().unwrap();
        assert!(
            output.status.success(),
            "a process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        applied_total += String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<usize>()
            .unwrap();
    }
    let recorded = versions(&mut conn);
    assert_eq!(recorded.len(), 2, "one row per migration: {recorded:?}");
    assert_eq!(
        triggers(&mut conn, "accounts"),
        json!([
            "pg_audit_delete",
            "pg_audit_insert",
            "pg_audit_truncate",
            "pg_audit_update"
        ])
    );
    // Installed once: one trigger function for the table.
    let functions = value(
        &mut conn,
        "SELECT count(*) FROM pg_proc WHERE proname LIKE 'auditlog_accounts_%'",
    );
    assert_eq!(functions, json!(1));
    exec(&mut conn, "INSERT INTO accounts VALUES (1, 'Ann', 10)");
    assert_eq!(audit_rows(&mut conn, &pg_audit::AuditLog::new()).len(), 1);
    applied_total
}

#[test]
fn processes_migrating_at_the_same_moment_neither_fail_nor_install_twice() {
    let applied = migrate_concurrently("mig_concurrent", "plain", true);
    // Each process that saw a migration pending before another committed it reports it: more
    // than two means the processes really overlapped and took the already-applied path.
    assert!(
        applied > 2,
        "the processes did not overlap ({applied} migrations reported)"
    );
}

#[test]
fn run_migrations_is_safe_even_on_a_brand_new_database() {
    let applied = migrate_concurrently("mig_concurrent_new", "locked", false);
    assert_eq!(
        applied, 2,
        "the lock serialises whole runs: later processes find nothing pending"
    );
}

#[test]
fn migration_files_match_the_embedded_migrations_and_are_written_once() {
    let (_db, mut conn) = app_db("mig_files");
    let dir = std::env::temp_dir().join(format!("pg-audit-migration-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let source = AuditMigrations::models(ModelSet::new().with::<UserV1>().with::<Note>());
    let written = pg_audit_diesel::write_migration_files(&dir, &source).unwrap();
    assert_eq!(written.len(), 3);
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names[0].ends_with("_pg_audit_log"), "{names:?}");
    // Unchanged configuration: nothing new.
    assert!(
        pg_audit_diesel::write_migration_files(&dir, &source)
            .unwrap()
            .is_empty()
    );
    // Changed configuration: only that model.
    let changed = AuditMigrations::models(ModelSet::new().with::<UserV2>().with::<Note>());
    assert_eq!(
        pg_audit_diesel::write_migration_files(&dir, &changed)
            .unwrap()
            .len(),
        1
    );

    // Diesel runs the files like any others.
    let files = FileBasedMigrations::from_path(&dir).unwrap();
    assert_eq!(conn.run_pending_migrations(files).unwrap().len(), 4);
    exec(&mut conn, "INSERT INTO users VALUES (1, 'Ann', 'a@x')");
    let new_values = audit_rows(&mut conn, &pg_audit::AuditLog::new())[0]["new_values"].clone();
    assert_eq!(new_values, json!({"name": "Ann", "email": "a@x"}));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn running_the_migration_sql_twice_by_hand_changes_nothing() {
    // The migration SQL itself is idempotent, so a team that also ran it by hand is safe.
    let (_db, mut conn) = app_db("mig_idempotent");
    let source = AuditMigrations::models(ModelSet::new().with::<Note>());
    for m in source.sql_migrations().unwrap() {
        exec(&mut conn, m.up_sql());
        exec(&mut conn, m.up_sql());
    }
    assert_eq!(
        triggers(&mut conn, "notes"),
        json!([
            "pg_audit_delete",
            "pg_audit_insert",
            "pg_audit_truncate",
            "pg_audit_update"
        ])
    );
    let functions = value(
        &mut conn,
        "SELECT count(*) FROM pg_proc WHERE proname LIKE 'auditlog_notes_%'",
    );
    assert_eq!(functions, json!(1));
}

#[test]
fn a_configuration_rolled_back_is_installed_again() {
    let (_db, mut conn) = app_db("mig_rollback");
    let tracked = |conn: &mut PgConnection| {
        value(
            conn,
            "SELECT config -> 'audited' FROM audit.auditlog_tables WHERE table_name = 'users'",
        )
    };
    let v1 = || AuditMigrations::models(ModelSet::new().with::<UserV1>());
    let v2 = || AuditMigrations::models(ModelSet::new().with::<UserV2>());
    conn.run_pending_migrations(v1()).unwrap();
    assert_eq!(tracked(&mut conn), json!({"track_only": ["name"]}));
    conn.run_pending_migrations(v2()).unwrap();
    assert_eq!(tracked(&mut conn), json!({"track_only": ["name", "email"]}));
    // The deploy is rolled back: A again.
    let applied = conn.run_pending_migrations(v1()).unwrap();
    assert_eq!(applied.len(), 1, "A is pending again");
    assert_eq!(tracked(&mut conn), json!({"track_only": ["name"]}));
    exec(
        &mut conn,
        "INSERT INTO users VALUES (1, 'Ann', 'a@x'); UPDATE users SET email = 'b@x';",
    );
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FROM audit.auditlog WHERE operation = 'UPDATE'"
        ),
        json!(0),
        "A's triggers: email is not tracked"
    );
    // And forward again.
    assert_eq!(conn.run_pending_migrations(v2()).unwrap().len(), 1);
    assert!(conn.run_pending_migrations(v2()).unwrap().is_empty());
}

#[test]
fn run_migrations_follows_the_release_and_reinstall_repairs_drift() {
    let (_db, mut conn) = app_db("mig_reconcile");
    let source = || AuditMigrations::models(ModelSet::new().with::<UserV1>());
    pg_audit_diesel::run_migrations(&mut conn, source()).unwrap();
    // Someone installs another configuration by hand (as the pg-audit program would).
    let other =
        pg_audit::TriggerSpec::builder(pg_audit::QualifiedName::parse("public.users").unwrap())
            .track_only(["email"])
            .build()
            .unwrap();
    exec(&mut conn, &other.install_sql(&pg_audit::AuditLog::new()));
    let applied = pg_audit_diesel::run_migrations(&mut conn, source()).unwrap();
    assert_eq!(applied, ["reinstalled \"users\""]);
    assert_eq!(
        value(
            &mut conn,
            "SELECT config -> 'audited' FROM audit.auditlog_tables WHERE table_name = 'users'"
        ),
        json!({"track_only": ["name"]})
    );
    assert!(
        pg_audit_diesel::run_migrations(&mut conn, source())
            .unwrap()
            .is_empty()
    );
    // The triggers removed by hand, or gone with a table dropped and created again (as an
    // application's migration may do): installed again.
    exec(&mut conn, &other.uninstall_sql(&pg_audit::AuditLog::new()));
    let applied = pg_audit_diesel::run_migrations(&mut conn, source()).unwrap();
    assert_eq!(applied, ["reinstalled \"users\""]);
    exec(
        &mut conn,
        "DROP TABLE users; CREATE TABLE users (id int PRIMARY KEY, name text, email text)",
    );
    let applied = pg_audit_diesel::run_migrations(&mut conn, source()).unwrap();
    assert_eq!(applied, ["reinstalled \"users\""]);
    exec(&mut conn, "INSERT INTO users VALUES (7, 'Ann', 'a@x')");
    assert_eq!(
        value(
            &mut conn,
            "SELECT new_values FROM audit.auditlog WHERE record_pk = '{\"id\": 7}'"
        ),
        json!({"name": "Ann"})
    );
    // A disabled trigger is drift no migration repairs; reinstall does.
    exec(
        &mut conn,
        "ALTER TABLE users DISABLE TRIGGER pg_audit_update",
    );
    let problems =
        |conn: &mut PgConnection| value(conn, "SELECT count(*) FROM audit.auditlog_check()");
    assert_eq!(problems(&mut conn), json!(1));
    assert_eq!(source().reinstall(&mut conn).unwrap(), 2);
    assert_eq!(problems(&mut conn), json!(0));
}

/// With `baseline`, the start that installs a model also writes its existing rows to the log
/// as SNAPSHOT entries (as its triggers would log them); later starts find it finished.
#[test]
fn migrations_with_a_baseline_snapshot_the_rows_that_were_there() {
    let (_db, mut conn) = app_db("mig_baseline");
    exec(
        &mut conn,
        "INSERT INTO users SELECT g, 'n' || g, 'e' || g FROM generate_series(1, 25) AS g;
         INSERT INTO notes SELECT g, 'b' || g FROM generate_series(1, 7) AS g;",
    );
    let source = || {
        AuditMigrations::models(ModelSet::new().with::<UserV1>().with::<Note>()).baseline(
            pg_audit_diesel::Baseline {
                batch_size: 10,
                ..Default::default()
            },
        )
    };
    let applied = pg_audit_diesel::run_migrations(&mut conn, source()).unwrap();
    assert!(
        applied.contains(&"baseline \"users\" (25 rows)".to_owned()),
        "{applied:?}"
    );
    assert!(
        applied.contains(&"baseline \"notes\" (7 rows)".to_owned()),
        "{applied:?}"
    );
    assert_eq!(
        value(
            &mut conn,
            "SELECT json_agg(DISTINCT table_name || ':' || (new_values ? 'email')) FROM audit.auditlog WHERE operation = 'SNAPSHOT'"
        ),
        serde_json::json!(["notes:false", "users:false"])
    );
    let again = pg_audit_diesel::run_migrations(&mut conn, source()).unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FROM audit.auditlog WHERE operation = 'SNAPSHOT'"
        ),
        serde_json::json!(32)
    );
}
