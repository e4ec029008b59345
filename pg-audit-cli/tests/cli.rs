//! The `pg-audit` program: its SQL runs as is in psql, and bad arguments are refused clearly.

use std::process::{Command, Output};

fn pg_audit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(args)
        .output()
        .expect("run pg-audit")
}

fn stdout(args: &[&str]) -> String {
    let out = pg_audit(args);
    assert!(
        out.status.success(),
        "pg-audit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn refused(args: &[&str]) -> String {
    let out = pg_audit(args);
    assert!(!out.status.success(), "pg-audit {args:?} should fail");
    assert!(out.stdout.is_empty(), "nothing should be printed to run");
    String::from_utf8(out.stderr).expect("utf-8")
}

#[test]
fn printed_sql_installs_with_psql_and_logs_plain_sql_changes() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database("cli_install").expect("database");
    db.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text, email text, password_hash text)",
    )
    .expect("create table");

    db.psql(&stdout(&["sql", "table"]))
        .expect("install the log");
    // The key is read from the table.
    db.psql(&stdout(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--track-only",
        "name,email",
        "--operations",
        "insert,update,delete",
        "--database-url",
        db.url(),
    ]))
    .expect("install the trigger");

    db.psql(
        "INSERT INTO users (name, email, password_hash) VALUES ('Ann', 'ann@x', 'h');
         UPDATE users SET password_hash = 'h2';
         UPDATE users SET email = 'ann@y';",
    )
    .expect("changes");
    let log = db
        .psql("SELECT operation, record_pk, old_values, new_values FROM audit.auditlog ORDER BY id")
        .expect("read the log");
    assert_eq!(
        log,
        "INSERT|{\"id\": 1}||{\"name\": \"Ann\", \"email\": \"ann@x\"}\n\
         UPDATE|{\"id\": 1}|{\"name\": \"Ann\", \"email\": \"ann@x\"}|{\"name\": \"Ann\", \"email\": \"ann@y\"}\n"
    );

    // Uninstalling removes the triggers; the log keeps its rows.
    db.psql(&stdout(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--uninstall",
    ]))
    .expect("uninstall");
    db.psql("DELETE FROM users").expect("delete");
    let count = db
        .psql("SELECT count(*) FROM audit.auditlog")
        .expect("count");
    assert_eq!(count, "2\n");
}

#[test]
fn the_sql_is_written_as_sqlx_and_diesel_migrations_once() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server
        .create_database("cli_migration_files")
        .expect("database");
    db.psql("CREATE TABLE users (id serial PRIMARY KEY, name text, password_hash text)")
        .expect("create table");
    let dir = std::env::temp_dir().join(format!("pg-audit-cli-migrations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sqlx_dir = dir.join("sqlx");
    let sqlx = sqlx_dir.to_str().unwrap();
    let trigger = [
        "sql",
        "trigger",
        "--table",
        "users",
        "--primary-key",
        "id",
        "--exclude-fields",
        "password_hash",
        "--sqlx-migrations",
        sqlx,
    ];
    let wrote = stdout(&["sql", "table", "--sqlx-migrations", sqlx]);
    assert!(
        wrote.starts_with("wrote ") && wrote.trim_end().ends_with("_pg_audit_log.up.sql"),
        "{wrote}"
    );
    let wrote = stdout(&trigger);
    assert!(
        wrote.trim_end().ends_with("_pg_audit_users.up.sql"),
        "{wrote}"
    );
    // The same SQL again: nothing written.
    assert!(stdout(&trigger).contains("nothing written"));
    let mut files: Vec<String> = std::fs::read_dir(&sqlx_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    // Numbered in the order written: the log's first.
    assert!(
        files[0].ends_with("_pg_audit_log.down.sql") && files[1].ends_with("_pg_audit_log.up.sql"),
        "{files:?}"
    );
    for up in files.iter().filter(|f| f.ends_with(".up.sql")) {
        let sql = std::fs::read_to_string(sqlx_dir.join(up)).unwrap();
        db.psql(&format!("BEGIN;\n{sql}\nCOMMIT;"))
            .expect("run the migration");
    }
    db.psql("INSERT INTO users (name, password_hash) VALUES ('Ann', 'h')")
        .expect("insert");
    assert_eq!(
        db.psql("SELECT new_values FROM audit.auditlog")
            .expect("read the log"),
        "{\"id\": 1, \"name\": \"Ann\"}\n"
    );

    // Diesel's layout: a directory per migration.
    let diesel_dir = dir.join("diesel");
    let wrote = stdout(&[
        "sql",
        "table",
        "--diesel-migrations",
        diesel_dir.to_str().unwrap(),
    ]);
    let written = std::path::PathBuf::from(wrote.trim_end().strip_prefix("wrote ").unwrap());
    assert!(written.join("up.sql").exists() && written.join("down.sql").exists());
    // Not both, and not with --uninstall.
    refused(&[
        "sql",
        "table",
        "--sqlx-migrations",
        sqlx,
        "--diesel-migrations",
        sqlx,
    ]);
    refused(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--uninstall",
        "--sqlx-migrations",
        sqlx,
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_option_reaches_the_sql() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database("cli_options").expect("database");
    db.psql(
        "CREATE SCHEMA billing;
         CREATE TABLE billing.subscriptions (org text, plan text, is_active boolean, secret text,
                                             PRIMARY KEY (org, plan));",
    )
    .expect("create table");
    db.psql(&stdout(&[
        "sql",
        "table",
        "--schema",
        "history",
        "--name",
        "changes",
        "--period",
        "daily",
        "--premake",
        "1",
    ]))
    .expect("install the log");
    db.psql(&stdout(&[
        "sql",
        "trigger",
        "--table",
        "billing.subscriptions",
        "--primary-key",
        "org,plan",
        "--exclude-fields",
        "secret",
        "--condition",
        "NEW.is_active",
        "--operations",
        "insert,delete,truncate",
        "--level",
        "statement",
        "--log-schema",
        "history",
        "--log-name",
        "changes",
    ]))
    .expect("install the trigger");
    db.psql(
        "INSERT INTO billing.subscriptions VALUES ('a', 'pro', true, 's'), ('b', 'free', false, 's');
         UPDATE billing.subscriptions SET plan = 'max';
         DELETE FROM billing.subscriptions WHERE org = 'a';
         TRUNCATE billing.subscriptions;",
    )
    .expect("changes");
    let log = db
        .psql("SELECT operation, record_pk, coalesce(new_values, old_values) FROM history.changes ORDER BY id")
        .expect("read the log");
    assert_eq!(
        log,
        "INSERT|{\"org\": \"a\", \"plan\": \"pro\"}|{\"org\": \"a\", \"plan\": \"pro\", \"is_active\": true}\n\
         DELETE|{\"org\": \"a\", \"plan\": \"max\"}|{\"org\": \"a\", \"plan\": \"max\", \"is_active\": true}\n\
         TRUNCATE||\n"
    );
    let partitions = db
        .psql("SELECT count(*) FROM history.changes_partitions() WHERE NOT is_default")
        .expect("partitions");
    assert_eq!(partitions, "2\n");
}

#[test]
fn without_primary_key_the_tables_own_key_is_used() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database("cli_detect_key").expect("database");
    db.psql(
        "CREATE TABLE lines (line_no int, org text, body text, PRIMARY KEY (org, line_no));
         CREATE TABLE loose (id int, body text);",
    )
    .expect("create tables");
    db.psql(&stdout(&["sql", "table"]))
        .expect("install the log");
    let sql = stdout(&[
        "sql",
        "trigger",
        "--table",
        "lines",
        "--database-url",
        db.url(),
    ]);
    // Key order is the primary key's, not the table's column order.
    assert!(
        sql.contains(r#"'{"primary_key":["org","line_no"],"#),
        "{sql}"
    );
    db.psql(&sql).expect("install");
    db.psql("INSERT INTO lines VALUES (1, 'acme', 'x')")
        .expect("insert");
    assert_eq!(
        db.psql("SELECT record_pk FROM audit.auditlog")
            .expect("read"),
        "{\"org\": \"acme\", \"line_no\": 1}\n"
    );

    let e = refused(&[
        "sql",
        "trigger",
        "--table",
        "loose",
        "--database-url",
        db.url(),
    ]);
    assert!(
        e.contains("error: table \"loose\" has no primary key: add one, or pass --primary-key with the columns of a unique index"),
        "{e}"
    );
    let e = refused(&[
        "sql",
        "trigger",
        "--table",
        "nosuch",
        "--database-url",
        db.url(),
    ]);
    assert!(
        e.contains("error: table \"public\".\"nosuch\" does not exist"),
        "{e}"
    );
    let e = pg_audit_without_database(&["sql", "trigger", "--table", "lines"]);
    assert!(
        e.contains("pass --primary-key, or --database-url (or DATABASE_URL)"),
        "{e}"
    );
}

/// `pg-audit` refusing `args` with DATABASE_URL unset.
fn pg_audit_without_database(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run pg-audit");
    assert_eq!(out.status.code(), Some(2), "pg-audit {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8")
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let e = refused(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--track-only",
        "a",
        "--exclude-fields",
        "b",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = refused(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--operations",
        "insert,upsert",
    ]);
    assert!(
        e.contains("invalid value 'upsert' for '--operations <OPS>'")
            && e.contains("[possible values: insert, update, delete, truncate]")
            && e.contains("a similar value exists: 'insert'"),
        "{e}"
    );
    let e = refused(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--condition",
        "NEW.a) OR (true",
    ]);
    assert!(
        e.contains("error: invalid condition `NEW.a) OR (true`: `)` without a matching `(`"),
        "{e}"
    );
    let e = refused(&["sql", "trigger", "--table", "users", "--track-only", "a,a"]);
    assert!(
        e.contains("error: column `a` is listed twice in `track_only`"),
        "{e}"
    );
    let long = "x".repeat(64);
    let e = refused(&["sql", "trigger", "--table", &long]);
    assert!(
        e.contains("is 64 bytes long; PostgreSQL names are at most 63 bytes"),
        "{e}"
    );
    let e = refused(&["sql", "table", "--period", "yearly"]);
    assert!(
        e.contains("invalid value 'yearly' for '--period <PERIOD>'")
            && e.contains("[possible values: daily, weekly, monthly]"),
        "{e}"
    );
    let e = refused(&[
        "sql",
        "trigger",
        "--table",
        "t",
        "--operations",
        "insert,merge",
    ]);
    assert!(
        e.contains("[possible values: insert, update, delete, truncate]"),
        "{e}"
    );
    let e = refused(&["sql", "trigger"]);
    assert!(e.contains("--table <TABLE>"), "{e}");
}

#[test]
fn help_explains_each_option() {
    let help = stdout(&["sql", "trigger", "--help"]);
    for option in [
        "--table",
        "--primary-key",
        "--track-only",
        "--exclude-fields",
        "--condition",
        "--operations",
        "--level",
        "--uninstall",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
    assert!(
        help.contains("[possible values: auto, row, statement]"),
        "{help}"
    );
    let table_help = stdout(&["sql", "table", "--help"]);
    assert!(
        table_help.contains("[possible values: daily, weekly, monthly]"),
        "{table_help}"
    );
}

#[test]
fn completions_and_the_manual_are_generated_from_the_same_definition() {
    let bash = stdout(&["completions", "bash"]);
    assert!(bash.contains("_pg__audit()"), "{bash}");
    for word in [
        "history",
        "partitions",
        "--log-schema",
        "daily weekly monthly",
    ] {
        assert!(
            bash.contains(word),
            "{word} missing from the bash completions"
        );
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(
            stdout(&["completions", shell]).contains("pg-audit"),
            "{shell}"
        );
    }
    let e = refused(&["completions", "tcsh"]);
    assert!(
        e.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{e}"
    );

    let page = stdout(&["man"]);
    assert!(page.starts_with(".ie"), "{page}");
    assert!(page.contains(".TH pg-audit 1"), "{page}");
    assert!(page.contains(r"pg\-audit\-history(1)"), "{page}");

    let dir = std::env::temp_dir().join(format!("pg-audit-man-{}", std::process::id()));
    let said = stdout(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert!(said.starts_with("wrote the manual pages to"), "{said}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for page in [
        "pg-audit.1",
        "pg-audit-history.1",
        "pg-audit-sql-trigger.1",
        "pg-audit-partitions-prune.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} not in {pages:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn history_reads_a_renamed_column_as_one_and_tx_lists_the_schema_change() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database("cli_rename").expect("database");
    db.psql("CREATE TABLE people (id int PRIMARY KEY, name text)")
        .expect("create table");
    db.psql(&stdout(&["sql", "table"]))
        .expect("install the log");
    db.psql(&stdout(&[
        "sql",
        "trigger",
        "--table",
        "people",
        "--database-url",
        db.url(),
    ]))
    .expect("install the trigger");
    db.psql(
        "INSERT INTO people VALUES (1, 'Ann');
         ALTER TABLE people RENAME COLUMN name TO full_name;
         UPDATE people SET full_name = 'Anna';",
    )
    .expect("changes");
    let history = stdout(&["history", "people", "1", "--database-url", db.url()]);
    assert!(history.contains("full_name: Ann → Anna"), "{history}");
    assert!(history.contains("full_name=Ann"), "{history}");
    assert!(!history.contains(" name="), "{history}");
    let txid = db
        .psql("SELECT txid FROM audit.auditlog WHERE operation = 'DDL'")
        .expect("txid");
    let tx = stdout(&["tx", txid.trim(), "--database-url", db.url()]);
    assert!(
        tx.contains("DDL") && tx.contains("renamed name → full_name"),
        "{tx}"
    );
}
