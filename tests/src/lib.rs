//! Support for pg-audit's integration tests: a database per test on a real server, and
//! helpers that read results as JSON.

use diesel::connection::SimpleConnection as _;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::Jsonb;
use pg_audit_tempdb::TempDatabase;
use serde_json::Value;

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

    /// A new connection to the database.
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(self.url()).unwrap_or_else(|e| panic!("cannot connect: {e}"))
    }

    /// Runs `sql` with psql, as a user of the command-line path would.
    pub fn psql(&self, sql: &str) -> Result<String, pg_audit_tempdb::Error> {
        self.db.psql(sql)
    }
}

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
