//! Nothing lost under load: concurrent clients make a fixed, large number of mixed changes,
//! with transactions and savepoints that roll back; the log ends with exactly one row per
//! committed change, in order, each carrying its own transaction's context, and replaying the
//! log rebuilds the table.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};
use pg_audit_diesel::{AuditConnectionExt, AuditContext};
use pg_audit_tests::{Rng, TestDb, exec, replay, rows, table_rows};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

const THREADS: i32 = 4;
const TRANSACTIONS: usize = 150;

/// What one client believes committed: the rows it owns, and the changes it expects logged.
#[derive(Default, Clone)]
struct Model {
    rows: BTreeMap<i32, i64>,
    logged: Vec<Value>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert,
    Update,
    Delete,
}

/// Applies one random change through `conn` and to `model`.
fn change(
    conn: &mut PgConnection,
    rng: &mut Rng,
    model: &mut Model,
    next_id: &mut i32,
    request: &str,
) -> QueryResult<()> {
    let op = match rng.below(3) {
        _ if model.rows.is_empty() => Op::Insert,
        0 => Op::Insert,
        1 => Op::Update,
        _ => Op::Delete,
    };
    let pick = |rng: &mut Rng, model: &Model| {
        let keys: Vec<i32> = model.rows.keys().copied().collect();
        keys[rng.below(keys.len())]
    };
    match op {
        Op::Insert => {
            let id = *next_id;
            *next_id += 1;
            let balance = rng.below(1000) as i64;
            diesel::sql_query("INSERT INTO accounts (id, balance) VALUES ($1, $2)")
                .bind::<Integer, _>(id)
                .bind::<BigInt, _>(balance)
                .execute(conn)?;
            model.rows.insert(id, balance);
            model.logged.push(json!(["INSERT", id, request]));
        }
        Op::Update => {
            let id = pick(rng, model);
            let delta = rng.below(100) as i64 + 1;
            diesel::sql_query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
                .bind::<Integer, _>(id)
                .bind::<BigInt, _>(delta)
                .execute(conn)?;
            *model.rows.get_mut(&id).expect("owned row") += delta;
            model.logged.push(json!(["UPDATE", id, request]));
        }
        Op::Delete => {
            let id = pick(rng, model);
            diesel::sql_query("DELETE FROM accounts WHERE id = $1")
                .bind::<Integer, _>(id)
                .execute(conn)?;
            model.rows.remove(&id);
            model.logged.push(json!(["DELETE", id, request]));
        }
    }
    Ok(())
}

/// One client: `TRANSACTIONS` transactions of 1–4 changes on rows only it owns; some roll back
/// a savepoint, some roll back whole.
fn client(url: String, thread: i32) -> Model {
    let mut conn = PgConnection::establish(&url).expect("connect");
    let mut rng = Rng::new(0x5eed + thread as u64);
    let mut committed = Model::default();
    let mut next_id = thread * 100_000;
    for n in 0..TRANSACTIONS {
        let request = format!("t{thread}-{n}");
        let ctx = AuditContext::new()
            .user_id(format!("user-{thread}"))
            .request_id(&request);
        let mut tentative = committed.clone();
        let rollback_all = rng.below(100) < 15;
        let result: QueryResult<()> = conn.with_audit_context(&ctx, |conn| {
            for _ in 0..=rng.below(3) {
                change(conn, &mut rng, &mut tentative, &mut next_id, &request)?;
            }
            if rng.below(100) < 25 {
                // A savepoint whose changes roll back: the model keeps its state from before.
                let before = tentative.clone();
                let inner: QueryResult<()> = conn.transaction(|conn| {
                    for _ in 0..=rng.below(2) {
                        change(conn, &mut rng, &mut tentative, &mut next_id, &request)?;
                    }
                    Err(diesel::result::Error::RollbackTransaction)
                });
                assert!(inner.is_err());
                tentative = before;
            }
            if rollback_all {
                Err(diesel::result::Error::RollbackTransaction)
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => committed = tentative,
            Err(diesel::result::Error::RollbackTransaction) => {}
            Err(e) => panic!("client {thread}: {e}"),
        }
    }
    committed
}

#[test]
fn every_committed_change_is_logged_once_with_its_own_context() {
    let db = TestDb::new("load_mixed");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)",
    );
    exec(
        &mut conn,
        &TriggerSpec::builder(QualifiedName::parse("public.accounts").unwrap())
            .build()
            .unwrap()
            .install_sql(&log),
    );

    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let url = db.url().to_owned();
            std::thread::spawn(move || client(url, t))
        })
        .collect();
    let models: Vec<Model> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();

    // The table holds exactly what the clients committed.
    let mut expected_rows: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &models {
        expected_rows.extend(&m.rows);
    }
    let actual: BTreeMap<i32, i64> = rows(&mut conn, "SELECT id, balance FROM accounts")
        .into_iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap() as i32,
                r["balance"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(actual, expected_rows);

    // The log holds one row per committed change, in each client's order, with its context.
    let logged = rows(
        &mut conn,
        "SELECT operation, (record_pk ->> 'id')::int AS row_id, context ->> 'request_id' AS request,
                context ->> 'user_id' AS user_id
           FROM audit.auditlog AS l ORDER BY l.id",
    );
    let total: usize = models.iter().map(|m| m.logged.len()).sum();
    assert!(
        total > 500,
        "the workload is large enough to mean something ({total} changes)"
    );
    assert_eq!(logged.len(), total);
    for (thread, model) in models.iter().enumerate() {
        let own: Vec<Value> = logged
            .iter()
            .filter(|r| r["user_id"] == format!("user-{thread}"))
            .map(|r| json!([r["operation"], r["row_id"], r["request"]]))
            .collect();
        assert_eq!(own, model.logged, "client {thread}");
    }

    // Replaying the log rebuilds the table exactly.
    let replayed = replay(&mut conn, &log, "accounts");
    assert_eq!(replayed, table_rows(&mut conn, "accounts"));
}
