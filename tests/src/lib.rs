//! Support for pg-audit's integration tests: a database per test on a real server, and
//! helpers that read results as JSON.

pub mod browser;
pub mod http;
pub mod pgbouncer;

use diesel::connection::{Connection as _, SimpleConnection as _};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::Jsonb;
use pg_audit_tempdb::TempDatabase;
use serde_json::Value;

/// A tokio runtime of two worker threads, for tests driving async clients (sqlx).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A database of the test's own on the shared test server, dropped at the end of the test.
pub struct TestDb {
    db: TempDatabase<'static>,
}

impl TestDb {
    /// Creates an empty database named after `hint`.
    pub fn new(hint: &str) -> TestDb {
        let server = pg_audit_tempdb::shared().unwrap_or_else(|e| panic!("no test server: {e}"));
        let db = server
            .create_database(hint)
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        TestDb { db }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        self.db.url()
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        self.db.name()
    }

    /// A new connection to the database.
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(self.url()).unwrap_or_else(|e| panic!("cannot connect: {e}"))
    }

    /// Runs `sql` with psql, as a user of the command-line path would.
    pub fn psql(&self, sql: &str) -> Result<String, pg_audit_tempdb::Error> {
        self.db.psql(sql)
    }
}

/// Database roles of the test's own, dropped (after the test's databases, if declared before
/// them) when this is dropped. Roles are cluster-wide, so names carry the process and a
/// counter to keep parallel tests apart.
pub struct Roles {
    names: Vec<(String, String)>,
}

impl Roles {
    /// Creates a LOGIN role for each of `keys`.
    pub fn new(hint: &str, keys: &[&str]) -> Roles {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let server = pg_audit_tempdb::shared().unwrap_or_else(|e| panic!("no test server: {e}"));
        let names: Vec<(String, String)> = keys
            .iter()
            .map(|k| {
                let mut name = format!("{ROLE_PREFIX}{}_{n}_{hint}_{k}", std::process::id());
                name.truncate(63);
                ((*k).to_owned(), name)
            })
            .collect();
        for (_, name) in &names {
            server
                .psql(server.admin_url(), &format!("CREATE ROLE \"{name}\" LOGIN"))
                .unwrap_or_else(|e| panic!("cannot create role {name}: {e}"));
        }
        Roles { names }
    }

    /// The role created for `key`, quoted for SQL.
    pub fn name(&self, key: &str) -> String {
        let (_, name) = self
            .names
            .iter()
            .find(|(k, _)| k == key)
            .expect("a role of this test");
        format!("\"{name}\"")
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let server = pg_audit_tempdb::shared().expect("test server");
        for (_, name) in &self.names {
            let _ = server.psql(
                server.admin_url(),
                &format!("DROP ROLE IF EXISTS \"{name}\""),
            );
        }
    }
}

/// Prefix of test roles; `pg_audit_tempdb` drops those of dead processes.
pub const ROLE_PREFIX: &str = "audit_test_role_";

/// Runs one or more statements, panicking with the server's message on failure.
pub fn exec(conn: &mut PgConnection, sql: &str) {
    conn.batch_execute(sql)
        .unwrap_or_else(|e| panic!("SQL failed: {e}\n--- SQL ---\n{sql}"));
}

/// Runs one or more statements and returns the server's error message.
pub fn exec_err(conn: &mut PgConnection, sql: &str) -> String {
    match conn.batch_execute(sql) {
        Ok(()) => panic!("SQL succeeded but should have failed:\n{sql}"),
        Err(e) => e.to_string(),
    }
}

#[derive(QueryableByName)]
struct JsonRow {
    #[diesel(sql_type = Jsonb)]
    rows: Value,
}

/// The rows of `query` as JSON objects (column name to value).
pub fn rows(conn: &mut PgConnection, query: &str) -> Vec<Value> {
    let wrapped =
        format!("SELECT coalesce(jsonb_agg(to_jsonb(q)), '[]'::jsonb) AS rows FROM ({query}) AS q");
    let row: JsonRow = diesel::sql_query(&wrapped)
        .get_result(conn)
        .unwrap_or_else(|e| panic!("query failed: {e}\n--- SQL ---\n{query}"));
    match row.rows {
        Value::Array(rows) => rows,
        other => panic!("expected an array, got {other}"),
    }
}

/// The single value of a one-row, one-column query.
pub fn value(conn: &mut PgConnection, query: &str) -> Value {
    let rows = rows(conn, query);
    assert_eq!(rows.len(), 1, "expected one row from {query}, got {rows:?}");
    let object = rows[0].as_object().expect("row is an object");
    assert_eq!(object.len(), 1, "expected one column from {query}");
    object.values().next().cloned().expect("one column")
}

/// The drift check's problems as `pg-audit check` finds them (the check's queries run in a
/// transaction with pg-audit's settings pinned, and on PostgreSQL 15 its later part too), each
/// problem's text, sorted.
pub fn check_problems(conn: &mut PgConnection, log: &pg_audit::AuditLog) -> Vec<String> {
    let mut problems: Vec<String> = pg_audit_diesel::log::drift(conn, log)
        .expect("the check runs")
        .into_iter()
        .map(|d| d.problem)
        .collect();
    problems.sort();
    problems
}

/// A database with the default audit log and an audited `items (id serial, name text)` table:
/// the fixture of the context tests.
pub fn audited_items(hint: &str) -> (TestDb, PgConnection) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = pg_audit::AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)",
    );
    let spec = pg_audit::TriggerSpec::builder(
        pg_audit::QualifiedName::parse("public.items").expect("a valid name"),
    )
    .build()
    .expect("a valid spec");
    exec(&mut conn, &spec.install_sql(&log));
    (db, conn)
}

/// Drops the log's one time partition (a log made with `premake(0)`), so that writes land in
/// DEFAULT until partition maintenance runs.
pub fn drop_current_partition(conn: &mut PgConnection, log: &pg_audit::AuditLog) {
    let current = value(
        conn,
        &format!(
            "SELECT partition_name FROM ({}) p WHERE NOT is_default",
            log.list_partitions_sql()
        ),
    );
    let current = current.as_str().expect("a partition name");
    exec(conn, &format!("DROP TABLE {current}"));
}

/// The audit log's rows as `{operation, table_name, record_pk, old_values, new_values, ...}` with
/// the context's fields as columns, oldest first, leaving out the columns that vary from run to
/// run.
pub fn audit_rows(conn: &mut PgConnection, log: &pg_audit::AuditLog) -> Vec<Value> {
    rows(
        conn,
        &format!(
            "SELECT operation, schema_name, table_name, record_pk, old_values, new_values,
                    context ->> 'user_id' AS user_id, context ->> 'request_id' AS request_id,
                    context ->> 'change_reason' AS change_reason, context ->> 'client_addr' AS client_addr,
                    context ->> 'source' AS source, (context -> 'metadata')::jsonb AS metadata
               FROM {} ORDER BY id",
            log.table()
        ),
    )
}

/// What an UPDATE changed, as readers present it: the old and new values reduced to the keys
/// whose values differ. The log stores whole audited rows; this is the view tests assert on.
pub fn changed(old: &Value, new: &Value) -> (Value, Value) {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return (old.clone(), new.clone());
    };
    let keys: Vec<&String> = old
        .keys()
        .chain(new.keys().filter(|k| !old.contains_key(*k)))
        .filter(|k| old.get(*k) != new.get(*k))
        .collect();
    let pick = |side: &serde_json::Map<String, Value>| {
        Value::Object(
            keys.iter()
                .map(|k| ((*k).clone(), side.get(*k).cloned().unwrap_or(Value::Null)))
                .collect(),
        )
    };
    (pick(old), pick(new))
}

/// An audit row as `[operation, record_pk, old_values, new_values]`, UPDATEs reduced to what
/// changed (see [`changed`]).
pub fn change(row: &Value) -> Value {
    let (old, new) = if row["operation"] == "UPDATE" {
        changed(&row["old_values"], &row["new_values"])
    } else {
        (row["old_values"].clone(), row["new_values"].clone())
    };
    serde_json::json!([row["operation"], row["record_pk"], old, new])
}

/// A small deterministic pseudo-random generator (xorshift64*), so load tests repeat exactly.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// The rows of `table` as the log records them, keyed by their primary key object
/// (`{"id": 1}`): what [`replay`] should rebuild.
pub fn table_rows(
    conn: &mut PgConnection,
    table: &str,
) -> std::collections::BTreeMap<String, Value> {
    rows(conn, &format!("SELECT to_jsonb(t) AS r FROM {table} AS t"))
        .into_iter()
        .map(|r| {
            (
                serde_json::json!({"id": r["r"]["id"]}).to_string(),
                r["r"].clone(),
            )
        })
        .collect()
}

/// Rebuilds `table` from its audit rows alone, in log order: the rows it must hold if nothing
/// was lost or duplicated. Keys are the `record_pk` objects.
pub fn replay(
    conn: &mut PgConnection,
    log: &pg_audit::AuditLog,
    table: &str,
) -> std::collections::BTreeMap<String, Value> {
    let entries = rows(
        conn,
        &format!(
            "SELECT operation, record_pk, old_values, new_values FROM {} WHERE table_name = '{table}' ORDER BY id",
            log.table()
        ),
    );
    let mut state = std::collections::BTreeMap::new();
    for e in entries {
        let key = e["record_pk"].to_string();
        match e["operation"].as_str() {
            Some("INSERT") => {
                assert!(
                    state.insert(key, e["new_values"].clone()).is_none(),
                    "inserted twice: {e}"
                );
            }
            Some("UPDATE") => {
                // The key may have changed: the old row is found by the key columns' old values.
                let old_key: serde_json::Map<String, Value> = e["record_pk"]
                    .as_object()
                    .expect("a key object")
                    .keys()
                    .map(|k| (k.clone(), e["old_values"][k].clone()))
                    .collect();
                let old = state.remove(&Value::Object(old_key).to_string());
                assert_eq!(
                    old.as_ref(),
                    Some(&e["old_values"]),
                    "update of a row not in the log: {e}"
                );
                state.insert(key, e["new_values"].clone());
            }
            Some("DELETE") => {
                let old = state.remove(&key);
                assert_eq!(
                    old.as_ref(),
                    Some(&e["old_values"]),
                    "delete of a row not in the log: {e}"
                );
            }
            other => panic!("unexpected operation {other:?}"),
        }
    }
    state
}
