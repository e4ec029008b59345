//! Masked columns: the log holds an HMAC of each masked value (checked against OpenSSL's),
//! never the value — in trigger entries, baselines, after redaction — with a key the writing
//! application can neither read nor use, and seals that still verify.

#[path = "support/cli.rs"]
mod cli;

use cli::{ok, psql};
use std::process::Command;

/// HMAC-SHA-256 of `message` under the hex key `key`, by OpenSSL.
fn openssl_hmac(key: &str, message: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{key}"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.rsplit(' ').next().unwrap().trim().to_owned()
}

#[test]
fn masked_values_never_reach_the_log_and_their_digests_are_keyed_hmacs() {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database("mask")
        .unwrap();
    let url = db.url().to_owned();
    let app = format!("mask_app_{}", std::process::id());
    psql(&db, &ok(&["sql", "table"], &url));
    psql(
        &db,
        &format!(
            "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text, dob date);
             INSERT INTO people VALUES (100, 'before', '000-00-0001', '1970-01-01');
             DROP ROLE IF EXISTS {app};
             CREATE ROLE {app};
             GRANT SELECT, INSERT, UPDATE, DELETE ON people TO {app};"
        ),
    );
    psql(
        &db,
        &ok(
            &[
                "sql",
                "trigger",
                "--table",
                "people",
                "--mask-fields",
                "ssn,dob",
            ],
            &url,
        ),
    );
    // The application writes; it can neither read the key nor compute a digest itself.
    psql(
        &db,
        &format!(
            "SET ROLE {app};
             INSERT INTO people VALUES (1, 'Ann', '123-45-6789', '1990-05-17'), (2, 'Bob', '123-45-6789', NULL);
             UPDATE people SET ssn = '987-65-4321' WHERE id = 1;
             UPDATE people SET name = 'Bobby' WHERE id = 2;
             DELETE FROM people WHERE id = 2;
             RESET ROLE;"
        ),
    );
    for forbidden in [
        "SELECT * FROM audit.auditlog_mask_key",
        "SELECT audit.auditlog_masked('{\"ssn\": \"123-45-6789\"}', ARRAY['ssn'])",
    ] {
        let err = db
            .psql(&format!("SET ROLE {app}; {forbidden}"))
            .expect_err("the application may not");
        assert!(err.to_string().contains("permission denied"), "{err}");
    }
    ok(&["baseline", "--table", "people"], &url);

    // No masked value in clear anywhere in the log.
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog
              WHERE concat(old_values::text, new_values::text) ~ '(123-45-6789|987-65-4321|000-00-0001|1990-05-17|1970-01-01)'"
        ),
        "0"
    );
    // Every masked value is a digest, and the other columns are in clear.
    assert_eq!(
        psql(
            &db,
            "SELECT count(*), bool_and(v->>'ssn' LIKE 'hmac-sha256:%' AND v->>'dob' LIKE 'hmac-sha256:%'),
                    count(DISTINCT v->>'name')
               FROM audit.auditlog, LATERAL (VALUES (old_values), (new_values)) AS s(v) WHERE v IS NOT NULL"
        ),
        "9|t|4"
    );
    // Equal values, equal digests; a change shows as a different digest; an untouched masked
    // column keeps its digest.
    let digest = |sql: &str| psql(&db, sql);
    let ann_before = digest(
        "SELECT old_values->>'ssn' FROM audit.auditlog WHERE operation = 'UPDATE' AND record_pk = '{\"id\": 1}'",
    );
    let ann_after = digest(
        "SELECT new_values->>'ssn' FROM audit.auditlog WHERE operation = 'UPDATE' AND record_pk = '{\"id\": 1}'",
    );
    let bob = digest(
        "SELECT new_values->>'ssn' FROM audit.auditlog WHERE operation = 'INSERT' AND record_pk = '{\"id\": 2}'",
    );
    assert_eq!(ann_before, bob);
    assert_ne!(ann_before, ann_after);
    assert_eq!(
        psql(
            &db,
            "SELECT old_values->'ssn' = new_values->'ssn' FROM audit.auditlog
              WHERE operation = 'UPDATE' AND record_pk = '{\"id\": 2}'"
        ),
        "t"
    );
    // The digest is HMAC-SHA-256 of the value's JSON text, keyed by the log's key.
    let key_hex = psql(
        &db,
        "SELECT string_agg(lpad(to_hex(get_byte(inner_pad, i) # 54), 2, '0'), '' ORDER BY i)
           FROM audit.auditlog_mask_key, generate_series(0, 63) AS i",
    );
    assert_eq!(key_hex.len(), 128);
    assert_eq!(
        ann_before,
        format!("hmac-sha256:{}", openssl_hmac(&key_hex, "\"123-45-6789\""))
    );
    assert_eq!(
        psql(
            &db,
            "SELECT new_values->>'dob' FROM audit.auditlog WHERE operation = 'INSERT' AND record_pk = '{\"id\": 1}'"
        ),
        format!("hmac-sha256:{}", openssl_hmac(&key_hex, "\"1990-05-17\""))
    );

    // Sealed, redacted, verified: digests are values like any other.
    ok(&["seal"], &url);
    ok(
        &[
            "redact",
            "--table",
            "people",
            "--key",
            "1",
            "--columns",
            "ssn",
            "--reason",
            "erasure",
        ],
        &url,
    );
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog WHERE record_pk = '{\"id\": 1}' AND new_values->>'ssn' <> '[redacted]'"
        ),
        "0"
    );
    ok(&["verify"], &url);

    // A masked column renamed: writes and baselines are refused rather than log it in clear.
    psql(&db, "ALTER TABLE people RENAME COLUMN ssn TO social");
    let err = db
        .psql(&format!(
            "SET ROLE {app}; UPDATE people SET social = '555-55-5555' WHERE id = 1"
        ))
        .expect_err("the write is refused");
    assert!(
        err.to_string()
            .contains("has no column ssn, which its audit keeps out of the log"),
        "{err}"
    );
    let out = cli::pg_audit(&["baseline", "--table", "people", "--again"], &url);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no column ssn"));
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog WHERE concat(old_values, new_values)::text LIKE '%555-55%'"
        ),
        "0"
    );
    // Installed again under the new name, writes are logged masked.
    psql(
        &db,
        &ok(
            &[
                "sql",
                "trigger",
                "--table",
                "people",
                "--mask-fields",
                "social,dob",
            ],
            &url,
        ),
    );
    psql(&db, "UPDATE people SET social = '555-55-5555' WHERE id = 1");
    assert_eq!(
        psql(
            &db,
            "SELECT new_values->>'social' LIKE 'hmac-sha256:%' FROM audit.auditlog WHERE operation = 'UPDATE' ORDER BY id DESC LIMIT 1"
        ),
        "t"
    );
    psql(&db, &format!("DROP OWNED BY {app}; DROP ROLE {app}"));
}
