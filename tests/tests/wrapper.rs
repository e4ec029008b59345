//! `AuditedConnection`: the ambient context reaches every write without a helper, through an
//! r2d2 pool, in and out of explicit transactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::InstrumentationEvent;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_migrations::MigrationHarness;
use pg_audit_diesel::{
    AuditConnectionExt, AuditContext, AuditedConnection, ModelSet, ambient, pg_audit,
};
use pg_audit_tests::{TestDb, audit_rows, exec};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

diesel::table! {
    items (id) {
        id -> Int4,
        name -> Text,
    }
}

#[pg_audit]
#[derive(Queryable, Selectable, Debug)]
#[diesel(table_name = items)]
pub struct Item {
    pub id: i32,
    pub name: String,
}

type AuditedPool = Pool<ConnectionManager<AuditedConnection>>;

fn setup(hint: &str) -> (TestDb, AuditedPool) {
    let db = TestDb::new(hint);
    exec(
        &mut db.conn(),
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)",
    );
    let pool = Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<AuditedConnection>::new(db.url()))
        .unwrap();
    // Migrations run on the wrapper too.
    pool.get()
        .unwrap()
        .run_pending_migrations(pg_audit_diesel::AuditMigrations::models(
            ModelSet::new().with::<Item>(),
        ))
        .unwrap();
    (db, pool)
}

fn add(conn: &mut AuditedConnection, name: &str) -> QueryResult<Item> {
    diesel::insert_into(items::table)
        .values(items::name.eq(name))
        .returning(Item::as_returning())
        .get_result(conn)
}

fn who_why(db: &TestDb) -> Vec<Value> {
    audit_rows(&mut db.conn(), &pg_audit::AuditLog::new())
        .into_iter()
        .map(|r| json!([r["operation"], r["user_id"], r["change_reason"]]))
        .collect()
}

#[test]
fn writes_outside_transactions_carry_the_ambient_context() {
    let (db, pool) = setup("wrapper_plain");
    let mut conn = pool.get().unwrap();
    {
        let _who = ambient::use_context(&AuditContext::new().user_id("alice"));
        let _why = ambient::use_change_reason("Bulk update for compliance");
        let item = add(&mut conn, "a").unwrap();
        diesel::update(items::table.find(item.id))
            .set(items::name.eq("b"))
            .execute(&mut *conn)
            .unwrap();
        diesel::sql_query("DELETE FROM items")
            .execute(&mut *conn)
            .unwrap();
    }
    add(&mut conn, "no context").unwrap();
    assert_eq!(
        who_why(&db),
        [
            json!(["INSERT", "alice", "Bulk update for compliance"]),
            json!(["UPDATE", "alice", "Bulk update for compliance"]),
            json!(["DELETE", "alice", "Bulk update for compliance"]),
            json!(["INSERT", null, null]),
        ]
    );
}

#[test]
fn transactions_and_savepoints_carry_the_context_in_force_when_they_open() {
    let (db, pool) = setup("wrapper_tx");
    let mut conn = pool.get().unwrap();
    let _outer = ambient::use_context(&AuditContext::new().user_id("ops"));
    conn.transaction(|conn| {
        add(conn, "outer")?;
        {
            let _inner = ambient::use_change_reason("inner reason");
            conn.transaction(|conn| add(conn, "savepoint"))?;
        }
        add(conn, "outer again")?;
        conn.with_change_reason("helper", |conn| add(conn, "helper"))?;
        add(conn, "outer last")
    })
    .unwrap();
    let rows: Vec<Value> = audit_rows(&mut db.conn(), &pg_audit::AuditLog::new())
        .into_iter()
        .map(|r| json!([r["new_values"]["name"], r["user_id"], r["change_reason"]]))
        .collect();
    assert_eq!(
        rows,
        [
            json!(["outer", "ops", null]),
            json!(["savepoint", "ops", "inner reason"]),
            json!(["outer again", "ops", null]),
            json!(["helper", "ops", "helper"]),
            json!(["outer last", "ops", null]),
        ]
    );
}

#[test]
fn pooled_wrapped_connections_do_not_leak_context() {
    let (db, pool) = setup("wrapper_pool");
    {
        let mut conn = pool.get().unwrap();
        let _g = ambient::use_change_reason("first checkout");
        add(&mut conn, "a").unwrap();
    }
    for _ in 0..3 {
        let mut conn = pool.get().unwrap();
        add(&mut conn, "b").unwrap();
    }
    let reasons: Vec<Value> = who_why(&db).into_iter().map(|r| r[2].clone()).collect();
    assert_eq!(
        reasons,
        [
            json!("first checkout"),
            json!(null),
            json!(null),
            json!(null)
        ]
    );
}

#[test]
fn no_ambient_context_costs_nothing_and_a_transaction_costs_no_extra_round_trip() {
    let (_db, pool) = setup("wrapper_round_trips");
    let mut conn = pool.get().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    add(&mut conn, "bare").unwrap();
    assert_eq!(
        count.swap(0, Ordering::SeqCst),
        1,
        "no context: the statement alone"
    );
    conn.transaction(|conn| add(conn, "tx")).unwrap();
    let plain_tx = count.swap(0, Ordering::SeqCst);
    let _g = ambient::use_context(&AuditContext::new().user_id("u").change_reason("r"));
    conn.transaction(|conn| add(conn, "tx with context"))
        .unwrap();
    assert_eq!(
        count.swap(0, Ordering::SeqCst),
        plain_tx,
        "the context travels with BEGIN"
    );
    add(&mut conn, "bare with context").unwrap();
    assert_eq!(
        count.swap(0, Ordering::SeqCst),
        3,
        "BEGIN + context, the statement, COMMIT"
    );
}

#[test]
fn an_invalid_ambient_value_is_refused_before_the_write() {
    let (db, pool) = setup("wrapper_invalid");
    let mut conn = pool.get().unwrap();
    let _g = ambient::use_change_reason("nul\0");
    let e = add(&mut conn, "never").unwrap_err();
    assert!(e.to_string().contains("contains a NUL byte"), "{e}");
    drop(_g);
    let count = exec_count(&db);
    assert_eq!(count, 0);
}

fn exec_count(db: &TestDb) -> i64 {
    pg_audit_tests::value(&mut db.conn(), "SELECT count(*) FROM items")
        .as_i64()
        .unwrap()
}
