//! Behind a real PgBouncer in transaction pooling mode — many clients sharing two server
//! connections — every transaction's audit rows carry exactly its own context, and none
//! reaches the next transaction on the same server connection: with the sync helpers and
//! `AuditedConnection`. (diesel-async prepares named statements while it sets a connection
//! up, outside any transaction, which PgBouncer follows only from 1.21 with
//! `max_prepared_statements`; Debian 12 ships 1.18, so the async helpers are tested against
//! the server directly, in `async_context.rs`.)

use diesel::connection::CacheSize;
use diesel::prelude::*;
use pg_audit::AuditLog;
use pg_audit_diesel::{AuditConnectionExt, AuditContext, AuditedConnection, ambient};
use pg_audit_tests::pgbouncer::PgBouncer;
use pg_audit_tests::{audit_rows, audited_items};

const CLIENTS: usize = 8;
const TRANSACTIONS: usize = 25;

fn ctx(client: usize, n: usize) -> AuditContext {
    AuditContext::new()
        .user_id(format!("u{client}"))
        .request_id(format!("r{client}-{n}"))
}

fn insert<C>(conn: &mut C, name: &str) -> QueryResult<usize>
where
    C: Connection<Backend = diesel::pg::Pg> + diesel::connection::LoadConnection,
{
    diesel::sql_query("INSERT INTO items (name) VALUES ($1)")
        .bind::<diesel::sql_types::Text, _>(name)
        .execute(conn)
}

#[test]
fn each_transaction_carries_its_own_context_through_transaction_pooling() {
    let (db, _conn) = audited_items("pgbouncer");
    let bouncer = PgBouncer::start(db.url(), 2);
    let url = bouncer.url(db.name());

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let url = url.clone();
            std::thread::spawn(move || {
                // Diesel's prepared-statement cache names statements, which a transaction
                // pooler cannot follow across server connections (PgBouncer before 1.21).
                let mut conn = PgConnection::establish(&url).unwrap();
                conn.set_prepared_statement_cache_size(CacheSize::Disabled);
                let mut wrapped = AuditedConnection::establish(&url).unwrap();
                wrapped.set_prepared_statement_cache_size(CacheSize::Disabled);
                for n in 0..TRANSACTIONS {
                    // The sync helpers, then a plain transaction, which must carry nothing.
                    conn.with_audit_context(&ctx(client, n), |c| {
                        insert(c, &format!("s {client} {n}"))
                    })
                    .unwrap();
                    conn.transaction(|c| insert(c, &format!("plain {client} {n}")))
                        .unwrap();
                    // The wrapper, with the ambient context, then without.
                    {
                        let _guard = ambient::use_context(&ctx(client, n));
                        insert(&mut wrapped, &format!("w {client} {n}")).unwrap();
                    }
                    insert(&mut wrapped, &format!("plain-w {client} {n}")).unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client failed");
    }
    drop(bouncer);

    let rows = audit_rows(&mut db.conn(), &AuditLog::new());
    assert_eq!(rows.len(), CLIENTS * TRANSACTIONS * 4);
    for row in &rows {
        let name = row["new_values"]["name"].as_str().unwrap();
        match name.split(' ').collect::<Vec<_>>().as_slice() {
            [kind, _, _] if kind.starts_with("plain") => assert!(
                row["user_id"].is_null() && row["request_id"].is_null(),
                "{name} ran without a context but carries one: {row}"
            ),
            [_, client, n] => {
                assert_eq!(row["user_id"], format!("u{client}"), "{name}: {row}");
                assert_eq!(row["request_id"], format!("r{client}-{n}"), "{name}: {row}");
            }
            _ => panic!("unexpected row {row}"),
        }
    }
}
