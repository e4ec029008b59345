//! The admin mounted in an application, whose pool's sessions keep the application's
//! `search_path` — with `public` on it, where another role planted an operator for every
//! operator name and type pair and a function for every built-in pg-audit's sources call.
//! Every page and form, reached by crawling from the activity (and every route of the router
//! reached), runs without calling any of them: the admin pins its settings in each page's
//! transaction, and its queries are schema-qualified.

#[path = "../../pg-audit-cli/tests/support/planted.rs"]
mod planted;

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit::{AuditLog, QualifiedName, TriggerLevel, TriggerSpec};
use pg_audit_tests::{Roles, TestDb, exec, http};

#[test]
fn planted_objects_never_run_on_any_admin_page() {
    let roles = Roles::new("planted_admin", &["owner", "app"]);
    let db = TestDb::new("planted_admin");
    let (owner, app) = (roles.name("owner"), roles.name("app"));
    let mut conn = db.conn();
    let log = AuditLog::new();
    let items = TriggerSpec::builder(QualifiedName::parse("app.items").unwrap())
        .condition("NEW.price > 0 OR NEW.name <> ''")
        .build()
        .unwrap();
    let codes = TriggerSpec::builder(QualifiedName::parse("app.codes").unwrap())
        .primary_key(["code"])
        .track_only(["label"])
        .level(TriggerLevel::Row)
        .build()
        .unwrap();
    exec(
        &mut conn,
        &format!(
            "GRANT CREATE ON DATABASE \"{db}\" TO {owner};
             GRANT CREATE ON SCHEMA public TO PUBLIC;
             SET ROLE {owner};
             CREATE SCHEMA app;
             CREATE TABLE app.items (id serial PRIMARY KEY, name text NOT NULL, price numeric, tags jsonb);
             CREATE TABLE app.codes (code varchar PRIMARY KEY, label text NOT NULL);
             GRANT USAGE ON SCHEMA app TO {app};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {app};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA app TO {app};
             {log_sql}
             {items_sql}
             {codes_sql}
             RESET ROLE;",
            db = db.name(),
            log_sql = log.create_sql(),
            items_sql = items.install_sql(&log),
            codes_sql = codes.install_sql(&log),
        ),
    );
    let names = planted::called_names(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    exec(
        &mut conn,
        &format!("SET ROLE {app}; {} RESET ROLE;", planted::traps_sql(&names)),
    );
    // The application writes, with its own path, in statements whose operators have exact
    // built-in matches.
    exec(
        &mut conn,
        &format!(
            r#"SET ROLE {app};
               BEGIN;
               SET LOCAL pg_audit.context = '{{"user_id": "u1", "request_id": "r1", "change_reason": "first"}}';
               INSERT INTO app.items (name, price, tags) VALUES ('a', 20, '{{"k": 1}}'), ('b', 5, NULL), ('c', 7, '[]');
               UPDATE app.items SET name = 'a2' WHERE id = 1;
               INSERT INTO app.codes VALUES ('A1', 'first'), ('B2', 'second');
               UPDATE app.codes SET label = 'changed';
               COMMIT;
               DELETE FROM app.items WHERE id = 3;
               RESET ROLE;"#
        ),
    );
    let server = pg_audit_tempdb::shared().unwrap();
    assert_eq!(planted::calls(server, db.url()), 0, "the writes");
    let txid = server
        .psql(db.url(), "SELECT max(txid) FROM audit.auditlog")
        .unwrap()
        .trim()
        .to_owned();

    // The application's pool: the owner's sessions, with `public` on their path.
    let owner_url = db.url().replacen(
        "postgres://postgres@",
        &format!("postgres://{}@", owner.trim_matches('"')),
        1,
    );
    let pool = Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<PgConnection>::new(owner_url))
        .unwrap();
    let admin = pg_audit_admin::router(pool).authorize(|_| pg_audit_admin::Access::Write {
        user: "sweeper".into(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = http::serve(&runtime, axum::Router::new().nest_service("/audit", admin));
    let samples = [
        ("table", "app.items"),
        ("user", "u1"),
        ("request", "r1"),
        ("tx", txid.as_str()),
        ("key", r#"{"id": 1}"#),
        ("from", "2020-01-01T00:00"),
        ("until", "2100-01-01T00:00"),
        ("at", "2100-01-01T00:00"),
    ];
    let crawl = planted::crawl(addr, "/audit", &[], &samples, true, &mut |what| {
        assert_eq!(
            planted::calls(server, db.url()),
            0,
            "planted objects ran during {what}: {}",
            planted::fired(server, db.url())
        );
    });
    for route in pg_audit_admin::ROUTES {
        assert!(
            crawl.reached("/audit", route),
            "the crawl never reached {route}: {:?}",
            crawl.paths()
        );
    }
    assert!(
        crawl
            .requests
            .iter()
            .any(|(r, s)| r.starts_with("POST /audit/record/revert") && *s == 303),
        "no revert was made"
    );
    // The planted objects are real: on the same path, called by name, they run.
    exec(
        &mut conn,
        &format!("SET ROLE {owner}; SELECT 1::oid = 'pg_class'::regclass; RESET ROLE;"),
    );
    assert_eq!(planted::calls(server, db.url()), 1, "the traps work");
}
