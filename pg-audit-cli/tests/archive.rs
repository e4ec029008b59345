//! The log over years, against a real server, real files and a real S3-compatible server:
//! a month archived to Parquet (read back by DuckDB and compared with the rows that left the
//! database) still shows in a record's history; seals report a changed, deleted or inserted
//! row, in the database or in an archived file; a redaction erases values everywhere and the
//! seals still verify.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pg_audit_tempdb::TempDatabase;
use serde_json::Value;

/// `pg-audit ARGS` against `url`, with `env` set.
fn pg_audit(args: &[&str], url: &str, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("pg-audit runs")
}

fn ok(args: &[&str], url: &str, env: &[(&str, &str)]) -> String {
    let out = pg_audit(args, url, env);
    assert!(
        out.status.success(),
        "pg-audit {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs Python with DuckDB (`pip install duckdb`; `scripts/test` installs it), printing JSON.
fn duckdb(script: &str) -> Value {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs (`scripts/test` installs it with DuckDB)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'duckdb'"),
        "DuckDB's Python package is not installed: run the tests with `scripts/test`, which \
         installs it, or `pip install duckdb`"
    );
    assert!(out.status.success(), "DuckDB failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

const SECRET_EMAIL: &str = "person42-secret@example.com";
const SECRET_NAME: &str = "Zelda Secretname";
const SECRET_USER: &str = "alice-unique-7f3";

/// A log with an old month (its partition eight months back) and a current one, written by the
/// triggers; returns the old partition's name.
fn fill(db: &TempDatabase<'_>) -> String {
    let url = db.url();
    db.psql(&ok(&["sql", "table"], url, &[])).expect("the log");
    db.psql("CREATE TABLE users (id int PRIMARY KEY, email text, name text, note text)")
        .expect("table");
    db.psql(&ok(
        &["sql", "trigger", "--table", "users", "--primary-key", "id"],
        url,
        &[],
    ))
    .expect("trigger");
    db.psql(&format!(
        "DO $$
         DECLARE lo timestamptz := date_trunc('month', now() - interval '8 months');
         BEGIN
             EXECUTE format('CREATE TABLE audit.auditlog_old PARTITION OF audit.auditlog FOR VALUES FROM (%L) TO (%L)',
                            lo, lo + interval '1 month');
         END $$;
         INSERT INTO users SELECT g, 'user' || g || '@example.com', 'Name ' || g, repeat('x', g % 50) FROM generate_series(1, 3000) AS g;
         UPDATE users SET email = '{SECRET_EMAIL}', name = '{SECRET_NAME}' WHERE id = 42;
         UPDATE users SET note = 'quote \" and , comma
newline' WHERE id % 7 = 0;
         BEGIN;
         SELECT set_config('pg_audit.context', '{{\"user_id\": \"{SECRET_USER}\", \"change_reason\": \"fix\"}}', true);
         UPDATE users SET note = 'by alice' WHERE id IN (42, 43);
         COMMIT;
         DELETE FROM users WHERE id = 3000;
         TRUNCATE users;
         -- Everything so far happened, for this test, eight months ago.
         UPDATE audit.auditlog SET changed_at = date_trunc('month', now() - interval '8 months') + id * interval '1 second';
         INSERT INTO users VALUES (42, 'now@example.com', 'Now', NULL);"
    ))
    .expect("workload");
    "audit.auditlog_old".to_owned()
}

/// Runs `pg-audit seal` until every row is sealed: a run seals only rows whose transactions
/// have all ended, and other tests' transactions on the shared server hold it back a while.
fn seal_all(db: &TempDatabase<'_>, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut all = vec!["seal"];
        all.extend_from_slice(args);
        ok(&all, db.url(), &[]);
        let unsealed = db
            .psql(
                "SELECT count(*) FROM audit.auditlog
                  WHERE id > (SELECT coalesce(max(last_id), 0) FROM audit.auditlog_seals)",
            )
            .expect("count");
        if unsealed.trim() == "0" {
            return;
        }
        assert!(Instant::now() < deadline, "rows stayed unsealed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The old partition's rows as the archive stores them, from the server.
fn rows_in_database(db: &TempDatabase<'_>, partition: &str) -> Value {
    let out = db
        .psql(&format!(
            "SELECT json_agg(json_build_array(id, (extract(epoch FROM changed_at) * 1000000)::bigint,
                (extract(epoch FROM tx_started_at) * 1000000)::bigint, txid, operation, schema_name,
                table_name, record_key, record_pk::text, old_values::text, new_values::text, db_user,
                context::text, old_record_pk::text, old_record_key) ORDER BY id) FROM {partition}"
        ))
        .expect("rows");
    serde_json::from_str(out.trim()).expect("JSON")
}

/// The same, read from the Parquet files by DuckDB.
fn rows_in_files(glob: &str) -> Value {
    duckdb(&format!(
        r#"
import duckdb, json
rows = duckdb.sql("""SELECT id, epoch_us(changed_at), epoch_us(tx_started_at), txid, operation, schema_name,
    table_name, record_key, record_pk, old_values, new_values, db_user, context, old_record_pk, old_record_key
    FROM read_parquet('{glob}') ORDER BY id""").fetchall()
print(json.dumps([list(r) for r in rows]))
"#
    ))
}

#[test]
fn a_month_moves_to_parquet_keeps_its_history_and_seals_and_erasure_hold() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database("archive_dir").expect("database");
    let url = db.url();
    let partition = fill(&db);
    let expected = rows_in_database(&db, &partition);
    let entries = expected.as_array().unwrap().len();
    assert!(entries > 3000, "the workload wrote {entries} entries");
    let history_before = ok(&["history", "users", "42", "--json"], url, &[]);

    // Seal everything; export the seals.
    let dir = tempdir("archive_dir");
    let seals = dir.join("seals.jsonl");
    seal_all(&db, &["--max-rows", "1000"]);
    let exported = ok(&["seal", "--export", seals.to_str().unwrap()], url, &[]);
    assert!(exported.contains("exported"), "{exported}");
    assert!(ok(&["verify"], url, &[]).starts_with("ok:"));

    // An interrupted earlier run left a broken file (named for the partition and its content):
    // it is replaced. A file of another partition or database is not touched.
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let digest = db
        .psql("SELECT encode(content_sha256, 'hex') FROM audit.auditlog_content_of('audit.auditlog_old')")
        .unwrap();
    let file = files.join(format!(
        "audit.auditlog_old.{}.parquet",
        &digest.trim()[..16]
    ));
    std::fs::write(&file, b"half a file").unwrap();
    let other = files.join("audit.auditlog_old.0123456789abcdef.parquet.other");
    std::fs::write(&other, b"another database's").unwrap();
    let report = ok(
        &[
            "archive",
            "--older-than",
            "6 months",
            "--to",
            files.to_str().unwrap(),
            "--json",
        ],
        url,
        &[],
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report[0]["partition"], "audit.auditlog_old");
    assert_eq!(report[0]["rows"], entries);
    assert_eq!(report[0]["location"], format!("file://{}", file.display()));
    assert_eq!(std::fs::read(&other).unwrap(), b"another database's");
    assert!(
        db.psql("SELECT to_regclass('audit.auditlog_old') IS NULL")
            .unwrap()
            .contains('t'),
        "the archived partition is dropped"
    );
    // A second run finds nothing more to do.
    let again = ok(
        &[
            "archive",
            "--older-than",
            "6 months",
            "--to",
            files.to_str().unwrap(),
        ],
        url,
        &[],
    );
    assert!(again.contains("nothing to archive"), "{again}");

    // DuckDB reads exactly the rows that left the database.
    let glob = format!("{}/*.parquet", files.display());
    assert_eq!(rows_in_files(&glob), expected);
    // One file, zstd, row groups sorted by record key.
    let meta = duckdb(&format!(
        r#"
import duckdb, json
r = duckdb.sql("""SELECT count(DISTINCT file_name), min(compression), max(compression), count(DISTINCT row_group_id)
    FROM parquet_metadata('{glob}')""").fetchall()[0]
print(json.dumps(list(r)))
"#
    ));
    assert_eq!(meta[0], 1);
    assert_eq!(meta[1], "ZSTD");
    assert_eq!(meta[2], "ZSTD");

    // The record's history: live and archived entries.
    let live_only = ok(&["history", "users", "42", "--json"], url, &[]);
    let live_only: Value = serde_json::from_str(&live_only).unwrap();
    assert_eq!(live_only.as_array().unwrap().len(), 1, "one live entry");
    let with_archive = ok(
        &["history", "users", "42", "--archived", "--json"],
        url,
        &[],
    );
    let with_archive: Value = serde_json::from_str(&with_archive).unwrap();
    let before: Value = serde_json::from_str(&history_before).unwrap();
    let archived_part: Vec<&Value> = with_archive.as_array().unwrap()[1..].iter().collect();
    let mut before_shifted: Vec<Value> = before.as_array().unwrap().clone();
    // history_before was taken after the shift in time, so the entries are the same.
    before_shifted.retain(|e| e["id"] != live_only[0]["id"]);
    assert_eq!(
        archived_part.into_iter().cloned().collect::<Vec<_>>(),
        before_shifted
    );
    assert!(ok(&["verify", "--seals", seals.to_str().unwrap()], url, &[]).starts_with("ok:"));

    // Erasure: one record's email and name, and a user id in contexts.
    let erased = ok(
        &[
            "redact",
            "--table",
            "users",
            "--key",
            "42",
            "--columns",
            "email,name",
            "--reason",
            "GDPR request 17",
        ],
        url,
        &[],
    );
    assert!(erased.contains("archived entries"), "{erased}");
    ok(
        &[
            "redact",
            "--user",
            SECRET_USER,
            "--reason",
            "GDPR request 18",
        ],
        url,
        &[],
    );
    // Erased already: refused, nothing recorded.
    let again = pg_audit(
        &[
            "redact",
            "--table",
            "users",
            "--key",
            "42",
            "--columns",
            "email,name",
            "--reason",
            "GDPR request 17, again",
        ],
        url,
        &[],
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing was recorded"));
    for secret in [SECRET_EMAIL, SECRET_NAME, SECRET_USER] {
        let in_db = db
            .psql(&format!(
                "SELECT count(*) FROM audit.auditlog AS l WHERE l::text LIKE '%{secret}%';
                 SELECT count(*) FROM audit.auditlog_seals AS s WHERE s::text LIKE '%{secret}%';
                 SELECT count(*) FROM audit.auditlog_redactions AS r WHERE r::text LIKE '%{secret}%';
                 SELECT count(*) FROM audit.auditlog_archives AS a WHERE a::text LIKE '%{secret}%';"
            ))
            .unwrap();
        assert!(
            in_db.lines().all(|l| l.trim() == "0"),
            "{secret} left in the database: {in_db}"
        );
        let in_files = duckdb(&format!(
            r#"
import duckdb, json
print(json.dumps(duckdb.sql("""SELECT count(*) FROM read_parquet('{glob}') AS t
    WHERE concat_ws('|', t.new_values, t.old_values, t.context) LIKE '%{secret}%'""").fetchall()[0][0]))
"#
        ));
        assert_eq!(in_files, 0, "{secret} left in the archive");
        let raw = std::fs::read(&file).unwrap();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the file's bytes"
        );
    }
    let verified = ok(
        &["verify", "--seals", seals.to_str().unwrap(), "--json"],
        url,
        &[],
    );
    let verified: Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["redactions"], 2);
    assert!(
        verified["redacted_values"].as_i64().unwrap() >= 5,
        "{verified}"
    );
    // The rest of the archive is as it was.
    let after = rows_in_files(&glob);
    assert_eq!(after.as_array().unwrap().len(), entries);

    // Tampering, each reported.
    let live_id: i64 = live_only[0]["id"].as_i64().unwrap();
    let first_live = db
        .psql("SELECT min(id) FROM audit.auditlog")
        .unwrap()
        .trim()
        .parse::<i64>()
        .unwrap();
    assert_eq!(first_live, live_id);
    ok(&["seal"], url, &[]);
    let altered = |sql: &str, expect: &str| {
        db.psql(&format!("BEGIN; {sql}")).ok();
        let out = pg_audit(&["verify", "--seals", seals.to_str().unwrap()], url, &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{sql}: {text}");
        assert!(
            text.contains(expect),
            "{sql}: expected {expect:?} in {text}"
        );
    };
    db.psql(&format!(
        "CREATE TABLE keep AS SELECT * FROM audit.auditlog WHERE id = {live_id}"
    ))
    .unwrap();
    // An erased value put back: its digest matches, yet it is a finding.
    altered(
        &format!(
            "UPDATE audit.auditlog SET new_values = new_values || '{{\"email\": \"now@example.com\"}}' WHERE id = {live_id}; COMMIT;"
        ),
        &format!(
            "entry {live_id}: the value of new_values \"email\" that redaction 1 erased is present again"
        ),
    );
    altered(
        &format!(
            "UPDATE audit.auditlog SET new_values = new_values || '{{\"name\": \"Mallory\"}}' WHERE id = {live_id}; COMMIT;"
        ),
        &format!("entry {live_id} was changed"),
    );
    altered(
        &format!("DELETE FROM audit.auditlog WHERE id = {live_id}; COMMIT;"),
        &format!("entry {live_id} was deleted"),
    );
    altered(
        "INSERT INTO audit.auditlog SELECT * FROM keep; INSERT INTO audit.auditlog SELECT * FROM keep; COMMIT;",
        &format!("entry {live_id} appears twice"),
    );
    // An archived file rewritten with a changed value.
    db.psql(&format!(
        "DELETE FROM audit.auditlog WHERE id = {live_id}; INSERT INTO audit.auditlog SELECT * FROM keep;"
    ))
    .unwrap();
    assert!(ok(&["verify"], url, &[]).starts_with("ok:"));
    duckdb(&format!(
        r#"
import duckdb, json
duckdb.sql("""COPY (SELECT * REPLACE (CASE WHEN id = 7 THEN '{{"id": 7, "name": "Mallory"}}' ELSE new_values END AS new_values)
    FROM read_parquet('{f}') ORDER BY record_key NULLS LAST, id) TO '{f}.new' (FORMAT parquet)""")
print(json.dumps(1))
"#,
        f = file.display()
    ));
    std::fs::rename(format!("{}.new", file.display()), &file).unwrap();
    let out = pg_audit(&["verify"], url, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("differs from what the catalogue recorded"),
        "{text}"
    );
    assert!(text.contains("entry 7 was changed"), "{text}");
}

/// A free port on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An S3-compatible server (moto; `scripts/test` installs it with pip), killed at the end.
struct S3(Child, u16);

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3_server() -> S3 {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "python3 runs moto's server (pip install 'moto[server]'; `scripts/test` installs it)",
        );
    let mut server = S3(child, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            server
                .0
                .try_wait()
                .expect("the S3 server's status")
                .is_none(),
            "moto's S3 server exited at once: run the tests with `scripts/test`, which installs \
             it, or `pip install 'moto[server]' boto3`"
        );
        assert!(Instant::now() < deadline, "the S3 server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

#[test]
fn archive_to_s3_reads_back_and_redacts_in_place() {
    let s3 = s3_server();
    let endpoint = format!("http://127.0.0.1:{}", s3.1);
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let made = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import boto3; boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='audit-archive')"
            ),
        ])
        .status()
        .expect("python3 with boto3");
    assert!(made.success(), "the bucket is made");

    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database("archive_s3").expect("database");
    let url = db.url();
    let partition = fill(&db);
    let expected = rows_in_database(&db, &partition);
    // Archived before sealing begins: the first seal starts after it.
    let report = ok(
        &[
            "archive",
            "--older-than",
            "6 months",
            "--to",
            "s3://audit-archive/prod/logs",
            "--json",
        ],
        url,
        &env,
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    let location = report[0]["location"].as_str().unwrap();
    let object = location
        .strip_prefix("s3://audit-archive/")
        .expect("the object's URL");
    assert!(
        object.starts_with("prod/logs/audit.auditlog_old.") && object.ends_with(".parquet"),
        "{location}"
    );
    seal_all(&db, &[]);
    // DuckDB reads the object as it is (downloaded).
    let local = tempdir("archive_s3").join("copy.parquet");
    let fetched = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import boto3; boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').download_file('audit-archive', '{object}', '{}')",
                local.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(fetched.success());
    assert_eq!(rows_in_files(local.to_str().unwrap()), expected);

    let history = ok(
        &["history", "users", "42", "--archived", "--json"],
        url,
        &env,
    );
    let history: Value = serde_json::from_str(&history).unwrap();
    assert!(history.as_array().unwrap().len() >= 4, "{history}");
    let verified = ok(&["verify"], url, &env);
    assert!(verified.starts_with("ok:"), "{verified}");
    assert!(
        verified.contains("older than the first seal, not covered"),
        "{verified}"
    );
    // An unreachable store is an error, not a finding.
    let unreachable = pg_audit(
        &["verify"],
        url,
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ALLOW_HTTP", "true"),
        ],
    );
    assert_eq!(unreachable.status.code(), Some(2));
    let plain_http = pg_audit(
        &["history", "users", "42", "--archived"],
        url,
        &[("AWS_ENDPOINT_URL", endpoint.as_str())],
    );
    assert!(
        String::from_utf8_lossy(&plain_http.stderr).contains("AWS_ALLOW_HTTP=true"),
        "{}",
        String::from_utf8_lossy(&plain_http.stderr)
    );
    ok(
        &[
            "redact", "--table", "users", "--key", "42", "--reason", "erase 42",
        ],
        url,
        &env,
    );
    assert!(ok(&["verify"], url, &env).starts_with("ok:"));
    let history = ok(
        &["history", "users", "42", "--archived", "--json"],
        url,
        &env,
    );
    assert!(
        !history.contains(SECRET_EMAIL) && !history.contains(SECRET_NAME),
        "{history}"
    );
    assert!(history.contains("[redacted]"));
    // A row put in below the first seal, with an archived entry's id.
    db.psql(
        "INSERT INTO audit.auditlog (id, changed_at, operation, schema_name, table_name, db_user)
         VALUES (5, now(), 'TRUNCATE', 'public', 'users', 'mallory')",
    )
    .unwrap();
    let out = pg_audit(&["verify"], url, &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("entry 5 is in the log below the first seal"),
        "{text}"
    );
    assert!(
        text.contains("entry 5 is both in the log and in an archived file"),
        "{text}"
    );
}

#[test]
fn bad_input_is_refused_naming_the_fix() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server.create_database("archive_errors").expect("database");
    let url = db.url();
    let _ = fill(&db);
    let refused = |args: &[&str], expect: &str| {
        let out = pg_audit(args, url, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
    };
    let dir = tempdir("archive_errors");
    let to = dir.to_str().unwrap();
    refused(
        &[
            "archive",
            "--older-than",
            "6 months",
            "--to",
            "ftp://host/x",
        ],
        "s3://bucket/prefix",
    );
    refused(
        &["archive", "--older-than", "half a year", "--to", to],
        "an interval such as",
    );
    refused(
        &["redact", "--table", "users", "--key", "42", "--reason", " "],
        "--reason is empty",
    );
    refused(&["redact", "--reason", "x"], "--table and --key");
    refused(
        &["archive", "--older-than", "-1 day", "--to", to],
        "not a positive interval",
    );
    refused(
        &[
            "redact",
            "--table",
            "users",
            "--key",
            "42",
            "--columns",
            "emial",
            "--reason",
            "x",
        ],
        "has no column \"emial\"",
    );
    refused(
        &[
            "redact",
            "--table",
            "users",
            "--key",
            "42",
            "--columns",
            "id",
            "--reason",
            "x",
        ],
        "is part of the key of",
    );
    refused(
        &[
            "redact", "--table", "users", "--key", "999999", "--reason", "x",
        ],
        "nothing was recorded",
    );
    refused(
        &["redact", "--user", "", "--reason", "x"],
        "--user is empty",
    );
    refused(
        &["redact", "--user", "nobody-at-all", "--reason", "x"],
        "nothing was recorded",
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM audit.auditlog_redactions")
            .unwrap()
            .trim(),
        "0",
        "a refused redaction records nothing"
    );
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    refused(
        &["verify", "--seals", empty.to_str().unwrap()],
        "holds no seals",
    );
    // Once sealing is in use, a partition is not archived before its rows are sealed.
    seal_all(&db, &[]);
    db.psql("INSERT INTO audit.auditlog (changed_at, operation, schema_name, table_name, db_user) \
               VALUES (date_trunc('month', now() - interval '8 months'), 'TRUNCATE', 'public', 'users', 'x')")
        .expect("a late row in the old partition");
    refused(
        &["archive", "--older-than", "6 months", "--to", to],
        "pg-audit seal",
    );
    assert!(
        db.psql("SELECT to_regclass('audit.auditlog_old') IS NOT NULL")
            .unwrap()
            .contains('t'),
        "nothing is dropped"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pg-audit-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// docs/digest.md is enough to verify without pg-audit: `third_party_verify.py` (Python's
/// standard library and DuckDB) recomputes the seals from the exported file and the Parquet
/// files, agrees with `pg-audit verify`, accounts for an erasure only with its recorded
/// digests, and reports a changed, removed or inserted row and an altered or removed seal.
#[test]
fn an_independent_verifier_written_from_the_docs_agrees_and_catches_tampering() {
    let server = pg_audit_tempdb::shared().expect("test server");
    let db = server
        .create_database("archive_third_party")
        .expect("database");
    let url = db.url();
    fill(&db);
    let dir = tempdir("archive_third_party");
    let files = dir.join("files");
    seal_all(&db, &["--max-rows", "700"]);
    ok(
        &[
            "archive",
            "--older-than",
            "6 months",
            "--to",
            files.to_str().unwrap(),
        ],
        url,
        &[],
    );
    ok(
        &[
            "redact",
            "--table",
            "users",
            "--key",
            "42",
            "--columns",
            "email",
            "--reason",
            "erasure request",
        ],
        url,
        &[],
    );
    assert!(ok(&["verify"], url, &[]).starts_with("ok:"));
    let seals = dir.join("seals.jsonl");
    ok(&["seal", "--export", seals.to_str().unwrap()], url, &[]);
    let erased = dir.join("erased.jsonl");
    std::fs::write(
        &erased,
        db.psql(
            "SELECT json_build_object('entry_id', entry_id, 'column_name', column_name, 'key', key,
                                      'digest', encode(digest, 'hex'))
               FROM audit.auditlog_redacted_values",
        )
        .unwrap(),
    )
    .unwrap();
    let parquet: Vec<String> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_owned())
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    assert_eq!(parquet.len(), 1, "{parquet:?}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/third_party_verify.py");
    let verify = |seals: &std::path::Path, file: &str, with_erased: bool| -> (bool, String) {
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(seals).arg(file);
        if with_erased {
            cmd.arg("--erased").arg(&erased);
        }
        let out = cmd
            .output()
            .expect("python3 runs (`scripts/test` installs DuckDB)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let file = &parquet[0];
    let (good, text) = verify(&seals, file, true);
    assert!(good, "{text}");
    assert!(text.starts_with("ok: "), "{text}");
    assert!(
        !text.starts_with("ok: 0 seal"),
        "some seal is checked: {text}"
    );
    // Without the erased value's recorded digest, the erasure is a change.
    let (good, text) = verify(&seals, file, false);
    assert!(!good && text.contains("does not match"), "{text}");

    // The file altered: a value changed, a row removed, a row inserted.
    let tampered = dir.join("tampered.parquet");
    let tampered = tampered.to_str().unwrap();
    for (what, query) in [
        (
            "a value changed",
            "SELECT * REPLACE (CASE WHEN id = (SELECT min(id) + 5 FROM f) THEN 'mallory' ELSE db_user END AS db_user) FROM f",
        ),
        (
            "a row removed",
            "SELECT * FROM f WHERE id <> (SELECT min(id) + 5 FROM f)",
        ),
        (
            "a row inserted",
            "SELECT * FROM f UNION ALL (SELECT * FROM f WHERE id = (SELECT min(id) + 5 FROM f))",
        ),
    ] {
        duckdb(&format!(
            "import duckdb, json
con = duckdb.connect()
con.execute(\"CREATE VIEW f AS SELECT * FROM read_parquet('{file}')\")
con.execute(\"COPY ({query}) TO '{tampered}' (FORMAT parquet)\")
print(json.dumps(True))"
        ));
        let (good, text) = verify(&seals, tampered, true);
        assert!(!good && text.contains("does not match"), "{what}: {text}");
    }

    // The seals altered: a hash changed, a seal removed.
    let text = std::fs::read_to_string(&seals).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    let altered = dir.join("altered.jsonl");
    let mut first: Value = serde_json::from_str(lines[0]).unwrap();
    let hash = first["hash"].as_str().unwrap().to_owned();
    let flipped = if hash.starts_with('0') { "1" } else { "0" };
    first["hash"] = Value::String(format!("{flipped}{}", &hash[1..]));
    let mut rest: Vec<String> = vec![first.to_string()];
    rest.extend(lines[1..].iter().map(|l| (*l).to_owned()));
    std::fs::write(&altered, rest.join("\n")).unwrap();
    let (good, text) = verify(&altered, file, true);
    assert!(!good, "a seal's hash altered: {text}");
    let mut without: Vec<&str> = lines.clone();
    without.remove(1);
    std::fs::write(&altered, without.join("\n")).unwrap();
    let (good, text) = verify(&altered, file, true);
    assert!(
        !good && text.contains("does not follow"),
        "a seal removed: {text}"
    );
}

/// The catalogue records each file under its real name: a log whose name holds characters an
/// object store encodes (`%`) and a URL encodes (a space) is archived to a file that exists at
/// the recorded URL, read there by DuckDB, and read back by `history --archived` and `verify`.
#[test]
fn the_catalogue_records_each_files_real_name() {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database("archive_odd_name")
        .unwrap();
    let url = db.url();
    let log = ["--log-name", "odd log%"];
    let with_log = |args: &[&str]| -> String {
        let mut all = args.to_vec();
        all.extend_from_slice(&log);
        ok(&all, url, &[])
    };
    db.psql(&with_log(&["sql", "table"])).expect("the log");
    db.psql("CREATE TABLE users (id int PRIMARY KEY, email text)")
        .expect("table");
    db.psql(&with_log(&["sql", "trigger", "--table", "users"]))
        .expect("trigger");
    db.psql(
        r#"DO $$
         DECLARE lo timestamptz := date_trunc('month', now() - interval '8 months');
         BEGIN
             EXECUTE format('CREATE TABLE audit.%I PARTITION OF audit.%I FOR VALUES FROM (%L) TO (%L)',
                            'odd log%_old', 'odd log%', lo, lo + interval '1 month');
         END $$;
         INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 50) AS g;
         UPDATE audit."odd log%" SET changed_at = date_trunc('month', now() - interval '8 months') + id * interval '1 second';
         INSERT INTO users VALUES (51, 'now@example.com');"#,
    )
    .expect("workload");
    let deadline = Instant::now() + Duration::from_secs(120);
    while db
        .psql(r#"SELECT count(*) FROM audit."odd log%" WHERE id > (SELECT coalesce(max(last_id), 0) FROM audit."odd log%_seals")"#)
        .expect("count")
        .trim()
        != "0"
    {
        assert!(Instant::now() < deadline, "rows stayed unsealed");
        with_log(&["seal"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let dir = tempdir("odd-name");
    let to = dir.to_str().unwrap();
    with_log(&["archive", "--older-than", "6 months", "--to", to]);
    let location = db
        .psql(r#"SELECT location FROM audit."odd log%_archives""#)
        .expect("catalogue");
    let location = location.trim();
    assert!(location.starts_with("file://"), "{location}");
    let found = duckdb(&format!(
        r#"
import duckdb, json, os, urllib.parse
path = urllib.parse.unquote(urllib.parse.urlparse({location:?}).path)
rows = duckdb.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()[0]
print(json.dumps({{"exists": os.path.isfile(path), "name": os.path.basename(path), "rows": rows,
                   "listed": sorted(os.listdir({to:?}))}}))
"#
    ));
    assert_eq!(found["exists"], true, "{found}");
    assert_eq!(found["rows"], 50, "{found}");
    assert_eq!(
        found["listed"],
        serde_json::json!([found["name"]]),
        "{found}"
    );
    let history = with_log(&["history", "users", "7", "--archived"]);
    assert!(history.contains("user7@example.com"), "{history}");
    let verified = with_log(&["verify"]);
    assert!(verified.starts_with("ok:"), "{verified}");
}
