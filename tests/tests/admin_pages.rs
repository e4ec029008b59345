//! Every admin page over HTTP for the read-only role `pg-audit sql grant` sets up, and bad or
//! hostile query parameters answered with a message, never a server error.

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit_tests::{ROLE_PREFIX, TestDb, exec, http};

#[test]
fn every_page_works_for_the_read_only_role_and_bad_input_is_a_message() {
    let db = TestDb::new("admin_pages");
    let mut conn = db.conn();
    let log = pg_audit::AuditLog::new();
    let role = format!("{ROLE_PREFIX}{}_admin", std::process::id());
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             CREATE ROLE \"{role}\" LOGIN;
             {}",
            log.grant_read_sql(&pg_audit::Ident::new(role.as_str()).unwrap())
        ),
    );
    let spec =
        pg_audit::TriggerSpec::builder(pg_audit::QualifiedName::parse("public.items").unwrap())
            .build()
            .unwrap();
    exec(&mut conn, &spec.install_sql(&log));
    exec(
        &mut conn,
        "INSERT INTO items VALUES (1, 'a'); UPDATE items SET name = 'b'; DELETE FROM items;",
    );
    let txid: i64 = {
        use diesel::prelude::*;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT txid FROM audit.auditlog LIMIT 1)",
        ))
        .get_result(&mut conn)
        .unwrap()
    };
    let url = pg_audit_tempdb::url_with_database(
        &db.url()
            .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1),
        db.name(),
    )
    .unwrap();
    let pool = Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<PgConnection>::new(url))
        .unwrap();
    let admin = pg_audit_admin::router(pool).authorize(|_| pg_audit_admin::Access::Read);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = http::serve(&runtime, axum::Router::new().nest_service("/audit", admin));
    let get = |path: &str| http::request(addr, "GET", path, &[], None);
    for path in [
        "/audit".to_owned(),
        "/audit?table=public.items&op=UPDATE&user=&key=%7B%22id%22%3A1%7D".to_owned(),
        "/audit/record?table=public.items&key=%7B%22id%22%3A1%7D".to_owned(),
        "/audit/record?table=public.items&key=%7B%22id%22%3A1%7D&at=1".to_owned(),
        format!("/audit/tx/{txid}"),
        "/audit/request?id=nothing".to_owned(),
        "/audit/user?id=nobody".to_owned(),
        "/audit/tables".to_owned(),
        "/audit/table?name=public.items".to_owned(),
        "/audit/table?name=public.items&at=2020-01-01T00:00".to_owned(),
        "/audit/partitions".to_owned(),
        "/audit/assets/style.css".to_owned(),
    ] {
        let response = get(&path);
        assert_eq!(response.status, 200, "{path}: {}", response.body);
    }
    let table = get("/audit/table?name=public.items&at=2099-01-01T00:00").body;
    assert!(
        table.contains("this role may not read the table itself"),
        "{table}"
    );
    for (path, status, says) in [
        ("/audit?op=MERGE", 400, "unknown operation"),
        ("/audit?tx=abc", 400, "is not a transaction id"),
        ("/audit?from=yesterday", 400, "is not a time"),
        ("/audit?key=%3Cscript%3E", 400, "is not a record key"),
        (
            "/audit/record?table=public.items&key=1",
            400,
            "is not a record key",
        ),
        ("/audit/table?name=nope", 404, "is not audited"),
        (
            "/audit/record?table=a.b.c&key=%7B%7D",
            400,
            "is not a table name",
        ),
        // A NUL, which no value in the log can hold: a message, not a database error.
        ("/audit?user=a%00b", 400, "contains a NUL character"),
        ("/audit/request?id=r%00", 400, "contains a NUL character"),
        ("/audit/user?id=%00", 400, "contains a NUL character"),
        (
            "/audit/record?table=public.items&key=%7B%22id%22%3A%22%5Cu0000%22%7D",
            400,
            "holds a NUL character",
        ),
    ] {
        let response = get(path);
        assert_eq!(response.status, status, "{path}: {}", response.body);
        assert!(response.body.contains(says), "{path}: {}", response.body);
        assert!(
            !response.body.contains("<script>"),
            "{path}: {}",
            response.body
        );
    }
    // A transaction of 600 changes: the newest 500 shown, and a link to page through all.
    exec(
        &mut conn,
        "INSERT INTO items SELECT g, repeat('x', 3000) FROM generate_series(100, 699) AS g",
    );
    let big: i64 = {
        use diesel::prelude::*;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT max(txid) FROM audit.auditlog)",
        ))
        .get_result(&mut conn)
        .unwrap()
    };
    let page = get(&format!("/audit/tx/{big}"));
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("Only the newest 500 changes are shown here."),
        "{}",
        &page.body[..2000.min(page.body.len())]
    );
    assert!(
        page.body.contains(&format!("href=\"/audit?tx={big}\"")),
        "link to the rest"
    );
    // Long values are cut: 500 entries of 3,000 characters stay well under 3,000 × 500.
    assert!(page.body.len() < 1_500_000, "{} bytes", page.body.len());
    assert!(page.body.contains("(1000 more characters)"));
    // Drift of the log itself is on the tables page (a table's is on the table's page), and
    // the check the admin runs reports a filtered publication rather than failing.
    assert!(!get("/audit/tables").body.contains("Drift"));
    exec(
        &mut conn,
        "ALTER TABLE audit.auditlog_default SET UNLOGGED;
         CREATE PUBLICATION pg_audit_audit_auditlog FOR TABLE items WHERE (id < 100);",
    );
    let tables = get("/audit/tables").body;
    assert!(
        tables.contains("audit.auditlog: audit.auditlog_default is UNLOGGED: a crash empties it"),
        "{tables}"
    );
    assert!(
        tables.contains("publication pg_audit_audit_auditlog filters the rows of public.items"),
        "{tables}"
    );
    exec(
        &mut conn,
        "DROP PUBLICATION pg_audit_audit_auditlog; ALTER TABLE audit.auditlog_default SET LOGGED;",
    );

    // Across a column's rename the record reads as one column, and the change is listed.
    exec(
        &mut conn,
        "INSERT INTO items VALUES (2, 'before');
         ALTER TABLE items RENAME COLUMN name TO title;
         UPDATE items SET title = 'after' WHERE id = 2;",
    );
    let record = get("/audit/record?table=public.items&key=%7B%22id%22%3A2%7D").body;
    assert!(
        record.contains(
            r#"<td class="mono">title</td><td class="old">before</td><td class="new">after</td>"#
        ),
        "{record}"
    );
    assert!(
        !record.contains(r#"<td class="mono">name</td>"#),
        "{record}"
    );
    let activity = get("/audit").body;
    assert!(activity.contains("renamed name → title"), "{activity}");
    drop(runtime);
    exec(
        &mut conn,
        &format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""),
    );
}
