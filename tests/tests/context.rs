//! Context-carrying transactions on real connections: values reach the audit rows exactly,
//! nest as documented, never outlive their transaction, and cost no extra round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::InstrumentationEvent;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit::AuditLog;
use pg_audit_diesel::{AuditConnectionExt, AuditContext, InvalidContext, MAX_VALUE_LEN, ambient};
use pg_audit_tests::{TestDb, audit_rows, audited_items, value};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

fn setup(hint: &str) -> (TestDb, PgConnection, AuditLog) {
    let (db, conn) = audited_items(hint);
    (db, conn, AuditLog::new())
}

fn insert(conn: &mut PgConnection, name: &str) -> QueryResult<usize> {
    diesel::sql_query("INSERT INTO items (name) VALUES ($1)")
        .bind::<diesel::sql_types::Text, _>(name)
        .execute(conn)
}

/// `[name, user_id, change_reason]` of each audit row.
fn who_why(conn: &mut PgConnection, log: &AuditLog) -> Vec<Value> {
    audit_rows(conn, log)
        .into_iter()
        .map(|r| json!([r["new_values"]["name"], r["user_id"], r["change_reason"]]))
        .collect()
}

#[test]
fn change_reason_reaches_the_rows_of_its_transaction_only() {
    let (_db, mut conn, log) = setup("ctx_reason");
    conn.with_change_reason("User requested password reset", |conn| insert(conn, "a"))
        .unwrap();
    insert(&mut conn, "b").unwrap();
    conn.transaction(|conn| insert(conn, "c")).unwrap();
    assert_eq!(
        who_why(&mut conn, &log),
        [
            json!(["a", null, "User requested password reset"]),
            json!(["b", null, null]),
            json!(["c", null, null]),
        ]
    );
}

#[test]
fn every_field_of_the_context_is_recorded() {
    let (_db, mut conn, log) = setup("ctx_fields");
    let ctx = AuditContext::new()
        .user_id("42")
        .request_id("req-7f3a")
        .change_reason("import")
        .client_addr("2001:db8::1")
        .source("http POST /items")
        .metadata(json!({"ticket": "SUP-1", "n": 3}));
    conn.with_audit_context(&ctx, |conn| insert(conn, "a"))
        .unwrap();
    let row = &audit_rows(&mut conn, &log)[0];
    assert_eq!(
        [
            &row["user_id"],
            &row["request_id"],
            &row["change_reason"],
            &row["client_addr"],
            &row["source"],
            &row["metadata"]
        ],
        [
            &json!("42"),
            &json!("req-7f3a"),
            &json!("import"),
            &json!("2001:db8::1"),
            &json!("http POST /items"),
            &json!({"ticket": "SUP-1", "n": 3})
        ]
    );
}

#[test]
fn nested_helpers_override_fields_chain_reasons_and_restore_the_outer_context() {
    let (_db, mut conn, log) = setup("ctx_nested");
    let outer = AuditContext::new()
        .user_id("ops")
        .change_reason("Bulk update for compliance");
    conn.with_audit_context(&outer, |conn| {
        insert(conn, "outer-1")?;
        conn.with_audit_context(
            &AuditContext::new()
                .user_id("alice")
                .change_reason("User request"),
            |conn| insert(conn, "inner"),
        )?;
        insert(conn, "outer-2")?;
        // A failing inner helper rolls back to its savepoint, context included.
        let failed: Result<(), diesel::result::Error> = conn.with_change_reason("doomed", |conn| {
            insert(conn, "rolled back")?;
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert!(failed.is_err());
        insert(conn, "outer-3")
    })
    .unwrap();
    assert_eq!(
        who_why(&mut conn, &log),
        [
            json!(["outer-1", "ops", "Bulk update for compliance"]),
            json!(["inner", "alice", "Bulk update for compliance; User request"]),
            json!(["outer-2", "ops", "Bulk update for compliance"]),
            json!(["outer-3", "ops", "Bulk update for compliance"]),
        ]
    );
}

#[test]
fn a_helper_inside_a_plain_transaction_keeps_what_was_set_there() {
    let (_db, mut conn, log) = setup("ctx_in_plain_tx");
    conn.transaction(|conn| {
        diesel::sql_query(
            "SELECT set_config('pg_audit.context', '{\"user_id\": \"raw-sql-user\"}', true)",
        )
        .execute(conn)?;
        conn.with_change_reason("helper", |conn| insert(conn, "inside"))?;
        insert(conn, "after")
    })
    .unwrap();
    assert_eq!(
        who_why(&mut conn, &log),
        [
            json!(["inside", "raw-sql-user", "helper"]),
            json!(["after", "raw-sql-user", null])
        ]
    );
}

#[test]
fn ambient_context_from_guards_is_carried_by_audited_transactions() {
    let (_db, mut conn, log) = setup("ctx_ambient");
    {
        let _guard = ambient::use_change_reason("Bulk update for compliance");
        let _user = ambient::use_context(&AuditContext::new().user_id("batch"));
        conn.audited_transaction(|conn| insert(conn, "a")).unwrap();
        conn.with_change_reason("row 2", |conn| insert(conn, "b"))
            .unwrap();
    }
    conn.audited_transaction(|conn| insert(conn, "c")).unwrap();
    assert_eq!(
        who_why(&mut conn, &log),
        [
            json!(["a", "batch", "Bulk update for compliance"]),
            json!(["b", "batch", "Bulk update for compliance; row 2"]),
            json!(["c", null, null]),
        ]
    );
}

#[test]
fn a_failed_transaction_logs_nothing_and_leaves_no_context_behind() {
    let (_db, mut conn, log) = setup("ctx_failed");
    let result: Result<(), diesel::result::Error> = conn.with_change_reason("will fail", |conn| {
        insert(conn, "x")?;
        diesel::sql_query("SELECT 1/0").execute(conn)?;
        Ok(())
    });
    assert!(result.is_err());
    insert(&mut conn, "y").unwrap();
    assert_eq!(who_why(&mut conn, &log), [json!(["y", null, null])]);
}

#[test]
fn pooled_connections_never_carry_context_into_the_next_checkout() {
    let (db, _conn, log) = setup("ctx_pool");
    let pool = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<PgConnection>::new(db.url()))
        .unwrap();
    {
        let mut conn = pool.get().unwrap();
        conn.with_audit_context(
            &AuditContext::new()
                .user_id("first")
                .change_reason("first request"),
            |conn| insert(conn, "a"),
        )
        .unwrap();
    }
    {
        let mut conn = pool.get().unwrap(); // the same connection: the pool holds one
        insert(&mut conn, "b").unwrap();
        conn.transaction(|conn| insert(conn, "c")).unwrap();
    }
    let mut conn = pool.get().unwrap();
    assert_eq!(
        who_why(&mut conn, &log),
        [
            json!(["a", "first", "first request"]),
            json!(["b", null, null]),
            json!(["c", null, null])
        ]
    );
}

#[test]
fn hostile_values_round_trip_exactly() {
    let (_db, mut conn, log) = setup("ctx_hostile");
    let values = [
        "it's a \"quote\"".to_owned(),
        r"back\slash \\ \' \n".to_owned(),
        "$$ $pg_audit$ $tag$ dollar quotes $$".to_owned(),
        "'); DROP TABLE items; --".to_owned(),
        "ünïcödé 日本語 🦀 \u{200b}".to_owned(),
        "line\nbreak\ttab\r".to_owned(),
        "x".repeat(10 * 1024),
        "é".repeat(MAX_VALUE_LEN / 2),
    ];
    for (i, reason) in values.iter().enumerate() {
        conn.with_change_reason(reason, |conn| insert(conn, &i.to_string()))
            .unwrap();
    }
    let stored = audit_rows(&mut conn, &log);
    assert_eq!(stored.len(), values.len());
    for (row, reason) in stored.iter().zip(&values) {
        assert_eq!(row["change_reason"].as_str(), Some(reason.as_str()));
    }
    let metadata = json!({"quote": "'\"", "nested": {"$$": ["\\", "🦀"]}});
    conn.with_audit_context(&AuditContext::new().metadata(metadata.clone()), |conn| {
        insert(conn, "m")
    })
    .unwrap();
    assert_eq!(
        audit_rows(&mut conn, &log).last().unwrap()["metadata"],
        metadata
    );
}

#[test]
fn unstorable_values_are_refused_and_nothing_is_applied() {
    let (_db, mut conn, log) = setup("ctx_refused");
    let refused = |conn: &mut PgConnection, ctx: AuditContext| {
        let mut ran = false;
        let e = conn
            .with_audit_context(&ctx, |conn| {
                ran = true;
                insert(conn, "must not exist")
            })
            .unwrap_err();
        assert!(!ran, "the closure must not run");
        match e {
            diesel::result::Error::QueryBuilderError(inner) => {
                inner.downcast::<InvalidContext>().unwrap().to_string()
            }
            other => panic!("unexpected error {other:?}"),
        }
    };
    let e = refused(&mut conn, AuditContext::new().user_id("nul\0byte"));
    assert_eq!(
        e,
        "audit context `user_id` contains a NUL byte, which PostgreSQL text cannot hold"
    );
    let e = refused(
        &mut conn,
        AuditContext::new().change_reason("x".repeat(MAX_VALUE_LEN + 1)),
    );
    assert_eq!(
        e,
        format!(
            "audit context `change_reason` is {} bytes long; the limit is {MAX_VALUE_LEN} bytes",
            MAX_VALUE_LEN + 1
        )
    );
    let e = refused(
        &mut conn,
        AuditContext::new().metadata(json!({"k": "nul\u{0}"})),
    );
    assert_eq!(
        e,
        "audit context `metadata` contains a NUL character, which PostgreSQL jsonb cannot hold"
    );
    // Refused inside an open transaction too, leaving it usable.
    conn.transaction(|conn| {
        let inner = conn.with_change_reason("bad\0", |conn| insert(conn, "no"));
        assert!(inner.is_err());
        insert(conn, "yes")
    })
    .unwrap();
    assert_eq!(
        value(&mut conn, "SELECT jsonb_agg(name) FROM items"),
        json!(["yes"])
    );
    assert_eq!(audit_rows(&mut conn, &log).len(), 1);
}

fn count_round_trips(conn: &mut PgConnection) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    count
}

#[test]
fn context_costs_no_extra_round_trip() {
    let (_db, mut conn, _log) = setup("ctx_round_trips");
    let count = count_round_trips(&mut conn);
    conn.transaction(|conn| insert(conn, "plain")).unwrap();
    let plain = count.swap(0, Ordering::SeqCst);
    let full = AuditContext::new()
        .user_id("u")
        .request_id("r")
        .change_reason("why")
        .client_addr("198.51.100.7")
        .source("test")
        .metadata(json!({"a": 1}));
    conn.with_audit_context(&full, |conn| insert(conn, "audited"))
        .unwrap();
    let audited = count.swap(0, Ordering::SeqCst);
    assert_eq!(plain, 3, "BEGIN, INSERT, COMMIT");
    assert_eq!(audited, plain, "the context travels with BEGIN");
}

#[test]
fn contexts_readers_could_not_read_are_refused_by_the_trigger() {
    use pg_audit_diesel::log::{AuditReader, TimeRange};
    let (_db, mut conn, log) = setup("ctx_refused");
    let big = format!("{{\"metadata\": \"{}\"}}", "x".repeat(70 * 1024));
    let refused = [
        ("[1, 2]", "must be a JSON object, not a JSON array"),
        ("\"alice\"", "must be a JSON object, not a JSON string"),
        ("42", "must be a JSON object, not a JSON number"),
        ("null", "must be a JSON object, not a JSON null"),
        (r#"{"user_id": "a\u0000b"}"#, "holds \\u0000"),
        (r#"{"metadata": {"deep": ["\u0000"]}}"#, "holds \\u0000"),
        (big.as_str(), "bytes long; the limit is 65536 bytes"),
        ("{not json", "invalid input syntax for type json"),
        // What json takes but jsonb, which readers extract fields with, does not.
        (
            r#"{"user_id": "\ud800"}"#,
            "invalid input syntax for type json",
        ),
        (r#"{"n": 1e1000000}"#, "value overflows numeric format"),
    ];
    for (context, message) in refused {
        let e = pg_audit_tests::exec_err(
            &mut conn,
            &format!(
                "BEGIN; SELECT set_config('pg_audit.context', {}, true);
                 INSERT INTO items (name) VALUES ('x'); COMMIT;",
                pg_audit::quote_literal(context).unwrap()
            ),
        );
        assert!(e.contains(message), "{context:.40}: {e}");
        pg_audit_tests::exec(&mut conn, "ROLLBACK");
    }
    // Nothing was written, and the readers work.
    assert_eq!(value(&mut conn, "SELECT count(*) FROM items"), json!(0));
    // An escaped backslash followed by `u0000` is ordinary text, and is kept.
    pg_audit_tests::exec(
        &mut conn,
        r#"BEGIN; SET LOCAL pg_audit.context = '{"user_id": "a\\u0000b"}';
           INSERT INTO items (name) VALUES ('y'); COMMIT;"#,
    );
    let reader = AuditReader::with_log(log);
    let by_user = reader
        .by_user(&mut conn, r"a\u0000b", TimeRange::default())
        .unwrap();
    assert_eq!(by_user.len(), 1);
    assert!(
        reader
            .request(&mut conn, "r", TimeRange::default())
            .unwrap()
            .is_empty()
    );
    // The Rust side refuses an over-long context before sending anything.
    let e = conn
        .with_audit_context(
            &AuditContext::new()
                .user_id("u".repeat(MAX_VALUE_LEN))
                .change_reason("r".repeat(10 * 1024)),
            |conn| insert(conn, "z"),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "audit context `context` is 71713 bytes long as JSON; the limit is 65536 bytes"
        ),
        "{e}"
    );
}
