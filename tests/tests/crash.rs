//! A crash in the middle of a load: the server is killed with SIGKILL while clients commit
//! audited changes, restarted, and the log still matches the committed changes exactly.
//! (A longer test: it starts a server of its own, about five seconds in all.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};
use pg_audit_diesel::{AuditConnectionExt, AuditContext};
use pg_audit_tempdb::Cluster;
use pg_audit_tests::{replay, rows, table_rows};
use serde_json::json;

#[test]
fn after_a_sigkill_the_log_matches_the_committed_changes() {
    // Commits acknowledged to a client must survive: synchronous_commit on. (fsync may stay
    // off: a killed server leaves its writes in the operating system's cache.)
    let mut cluster =
        Cluster::start_private("crash", &[("synchronous_commit", "on")]).expect("server");
    let url = cluster.url("postgres");
    let log = AuditLog::new();
    {
        let mut conn = PgConnection::establish(&url).expect("connect");
        conn.batch_execute(&log.create_sql()).expect("log");
        conn.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, edits int NOT NULL DEFAULT 0)")
            .expect("table");
        let spec = TriggerSpec::builder(QualifiedName::parse("public.notes").unwrap())
            .build()
            .unwrap();
        conn.batch_execute(&spec.install_sql(&log))
            .expect("triggers");
    }

    // Clients commit until the server dies under them, noting every acknowledged commit.
    let acknowledged = Arc::new(Mutex::new(Vec::<(i32, String)>::new()));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let (url, acknowledged) = (url.clone(), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).expect("connect");
                for n in 0.. {
                    let id = t * 1_000_000 + n;
                    let request = format!("t{t}-{n}");
                    let result: QueryResult<()> = conn.with_audit_context(
                        &AuditContext::new().request_id(&request),
                        |conn| {
                            diesel::sql_query("INSERT INTO notes (id, body) VALUES ($1, $2)")
                                .bind::<Integer, _>(id)
                                .bind::<Text, _>(&request)
                                .execute(conn)?;
                            if n > 0 {
                                diesel::sql_query(
                                    "UPDATE notes SET edits = edits + 1 WHERE id = $1",
                                )
                                .bind::<Integer, _>(id - 1)
                                .execute(conn)?;
                            }
                            Ok(())
                        },
                    );
                    match result {
                        Ok(()) => acknowledged.lock().unwrap().push((id, request)),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.kill().expect("kill the server");
    for c in clients {
        c.join().expect("client");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 100,
        "the load ran ({} commits)",
        acknowledged.len()
    );

    cluster.start().expect("restart after the crash");
    let mut conn = PgConnection::establish(&cluster.url("postgres")).expect("reconnect");
    // Every acknowledged commit is there, with its INSERT logged under its own context.
    let inserted = rows(
        &mut conn,
        "SELECT (record_pk ->> 'id')::int AS id, context ->> 'request_id' AS request
           FROM audit.auditlog WHERE operation = 'INSERT'",
    );
    let logged: std::collections::HashMap<i64, String> = inserted
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["request"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (id, request) in &acknowledged {
        assert_eq!(
            logged.get(&i64::from(*id)),
            Some(request),
            "acknowledged commit {request} lost"
        );
    }
    // And the log and the table agree on everything, including commits whose
    // acknowledgement the crash swallowed: a change and its audit row commit together.
    assert_eq!(
        replay(&mut conn, &log, "notes"),
        table_rows(&mut conn, "notes")
    );
    let (table, audit) = (
        rows(&mut conn, "SELECT count(*) AS n FROM notes")[0]["n"].clone(),
        rows(
            &mut conn,
            "SELECT count(*) AS n FROM audit.auditlog WHERE operation = 'INSERT'",
        )[0]["n"]
            .clone(),
    );
    assert_eq!(table, audit);
    assert!(
        table.as_i64().unwrap() >= acknowledged.len() as i64,
        "{}",
        json!([table, acknowledged.len()])
    );
}
