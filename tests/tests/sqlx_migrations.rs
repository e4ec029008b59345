//! sqlx's migrations against a real server: run at startup once however many instances start
//! together, following the declared configuration (changed, rolled back, or installed
//! otherwise since), beside the application's own `sqlx::migrate!` bookkeeping; and the same
//! migrations as files that sqlx's own migrator runs.

use pg_audit::{QualifiedName, TriggerSpec};
use pg_audit_sqlx::{AuditMigrations, MIGRATIONS_TABLE};
use pg_audit_tests::{TestDb, audit_rows, exec, runtime, value};
use serde_json::json;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap()
}

fn users(exclude: &[&str]) -> AuditMigrations {
    let mut spec = TriggerSpec::builder(QualifiedName::parse("users").unwrap());
    if !exclude.is_empty() {
        spec = spec.exclude_fields(exclude.iter().copied());
    }
    AuditMigrations::new().table(spec.build().unwrap())
}

fn app_db(hint: &str) -> (TestDb, diesel::PgConnection) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    exec(
        &mut conn,
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text, password_hash text)",
    );
    (db, conn)
}

fn recorded(conn: &mut diesel::PgConnection) -> i64 {
    value(conn, &format!("SELECT count(*) FROM {MIGRATIONS_TABLE}"))
        .as_i64()
        .unwrap()
}

#[test]
fn migrations_run_once_at_startup_and_follow_the_declared_configuration() {
    let (db, mut conn) = app_db("sqlx_mig");
    let rt = runtime();
    let pool = rt.block_on(pool(db.url()));

    // Four instances starting together: the log and the table installed once.
    let v1 = users(&["password_hash"]);
    let runs: Vec<Vec<String>> = rt.block_on(async {
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let (pool, m) = (pool.clone(), v1.clone());
                tokio::spawn(async move { m.run(&pool).await.unwrap() })
            })
            .collect();
        let mut runs = Vec::new();
        for s in starts {
            runs.push(s.await.unwrap());
        }
        runs
    });
    assert_eq!(runs.iter().map(Vec::len).sum::<usize>(), 2, "{runs:?}");
    assert_eq!(recorded(&mut conn), 2);
    // sqlx's own bookkeeping is the application's alone.
    assert_eq!(
        value(&mut conn, "SELECT to_regclass('_sqlx_migrations') IS NULL"),
        json!(true)
    );
    exec(
        &mut conn,
        "INSERT INTO users VALUES (1, 'Ann', 'a@x', 'secret')",
    );

    // A changed configuration: one new migration, the old version forgotten.
    let v2 = users(&["password_hash", "email"]);
    let ran = rt.block_on(v2.run(&pool)).unwrap();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(recorded(&mut conn), 2);
    exec(
        &mut conn,
        "UPDATE users SET name = 'Bea', email = 'b@x' WHERE id = 1",
    );
    // Back to the first (a deploy rolled back): installed again.
    assert_eq!(rt.block_on(v1.run(&pool)).unwrap().len(), 1);
    exec(
        &mut conn,
        "UPDATE users SET name = 'Cid', email = 'c@x' WHERE id = 1",
    );
    // Nothing pending: nothing runs.
    assert!(rt.block_on(v1.run(&pool)).unwrap().is_empty());

    // Installed another way since (the program, by hand): reinstalled as declared.
    let by_hand = TriggerSpec::builder(QualifiedName::parse("users").unwrap())
        .build()
        .unwrap();
    exec(&mut conn, &by_hand.install_sql(&pg_audit::AuditLog::new()));
    assert_eq!(
        rt.block_on(v1.run(&pool)).unwrap(),
        ["reinstalled \"users\"".to_owned()]
    );
    exec(&mut conn, "UPDATE users SET name = 'Dee' WHERE id = 1");
    // The triggers removed by hand, or gone with a table dropped and created again: installed
    // again.
    exec(&mut conn, v1.sql_migrations()[1].down_sql());
    assert_eq!(
        rt.block_on(v1.run(&pool)).unwrap(),
        ["reinstalled \"users\"".to_owned()]
    );
    exec(
        &mut conn,
        "CREATE TABLE users_kept AS SELECT * FROM users;
         DROP TABLE users;
         CREATE TABLE users (id int PRIMARY KEY, name text, email text, password_hash text);
         INSERT INTO users SELECT * FROM users_kept;",
    );
    assert_eq!(
        rt.block_on(v1.run(&pool)).unwrap(),
        ["reinstalled \"users\"".to_owned()]
    );
    exec(&mut conn, "UPDATE users SET name = 'Eve' WHERE id = 1");

    let values: Vec<_> = audit_rows(&mut conn, &pg_audit::AuditLog::new())
        .into_iter()
        .map(|r| r["new_values"].clone())
        .collect();
    assert_eq!(
        values,
        [
            json!({"id": 1, "name": "Ann", "email": "a@x"}),
            json!({"id": 1, "name": "Bea"}),
            json!({"id": 1, "name": "Cid", "email": "c@x"}),
            json!({"id": 1, "name": "Dee", "email": "c@x"}),
            json!({"id": 1, "name": "Eve", "email": "c@x"}),
        ]
    );
}

#[test]
fn a_table_that_cannot_be_audited_fails_the_migration_naming_it() {
    let (db, mut conn) = app_db("sqlx_mig_bad");
    let rt = runtime();
    let pool = rt.block_on(pool(db.url()));
    let bad = AuditMigrations::new().table(
        TriggerSpec::builder(QualifiedName::parse("users").unwrap())
            .track_only(["nmae"])
            .build()
            .unwrap(),
    );
    let err = rt.block_on(bad.run(&pool)).unwrap_err().to_string();
    assert!(err.contains("nmae"), "{err}");
    // Nothing of the failed migration stays recorded: fixed, it runs.
    assert_eq!(rt.block_on(users(&[]).run(&pool)).unwrap().len(), 1);
    assert_eq!(recorded(&mut conn), 2);
}

#[test]
fn migration_files_are_written_once_and_sqlx_runs_them() {
    let (db, mut conn) = app_db("sqlx_mig_files");
    let dir = std::env::temp_dir().join(format!("pg-audit-sqlx-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The application's own migration, numbered as `sqlx migrate add` does.
    std::fs::write(
        dir.join("20200101000000_notes.sql"),
        "CREATE TABLE notes (id int PRIMARY KEY, body text);",
    )
    .unwrap();
    let written = users(&["password_hash"]).write_files(&dir).unwrap();
    assert_eq!(written.len(), 2);
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names[0].ends_with("_pg_audit_log.up.sql"), "{names:?}");
    assert!(names[1].ends_with("_pg_audit_users.up.sql"), "{names:?}");
    assert!(dir.join(names[1].replace(".up.", ".down.")).exists());
    assert!(
        users(&["password_hash"])
            .write_files(&dir)
            .unwrap()
            .is_empty()
    );

    let rt = runtime();
    let pool = rt.block_on(pool(db.url()));
    let migrator = rt.block_on(Migrator::new(dir.as_path())).unwrap();
    rt.block_on(migrator.run(&pool)).unwrap();
    exec(
        &mut conn,
        "INSERT INTO users VALUES (1, 'Ann', 'a@x', 'secret')",
    );
    assert_eq!(
        audit_rows(&mut conn, &pg_audit::AuditLog::new())[0]["new_values"],
        json!({"id": 1, "name": "Ann", "email": "a@x"})
    );

    // A changed configuration: only that table's file, after the others; sqlx runs it.
    let changed = users(&["password_hash", "email"])
        .write_files(&dir)
        .unwrap();
    assert_eq!(changed.len(), 1);
    let migrator = rt.block_on(Migrator::new(dir.as_path())).unwrap();
    rt.block_on(migrator.run(&pool)).unwrap();
    exec(&mut conn, "UPDATE users SET name = 'Bea' WHERE id = 1");
    assert_eq!(
        audit_rows(&mut conn, &pg_audit::AuditLog::new())[1]["new_values"],
        json!({"id": 1, "name": "Bea"})
    );
    // Back to the first configuration (a deploy rolled back): written again, as the newest.
    let back = users(&["password_hash"]).write_files(&dir).unwrap();
    assert_eq!(back.len(), 1);
    let migrator = rt.block_on(Migrator::new(dir.as_path())).unwrap();
    rt.block_on(migrator.run(&pool)).unwrap();
    let audited = |conn: &mut diesel::PgConnection| {
        value(
            conn,
            "SELECT config -> 'audited' FROM audit.auditlog_tables WHERE table_name = 'users'",
        )
    };
    assert_eq!(
        audited(&mut conn),
        json!({"exclude_fields": ["password_hash"]})
    );
    // Undone, newest first, by sqlx's revert: each undo puts back the configuration before.
    let mut versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    versions.dedup(); // an up and a down each
    let before_last = versions[versions.len() - 2];
    rt.block_on(migrator.undo(&pool, before_last)).unwrap();
    assert_eq!(
        audited(&mut conn),
        json!({"exclude_fields": ["password_hash", "email"]})
    );
    // The log, with rows, refuses to go.
    let err = rt
        .block_on(migrator.undo(&pool, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rows of the audit trail"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
