//! Seals against concurrent writers on a real server: a row is sealed only once its
//! transaction has ended (a transaction that took a lower id and commits late is covered by a
//! later seal, not left out of an earlier one), and no writer waits on the sealer.

use pg_audit_tests::{ROLE_PREFIX, TestDb, audited_items, exec, exec_err, value};
use serde_json::json;

/// The context tests' fixture: the default log and an audited `items` table.
fn setup(hint: &str) -> TestDb {
    audited_items(hint).0
}

/// Every seal recomputed from the log now matches what was stored, and the chain holds.
fn seals_verify(conn: &mut diesel::PgConnection) -> bool {
    value(
        conn,
        "SELECT coalesce(bool_and(r.hash = s.hash AND r.rows = s.rows
                                  AND s.prev_hash IS NOT DISTINCT FROM (SELECT p.hash FROM audit.auditlog_seals AS p
                                                                         WHERE p.seal_id < s.seal_id ORDER BY p.seal_id DESC LIMIT 1)), true)
           FROM audit.auditlog_seals AS s
          CROSS JOIN LATERAL audit.auditlog_seal_of(s.first_id, s.last_id, s.prev_hash) AS r",
    ) == json!(true)
}

#[test]
fn a_late_commit_with_a_lower_id_is_sealed_after_it_ends() {
    let db = setup("seal_late_commit");
    let (mut early, mut later, mut sealer) = (db.conn(), db.conn(), db.conn());
    exec(&mut early, "BEGIN; INSERT INTO items VALUES (1, 'early')");
    let early_id = value(&mut early, "SELECT max(id) FROM audit.auditlog");
    exec(
        &mut later,
        "INSERT INTO items VALUES (2, 'b'); INSERT INTO items VALUES (3, 'c')",
    );
    for _ in 0..3 {
        exec(&mut sealer, "SELECT * FROM audit.auditlog_seal()");
    }
    let sealed_upto = value(
        &mut sealer,
        "SELECT coalesce(max(last_id), 0) FROM audit.auditlog_seals",
    );
    assert!(
        sealed_upto.as_i64().unwrap() < early_id.as_i64().unwrap(),
        "sealed up to {sealed_upto} while entry {early_id} was uncommitted"
    );
    exec(&mut early, "COMMIT");
    // Every transaction running on the server when a run reads the sequence (other tests'
    // too) must end before its rows are sealed: run until they have.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        exec(&mut sealer, "SELECT * FROM audit.auditlog_seal()");
        let done = value(
            &mut sealer,
            "SELECT coalesce((SELECT max(last_id) FROM audit.auditlog_seals) >= (SELECT max(id) FROM audit.auditlog), false)",
        );
        if done == json!(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every row is sealed once every transaction has ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seals_verify(&mut sealer));
    // A changed row no longer matches its seal.
    exec(
        &mut sealer,
        "UPDATE audit.auditlog SET new_values = '{\"id\": 2, \"name\": \"x\"}' WHERE record_pk = '{\"id\": 2}'",
    );
    assert!(!seals_verify(&mut sealer));
}

#[test]
fn no_writer_waits_on_a_sealer() {
    let db = setup("seal_no_wait");
    let (mut writer, mut sealer) = (db.conn(), db.conn());
    exec(
        &mut writer,
        "INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 5000) AS g",
    );
    // The sealer's transaction stays open, holding whatever it took.
    exec(
        &mut sealer,
        "BEGIN; SELECT * FROM audit.auditlog_seal(1000)",
    );
    assert!(
        value(&mut sealer, "SELECT count(*) FROM audit.auditlog_seals")
            .as_i64()
            .unwrap()
            >= 5
    );
    // Writers go on with a lock timeout far below any wait: inserts, updates, deletes,
    // TRUNCATE, and partition maintenance's creation of a partition ahead.
    exec(
        &mut writer,
        "SET lock_timeout = '50ms';
         INSERT INTO items VALUES (100000, 'new');
         UPDATE items SET name = 'changed' WHERE id <= 100;
         DELETE FROM items WHERE id > 4000;
         TRUNCATE items;
         RESET lock_timeout;",
    );
    // A second sealer does not wait either: it returns at once, sealing nothing.
    let mut second = db.conn();
    assert_eq!(
        value(
            &mut second,
            "SELECT count(*) FROM (SELECT * FROM audit.auditlog_seal()) AS s"
        ),
        json!(0)
    );
    exec(&mut sealer, "COMMIT");
    exec(&mut sealer, "SELECT * FROM audit.auditlog_seal()");
    exec(&mut sealer, "SELECT * FROM audit.auditlog_seal()");
    assert!(seals_verify(&mut sealer));
}

#[test]
fn a_read_only_role_verifies_but_cannot_seal_or_change_seals() {
    let db = setup("seal_reader");
    let mut owner = db.conn();
    let log = pg_audit::AuditLog::new();
    let role = format!("{ROLE_PREFIX}{}_sealreader", std::process::id());
    exec(
        &mut owner,
        &format!(
            "CREATE ROLE \"{role}\" LOGIN; {}
             INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) AS g;
             SELECT * FROM audit.auditlog_seal(); SELECT * FROM audit.auditlog_seal();",
            log.grant_read_sql(&pg_audit::Ident::new(role.as_str()).unwrap())
        ),
    );
    let url = pg_audit_tempdb::url_with_database(
        &db.url()
            .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1),
        db.name(),
    )
    .unwrap();
    let mut reader = <diesel::PgConnection as diesel::Connection>::establish(&url).unwrap();
    assert!(seals_verify(&mut reader));
    let denied = exec_err(&mut reader, "SELECT * FROM audit.auditlog_seal()");
    assert!(denied.contains("permission denied"), "{denied}");
    let denied = exec_err(&mut reader, "DELETE FROM audit.auditlog_seals");
    assert!(denied.contains("permission denied"), "{denied}");
    // The grant is not drift.
    assert_eq!(
        value(
            &mut owner,
            "SELECT count(*) FROM audit.auditlog_check() WHERE problem LIKE '%EXECUTE%'"
        ),
        json!(0)
    );
    // Even the owner cannot change a seal while the append-only trigger stands.
    let refused = exec_err(&mut owner, "UPDATE audit.auditlog_seals SET hash = '\\x00'");
    assert!(refused.contains("append-only"), "{refused}");
}
