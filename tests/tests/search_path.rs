//! PostgreSQL 13 and 14 let every role create objects in `public`, which is on every role's
//! search_path. An application role plants functions and operators there for every name and
//! argument-type combination the generated SQL uses; the owner then installs, maintains,
//! checks and reads the log. None of the planted objects may ever run.

use diesel::prelude::*;
use pg_audit::{AuditLog, Ident, QualifiedName, Retention, TriggerLevel, TriggerSpec};
use pg_audit_diesel::log::{AuditReader, Page, TimeRange};
use pg_audit_diesel::{Audited, pg_audit};
use pg_audit_tests::{Roles, TestDb, exec, value};
use serde_json::json;
use std::time::{Duration, SystemTime};

const OPERATORS: [&str; 13] = [
    "=", "<>", "<", "<=", ">", ">=", "||", "&", "-", "->", "->>", "~~", "+",
];
const TYPES: [&str; 18] = [
    "character varying",
    "oid",
    "regclass",
    "regproc",
    "regnamespace",
    "name",
    "text",
    "\"char\"",
    "smallint",
    "integer",
    "bigint",
    "jsonb",
    "json",
    "timestamptz",
    "interval",
    "boolean",
    "int2vector",
    "oidvector",
];
const FUNCTIONS: [(&str, &str); 14] = [
    ("to_jsonb", "anyelement"),
    ("jsonb_build_object", "text, anyelement"),
    ("current_setting", "text, boolean"),
    ("set_config", "text, text, boolean"),
    ("format", "text, text"),
    ("quote_ident", "text"),
    ("hashtext", "text"),
    ("jsonb_hash_extended", "jsonb, bigint"),
    ("md5", "text"),
    ("to_regclass", "text"),
    ("octet_length", "text"),
    ("json_typeof", "json"),
    ("strpos", "text, text"),
    ("string_agg", "text, text"),
];

/// The planted objects' SQL: every call of any of them takes a value of `public.trap_calls`
/// (sequences are not transactional, so a call that fails its statement still counts).
fn traps() -> String {
    let mut sql = String::from("CREATE SEQUENCE public.trap_calls;\n");
    for (i, left) in TYPES.iter().enumerate() {
        for (j, right) in TYPES.iter().enumerate() {
            sql.push_str(&format!(
                "CREATE FUNCTION public.trap_{i}_{j}({left}, {right}) RETURNS boolean LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM pg_catalog.nextval('public.trap_calls'); RETURN true; END $$;\n"
            ));
            for op in OPERATORS {
                sql.push_str(&format!(
                    "CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = public.trap_{i}_{j});\n"
                ));
            }
        }
    }
    for (name, args) in FUNCTIONS {
        let ret = if args.contains("anyelement") {
            "jsonb"
        } else {
            "text"
        };
        sql.push_str(&format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {ret} LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_catalog.nextval('public.trap_calls'); RETURN NULL; END $$;\n"
        ));
    }
    sql
}

mod schema {
    diesel::table! {
        app.codes (code) {
            code -> Varchar,
            label -> Text,
        }
    }
}

/// A model keyed by a `varchar`, whose `=` the application plants too.
#[pg_audit]
#[derive(Queryable)]
#[diesel(table_name = schema::codes)]
pub struct Code {
    pub code: String,
}

fn calls(conn: &mut PgConnection) -> serde_json::Value {
    value(
        conn,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.trap_calls",
    )
}

#[test]
fn objects_planted_on_the_owners_path_never_run() {
    let roles = Roles::new("planted", &["owner", "app"]);
    let db = TestDb::new("planted");
    let (owner, app) = (roles.name("owner"), roles.name("app"));
    let mut conn = db.conn();
    exec(
        &mut conn,
        &format!(
            "GRANT CREATE ON DATABASE \"{db}\" TO {owner};
             GRANT CREATE ON SCHEMA public TO PUBLIC;
             SET ROLE {owner};
             CREATE SCHEMA app;
             CREATE TABLE app.items (id serial PRIMARY KEY, name text NOT NULL, price numeric);
             CREATE TABLE app.tracked (id int PRIMARY KEY, name text, other text);
             CREATE TABLE app.codes (code varchar PRIMARY KEY, label text NOT NULL);
             GRANT USAGE ON SCHEMA app TO {app};
             GRANT SELECT, INSERT, UPDATE, DELETE ON app.items, app.tracked, app.codes TO {app};
             GRANT USAGE ON SEQUENCE app.items_id_seq TO {app};
             SET ROLE {app};
             {traps}
             GRANT USAGE ON SEQUENCE public.trap_calls TO PUBLIC;
             GRANT SELECT ON SEQUENCE public.trap_calls TO PUBLIC;
             RESET ROLE;",
            db = db.name(),
            traps = traps()
        ),
    );
    let step = |conn: &mut PgConnection, what: &str, sql: &str| {
        exec(conn, sql);
        assert_eq!(calls(conn), json!(0), "a planted object ran during {what}");
    };
    // Installed and maintained as the owner, whose search_path includes public.
    let log = AuditLog::new();
    let owner_sql = |sql: &str| format!("SET ROLE {owner};\n{sql}\nRESET ROLE;");
    step(
        &mut conn,
        "the log's install",
        &owner_sql(&log.create_sql()),
    );
    for (table, spec) in [
        (
            "app.items",
            TriggerSpec::builder(QualifiedName::parse("app.items").unwrap())
                .condition("NEW.price > 10 OR NEW.name <> 'x'")
                .build()
                .unwrap(),
        ),
        (
            "app.tracked",
            TriggerSpec::builder(QualifiedName::parse("app.tracked").unwrap())
                .track_only(["name"])
                .condition("NEW.id > 0")
                .level(TriggerLevel::Row)
                .build()
                .unwrap(),
        ),
    ] {
        step(
            &mut conn,
            &format!("the triggers' install on {table}"),
            &owner_sql(&format!("BEGIN;\n{}\nCOMMIT;", spec.install_sql(&log))),
        );
    }
    step(
        &mut conn,
        "the triggers' install on app.codes",
        &owner_sql(&Code::trigger_spec().unwrap().install_sql(&log)),
    );
    step(
        &mut conn,
        "the grant",
        &owner_sql(&log.grant_read_sql(&Ident::new(app.trim_matches('"')).unwrap())),
    );
    // The application writes, with its own search_path.
    step(
        &mut conn,
        "the application's writes",
        &format!(
            "SET ROLE {app};
             BEGIN; SET LOCAL pg_audit.context = '{{\"user_id\": \"u\", \"request_id\": \"r\"}}';
             INSERT INTO app.items (name, price) VALUES ('a', 20), ('b', 5);
             UPDATE app.items SET name = 'c';
             INSERT INTO app.tracked VALUES (1, 'n', 'o');
             UPDATE app.tracked SET name = 'm';
             DELETE FROM app.items WHERE name = 'c' AND price > 10;
             INSERT INTO app.codes VALUES ('A1', 'first');
             UPDATE app.codes SET label = 'second';
             COMMIT;
             DELETE FROM app.codes;
             RESET ROLE;"
        ),
    );
    for (what, sql) in [
        ("ensure", log.ensure_partitions_sql(2)),
        ("list", log.list_partitions_sql()),
        (
            "prune",
            log.prune_partitions_sql("10 years", Retention::Detach)
                .unwrap(),
        ),
    ] {
        step(
            &mut conn,
            what,
            &owner_sql(&format!("SELECT * FROM ({sql}) AS x;")),
        );
    }
    // The check, as the program runs it: its queries in a session (here a transaction) with
    // pg-audit's settings pinned.
    exec(&mut conn, &format!("SET ROLE {owner}"));
    assert_eq!(
        pg_audit_tests::check_problems(&mut conn, &log),
        Vec::<String>::new()
    );
    exec(&mut conn, "RESET ROLE");
    assert_eq!(
        calls(&mut conn),
        json!(0),
        "a planted object ran during check"
    );
    // Every reader query, as the owner.
    exec(&mut conn, &format!("SET ROLE {owner}"));
    let reader = AuditReader::with_log(log.clone());
    let items = QualifiedName::parse("app.items").unwrap();
    let unqualified = QualifiedName::parse("tracked").unwrap();
    exec(&mut conn, "SET search_path = \"$user\", public, app");
    let key = json!({"id": 1});
    let history = reader
        .history_of(&mut conn, &items, &key, Page::first(10))
        .unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(
        reader
            .history_of(&mut conn, &unqualified, &key, Page::first(10))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        reader
            .transaction(&mut conn, history[0].txid)
            .unwrap()
            .len(),
        9
    );
    assert_eq!(
        reader
            .request(&mut conn, "r", TimeRange::default())
            .unwrap()
            .len(),
        9
    );
    assert_eq!(
        reader
            .by_user(
                &mut conn,
                "u",
                TimeRange {
                    from: Some(SystemTime::now() - Duration::from_secs(3600)),
                    until: None
                }
            )
            .unwrap()
            .len(),
        9
    );
    assert!(
        reader
            .state_of_at(&mut conn, &items, &key, SystemTime::now())
            .unwrap()
            .is_none()
    );
    assert_eq!(
        reader.recorded_keys(&mut conn, &unqualified).unwrap(),
        vec![vec!["id".to_owned()]]
    );
    assert_eq!(
        calls(&mut conn),
        json!(0),
        "a planted object ran in the reader's queries"
    );
    // Restore and revert, as the owner, on the varchar-keyed table.
    reader
        .restore::<Code>(&mut conn, "A1", "Deleted by mistake")
        .unwrap();
    assert_eq!(
        calls(&mut conn),
        json!(0),
        "a planted object ran in restore"
    );
    let first = reader
        .history::<Code>(&mut conn, "A1", Page::first(10))
        .unwrap()
        .last()
        .unwrap()
        .id;
    reader
        .revert::<Code>(&mut conn, "A1", first, "Back to the first label")
        .unwrap();
    exec(&mut conn, "RESET search_path; RESET ROLE");
    assert_eq!(
        // (Not `code = 'A1'`: that is the planted varchar `=`, on this session's path.)
        value(&mut conn, "SELECT label FROM app.codes"),
        json!("first")
    );
    assert_eq!(
        calls(&mut conn),
        json!(0),
        "a planted object ran in a reader query"
    );
    // The planted objects are real: called by name, they run.
    exec(&mut conn, "SELECT 1::oid = 'pg_class'::regclass");
    assert_eq!(calls(&mut conn), json!(1), "the traps work");
}
