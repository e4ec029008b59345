//! A `capture = wal` model through the Diesel helpers: the macro's choice reaches the install
//! (publication, no triggers), the helpers emit each transaction's context because a linked
//! model is captured from the WAL, and the capture worker attaches it — nested contexts and
//! rolled-back savepoints as the triggers record them.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use pg_audit::AuditLog;
use pg_audit_diesel::{AuditConnectionExt, AuditContext, Audited, pg_audit};
use pg_audit_tempdb::Cluster;
use serde_json::{Value, json};

diesel::table! {
    events (id) {
        id -> Int4,
        name -> Text,
        secret -> Text,
    }
}

#[pg_audit(capture = wal, exclude_fields = [secret])]
#[derive(Queryable)]
#[diesel(table_name = events)]
#[allow(dead_code)]
struct Event {
    id: i32,
    name: String,
    secret: String,
}

fn insert(conn: &mut PgConnection, id: i32, name: &str) -> QueryResult<usize> {
    diesel::insert_into(events::table)
        .values((
            events::id.eq(id),
            events::name.eq(name),
            events::secret.eq("s3cr3t"),
        ))
        .execute(conn)
}

#[derive(QueryableByName)]
struct Entry {
    #[diesel(sql_type = diesel::sql_types::Text)]
    entry: String,
}

fn entries(conn: &mut PgConnection) -> Vec<Value> {
    diesel::sql_query(
        "SELECT json_build_array(operation, new_values ->> 'name', context ->> 'user_id', context ->> 'change_reason', db_user, new_values ? 'secret')::text AS entry
           FROM audit.auditlog ORDER BY id",
    )
    .load::<Entry>(conn)
    .unwrap()
    .into_iter()
    .map(|e| serde_json::from_str(&e.entry).unwrap())
    .collect()
}

#[test]
fn the_helpers_context_reaches_wal_captured_entries() {
    let cluster = Cluster::start_private(
        "capture-context",
        &[
            ("wal_level", "logical"),
            ("max_replication_slots", "4"),
            ("max_wal_senders", "4"),
        ],
    )
    .unwrap();
    let server = cluster.server();
    let db = server.create_database("capture_context").unwrap();
    let mut conn = PgConnection::establish(db.url()).unwrap();
    let log = AuditLog::new();
    let spec = Event::trigger_spec().unwrap();
    assert_eq!(spec.capture(), pg_audit::Capture::Wal);
    conn.batch_execute(&format!(
        "{}\nCREATE TABLE events (id int PRIMARY KEY, name text NOT NULL, secret text NOT NULL);\n{}",
        log.create_sql(),
        spec.install_sql(&log)
    ))
    .unwrap();

    // The worker, as an application task.
    let worker = pg_audit_capture::Worker::new(db.url()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let task = runtime.spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "EXISTS (SELECT FROM pg_replication_slots)",
    ))
    .get_result::<bool>(&mut conn)
    .unwrap()
    {
        assert!(Instant::now() < deadline, "the worker made no slot");
        std::thread::sleep(Duration::from_millis(50));
    }

    conn.with_change_reason("imported", |c| insert(c, 1, "a"))
        .unwrap();
    let alice = AuditContext::new().user_id("alice").change_reason("outer");
    conn.with_audit_context(&alice, |c| {
        insert(c, 2, "b")?;
        c.with_change_reason("inner", |c| insert(c, 3, "c"))?;
        // A rolled-back savepoint: neither its row nor its context is logged.
        let _ = c.with_change_reason("rolled back", |c| {
            insert(c, 4, "d")?;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        });
        insert(c, 5, "e")
    })
    .unwrap();
    insert(&mut conn, 6, "f").unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let found = loop {
        let found = entries(&mut conn);
        if found.len() >= 5 {
            break found;
        }
        assert!(Instant::now() < deadline, "the worker wrote {found:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        found,
        [
            json!(["INSERT", "a", null, "imported", "postgres", false]),
            json!(["INSERT", "b", "alice", "outer", "postgres", false]),
            json!(["INSERT", "c", "alice", "outer; inner", "postgres", false]),
            json!(["INSERT", "e", "alice", "outer", "postgres", false]),
            json!(["INSERT", "f", null, null, "?", false]),
        ]
    );
    let _ = stop.send(());
    runtime.block_on(task).unwrap().unwrap();
}
