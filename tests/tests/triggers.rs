//! The audit triggers against a real server: what each operation logs, under every option, at
//! both trigger levels.

use diesel::pg::PgConnection;
use pg_audit::{AuditLog, Operation, QualifiedName, TriggerLevel, TriggerSpec, TriggerSpecBuilder};
use pg_audit_tests::{TestDb, audit_rows, change, exec, exec_err, rows, value};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

const LEVELS: [TriggerLevel; 3] = [
    TriggerLevel::Auto,
    TriggerLevel::Row,
    TriggerLevel::Statement,
];

struct Audited {
    conn: PgConnection,
    log: AuditLog,
    _db: TestDb,
}

impl Audited {
    fn rows(&mut self) -> Vec<Value> {
        audit_rows(&mut self.conn, &self.log)
    }

    /// The log's rows as `[operation, record_pk, old_values, new_values]`, UPDATEs reduced to
    /// what changed.
    fn changes(&mut self) -> Vec<Value> {
        self.rows().iter().map(change).collect()
    }

    fn exec(&mut self, sql: &str) {
        exec(&mut self.conn, sql);
    }
}

/// A fresh database with the audit log, `ddl`'s table, and `spec` installed on `table`.
fn audited(
    hint: &str,
    ddl: &str,
    table: &str,
    level: TriggerLevel,
    spec: impl FnOnce(TriggerSpecBuilder) -> TriggerSpecBuilder,
) -> Audited {
    let db = TestDb::new(&format!("{hint}_{level:?}"));
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, ddl);
    let spec = spec(TriggerSpec::builder(QualifiedName::parse(table).unwrap()).level(level))
        .build()
        .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    Audited { conn, log, _db: db }
}

const USERS: &str = "CREATE TABLE users (
    id int PRIMARY KEY,
    name text,
    email text,
    password_hash text,
    active boolean NOT NULL DEFAULT true,
    prefs json
)";

#[test]
fn each_operation_logs_its_row_values() {
    for level in LEVELS {
        let mut a = audited("each_op", USERS, "public.users", level, |s| s);
        a.exec(
            "INSERT INTO users (id, name, email, password_hash) VALUES (1, 'Ann', 'ann@x', 'h1')",
        );
        a.exec("UPDATE users SET email = 'ann@y' WHERE id = 1");
        a.exec("DELETE FROM users WHERE id = 1");
        let row = json!({"id": 1, "name": "Ann", "email": "ann@x", "password_hash": "h1", "active": true, "prefs": null});
        let mut deleted = row.clone();
        deleted["email"] = json!("ann@y");
        assert_eq!(
            a.changes(),
            [
                json!(["INSERT", {"id": 1}, null, row]),
                json!(["UPDATE", {"id": 1}, {"email": "ann@x"}, {"email": "ann@y"}]),
                json!(["DELETE", {"id": 1}, deleted, null]),
            ],
            "{level:?}"
        );
        let rows = a.rows();
        assert!(
            rows.iter()
                .all(|r| r["schema_name"] == "public" && r["table_name"] == "users")
        );
        // The UPDATE stores the whole audited row before and after.
        assert_eq!(rows[1]["old_values"], row, "{level:?}");
        assert_eq!(rows[1]["new_values"], deleted, "{level:?}");
    }
}

#[test]
fn null_transitions_are_changes_and_no_op_updates_log_nothing() {
    for level in LEVELS {
        let mut a = audited("nulls", USERS, "public.users", level, |s| s);
        a.exec("INSERT INTO users (id, name, email) VALUES (1, 'Ann', 'ann@x')");
        a.exec("UPDATE users SET email = NULL WHERE id = 1");
        a.exec("UPDATE users SET email = NULL WHERE id = 1"); // no change
        a.exec("UPDATE users SET name = name, email = email"); // no change
        a.exec("UPDATE users SET email = 'back' WHERE id = 1");
        // json has no equality operator; a rewrite to the same JSON value is not a change.
        a.exec(r#"UPDATE users SET prefs = '{"a": 1}' WHERE id = 1"#);
        a.exec(r#"UPDATE users SET prefs = '{"a":1}' WHERE id = 1"#);
        let changes = a.changes();
        assert_eq!(
            changes[1..],
            [
                json!(["UPDATE", {"id": 1}, {"email": "ann@x"}, {"email": null}]),
                json!(["UPDATE", {"id": 1}, {"email": null}, {"email": "back"}]),
                json!(["UPDATE", {"id": 1}, {"prefs": null}, {"prefs": {"a": 1}}]),
            ],
            "{level:?}"
        );
    }
}

#[test]
fn bulk_statements_log_every_row() {
    for level in LEVELS {
        let mut a = audited("bulk", USERS, "public.users", level, |s| s);
        a.exec("INSERT INTO users (id, name) SELECT g, 'u' || g FROM generate_series(1, 500) g");
        a.exec("UPDATE users SET name = name || '!' WHERE id % 2 = 0");
        // Changing the key itself: old and new versions must still be paired correctly.
        a.exec("UPDATE users SET id = id + 1000 WHERE id <= 100");
        a.exec("DELETE FROM users WHERE id BETWEEN 401 AND 500");
        let counts = rows(
            &mut a.conn,
            "SELECT operation, count(*) AS n FROM audit.auditlog GROUP BY 1 ORDER BY 1",
        );
        assert_eq!(
            counts,
            [
                json!({"operation": "DELETE", "n": 100}),
                json!({"operation": "INSERT", "n": 500}),
                json!({"operation": "UPDATE", "n": 350})
            ],
            "{level:?}"
        );
        // Every UPDATE pairs a row's old and new versions: the name is unchanged by the key
        // change, and the logged key is the new one.
        let mismatched = value(
            &mut a.conn,
            "SELECT count(*) FROM audit.auditlog
              WHERE operation = 'UPDATE'
                AND (rtrim(old_values->>'name', '!') <> rtrim(new_values->>'name', '!')
                     OR (record_pk->>'id')::int <> (new_values->>'id')::int)",
        );
        assert_eq!(mismatched, json!(0), "{level:?}");
        let renamed = value(
            &mut a.conn,
            "SELECT count(*) FROM audit.auditlog
              WHERE operation = 'UPDATE' AND (old_values->>'id')::int + 1000 = (new_values->>'id')::int",
        );
        assert_eq!(renamed, json!(100), "{level:?}");
    }
}

#[test]
fn track_only_logs_only_those_columns() {
    for level in LEVELS {
        let mut a = audited("track_only", USERS, "public.users", level, |s| {
            s.track_only(["name", "email"])
        });
        a.exec("INSERT INTO users (id, name, email, password_hash) VALUES (1, 'Ann', 'ann@x', 'secret')");
        a.exec("UPDATE users SET password_hash = 'other', active = false"); // untracked only
        a.exec("UPDATE users SET name = 'Anna', active = true");
        a.exec("DELETE FROM users");
        assert_eq!(
            a.changes(),
            [
                json!(["INSERT", {"id": 1}, null, {"name": "Ann", "email": "ann@x"}]),
                json!(["UPDATE", {"id": 1}, {"name": "Ann"}, {"name": "Anna"}]),
                json!(["DELETE", {"id": 1}, {"name": "Anna", "email": "ann@x"}, null]),
            ],
            "{level:?}"
        );
    }
}

#[test]
fn excluded_values_never_reach_the_log() {
    for level in LEVELS {
        let mut a = audited("exclude", USERS, "public.users", level, |s| {
            s.exclude_fields(["password_hash", "prefs"])
        });
        a.exec("INSERT INTO users (id, name, password_hash) VALUES (1, 'Ann', 'S3CRET-1')");
        a.exec("UPDATE users SET password_hash = 'S3CRET-2'"); // only an excluded column
        a.exec("UPDATE users SET password_hash = 'S3CRET-3', name = 'Anna'");
        a.exec("DELETE FROM users");
        let everything = value(
            &mut a.conn,
            "SELECT jsonb_agg(to_jsonb(l))::text FROM audit.auditlog l",
        );
        assert!(
            !everything.as_str().unwrap().contains("S3CRET"),
            "{level:?}: {everything}"
        );
        assert_eq!(
            a.changes(),
            [
                json!(["INSERT", {"id": 1}, null, {"id": 1, "name": "Ann", "email": null, "active": true}]),
                json!(["UPDATE", {"id": 1}, {"name": "Ann"}, {"name": "Anna"}]),
                json!(["DELETE", {"id": 1}, {"id": 1, "name": "Anna", "email": null, "active": true}, null]),
            ],
            "{level:?}"
        );
    }
}

#[test]
fn condition_applies_to_each_operation() {
    for level in LEVELS {
        let mut a = audited("condition", USERS, "public.users", level, |s| {
            s.track_only(["name"])
                .condition("NEW.active = TRUE -- live users only")
        });
        a.exec("INSERT INTO users (id, name, active) VALUES (1, 'live', true), (2, 'gone', false)");
        a.exec("UPDATE users SET name = name || '!'");
        // Deactivating: NEW.active is false after the update, so it is not logged.
        a.exec("UPDATE users SET active = false, name = 'off' WHERE id = 1");
        a.exec("UPDATE users SET active = true, name = 'on' WHERE id = 2");
        a.exec("DELETE FROM users");
        assert_eq!(
            a.changes(),
            [
                json!(["INSERT", {"id": 1}, null, {"name": "live"}]),
                json!(["UPDATE", {"id": 1}, {"name": "live"}, {"name": "live!"}]),
                json!(["UPDATE", {"id": 2}, {"name": "gone!"}, {"name": "on"}]),
                // On DELETE, NEW means the deleted row: only the active one is logged.
                json!(["DELETE", {"id": 2}, {"name": "on"}, null]),
            ],
            "{level:?}"
        );
    }
}

#[test]
fn condition_comparing_old_and_new() {
    for level in LEVELS {
        let mut a = audited("condition_old_new", USERS, "public.users", level, |s| {
            s.condition("NEW.name IS DISTINCT FROM OLD.name AND NEW.name <> 'NEW.name'")
        });
        a.exec("INSERT INTO users (id, name) VALUES (1, 'a')"); // OLD is the inserted row: equal
        a.exec("UPDATE users SET email = 'x'"); // name unchanged
        a.exec("UPDATE users SET name = 'b'");
        a.exec("DELETE FROM users");
        assert_eq!(
            a.changes(),
            [json!(["UPDATE", {"id": 1}, {"name": "a"}, {"name": "b"}])],
            "{level:?}"
        );
    }
}

#[test]
fn composite_and_non_id_keys() {
    let ddl = "CREATE SCHEMA billing;
        CREATE TABLE billing.lines (org text, line_no int, sku uuid NOT NULL, qty numeric(10,2),
                                    PRIMARY KEY (org, line_no));
        CREATE TABLE billing.accounts (code text PRIMARY KEY, balance numeric);";
    for level in LEVELS {
        let mut a = audited("composite", ddl, "billing.lines", level, |s| {
            s.primary_key(["org", "line_no"])
        });
        let accounts = TriggerSpec::builder(QualifiedName::parse("billing.accounts").unwrap())
            .primary_key(["code"])
            .level(level)
            .build()
            .unwrap();
        let sql = accounts.install_sql(&a.log);
        a.exec(&sql);
        a.exec("INSERT INTO billing.lines VALUES ('acme', 1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 2.50)");
        a.exec("UPDATE billing.lines SET qty = 3 WHERE org = 'acme'");
        a.exec("INSERT INTO billing.accounts VALUES ('A-1', 10)");
        a.exec("DELETE FROM billing.accounts");
        let keys: Vec<Value> = a
            .rows()
            .into_iter()
            .map(|r| {
                json!([
                    r["schema_name"],
                    r["table_name"],
                    r["operation"],
                    r["record_pk"]
                ])
            })
            .collect();
        assert_eq!(
            keys,
            [
                json!(["billing", "lines", "INSERT", {"org": "acme", "line_no": 1}]),
                json!(["billing", "lines", "UPDATE", {"org": "acme", "line_no": 1}]),
                json!(["billing", "accounts", "INSERT", {"code": "A-1"}]),
                json!(["billing", "accounts", "DELETE", {"code": "A-1"}]),
            ],
            "{level:?}"
        );
        // The key form is stable: a history lookup finds the record by building the same JSON.
        let history = value(
            &mut a.conn,
            "SELECT count(*) FROM audit.auditlog
              WHERE table_name = 'lines' AND record_pk = jsonb_build_object('org', 'acme', 'line_no', 1)",
        );
        assert_eq!(history, json!(2));
        // ... and through the indexed record_key, which hashes the key seeded by the table.
        let by_key = value(
            &mut a.conn,
            "SELECT count(*) FROM audit.auditlog
              WHERE record_key = jsonb_hash_extended(jsonb_build_object('org', 'acme', 'line_no', 1), hashtext('billing.lines'))
                AND table_name = 'lines' AND schema_name = 'billing'",
        );
        assert_eq!(by_key, json!(2));
    }
}

#[test]
fn context_is_captured_per_transaction_and_never_leaks() {
    for level in LEVELS {
        let mut a = audited("context", USERS, "public.users", level, |s| {
            s.track_only(["name"])
        });
        a.exec(
            "BEGIN;
             SELECT set_config('pg_audit.context', json_build_object(
                        'user_id', 'alice', 'request_id', 'req-1',
                        'change_reason', 'it''s a \"test\" \\ $$ ünï', 'client_addr', '203.0.113.9',
                        'source', 'http POST /users', 'metadata', json_build_object('ticket', 42))::text, true);
             INSERT INTO users (id, name) VALUES (1, 'a');
             COMMIT;",
        );
        // Same connection, next transaction: nothing carried over.
        a.exec("UPDATE users SET name = 'b'");
        // Empty values are stored as NULL.
        a.exec(
            "BEGIN;
             SELECT set_config('pg_audit.context', '', true);
             UPDATE users SET name = 'c';
             COMMIT;",
        );
        let rows = a.rows();
        assert_eq!(rows[0]["user_id"], "alice");
        assert_eq!(rows[0]["request_id"], "req-1");
        assert_eq!(rows[0]["change_reason"], "it's a \"test\" \\ $$ ünï");
        assert_eq!(rows[0]["client_addr"], "203.0.113.9");
        assert_eq!(rows[0]["source"], "http POST /users");
        assert_eq!(rows[0]["metadata"], json!({"ticket": 42}));
        for row in &rows[1..] {
            for key in pg_audit::context::KEYS {
                assert_eq!(row[key], Value::Null, "{level:?}: {key} leaked: {row}");
            }
        }
        let who = rows_db_user(&mut a.conn);
        assert_eq!(who, json!(["postgres", "postgres", "postgres"]));
    }
}

fn rows_db_user(conn: &mut PgConnection) -> Value {
    value(
        conn,
        "SELECT jsonb_agg(db_user ORDER BY id) FROM audit.auditlog",
    )
}

#[test]
fn audit_rows_roll_back_with_their_change() {
    for level in LEVELS {
        let mut a = audited("rollback", USERS, "public.users", level, |s| s);
        a.exec("BEGIN; INSERT INTO users (id) VALUES (1); ROLLBACK;");
        a.exec(
            "BEGIN;
             INSERT INTO users (id) VALUES (2);
             SAVEPOINT s; INSERT INTO users (id) VALUES (3); ROLLBACK TO SAVEPOINT s;
             COMMIT;",
        );
        let keys: Vec<Value> = a
            .rows()
            .into_iter()
            .map(|r| r["record_pk"].clone())
            .collect();
        assert_eq!(keys, [json!({"id": 2})], "{level:?}");
    }
}

#[test]
fn truncate_is_logged_when_chosen() {
    for level in LEVELS {
        let mut a = audited("truncate", USERS, "public.users", level, |s| {
            s.operations([Operation::Insert, Operation::Truncate])
        });
        a.exec("INSERT INTO users (id) VALUES (1)");
        a.exec("UPDATE users SET name = 'x'"); // not audited
        a.exec("TRUNCATE users");
        assert_eq!(
            a.changes(),
            [
                json!(["INSERT", {"id": 1}, null, {"id": 1, "name": null, "email": null, "password_hash": null, "active": true, "prefs": null}]),
                json!(["TRUNCATE", null, null, null]),
            ],
            "{level:?}"
        );
    }
}

#[test]
fn updates_of_nothing_tracked_call_no_function_and_the_condition_is_the_functions() {
    let mut a = audited("no_call", USERS, "public.users", TriggerLevel::Row, |s| {
        s.track_only(["name"]).condition("NEW.active")
    });
    a.exec("INSERT INTO users (id, name, active) VALUES (1, 'a', true), (2, 'b', false)");
    let function = TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
        .build()
        .unwrap()
        .function_name(&a.log);
    a.exec("SET track_functions = 'all'");
    a.exec("BEGIN");
    a.exec("UPDATE users SET email = 'x'"); // untracked column
    a.exec("UPDATE users SET name = name"); // no change
    let calls = value(
        &mut a.conn,
        &format!("SELECT coalesce(pg_stat_get_xact_function_calls('{function}'::regproc), 0)"),
    );
    // The condition runs in the function, with its pinned settings (a `WHEN` clause would run
    // with the writer's): rows it refuses call the function and log nothing.
    let before = a.rows().len();
    a.exec("UPDATE users SET name = 'c' WHERE id = 2"); // condition false
    a.exec("DELETE FROM users WHERE id = 2"); // condition false
    assert_eq!(a.rows().len(), before, "the condition refused both");
    a.exec("UPDATE users SET name = 'd' WHERE id = 1");
    let calls_after = value(
        &mut a.conn,
        &format!("SELECT pg_stat_get_xact_function_calls('{function}'::regproc)"),
    );
    a.exec("COMMIT");
    assert_eq!(calls, json!(0));
    assert_eq!(calls_after, json!(3));
}

#[test]
fn reinstalling_with_fewer_operations_removes_triggers_and_uninstall_removes_all() {
    let mut a = audited("reinstall", USERS, "public.users", TriggerLevel::Row, |s| s);
    let triggers = |conn: &mut PgConnection| {
        value(
            conn,
            "SELECT coalesce(jsonb_agg(tgname::text ORDER BY tgname), '[]') FROM pg_trigger
              WHERE tgrelid = 'users'::regclass AND NOT tgisinternal",
        )
    };
    assert_eq!(
        triggers(&mut a.conn),
        json!([
            "pg_audit_delete",
            "pg_audit_insert",
            "pg_audit_truncate",
            "pg_audit_update"
        ])
    );
    let spec = TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
        .operations([Operation::Delete])
        .build()
        .unwrap();
    // Installing is repeatable.
    for _ in 0..2 {
        let sql = spec.install_sql(&a.log);
        a.exec(&sql);
    }
    assert_eq!(triggers(&mut a.conn), json!(["pg_audit_delete"]));
    let sql = spec.uninstall_sql(&a.log);
    a.exec(&sql);
    assert_eq!(triggers(&mut a.conn), json!([]));
    a.exec("INSERT INTO users (id) VALUES (1); DELETE FROM users;");
    assert_eq!(a.rows(), Vec::<Value>::new());
}

#[test]
fn install_explains_what_is_wrong_with_the_table() {
    let db = TestDb::new("install_errors");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, USERS);
    exec(
        &mut conn,
        "CREATE TABLE nokey (a int, b int); CREATE TABLE coded (code text PRIMARY KEY, n int UNIQUE, m int UNIQUE NOT NULL)",
    );
    let install = |table: &str, f: &dyn Fn(TriggerSpecBuilder) -> TriggerSpecBuilder| {
        f(TriggerSpec::builder(QualifiedName::parse(table).unwrap()))
            .build()
            .unwrap()
            .install_sql(&log)
    };
    let e = exec_err(&mut conn, &install("public.missing", &|s| s));
    assert!(
        e.contains(r#"pg-audit: table "public"."missing" does not exist"#),
        "{e}"
    );
    let e = exec_err(
        &mut conn,
        &install("public.users", &|s| s.track_only(["name", "emial"])),
    );
    assert!(
        e.contains("pg-audit: table users has no column emial"),
        "{e}"
    );
    // A typo in exclude_fields would leak the value it meant to hide: it is an error too.
    let e = exec_err(
        &mut conn,
        &install("public.users", &|s| s.exclude_fields(["password"])),
    );
    assert!(e.contains("has no column password"), "{e}");
    let e = exec_err(
        &mut conn,
        &install("public.users", &|s| s.condition("NEW.actve")),
    );
    assert!(e.contains("has no column actve"), "{e}");
    let e = exec_err(&mut conn, &install("public.coded", &|s| s));
    assert!(e.contains("has no column id"), "{e}");
    // A column named like the function's whole-row aliases would be read in the row's place.
    exec(
        &mut conn,
        "CREATE TABLE aliased (id int PRIMARY KEY, pg_audit_row text)",
    );
    let e = exec_err(&mut conn, &install("public.aliased", &|s| s));
    assert!(
        e.contains("table aliased has a column named pg_audit_row, a name pg-audit's trigger function gives whole rows"),
        "{e}"
    );
    let e = exec_err(
        &mut conn,
        &install("public.coded", &|s| s.primary_key(["code", "n"])),
    );
    assert!(
        e.contains(r#"("code", "n") is not a key of table coded"#),
        "{e}"
    );
    let e = exec_err(
        &mut conn,
        &install("public.nokey", &|s| s.primary_key(["a"])),
    );
    assert!(
        e.contains(r#"table nokey has no primary key or unique index on ("a")"#),
        "{e}"
    );
    // A unique index on a column that may be NULL is not: rows with NULL would share a key.
    let e = exec_err(
        &mut conn,
        &install("public.coded", &|s| s.primary_key(["n"])),
    );
    assert!(e.contains("key column n of table coded may be NULL"), "{e}");
    // A unique index on NOT NULL columns is a usable key.
    exec(
        &mut conn,
        &install("public.coded", &|s| s.primary_key(["m"])),
    );
    // A condition the server cannot compile fails the install, naming the problem.
    let e = exec_err(
        &mut conn,
        &install("public.users", &|s| s.condition("NEW.name +")),
    );
    assert!(e.contains("syntax error"), "{e}");
    // Nothing was half-installed by the failures (each ran in its own implicit transaction up
    // to the failing statement; the DO check comes first).
    let n = value(
        &mut conn,
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass",
    );
    assert_eq!(n, json!(0));
}

#[test]
fn hostile_identifiers_are_quoted() {
    let ddl = r#"CREATE SCHEMA "we""ird sch.ema";
        CREATE TABLE "we""ird sch.ema"."Tab le ✓" ("Id ""1""" int PRIMARY KEY, "$$col$$" text, "x'y" int)"#;
    for level in LEVELS {
        let db = TestDb::new(&format!("hostile_{level:?}"));
        let mut conn = db.conn();
        let log = AuditLog::named("audit \"log\"", "log'; DROP TABLE x; --").unwrap();
        exec(&mut conn, &log.create_sql());
        exec(&mut conn, ddl);
        let spec = TriggerSpec::builder(QualifiedName::new(
            Some(pg_audit::Ident::new("we\"ird sch.ema").unwrap()),
            pg_audit::Ident::new("Tab le ✓").unwrap(),
        ))
        .primary_key(["Id \"1\""])
        .track_only(["$$col$$", "x'y"])
        .condition(r#"NEW."$$col$$" <> '$pg_audit$' AND NEW."x'y" > 0"#)
        .level(level)
        .build()
        .unwrap();
        exec(&mut conn, &spec.install_sql(&log));
        exec(
            &mut conn,
            r#"INSERT INTO "we""ird sch.ema"."Tab le ✓" VALUES (1, 'v', 2), (2, '$pg_audit$', 3)"#,
        );
        let rows = audit_rows(&mut conn, &log);
        assert_eq!(rows.len(), 1, "{level:?}");
        assert_eq!(rows[0]["schema_name"], "we\"ird sch.ema");
        assert_eq!(rows[0]["table_name"], "Tab le ✓");
        assert_eq!(rows[0]["record_pk"], json!({"Id \"1\"": 1}));
        assert_eq!(rows[0]["new_values"], json!({"$$col$$": "v", "x'y": 2}));
    }
}

#[test]
fn truncate_is_logged_by_default_for_every_table_it_empties() {
    let db = TestDb::new("truncate_default");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users);
         INSERT INTO users VALUES (1, 'Ann'); INSERT INTO orders VALUES (10, 1);",
    );
    // Default operations: no `operations` given.
    for table in ["public.users", "public.orders"] {
        let spec = TriggerSpec::builder(QualifiedName::parse(table).unwrap())
            .build()
            .unwrap();
        exec(&mut conn, &spec.install_sql(&log));
    }
    exec(
        &mut conn,
        "BEGIN; SET LOCAL pg_audit.context = '{\"user_id\": \"dba\"}';
         TRUNCATE users CASCADE; COMMIT;",
    );
    assert_eq!(
        value(
            &mut conn,
            "SELECT json_agg(json_build_array(operation, table_name, record_pk, old_values,
                                              new_values, context ->> 'user_id')
                             ORDER BY table_name)
               FROM audit.auditlog"
        ),
        json!([
            ["TRUNCATE", "orders", null, null, null, "dba"],
            ["TRUNCATE", "users", null, null, null, "dba"],
        ])
    );
    // `operations` can still leave it out.
    let spec = TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
        .operations(
            Operation::ALL
                .into_iter()
                .filter(|&op| op != Operation::Truncate),
        )
        .build()
        .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    exec(&mut conn, "TRUNCATE users CASCADE");
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FROM audit.auditlog WHERE table_name = 'users'"
        ),
        json!(1)
    );
}

#[test]
fn conditions_are_compiled_at_install_and_may_read_only_the_row() {
    let db = TestDb::new("condition_compiled");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, USERS);
    exec(
        &mut conn,
        "CREATE TABLE vip (id int);
         CREATE FUNCTION is_vip(int) RETURNS boolean LANGUAGE sql STABLE AS 'SELECT true';",
    );
    let install = |conn: &mut PgConnection, condition: &str| {
        let spec = TriggerSpec::builder(QualifiedName::parse("users").unwrap())
            .condition(condition)
            .build()
            .unwrap();
        exec_err(
            conn,
            &format!("BEGIN;\n{}\nCOMMIT;", spec.install_sql(&log)),
        )
    };
    for (condition, message) in [
        (
            "nosuchfunc(NEW.id)",
            "pg-audit: the condition nosuchfunc(NEW.id) does not compile against table users: function nosuchfunc(integer) does not exist",
        ),
        (
            "NEW.name + 1 > 0",
            "pg-audit: the condition NEW.name + 1 > 0 does not compile against table users: operator does not exist: text + integer",
        ),
        // Unqualified, a relation is looked up as the trigger would: not on the caller's path.
        (
            "NEW.id IN (SELECT id FROM vip)",
            "does not compile against table users: relation \"vip\" does not exist",
        ),
        (
            "NEW.id IN (SELECT id FROM public.vip)",
            "pg-audit: the condition NEW.id IN (SELECT id FROM public.vip) reads public.vip; a condition may read only the audited row",
        ),
        (
            "random() > 0.5",
            "pg-audit: the condition random() > 0.5 calls volatile random(); a condition must decide the same way for the same row",
        ),
        (
            "ts_rewrite('a'::tsquery, 'SELECT q, s FROM public.vip') = 'a'::tsquery",
            "calls volatile ts_rewrite(tsquery,text)",
        ),
        // An allowlist: what reads the writer's session, the catalog or the settings, even
        // stable and built in, is refused.
        (
            "current_setting('app.skip', true) IS NULL",
            "calls current_setting(text,boolean), which does not compute over the row's values alone",
        ),
        ("to_regclass('pg_temp.x') IS NULL", "uses type regclass"),
        ("pg_my_temp_schema() = 0", "calls pg_my_temp_schema()"),
        (
            "(SELECT count(*) FROM pg_show_all_settings() AS s WHERE s.setting = 'quiet') = 0",
            "sublink",
        ),
        (
            "(SELECT count(*) FROM pg_stat_get_activity(NULL) AS a) > 0",
            "sublink",
        ),
        (
            "(SELECT c FROM pg_listening_channels() AS c LIMIT 1) IS NULL",
            "sublink",
        ),
        ("pg_backend_pid() > 0", "calls pg_backend_pid()"),
        ("NEW.name <> session_user", "uses session_user"),
        ("NEW.id::regclass IS NOT NULL", "uses type regclass"),
        (
            "to_char(NEW.id, '999') <> ''",
            "calls to_char(integer,text), which does not compute over the row's values alone",
        ),
        (
            "public.is_vip(NEW.id)",
            "pg-audit: the condition public.is_vip(NEW.id) calls function public.is_vip(integer); a condition may call only built-in functions and operators",
        ),
        (
            "NEW.name",
            "pg-audit: the condition NEW.name is of type text, not boolean",
        ),
    ] {
        let e = install(&mut conn, condition);
        assert!(e.contains(message), "{condition}: {e}");
        exec(&mut conn, "ROLLBACK");
        // Nothing was installed, and writes go on.
        assert_eq!(
            value(
                &mut conn,
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass"
            ),
            json!(0),
            "{condition}"
        );
    }
    exec(&mut conn, "INSERT INTO users (id) VALUES (1)");
    // A temporary table of the writer's cannot decide what is logged either: names resolve
    // through pg_catalog first, and relations are refused.
    exec(&mut conn, "CREATE TEMP TABLE vip (id int)");
    assert!(install(&mut conn, "NEW.id IN (SELECT id FROM pg_temp.vip)").contains("reads"));
    exec(&mut conn, "ROLLBACK");
    // Stable functions and casts are fine.
    let ok = TriggerSpec::builder(QualifiedName::parse("users").unwrap())
        .condition(
            "NEW.active AND now() > '2000-01-01'::timestamptz AND lower(coalesce(NEW.name, 'a')) LIKE 'a%'
             AND (NEW.prefs ->> 'k') IS DISTINCT FROM 'x' AND NEW.id + 1 > 0 AND date_trunc('day', now()) <= now()
             AND ROW(NEW.id, NEW.name) <> ROW(0, 'z') AND NEW.id = ANY (ARRAY[1, 2, 3]) AND current_date > '2000-01-01'",
        )
        .build()
        .unwrap();
    exec(&mut conn, &ok.install_sql(&log));
    exec(
        &mut conn,
        "INSERT INTO users (id, active) VALUES (2, true), (3, false)",
    );
    assert_eq!(
        value(&mut conn, "SELECT json_agg(record_pk) FROM audit.auditlog"),
        json!([{"id": 2}])
    );
}

#[test]
fn a_key_change_is_one_entry_with_both_keys_at_every_level() {
    for level in LEVELS {
        for track_only in [false, true] {
            let mut a = audited(
                &format!("key_change_{track_only}"),
                USERS,
                "public.users",
                level,
                |s| {
                    if track_only {
                        s.track_only(["name"])
                    } else {
                        s
                    }
                },
            );
            a.exec("INSERT INTO users (id, name) VALUES (1, 'Ann'), (5, 'Eve')");
            // Only the key changes (and for track_only, the key is not even audited).
            a.exec("UPDATE users SET id = id + 1");
            a.exec("UPDATE users SET email = 'x' WHERE id = 2");
            assert_eq!(
                value(
                    &mut a.conn,
                    "SELECT json_agg(json_build_array(operation, record_pk, old_record_pk,
                                                      old_record_key IS NOT NULL) ORDER BY id)
                       FROM audit.auditlog WHERE operation = 'UPDATE'"
                ),
                if track_only {
                    json!([
                        ["UPDATE", {"id": 2}, {"id": 1}, true],
                        ["UPDATE", {"id": 6}, {"id": 5}, true],
                    ])
                } else {
                    json!([
                        ["UPDATE", {"id": 2}, {"id": 1}, true],
                        ["UPDATE", {"id": 6}, {"id": 5}, true],
                        ["UPDATE", {"id": 2}, null, false],
                    ])
                },
                "{level:?}, track_only {track_only}"
            );
        }
    }
}
