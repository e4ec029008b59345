//! The administration commands against a real server: history, tx, partitions, check.

use std::process::{Command, Output};

use pg_audit_tempdb::TempDatabase;
use serde_json::{Value, json};

fn pg_audit(args: &[&str], url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg-audit"));
    cmd.args(args).env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run pg-audit")
}

fn ok(args: &[&str], url: &str) -> String {
    let out = pg_audit(args, Some(url));
    assert!(
        out.status.success(),
        "pg-audit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_out(args: &[&str], url: &str) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(&args, url)).expect("JSON output")
}

/// A database with the log, `users` (track_only name, email) and `lines` (composite key).
fn setup(hint: &str) -> TempDatabase<'static> {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database(hint).expect("database");
    db.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE lines (org text, line_no int, qty int, PRIMARY KEY (org, line_no));",
    )
    .unwrap();
    let sql = |args: &[&str]| ok(args, db.url());
    db.psql(&sql(&["sql", "table"])).unwrap();
    db.psql(&sql(&[
        "sql",
        "trigger",
        "--table",
        "users",
        "--track-only",
        "name,email",
    ]))
    .unwrap();
    db.psql(&sql(&[
        "sql",
        "trigger",
        "--table",
        "lines",
        "--primary-key",
        "org,line_no",
    ]))
    .unwrap();
    db.psql(
        "INSERT INTO users (name, email) VALUES ('Ann', 'a@x');
         BEGIN;
         SET LOCAL pg_audit.context = '{\"user_id\": \"admin-7\", \"change_reason\": \"fix email\"}';
         UPDATE users SET email = 'b@x';
         COMMIT;
         UPDATE users SET name = 'Anna';
         INSERT INTO lines VALUES ('acme', 1, 5), ('acme', 2, 6);",
    )
    .unwrap();
    db
}

#[test]
fn history_as_a_table_and_as_json() {
    let db = setup("admin_history");
    let out = ok(&["history", "users", "1"], db.url());
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("id  changed_at"), "{out}");
    assert!(
        lines[2].contains("UPDATE") && lines[2].contains("name: Ann → Anna"),
        "{out}"
    );
    assert!(
        lines[3].contains("admin-7")
            && lines[3].contains("fix email")
            && lines[3].contains("email: a@x → b@x"),
        "{out}"
    );
    assert!(
        lines[4].contains("INSERT") && lines[4].contains("email=a@x, name=Ann"),
        "{out}"
    );

    let entries = json_out(&["history", "public.users", "1", "--limit", "2"], db.url());
    assert_eq!(entries.as_array().unwrap().len(), 2);
    assert_eq!(
        entries[1]["context"],
        json!({"user_id": "admin-7", "change_reason": "fix email"})
    );
    assert_eq!(
        entries[1]["new_values"],
        json!({"name": "Ann", "email": "b@x"})
    );
    let next = entries[1]["id"].to_string();
    let rest = json_out(&["history", "users", "1", "--before", &next], db.url());
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["operation"], "INSERT");

    // Composite keys: values in key order, or a JSON object.
    let by_values = json_out(&["history", "lines", "acme,2"], db.url());
    let by_object = json_out(
        &["history", "lines", r#"{"org": "acme", "line_no": 2}"#],
        db.url(),
    );
    assert_eq!(by_values, by_object);
    // The key as the table prints it, columns in any order.
    let printed = ok(&["history", "lines", "acme,2"], db.url());
    assert!(printed.contains(" line_no=2,org=acme "), "{printed}");
    let by_names = json_out(&["history", "lines", "line_no=2,org=acme"], db.url());
    assert_eq!(by_names, by_object);
    assert_eq!(
        json_out(&["history", "users", "id=1"], db.url())
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        by_values[0]["new_values"],
        json!({"org": "acme", "line_no": 2, "qty": 6})
    );
    let e = pg_audit(&["history", "lines", "acme"], Some(db.url()));
    assert_eq!(e.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&e.stderr)
            .contains("\"lines\" is keyed by (org, line_no): give 2 values")
    );
}

#[test]
fn everything_a_transaction_did() {
    let db = setup("admin_tx");
    let txid = db
        .psql("BEGIN; INSERT INTO users (name) VALUES ('x'), ('y'); SELECT txid_current(); COMMIT;")
        .unwrap()
        .trim()
        .to_owned();
    let entries = json_out(&["tx", &txid], db.url());
    let names: Vec<Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["new_values"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("x"), json!("y")]);
}

#[test]
fn partitions_list_ensure_and_prune_with_progress() {
    let db = setup("admin_partitions");
    let listed = json_out(&["partitions", "list"], db.url());
    assert_eq!(
        listed.as_array().unwrap().len(),
        5,
        "DEFAULT, current and three ahead: {listed}"
    );
    let out = ok(&["partitions", "ensure", "--ahead", "5"], db.url());
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("created audit.auditlog_p"))
            .count(),
        2,
        "{out}"
    );
    assert_eq!(
        ok(&["partitions", "ensure", "--ahead", "5"], db.url()).trim(),
        "every partition up to 5 periods ahead exists"
    );
    // -v: what was done, on standard error, through tracing.
    let out = pg_audit(
        &["partitions", "ensure", "--ahead", "6", "-v"],
        Some(db.url()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("partition created") && stderr.contains("partition=\"audit.auditlog_p"),
        "{stderr}"
    );

    db.psql(
        "CREATE TABLE audit.auditlog_p20200101 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-01-01 UTC') TO ('2020-02-01 UTC');
         CREATE TABLE audit.auditlog_p20200201 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-02-01 UTC') TO ('2020-03-01 UTC');
         INSERT INTO audit.auditlog (changed_at, operation, schema_name, table_name) VALUES ('2020-01-05 UTC', 'INSERT', 'x', 'y');",
    )
    .unwrap();
    // Piped: results on standard output, one line per partition as it goes; no progress (the
    // bar is drawn on a terminal only), nothing on standard error.
    let out = pg_audit(
        &["partitions", "prune", "--older-than", "1 year"],
        Some(db.url()),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "detached audit.auditlog_p20200101 (1 rows)\ndetached audit.auditlog_p20200201 (0 rows)\n"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM audit.auditlog_p20200101")
            .unwrap()
            .trim(),
        "1",
        "detached, kept"
    );
    assert_eq!(
        ok(
            &["partitions", "prune", "--older-than", "1 year", "--drop"],
            db.url()
        )
        .trim(),
        "nothing is older than 1 year"
    );
    let e = pg_audit(
        &["partitions", "prune", "--older-than", "soon"],
        Some(db.url()),
    );
    assert_eq!(e.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("invalid input syntax for type interval"),
        "{e:?}"
    );
}

#[test]
fn check_reports_drift_and_exits_non_zero() {
    let db = setup("admin_check");
    let out = pg_audit(&["check"], Some(db.url()));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 2 audited table(s), installed as recorded"
    );

    let function = db
        .psql("SELECT trigger_function FROM audit.auditlog_tables WHERE table_name = 'lines'")
        .unwrap()
        .trim()
        .to_owned();
    db.psql(&format!(
        "ALTER TABLE users DISABLE TRIGGER pg_audit_insert;
         ALTER TABLE users DROP COLUMN email CASCADE;
         CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE TABLE other (id int PRIMARY KEY);
         CREATE TRIGGER pg_audit_insert AFTER INSERT ON other FOR EACH ROW EXECUTE FUNCTION {function}();"
    ))
    .unwrap();
    let problems = pg_audit(&["check", "--json"], Some(db.url()));
    assert_eq!(problems.status.code(), Some(1));
    let problems: Vec<Value> = serde_json::from_slice::<Value>(&problems.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let text: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["table"].as_str().unwrap(),
                p["problem"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "public.users: trigger pg_audit_insert is disabled",
        "public.users: trigger pg_audit_update is missing",
        "public.users: audited column email was dropped or renamed",
        "public.lines: trigger function",
        "public.other: trigger pg_audit_insert was not installed by pg-audit",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(expected)),
            "{expected} missing from {text:#?}"
        );
    }
    assert!(
        text.iter()
            .any(|t| t.contains("was edited after it was installed")),
        "{text:#?}"
    );
}

#[test]
fn database_errors_are_clear() {
    let e = pg_audit(&["check"], None);
    assert_eq!(e.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&e.stderr)
            .contains("no database to connect to: pass --database-url or set DATABASE_URL")
    );
    let e = pg_audit(
        &[
            "tx",
            "1",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/nowhere",
        ],
        None,
    );
    assert_eq!(e.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("error: cannot connect to the database"),
        "{e:?}"
    );
}

#[test]
fn a_misspelled_table_or_log_is_an_error_naming_the_fix() {
    let db = setup("admin_misspelled");
    let e = pg_audit(&["history", "userz", "1"], Some(db.url()));
    assert_eq!(e.status.code(), Some(2), "{e:?}");
    assert_eq!(
        String::from_utf8_lossy(&e.stderr).trim(),
        "error: no table \"userz\": it is neither audited in this log nor in the database; \
         check the name (schema.table), or --log-schema/--log-name"
    );
    let e = pg_audit(&["check", "--log-schema", "nope"], Some(db.url()));
    assert_eq!(e.status.code(), Some(2), "{e:?}");
    assert_eq!(
        String::from_utf8_lossy(&e.stderr).trim(),
        "error: no audit log \"nope\".\"auditlog\" in this database: install it (pg-audit sql table), \
         or name the right one with --log-schema/--log-name"
    );
    // A table that exists but was never audited: a note, and an empty history.
    db.psql("CREATE TABLE plain (id int PRIMARY KEY)").unwrap();
    let out = pg_audit(&["history", "plain", "1"], Some(db.url()));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: no pg-audit install is recorded"));
}

#[test]
fn a_closed_pipe_ends_quietly_with_the_intended_exit_code() {
    use std::io::Read as _;
    use std::process::Stdio;
    let db = setup("admin_pipe");
    // Reports longer than a pipe's buffer: drift on many tables, a long history.
    db.psql(
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
         DO $$ BEGIN
           FOR i IN 1..800 LOOP
             EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY)', i);
             EXECUTE format('CREATE TRIGGER pg_audit_insert AFTER INSERT ON t%s FOR EACH ROW EXECUTE FUNCTION f()', i);
           END LOOP;
           FOR i IN 1..3000 LOOP
             UPDATE users SET name = 'name ' || i WHERE id = 1;
           END LOOP;
         END $$;",
    )
    .unwrap();
    for args in [
        vec!["check"],
        vec!["history", "users", "1", "--limit", "5000"],
        vec!["history", "users", "1", "--limit", "5000", "--json"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
            .args(&args)
            .env("DATABASE_URL", db.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, then close the pipe, as `| head -c1` does.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        let _ = stdout.read(&mut first);
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let expected = if args[0] == "check" { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn control_characters_from_the_log_are_escaped_in_tables_but_exact_in_json() {
    let db = setup("admin_escape");
    db.psql(
        "BEGIN; SET LOCAL pg_audit.context = '{\"user_id\": \"mal\\u001b[2J\\u202eory\", \"change_reason\": \"a\\nb\"}';
         INSERT INTO users (name) VALUES (E'x\\x1b[31mred'); COMMIT;",
    )
    .unwrap();
    let table = ok(&["history", "users", "2"], db.url());
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(!table.contains('\u{202e}'), "{table:?}");
    assert!(table.contains(r"mal\u{1b}[2J\u{202e}ory"), "{table}");
    assert!(table.contains(r"a\nb"), "{table}");
    assert!(table.contains(r"name=x\u{1b}[31mred"), "{table}");
    let json = json_out(&["history", "users", "2"], db.url());
    assert_eq!(
        json[0]["context"]["user_id"],
        json!("mal\u{1b}[2J\u{202e}ory")
    );
    assert_eq!(json[0]["new_values"]["name"], json!("x\u{1b}[31mred"));
}

#[test]
fn negative_values_are_values_not_flags() {
    let db = setup("admin_negative");
    let out = pg_audit(
        &["partitions", "prune", "--older-than", "-1 year"],
        Some(db.url()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("older_than must be a positive interval, not -1 years"),
        "{stderr}"
    );
    let out = pg_audit(&["history", "users", "-5"], Some(db.url()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_read_only_role_of_sql_grant_can_run_every_read_command() {
    let db = setup("admin_reader");
    db.psql(
        "INSERT INTO lines VALUES ('zeta', 9, 5); UPDATE lines SET qty = 6 WHERE org = 'zeta';",
    )
    .unwrap();
    let role = format!("audit_test_role_{}_cli_reader", std::process::id());
    db.psql(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
    ))
    .unwrap();
    db.psql(&ok(&["sql", "grant", "--role", &role], db.url()))
        .unwrap();
    // The same database, connected as the reader.
    let url = db.url();
    let at = url.find("://").unwrap() + 3;
    let host = &url[at..][url[at..].find('@').map_or(0, |i| i + 1)..];
    let reader_url = format!("{}{role}@{host}", &url[..at]);
    let txid = json_out(&["history", "lines", "zeta,9"], &reader_url)[0]["txid"].clone();
    assert_eq!(
        json_out(&["history", "lines", "line_no=9,org=zeta"], &reader_url)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        json_out(&["tx", &txid.to_string()], &reader_url)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(&["partitions", "list"], &reader_url);
    assert!(ok(&["check"], &reader_url).starts_with("ok: 2 audited table(s)"));
    // ...and nothing more.
    let out = pg_audit(&["partitions", "ensure"], Some(&reader_url));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    db.psql(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA audit FROM {role};
         REVOKE ALL ON ALL FUNCTIONS IN SCHEMA audit FROM {role};
         REVOKE ALL ON SCHEMA audit FROM {role};"
    ))
    .unwrap();
    let server = pg_audit_tempdb::shared().unwrap();
    drop(db);
    server
        .psql(server.admin_url(), &format!("DROP ROLE {role}"))
        .unwrap();
}

#[test]
fn keys_that_do_not_fit_the_table_are_refused_naming_the_key() {
    let db = setup("admin_bad_keys");
    for (key, expected) in [
        (
            r#"{"nope": 3}"#,
            "error: bad key for \"users\": nope is not a key column; the key is (id)",
        ),
        (
            "user_id=1",
            "error: bad key for \"users\": user_id is not a key column; the key is (id)",
        ),
    ] {
        let out = pg_audit(&["history", "users", key], Some(db.url()));
        assert_eq!(out.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{key}: {stderr}");
    }
}

#[test]
fn json_times_are_rfc3339() {
    let db = setup("admin_rfc3339");
    let entries = json_out(&["history", "users", "1"], db.url());
    for field in ["changed_at", "tx_started_at"] {
        let t = entries[0][field].as_str().unwrap();
        assert_eq!(t.len(), "2026-11-28T06:15:00.000000Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
    let parts = json_out(&["partitions", "list"], db.url());
    let from = parts[1]["from"].as_str().unwrap();
    assert!(from.ends_with("T00:00:00.000000Z"), "{from}");
}
