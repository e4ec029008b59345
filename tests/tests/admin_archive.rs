//! The admin shows a record's entries archived to Parquet when asked, read by the read-only
//! role `pg-audit sql grant` sets up, with archived values escaped like live ones.

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit_tests::{ROLE_PREFIX, TestDb, exec, http, value};

#[test]
fn a_records_archived_entries_show_on_its_page_when_asked() {
    let db = TestDb::new("admin_archive");
    let mut conn = db.conn();
    let log = pg_audit::AuditLog::new();
    let role = format!("{ROLE_PREFIX}{}_archive", std::process::id());
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
        "DO $$
         DECLARE lo timestamptz := date_trunc('month', now() - interval '8 months');
         BEGIN
             EXECUTE format('CREATE TABLE audit.auditlog_old PARTITION OF audit.auditlog FOR VALUES FROM (%L) TO (%L)',
                            lo, lo + interval '1 month');
         END $$;
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) AS g;
         UPDATE items SET name = '<script>alert(1)</script>' WHERE id = 7;
         UPDATE audit.auditlog SET changed_at = date_trunc('month', now() - interval '8 months') + id * interval '1 second';
         UPDATE items SET name = 'now' WHERE id = 7;",
    );
    let archived_ids = value(
        &mut conn,
        "SELECT json_agg(id ORDER BY id) FROM audit.auditlog WHERE record_pk = '{\"id\": 7}' AND changed_at < now() - interval '6 months'",
    );
    assert_eq!(archived_ids.as_array().unwrap().len(), 2);

    let dir = std::env::temp_dir().join(format!("pg-audit-admin-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = pg_audit_archive::connect(db.url()).await.unwrap();
        let archive = pg_audit_archive::Archive::open(dir.to_str().unwrap()).unwrap();
        let old = pg_audit_archive::candidates(&client, &log, "6 months")
            .await
            .unwrap();
        assert_eq!(old.len(), 1);
        pg_audit_archive::archive_partition(&client, &log, &old[0], &archive, &|_| {})
            .await
            .unwrap();
    });

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
    let addr = http::serve(&runtime, axum::Router::new().nest_service("/audit", admin));
    let get = |path: &str| http::request(addr, "GET", path, &[], None);

    let live = get("/audit/record?table=public.items&key=%7B%22id%22%3A7%7D");
    assert_eq!(live.status, 200, "{}", live.body);
    assert!(
        live.body.contains("Include entries archived to Parquet"),
        "{}",
        live.body
    );
    for id in archived_ids.as_array().unwrap() {
        assert!(
            !live.body.contains(&format!("id=\"e{id}\"")),
            "{}",
            live.body
        );
    }
    let all = get("/audit/record?table=public.items&key=%7B%22id%22%3A7%7D&archived=1");
    assert_eq!(all.status, 200, "{}", all.body);
    assert!(
        all.body
            .contains("2 archived entries, read from 1 archived file(s)"),
        "{}",
        all.body
    );
    for id in archived_ids.as_array().unwrap() {
        assert!(
            all.body.contains(&format!("id=\"e{id}\"")),
            "entry {id}: {}",
            all.body
        );
    }
    assert!(all.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!all.body.contains("<script>alert(1)"));
    // The archive gone: the live entries, and the missing file named.
    std::fs::remove_dir_all(&dir).unwrap();
    let gone = get("/audit/record?table=public.items&key=%7B%22id%22%3A7%7D&archived=1");
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert!(
        gone.body.contains("not read, so not shown: file://"),
        "{}",
        gone.body
    );
}
