//! Against the shared server: a database is created, used and dropped without `psql`.

use postgres::{Client, NoTls};

fn exists(admin_url: &str, name: &str) -> bool {
    let mut admin = Client::connect(admin_url, NoTls).unwrap();
    admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

#[test]
fn a_database_lives_as_long_as_its_handle() {
    let server = pg_audit_tempdb::shared().unwrap();
    let db = server.create_database("Lives As Long!").unwrap();
    let name = db.name().to_owned();
    assert!(name.ends_with("_lives_as_long_"), "{name}");
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .unwrap();
    let mut client = Client::connect(db.url(), NoTls).unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    assert!(exists(server.admin_url(), &name));
    // Open connections do not keep it alive.
    drop(db);
    assert!(!exists(server.admin_url(), &name));
    drop(client);
}

#[test]
fn a_failing_statement_reports_the_servers_message() {
    let server = pg_audit_tempdb::shared().unwrap();
    let db = server.create_database("failing").unwrap();
    let error = db.batch_execute("SELECT * FROM no_such_table").unwrap_err();
    assert_eq!(
        error.to_string(),
        "SELECT * FROM no_such_table: relation \"no_such_table\" does not exist"
    );
}

/// From inside an async runtime (a `#[tokio::test]`), where a blocking client would panic.
#[test]
fn databases_come_and_go_inside_an_async_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let name = runtime.block_on(async {
        let server = pg_audit_tempdb::shared().unwrap();
        let db = server.create_database("in_runtime").unwrap();
        db.batch_execute("CREATE TABLE t (id int)").unwrap();
        db.name().to_owned()
    });
    let server = pg_audit_tempdb::shared().unwrap();
    assert!(!exists(server.admin_url(), &name));
}
