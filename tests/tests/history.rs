//! Reading the log: history of a record (paged, composite keys), transactions, requests, users,
//! time travel, diffs, revert and restore — against a real server.

use std::time::{Duration, SystemTime};

use diesel::prelude::*;
use pg_audit::Operation;
use pg_audit_diesel::log::{Activity, AuditReader, Page, TimeRange};
use pg_audit_diesel::{AuditConnectionExt, AuditContext, AuditMigrations, ModelSet, pg_audit};
use pg_audit_tests::{TestDb, exec, rows, value};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

mod schema {
    diesel::table! {
        people (id) {
            id -> Int4,
            name -> Text,
            email -> Nullable<Text>,
        }
    }

    diesel::table! {
        products (id) {
            id -> Int4,
            title -> Text,
            price_cents -> Int4,
        }
    }

    diesel::table! {
        lines (org, line_no) {
            org -> Text,
            line_no -> Int4,
            qty -> Int4,
        }
    }
}

use schema::{lines, people, products};

/// The key is not audited, and comes from a sequence.
#[pg_audit(track_only = [title, price_cents])]
#[derive(Queryable)]
#[diesel(table_name = products)]
pub struct Product {
    pub id: i32,
}

#[pg_audit]
#[derive(Queryable)]
#[diesel(table_name = people)]
pub struct Person {
    pub id: i32,
}

#[pg_audit]
#[derive(Queryable)]
#[diesel(table_name = lines)]
pub struct Line {
    pub org: String,
}

fn setup(hint: &str) -> (TestDb, PgConnection) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    exec(
        &mut conn,
        "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, email text);
         CREATE TABLE lines (org text, line_no int, qty int NOT NULL, PRIMARY KEY (org, line_no));
         CREATE TABLE products (id serial PRIMARY KEY, title text NOT NULL, price_cents int NOT NULL);",
    );
    use diesel_migrations::MigrationHarness;
    conn.run_pending_migrations(AuditMigrations::models(
        ModelSet::new()
            .with::<Person>()
            .with::<Line>()
            .with::<Product>(),
    ))
    .unwrap();
    (db, conn)
}

fn ops(entries: &[pg_audit_diesel::log::AuditEntry]) -> Vec<Operation> {
    entries.iter().map(|e| e.operation).collect()
}

#[test]
fn history_is_newest_first_paged_and_typed() {
    let (_db, mut conn) = setup("hist_paged");
    exec(
        &mut conn,
        "INSERT INTO people VALUES (1, 'Ann', 'a@x'), (2, 'Bob', NULL)",
    );
    for i in 0..5 {
        conn.with_audit_context(
            &AuditContext::new()
                .user_id("admin")
                .change_reason(format!("edit {i}")),
            |c| {
                diesel::sql_query(format!("UPDATE people SET name = 'Ann {i}' WHERE id = 1"))
                    .execute(c)
            },
        )
        .unwrap();
    }
    let reader = AuditReader::new();
    let first = reader
        .history::<Person>(&mut conn, 1, Page::first(4))
        .unwrap();
    assert_eq!(ops(&first), [Operation::Update; 4]);
    assert_eq!(first[0].context.change_reason.as_deref(), Some("edit 4"));
    assert_eq!(first[0].context.user_id.as_deref(), Some("admin"));
    assert_eq!(
        first[0].changes(),
        [("name".to_owned(), (json!("Ann 3"), json!("Ann 4")))].into()
    );
    assert!(
        first[0].changed_at <= SystemTime::now()
            && first[0].changed_at > SystemTime::now() - Duration::from_secs(60)
    );
    assert_eq!(
        (first[0].schema_name.as_str(), first[0].table_name.as_str()),
        ("public", "people")
    );
    let second = reader
        .history::<Person>(&mut conn, 1, Page::first(4).after(&first).unwrap())
        .unwrap();
    assert_eq!(ops(&second), [Operation::Update, Operation::Insert]);
    assert_eq!(Page::first(4).after(&second), None);
    // Other records and tables stay out.
    assert_eq!(
        reader
            .history::<Person>(&mut conn, 2, Page::first(10))
            .unwrap()
            .len(),
        1
    );
    assert!(
        reader
            .history::<Line>(&mut conn, ("x", 1), Page::first(10))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn transactions_requests_and_users() {
    let (_db, mut conn) = setup("hist_tx");
    let txid = conn
        .with_audit_context(
            &AuditContext::new().user_id("u1").request_id("req-1"),
            |c| {
                diesel::sql_query("INSERT INTO people VALUES (1, 'Ann', NULL), (2, 'Bob', NULL)")
                    .execute(c)?;
                diesel::sql_query("INSERT INTO lines VALUES ('acme', 1, 5)").execute(c)?;
                Ok::<_, diesel::result::Error>(value(c, "SELECT txid_current()").as_i64().unwrap())
            },
        )
        .unwrap();
    conn.with_audit_context(
        &AuditContext::new().user_id("u2").request_id("req-2"),
        |c| diesel::sql_query("DELETE FROM people WHERE id = 2").execute(c),
    )
    .unwrap();
    let reader = AuditReader::new();
    let tx = reader.transaction(&mut conn, txid).unwrap();
    assert_eq!(
        ops(&tx),
        [Operation::Insert, Operation::Insert, Operation::Insert]
    );
    assert_eq!(
        reader
            .request(&mut conn, "req-2", TimeRange::default())
            .unwrap()
            .len(),
        1
    );
    let hour = Duration::from_secs(3600);
    let recent = TimeRange {
        from: Some(SystemTime::now() - hour),
        until: Some(SystemTime::now() + hour),
    };
    assert_eq!(reader.by_user(&mut conn, "u1", recent).unwrap().len(), 3);
    let past = TimeRange {
        from: None,
        until: Some(SystemTime::now() - hour),
    };
    assert!(reader.by_user(&mut conn, "u1", past).unwrap().is_empty());
}

#[test]
fn time_travel_across_null_updates_deletes_and_reinserts() {
    let (_db, mut conn) = setup("hist_travel");
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    exec(&mut conn, "UPDATE people SET email = NULL");
    exec(&mut conn, "DELETE FROM people");
    exec(
        &mut conn,
        "INSERT INTO people VALUES (1, 'Ann again', 'new@x')",
    );
    let reader = AuditReader::new();
    let history = reader
        .history::<Person>(&mut conn, 1, Page::first(10))
        .unwrap();
    assert_eq!(
        ops(&history),
        [
            Operation::Insert,
            Operation::Delete,
            Operation::Update,
            Operation::Insert
        ]
    );
    let at = |i: usize| history[history.len() - 1 - i].changed_at;
    let state = |conn: &mut PgConnection, t| reader.state_at::<Person>(conn, 1, t).unwrap();
    assert_eq!(state(&mut conn, at(0) - Duration::from_micros(1)), None);
    assert_eq!(
        state(&mut conn, at(0)),
        Some(json!({"id": 1, "name": "Ann", "email": "a@x"}))
    );
    assert_eq!(
        state(&mut conn, at(1)),
        Some(json!({"id": 1, "name": "Ann", "email": null}))
    );
    assert_eq!(state(&mut conn, at(2)), None);
    assert_eq!(
        state(&mut conn, at(3)),
        Some(json!({"id": 1, "name": "Ann again", "email": "new@x"}))
    );

    let diff = reader.diff::<Person>(&mut conn, 1, at(0), at(1)).unwrap();
    assert_eq!(
        diff.changed,
        [("email".to_owned(), (json!("a@x"), Value::Null))].into()
    );
    let across_delete = reader.diff::<Person>(&mut conn, 1, at(1), at(2)).unwrap();
    assert_eq!(across_delete.after, None);
    assert_eq!(across_delete.changed.len(), 3);
}

#[test]
fn composite_keys() {
    let (_db, mut conn) = setup("hist_composite");
    exec(
        &mut conn,
        "INSERT INTO lines VALUES ('acme', 1, 5), ('acme', 2, 7)",
    );
    exec(&mut conn, "UPDATE lines SET qty = 6 WHERE line_no = 1");
    let reader = AuditReader::new();
    let history = reader
        .history::<Line>(&mut conn, ("acme", 1), Page::first(10))
        .unwrap();
    assert_eq!(ops(&history), [Operation::Update, Operation::Insert]);
    assert_eq!(
        history[0].record_pk,
        Some(json!({"org": "acme", "line_no": 1}))
    );
    let now = reader
        .state_at::<Line>(&mut conn, ("acme", 1), SystemTime::now())
        .unwrap();
    assert_eq!(now, Some(json!({"org": "acme", "line_no": 1, "qty": 6})));
    let e = reader
        .history::<Line>(&mut conn, "acme", Page::first(1))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad key for `Line`: the key has 2 columns (org, line_no), 1 values were given"
    );
}

#[test]
fn revert_and_restore_are_themselves_audited() {
    let (_db, mut conn) = setup("hist_revert");
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    exec(&mut conn, "UPDATE people SET name = 'Vandal', email = NULL");
    let reader = AuditReader::new();
    let history = reader
        .history::<Person>(&mut conn, 1, Page::first(10))
        .unwrap();
    let inserted = history.last().unwrap().id;
    reader
        .revert::<Person>(&mut conn, 1, inserted, "Undo vandalism")
        .unwrap();
    let row = rows(&mut conn, "SELECT name, email FROM people");
    assert_eq!(row, [json!({"name": "Ann", "email": "a@x"})]);
    let latest = &reader
        .history::<Person>(&mut conn, 1, Page::first(1))
        .unwrap()[0];
    assert_eq!(latest.operation, Operation::Update);
    assert_eq!(
        latest.context.change_reason.as_deref(),
        Some("Undo vandalism")
    );

    exec(&mut conn, "DELETE FROM people");
    reader
        .restore::<Person>(&mut conn, 1, "Deleted by mistake")
        .unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT name, email FROM people"),
        [json!({"name": "Ann", "email": "a@x"})]
    );
    let latest = &reader
        .history::<Person>(&mut conn, 1, Page::first(1))
        .unwrap()[0];
    assert_eq!(
        (latest.operation, latest.context.change_reason.as_deref()),
        (Operation::Insert, Some("Deleted by mistake"))
    );
    // Nothing to restore now, and an entry of another record is refused.
    let e = reader.restore::<Person>(&mut conn, 1, "again").unwrap_err();
    assert!(
        e.to_string()
            .contains("its last logged change is not a DELETE"),
        "{e}"
    );
    let e = reader
        .revert::<Person>(&mut conn, 2, inserted, "wrong record")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("is not in the history of record {\"id\":2}"),
        "{e}"
    );
    // Reverting to a DELETE deletes the record.
    let deleted = reader
        .history::<Person>(&mut conn, 1, Page::first(10))
        .unwrap()
        .into_iter()
        .find(|e| e.operation == Operation::Delete)
        .unwrap()
        .id;
    reader
        .revert::<Person>(&mut conn, 1, deleted, "Back to deleted")
        .unwrap();
    assert_eq!(value(&mut conn, "SELECT count(*) FROM people"), json!(0));
}

#[test]
fn a_restored_record_keeps_its_key_when_the_key_is_not_audited() {
    let (_db, mut conn) = setup("hist_restore_key");
    exec(
        &mut conn,
        "INSERT INTO products (title, price_cents) VALUES ('Lamp', 2500), ('Desk', 12000)",
    );
    exec(&mut conn, "DELETE FROM products WHERE id = 2");
    let reader = AuditReader::new();
    reader
        .restore::<Product>(&mut conn, 2, "Back in the catalogue")
        .unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT id, title FROM products ORDER BY id"),
        [
            json!({"id": 1, "title": "Lamp"}),
            json!({"id": 2, "title": "Desk"})
        ]
    );
    // Reverting a record that exists sets the audited columns, never the key.
    exec(
        &mut conn,
        "UPDATE products SET price_cents = 1 WHERE id = 2",
    );
    let history = reader
        .history::<Product>(&mut conn, 2, Page::first(10))
        .unwrap();
    assert_eq!(
        ops(&history),
        [
            Operation::Update,
            Operation::Insert,
            Operation::Delete,
            Operation::Insert
        ]
    );
    reader
        .revert::<Product>(&mut conn, 2, history[1].id, "Price typo")
        .unwrap();
    assert_eq!(
        value(&mut conn, "SELECT price_cents FROM products WHERE id = 2"),
        json!(12000)
    );
}

#[test]
fn the_history_lookup_uses_the_record_key_index() {
    let (_db, mut conn) = setup("hist_plan");
    exec(
        &mut conn,
        "INSERT INTO people SELECT g, 'p' || g, NULL FROM generate_series(1, 2000) g; ANALYZE audit.auditlog;",
    );
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let filled = value(
        &mut conn,
        "SELECT DISTINCT tableoid::regclass::text FROM audit.auditlog",
    );
    let filled = filled.as_str().unwrap().trim_start_matches("audit.");
    // The very query the reader runs, with and without a schema.
    exec(
        &mut conn,
        &format!("PREPARE history AS {}", AuditReader::new().history_sql()),
    );
    for schema in ["'public'", "NULL"] {
        let plan: Vec<String> = diesel::sql_query(format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)
             EXECUTE history({schema}, 'people', '{{\"id\": 7}}', NULL, 50)"
        ))
        .load::<PlanLine>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
        // The partition holding the rows is read through the index (empty ones, zero pages,
        // are planned as sequential scans of nothing).
        assert!(
            plan.iter().any(|l| l.contains(&format!(
                "Index Scan using {filled}_record_key_idx on {filled} "
            ))),
            "{plan:#?}"
        );
        assert!(
            plan.iter().any(|l| l.contains("Limit (actual rows=1 ")),
            "{plan:#?}"
        );
    }
}

#[test]
fn a_key_change_carries_both_keys_and_the_record_is_followed_across_it() {
    let (_db, mut conn) = setup("history_key_change");
    let reader = AuditReader::new();
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    exec(&mut conn, "UPDATE people SET email = 'a@y' WHERE id = 1");
    std::thread::sleep(Duration::from_millis(20));
    let before_change = SystemTime::now();
    std::thread::sleep(Duration::from_millis(20));
    // The key changes, and nothing else does: still one entry, with both keys.
    exec(&mut conn, "UPDATE people SET id = 2 WHERE id = 1");
    exec(&mut conn, "UPDATE people SET name = 'Anna' WHERE id = 2");
    // Another record takes the old key afterwards: not part of this record's history.
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Bob', NULL)");

    let change = value(
        &mut conn,
        "SELECT json_build_array(operation, record_pk, old_record_pk) FROM audit.auditlog
          WHERE old_record_pk IS NOT NULL",
    );
    assert_eq!(change, json!(["UPDATE", {"id": 2}, {"id": 1}]));

    let ops = |entries: &[pg_audit_diesel::log::AuditEntry]| -> Vec<(Operation, Value)> {
        entries
            .iter()
            .map(|e| (e.operation, e.record_pk.clone().unwrap()))
            .collect()
    };
    // The new key's history: its own entries, the change, then the old key's before it.
    let history = reader
        .history::<Person>(&mut conn, 2, Page::first(10))
        .unwrap();
    assert_eq!(
        ops(&history),
        [
            (Operation::Update, json!({"id": 2})),
            (Operation::Update, json!({"id": 2})),
            (Operation::Update, json!({"id": 1})),
            (Operation::Insert, json!({"id": 1})),
        ]
    );
    assert_eq!(history[1].old_record_pk, Some(json!({"id": 1})));
    // Paged two at a time, the same entries in the same order.
    let mut paged = Vec::new();
    let mut page = Some(Page::first(2));
    while let Some(p) = page {
        let entries = reader.history::<Person>(&mut conn, 2, p).unwrap();
        page = p.after(&entries);
        paged.extend(entries);
    }
    assert_eq!(ops(&paged), ops(&history));

    // The old key's history: the record until the change took it away, then the next record
    // given the key.
    let old = reader
        .history::<Person>(&mut conn, 1, Page::first(10))
        .unwrap();
    assert_eq!(
        ops(&old),
        [
            (Operation::Insert, json!({"id": 1})),
            (Operation::Update, json!({"id": 2})),
            (Operation::Update, json!({"id": 1})),
            (Operation::Insert, json!({"id": 1})),
        ]
    );
    assert_eq!(old[0].new_values.as_ref().unwrap()["name"], json!("Bob"));
    assert_eq!(old[1].id, history[1].id, "the change is in both histories");
    let after_change = old[1].changed_at + Duration::from_micros(1);
    assert_eq!(
        reader
            .state_at::<Person>(&mut conn, 1, after_change)
            .unwrap(),
        None,
        "under the old key the record is gone after the change"
    );

    // Time travel follows the record back to its old key...
    assert_eq!(
        reader
            .state_at::<Person>(&mut conn, 2, before_change)
            .unwrap(),
        Some(json!({"id": 1, "name": "Ann", "email": "a@y"}))
    );
    let diff = reader
        .diff::<Person>(&mut conn, 2, before_change, SystemTime::now())
        .unwrap();
    assert_eq!(diff.changed.keys().collect::<Vec<_>>(), ["id", "name"]);
    // ...and so does revert: back to the record as it was before the key changed.
    exec(&mut conn, "DELETE FROM people WHERE name = 'Bob'");
    reader
        .revert::<Person>(&mut conn, 2, history[2].id, "Undo the renumbering")
        .unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT id, name, email FROM people"),
        [json!({"id": 1, "name": "Ann", "email": "a@y"})]
    );
    assert_eq!(
        value(
            &mut conn,
            "SELECT json_build_array(record_pk, old_record_pk, context ->> 'change_reason')
               FROM audit.auditlog ORDER BY id DESC LIMIT 1"
        ),
        json!([{"id": 1}, {"id": 2}, "Undo the renumbering"])
    );
}

#[test]
fn paging_under_concurrent_writes_returns_every_entry_once_in_order() {
    let (db, mut conn) = setup("history_paging_concurrent");
    exec(&mut conn, "INSERT INTO people VALUES (1, 'p', NULL)");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = db.url().to_owned();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                for i in 0..100 {
                    exec(
                        &mut conn,
                        &format!("UPDATE people SET name = 'w{w} {i}' WHERE id = 1"),
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let reader = AuditReader::new();
    let mut ids = Vec::new();
    let mut page = Some(Page::first(7));
    while let Some(p) = page {
        let entries = reader.history::<Person>(&mut conn, 1, p).unwrap();
        page = p.after(&entries);
        ids.extend(entries.iter().map(|e| e.id));
    }
    assert_eq!(ids.len(), 401);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "in order, each once");
    let all: Vec<i64> = reader
        .history::<Person>(&mut conn, 1, Page::first(1000))
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, all);
}

/// `exclude_fields` keeps a NOT NULL column without a default out of the log.
#[pg_audit(exclude_fields = [secret])]
#[derive(Queryable)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub id: i32,
}

diesel::table! {
    accounts (id) {
        id -> Int4,
        name -> Text,
        secret -> Text,
    }
}

#[test]
fn restore_names_the_columns_the_log_cannot_give_and_takes_them_from_the_caller() {
    let db = TestDb::new("history_restore_missing");
    let mut conn = db.conn();
    exec(
        &mut conn,
        "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, secret text NOT NULL);",
    );
    use diesel_migrations::MigrationHarness;
    conn.run_pending_migrations(AuditMigrations::models(ModelSet::new().with::<Account>()))
        .unwrap();
    exec(
        &mut conn,
        "INSERT INTO accounts VALUES (1, 'Ann', 'h'); DELETE FROM accounts;",
    );
    let reader = AuditReader::new();
    let logged = |conn: &mut PgConnection| value(conn, "SELECT count(*) FROM audit.auditlog");
    let before = logged(&mut conn);
    let e = reader
        .restore::<Account>(&mut conn, 1, "Deleted by mistake")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot re-insert the record into \"public\".\"accounts\": secret is NOT NULL without a default and not in the log (excluded, not tracked, or masked); give values for them with `AuditReader::restore_with`"
    );
    assert_eq!(logged(&mut conn), before, "nothing was written");
    let mut values = serde_json::Map::new();
    values.insert("secret".into(), json!("!reset"));
    reader
        .restore_with::<Account>(&mut conn, 1, "Deleted by mistake", values)
        .unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT id, name, secret FROM accounts"),
        [json!({"id": 1, "name": "Ann", "secret": "!reset"})]
    );
}

/// The async reader runs the same logic over diesel-async: on one log with a key change, a
/// delete and a composite key, every answer equals the sync reader's, and its revert and
/// restore are audited with their reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_reader_answers_as_the_sync_one() {
    use diesel_async::{AsyncConnection as _, AsyncPgConnection};
    use pg_audit_diesel::log::AsyncAuditReader;

    let (db, mut conn) = setup("history_async_reader");
    exec(&mut conn, "INSERT INTO people VALUES (1, 'Ann', 'a@x')");
    conn.with_audit_context(
        &AuditContext::new().user_id("alice").request_id("req-1"),
        |conn| {
            exec(conn, "UPDATE people SET email = 'a@y' WHERE id = 1");
            exec(conn, "INSERT INTO lines VALUES ('acme', 1, 5)");
            Ok::<_, diesel::result::Error>(())
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let middle = SystemTime::now();
    std::thread::sleep(Duration::from_millis(20));
    exec(&mut conn, "UPDATE people SET id = 2 WHERE id = 1");
    exec(&mut conn, "DELETE FROM lines");

    let sync = AuditReader::new();
    let reader = AsyncAuditReader::new();
    let mut aconn = AsyncPgConnection::establish(db.url()).await.unwrap();
    let now = SystemTime::now();

    let history = sync
        .history::<Person>(&mut conn, 2, Page::first(10))
        .unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(
        reader
            .history::<Person>(&mut aconn, 2, Page::first(10))
            .await
            .unwrap(),
        history
    );
    let page = reader
        .history::<Person>(&mut aconn, 2, Page::first(2))
        .await
        .unwrap();
    let next = Page::first(2).after(&page).unwrap();
    assert_eq!(
        reader.history::<Person>(&mut aconn, 2, next).await.unwrap(),
        sync.history::<Person>(&mut conn, 2, next).unwrap()
    );
    assert_eq!(
        reader
            .transaction(&mut aconn, history[1].txid)
            .await
            .unwrap(),
        sync.transaction(&mut conn, history[1].txid).unwrap()
    );
    let all = TimeRange::default();
    let by_alice = reader.by_user(&mut aconn, "alice", all).await.unwrap();
    assert_eq!(by_alice.len(), 2);
    assert_eq!(by_alice, sync.by_user(&mut conn, "alice", all).unwrap());
    assert_eq!(
        reader.request(&mut aconn, "req-1", all).await.unwrap(),
        by_alice
    );
    assert_eq!(
        reader
            .state_at::<Person>(&mut aconn, 2, middle)
            .await
            .unwrap(),
        Some(json!({"id": 1, "name": "Ann", "email": "a@y"}))
    );
    assert_eq!(
        reader
            .diff::<Person>(&mut aconn, 2, middle, now)
            .await
            .unwrap(),
        sync.diff::<Person>(&mut conn, 2, middle, now).unwrap()
    );
    let table = pg_audit::QualifiedName::parse("lines").unwrap();
    assert_eq!(
        reader.recorded_keys(&mut aconn, &table).await.unwrap(),
        [["org", "line_no"]]
    );
    let by_alice_filter = Activity {
        user_id: Some("alice".into()),
        ..Activity::default()
    };
    let listed = reader
        .activity(&mut aconn, &by_alice_filter, Page::first(10))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed,
        sync.activity(&mut conn, &by_alice_filter, Page::first(10))
            .unwrap()
    );
    assert_eq!(
        reader.blame::<Person>(&mut aconn, 2).await.unwrap(),
        sync.blame::<Person>(&mut conn, 2).unwrap()
    );
    let people = pg_audit::QualifiedName::parse("people").unwrap();
    let then = reader
        .table_at(&mut aconn, &people, middle, None, 10)
        .await
        .unwrap();
    assert_eq!(
        then.rows.iter().map(|r| &r.values).collect::<Vec<_>>(),
        [&json!({"id": 1, "name": "Ann", "email": "a@y"})]
    );
    assert_eq!(
        then,
        sync.table_at(&mut conn, &people, middle, None, 10).unwrap()
    );

    // Revert across the key change, and restore the deleted line.
    reader
        .revert::<Person>(&mut aconn, 2, history[2].id, "Undo async")
        .await
        .unwrap();
    reader
        .restore::<Line>(&mut aconn, ("acme", 1), "Deleted by mistake")
        .await
        .unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT id, name, email FROM people"),
        [json!({"id": 1, "name": "Ann", "email": "a@x"})]
    );
    assert_eq!(
        rows(&mut conn, "SELECT org, line_no, qty FROM lines"),
        [json!({"org": "acme", "line_no": 1, "qty": 5})]
    );
    assert_eq!(
        rows(
            &mut conn,
            "SELECT operation, context ->> 'change_reason' AS reason FROM audit.auditlog
              ORDER BY id DESC LIMIT 2"
        ),
        [
            json!({"operation": "INSERT", "reason": "Deleted by mistake"}),
            json!({"operation": "UPDATE", "reason": "Undo async"})
        ]
    );
    // What cannot be answered fails the same way.
    let e = reader
        .restore::<Person>(&mut aconn, 1, "Not deleted")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        sync.restore::<Person>(&mut conn, 1, "Not deleted")
            .unwrap_err()
            .to_string()
    );
}

/// Blame: for each column, the entry that last set it, across users and a key change.
#[test]
fn blame_names_the_entry_that_last_set_each_column() {
    let (_db, mut conn) = setup("history_blame");
    let reader = AuditReader::new();
    let as_user = |conn: &mut PgConnection, user: &str, sql: &str| {
        conn.with_audit_context(&AuditContext::new().user_id(user), |conn| {
            exec(conn, sql);
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    };
    as_user(
        &mut conn,
        "alice",
        "INSERT INTO people VALUES (1, 'Ann', 'a@x')",
    );
    as_user(
        &mut conn,
        "bob",
        "UPDATE people SET email = 'a@y' WHERE id = 1",
    );
    as_user(
        &mut conn,
        "carol",
        "UPDATE people SET name = 'Anna' WHERE id = 1",
    );
    as_user(&mut conn, "dave", "UPDATE people SET id = 2 WHERE id = 1");
    let blame = reader.blame::<Person>(&mut conn, 2).unwrap();
    let who: Vec<(String, Value, String)> = blame
        .iter()
        .map(|b| {
            (
                b.column.clone(),
                b.value.clone(),
                b.entry.context.user_id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("id".to_owned(), json!(2), "dave".to_owned()),
            ("name".to_owned(), json!("Anna"), "carol".to_owned()),
            ("email".to_owned(), json!("a@y"), "bob".to_owned()),
        ]
    );
    // A deleted record: who set the values it had.
    as_user(&mut conn, "erin", "DELETE FROM people WHERE id = 2");
    let after_delete = reader.blame::<Person>(&mut conn, 2).unwrap();
    assert_eq!(after_delete, blame);
    assert_eq!(reader.blame::<Person>(&mut conn, 99).unwrap(), []);
}

/// The table as of a time: rows from the log (key changes, deletes, inserts after the time
/// left out or put back) and rows the log never saw, paged by key; a reader without SELECT on
/// the table gets the logged rows and is told so.
#[test]
fn a_table_as_it_was_at_a_time() {
    let (db, mut conn) = setup("history_table_at");
    let reader = AuditReader::new();
    let table = pg_audit::QualifiedName::parse("people").unwrap();
    // A row from before auditing: its INSERT fired no trigger.
    exec(
        &mut conn,
        "SET session_replication_role = replica;
         INSERT INTO people VALUES (9, 'Old', NULL);
         RESET session_replication_role;",
    );
    exec(
        &mut conn,
        "INSERT INTO people VALUES (1, 'Ann', 'a@x'), (2, 'Bob', NULL)",
    );
    std::thread::sleep(Duration::from_millis(20));
    let then = SystemTime::now();
    std::thread::sleep(Duration::from_millis(20));
    exec(&mut conn, "UPDATE people SET name = 'Anna' WHERE id = 1");
    exec(&mut conn, "DELETE FROM people WHERE id = 2");
    exec(&mut conn, "UPDATE people SET id = 3 WHERE id = 1");
    exec(&mut conn, "INSERT INTO people VALUES (4, 'Dan', NULL)");

    let rows = |at: SystemTime, after: Option<&Value>, limit: u32, conn: &mut PgConnection| {
        let page = reader.table_at(conn, &table, at, after, limit).unwrap();
        assert!(page.current_rows);
        page.rows
            .into_iter()
            .map(|r| (r.key, r.values, r.from_log))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rows(then, None, 10, &mut conn),
        [
            (
                json!({"id": 1}),
                json!({"id": 1, "name": "Ann", "email": "a@x"}),
                true
            ),
            (
                json!({"id": 2}),
                json!({"id": 2, "name": "Bob", "email": null}),
                true
            ),
            (
                json!({"id": 9}),
                json!({"id": 9, "name": "Old", "email": null}),
                false
            ),
        ]
    );
    let now = SystemTime::now();
    assert_eq!(
        rows(now, None, 10, &mut conn),
        [
            (
                json!({"id": 3}),
                json!({"id": 3, "name": "Anna", "email": "a@x"}),
                true
            ),
            (
                json!({"id": 4}),
                json!({"id": 4, "name": "Dan", "email": null}),
                true
            ),
            (
                json!({"id": 9}),
                json!({"id": 9, "name": "Old", "email": null}),
                false
            ),
        ]
    );
    // Paged by key.
    let first = rows(then, None, 2, &mut conn);
    assert_eq!(first.len(), 2);
    let second = rows(then, Some(&first[1].0), 2, &mut conn);
    assert_eq!(
        second.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        [json!({"id": 9})]
    );

    // The read-only role of `pg-audit sql grant`: the logged rows, and a flag.
    let role = format!("{}hist_{}", pg_audit_tests::ROLE_PREFIX, std::process::id());
    exec(
        &mut conn,
        &format!(
            "CREATE ROLE \"{role}\"; {}",
            pg_audit::AuditLog::new().grant_read_sql(&pg_audit::Ident::new(role.as_str()).unwrap())
        ),
    );
    let mut reader_conn = db.conn();
    exec(&mut reader_conn, &format!("SET ROLE \"{role}\""));
    let page = reader
        .table_at(&mut reader_conn, &table, now, None, 10)
        .unwrap();
    assert!(!page.current_rows);
    assert_eq!(
        page.rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        [json!({"id": 3}), json!({"id": 4})]
    );
    exec(&mut reader_conn, "RESET ROLE");
    exec(
        &mut conn,
        &format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""),
    );

    let e = reader
        .table_at(
            &mut conn,
            &pg_audit::QualifiedName::parse("nope").unwrap(),
            now,
            None,
            10,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"nope\" is not audited in this log (no install is recorded for it); check the name, or read the log it is audited in"
    );
}

/// The activity listing: newest first across tables, each filter narrowing it, a record's
/// entries under either of its keys, paged by id.
#[test]
fn activity_lists_the_newest_changes_filtered() {
    use pg_audit_diesel::log::Activity;
    let (_db, mut conn) = setup("history_activity");
    let reader = AuditReader::new();
    conn.with_audit_context(
        &AuditContext::new().user_id("ann").request_id("r1"),
        |conn| {
            exec(
                conn,
                "INSERT INTO people VALUES (1, 'Ann', NULL), (2, 'Bob', NULL)",
            );
            exec(conn, "INSERT INTO lines VALUES ('acme', 1, 5)");
            Ok::<_, diesel::result::Error>(())
        },
    )
    .unwrap();
    exec(&mut conn, "UPDATE people SET id = 3 WHERE id = 1");
    exec(&mut conn, "UPDATE people SET name = 'Bo' WHERE id = 2");
    let ids = |filter: &Activity, page: Page, conn: &mut PgConnection| -> Vec<(Operation, Value)> {
        reader
            .activity(conn, filter, page)
            .unwrap()
            .into_iter()
            .map(|e| (e.operation, e.record_pk.unwrap()))
            .collect()
    };
    let all = ids(&Activity::default(), Page::first(10), &mut conn);
    assert_eq!(
        all,
        [
            (Operation::Update, json!({"id": 2})),
            (Operation::Update, json!({"id": 3})),
            (Operation::Insert, json!({"org": "acme", "line_no": 1})),
            (Operation::Insert, json!({"id": 2})),
            (Operation::Insert, json!({"id": 1})),
        ]
    );
    let filter = |f: fn(&mut Activity)| {
        let mut a = Activity::default();
        f(&mut a);
        a
    };
    assert_eq!(
        ids(
            &filter(|a| a.user_id = Some("ann".into())),
            Page::first(10),
            &mut conn
        )
        .len(),
        3
    );
    assert_eq!(
        ids(
            &filter(|a| a.request_id = Some("r1".into())),
            Page::first(10),
            &mut conn
        )
        .len(),
        3
    );
    assert_eq!(
        ids(
            &filter(|a| a.operation = Some(Operation::Update)),
            Page::first(10),
            &mut conn
        )
        .len(),
        2
    );
    assert_eq!(
        ids(
            &filter(|a| a.table = Some("lines".into())),
            Page::first(10),
            &mut conn
        ),
        [(Operation::Insert, json!({"org": "acme", "line_no": 1}))]
    );
    // A record by its old key, through the hash indexes (table named) or by scan (no table).
    for table in [Some("people"), None] {
        let a = Activity {
            table: table.map(str::to_owned),
            schema: table.map(|_| "public".to_owned()),
            key: Some(json!({"id": 1})),
            ..Activity::default()
        };
        assert_eq!(
            ids(&a, Page::first(10), &mut conn),
            [
                (Operation::Update, json!({"id": 3})),
                (Operation::Insert, json!({"id": 1})),
            ],
            "{table:?}"
        );
    }
    // Paged: the same entries, each once, in order.
    let mut paged = Vec::new();
    let mut page = Some(Page::first(2));
    while let Some(p) = page {
        let entries = reader.activity(&mut conn, &Activity::default(), p).unwrap();
        page = p.after(&entries);
        paged.extend(
            entries
                .into_iter()
                .map(|e| (e.operation, e.record_pk.unwrap())),
        );
    }
    assert_eq!(paged, all);
}
