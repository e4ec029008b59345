//! The program's digests agree with the server's, byte for byte: every row the log can hold —
//! JSON of every shape (whitespace, duplicate keys, escapes, non-objects, nesting), text with
//! control and non-ASCII characters, NULLs, erased values — resealed by
//! `pg_audit_archive::digest` equals what `<log>_seal_of` and `AuditLog::reseal_sql` compute.

use pg_audit::AuditLog;
use pg_audit_archive::digest::reseal;
use sha2::Digest as _;

/// Log rows written as the owner, one odd shape each.
const ROWS: &[&str] = &[
    // What the triggers write.
    r#"'INSERT', 'public', 't', 1, '{"id": 1}', NULL, '{"id": 1, "name": "Ann"}', '{"user_id": "u"}'"#,
    // A context json with its own whitespace, a key twice, escapes and unicode.
    r#"'UPDATE', 'public', 't', 2, '{"id": 2}', '{"a": [1, {"b": "}"}], "c": "q\"uo\\te"}', '{"a": null, "é": "ü\u0001"}', ' { "user_id" :  "x" , "user_id":"y",	"m" : { "k" : [ 1 , 2 ] } } '"#,
    // Not objects.
    r#"'DELETE', 'public', 't', 3, '[1, 2]', '"text"', '42', '[{"a": 1}]'"#,
    // An empty object, deep nesting, big numbers.
    r#"'INSERT', 'public', 't', 4, '{}', NULL, '{"n": 1e400, "d": [[[[["x"]]]]], "z": -0.0}', '{}'"#,
    // NULLs everywhere they may be.
    r#"'TRUNCATE', 'public', 't', NULL, NULL, NULL, NULL, NULL"#,
    // Text with control characters and bidirectional marks in the scalars.
    r#"'INSERT', E'sch\tema', E'ta"b\\le\u202e', 6, '{"id": 6}', NULL, '{"v": "[redacted]"}', '"just a string"'"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_programs_digests_are_the_servers() {
    let server = pg_audit_tempdb::shared().expect("a PostgreSQL server");
    let db = server.create_database("archive_digest").unwrap();
    let log = AuditLog::new();
    db.batch_execute(&log.create_sql()).unwrap();
    let mut insert = String::new();
    for (i, row) in ROWS.iter().enumerate() {
        insert.push_str(&format!(
            "INSERT INTO audit.auditlog (changed_at, tx_started_at, txid, operation, schema_name, table_name, record_key, record_pk, old_values, new_values, context, db_user)
             VALUES (now() - interval '{i} seconds', now(), {i}, {row}, E'us\\u0007er');\n"
        ));
    }
    db.batch_execute(&insert).unwrap();
    // An erased value, recorded as redact records it.
    db.batch_execute(
        r#"INSERT INTO audit.auditlog_redactions (reason, table_schema, table_name, record_pk, columns, target)
               VALUES ('test', E'sch\tema', E'ta"b\\le\u202e', '{"id": 6}', NULL, 'values');
           INSERT INTO audit.auditlog_redacted_values (redaction_id, entry_id, column_name, key, digest)
               SELECT 1, 6, 'new_values', 'v', sha256('v' || '\x00'::bytea || '"secret"');"#,
    )
    .unwrap();
    let client = pg_audit_archive::connect(db.url()).await.unwrap();
    let n = ROWS.len() as i64;
    for (first, last) in (1..=n).map(|i| (i, i)).chain([(1, n), (0, n + 5)]) {
        let prev: Option<Vec<u8>> = (first > 1).then(|| vec![7u8; 32]);
        let server = client
            .query_one(&log.reseal_sql(None), &[&first, &last, &prev])
            .await
            .unwrap();
        let ours = reseal(&client, &log, None, (first, last), prev.as_deref())
            .await
            .unwrap();
        assert_eq!(
            ours.row_count,
            server.get::<_, i64>(0),
            "ids {first}..={last}"
        );
        assert_eq!(
            ours.rows,
            server.get::<_, Vec<u8>>(1),
            "ids {first}..={last}"
        );
        assert_eq!(
            ours.hash,
            server.get::<_, Vec<u8>>(2),
            "ids {first}..={last}"
        );
    }
    // A relation's content digest (what the archive catalogue records) as the server's.
    let server = client
        .query_one(&log.content_digest_sql("audit.auditlog"), &[])
        .await
        .unwrap();
    // In the files' order, which relation_digests sends them in.
    let digests = pg_audit_archive::digest::relation_digests(&client, &log, "audit.auditlog", true)
        .await
        .unwrap();
    let mut all = sha2::Sha256::new();
    for (_, d) in &digests {
        sha2::Digest::update(&mut all, d);
    }
    assert_eq!(digests.len() as i64, server.get::<_, i64>(0));
    assert_eq!(
        sha2::Digest::finalize(all).to_vec(),
        server.get::<_, Vec<u8>>(3)
    );
    // The erased value's recorded digest stands in for the marker, as on the server: the
    // entry's digest is the one of the value before.
    let erased = client
        .query_one(&log.reseal_sql(None), &[&6i64, &6i64, &None::<Vec<u8>>])
        .await
        .unwrap();
    db.batch_execute(
        r#"ALTER TABLE audit.auditlog DISABLE TRIGGER USER;
           UPDATE audit.auditlog SET new_values = '{"v": "secret"}' WHERE id = 6;"#,
    )
    .unwrap();
    let original = reseal(&client, &log, None, (6, 6), None).await.unwrap();
    assert_eq!(original.hash, erased.get::<_, Vec<u8>>(2));
}
