//! What the log's owner — the party seals and drift checks guard against — could do to make
//! `verify` and `check` say all is well, and what they report instead.

#[path = "support/hostile.rs"]
mod hostile;

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use pg_audit_tempdb::TempDatabase;

fn pg_audit(args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("pg-audit runs")
}

fn ok(args: &[&str], url: &str) -> String {
    let out = pg_audit(args, url);
    assert!(
        out.status.success(),
        "pg-audit {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Held by the tests that run `check`: one of them grants cluster-wide things (a parameter's
/// `SET`, membership in the owner's role) that every other database's check would report.
static CHECKS: Mutex<()> = Mutex::new(());

fn checks() -> MutexGuard<'static, ()> {
    CHECKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `pg-audit ARGS`, which must exit 1 (a finding); its output.
fn finds(args: &[&str], url: &str) -> String {
    let out = pg_audit(args, url);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pg-audit {args:?} should find something: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn psql(db: &TempDatabase<'_>, sql: &str) -> String {
    db.psql(sql).unwrap_or_else(|e| panic!("{e}\n{sql}"))
}

/// A log with `users` audited and a few changes, every row sealed.
fn sealed(hint: &str) -> TempDatabase<'static> {
    let db = audited(hint, "id int PRIMARY KEY, email text, name text");
    psql(
        &db,
        "INSERT INTO users SELECT g, 'u' || g || '@example.com', 'Name ' || g FROM generate_series(1, 20) AS g;
         UPDATE users SET email = 'new@example.com' WHERE id = 7;
         DELETE FROM users WHERE id = 9;",
    );
    seal_all(&db, &[]);
    db
}

/// A database with the log and an audited table `users` of `columns`.
fn audited(hint: &str, columns: &str) -> TempDatabase<'static> {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database(hint)
        .unwrap();
    let url = db.url().to_owned();
    psql(&db, &ok(&["sql", "table"], &url));
    psql(&db, &format!("CREATE TABLE users ({columns})"));
    psql(&db, &ok(&["sql", "trigger", "--table", "users"], &url));
    db
}

/// Runs `pg-audit seal` (with `args`) until every row is sealed: a run seals only rows whose
/// transactions have all ended, and other tests' transactions on the shared server hold it
/// back a while.
fn seal_all(db: &TempDatabase<'_>, args: &[&str]) {
    let mut seal = vec!["seal"];
    seal.extend_from_slice(args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        ok(&seal, db.url());
        let unsealed = psql(
            db,
            "SELECT count(*) FROM audit.auditlog WHERE id > (SELECT coalesce(max(last_id), 0) FROM audit.auditlog_seals)",
        );
        if unsealed.trim() == "0" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "rows stayed unsealed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn verify_recomputes_without_the_owners_functions() {
    let db = sealed("trust_verify");
    let url = db.url().to_owned();
    let dir = std::env::temp_dir().join(format!("pg-audit-trust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seals = dir.join("seals.jsonl");
    ok(&["seal", "--export", seals.to_str().unwrap()], &url);
    assert!(ok(&["verify", "--seals", seals.to_str().unwrap()], &url).contains("ok:"));

    // The owner changes a sealed row, and replaces the functions that recompute seals with
    // ones that answer what the seals hold.
    psql(
        &db,
        r#"UPDATE audit.auditlog SET new_values = '{"id": 7, "email": "forged@example.com", "name": "Name 7"}'
            WHERE operation = 'UPDATE' AND record_pk = '{"id": 7}';
           CREATE OR REPLACE FUNCTION audit.auditlog_seal_of(from_id bigint, upto_id bigint, prev_hash bytea, archived regclass DEFAULT NULL)
             RETURNS TABLE (row_count bigint, rows bytea, hash bytea) LANGUAGE sql
             AS $$ SELECT s.row_count, s.rows, s.hash FROM audit.auditlog_seals AS s WHERE s.first_id = from_id $$;
           CREATE OR REPLACE FUNCTION audit.auditlog_unerased(archived regclass DEFAULT NULL)
             RETURNS TABLE (entry_id bigint, column_name text, key text, redaction_id bigint) LANGUAGE sql
             AS $$ SELECT NULL::bigint, NULL::text, NULL::text, NULL::bigint WHERE false $$;"#,
    );
    let found = finds(&["verify", "--seals", seals.to_str().unwrap()], &url);
    assert!(found.contains("was changed after seal"), "{found}");
    assert!(found.contains("ALTERED"), "{found}");
    // And check names the replaced functions.
    let drift = finds(&["check"], &url);
    assert!(
        drift.contains("function \"audit\".\"auditlog_seal_of\"(bigint, bigint, bytea, regclass) differs from what this version of pg-audit installs"),
        "{drift}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_runs_its_own_logic_whatever_the_check_function_says() {
    let _checks = checks();
    let db = sealed("trust_check");
    let url = db.url().to_owned();
    assert!(ok(&["check"], &url).contains("ok:"));
    // Every audit trigger off, and the check function replaced by one that finds nothing.
    psql(
        &db,
        "ALTER TABLE users DISABLE TRIGGER USER;
         CREATE OR REPLACE FUNCTION audit.auditlog_check()
           RETURNS TABLE (table_schema text, table_name text, problem text) LANGUAGE sql
           AS $$ SELECT NULL::text, NULL::text, NULL::text WHERE false $$;",
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM audit.auditlog_check()").trim(),
        "0"
    );
    let drift = finds(&["check"], &url);
    for trigger in ["pg_audit_insert", "pg_audit_update", "pg_audit_delete"] {
        assert!(
            drift.contains(&format!("trigger {trigger} is disabled")),
            "{drift}"
        );
    }
    // Cron and pg_cron take the function's word: the program reports it replaced.
    assert!(
        drift.contains("function \"audit\".\"auditlog_check\"() differs from what this version of pg-audit installs"),
        "{drift}"
    );
}

/// What an owner or a superuser can do to the log that loses or forges entries without
/// touching a trigger: each is reported by `check` (exit 1, every problem listed, never an
/// error that hides the others).
#[test]
fn check_reports_what_loses_entries_around_the_triggers() {
    let _checks = checks();
    let db = sealed("trust_around");
    let url = db.url().to_owned();
    let app = format!("audit_test_role_{}_trust_app", std::process::id());
    let partition = psql(
        &db,
        "SELECT c.oid::regclass FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'audit.auditlog'::regclass AND c.relname <> 'auditlog_default' LIMIT 1",
    );
    let partition = partition.trim();
    psql(
        &db,
        &format!(
            "DROP ROLE IF EXISTS {app}; CREATE ROLE {app};
             ALTER TABLE {partition} SET UNLOGGED;
             ALTER TABLE audit.auditlog_seals SET UNLOGGED;
             GRANT USAGE, UPDATE ON SEQUENCE audit.auditlog_id_seq TO {app};
             DO $$ BEGIN EXECUTE format('GRANT %I TO {app}', current_user); END $$;
             CREATE PUBLICATION pg_audit_audit_auditlog FOR TABLE users WHERE (id < 100);
             GRANT SET ON PARAMETER session_replication_role TO {app};"
        ),
    );
    let drift = finds(&["check"], &url);
    for expected in [
        format!("{partition} is UNLOGGED: a crash empties it"),
        "audit.auditlog_seals is UNLOGGED".to_owned(),
        format!("audit.auditlog_id_seq grants UPDATE to {app}: new entries could reuse ids"),
        format!("role {app} is a member of"),
        "publication pg_audit_audit_auditlog filters the rows of public.users (WHERE (id < 100))"
            .to_owned(),
        format!("{app} may set session_replication_role"),
    ] {
        assert!(drift.contains(&expected), "{expected}\n{drift}");
    }
    psql(
        &db,
        &format!(
            "REVOKE SET ON PARAMETER session_replication_role FROM {app};
             DROP PUBLICATION pg_audit_audit_auditlog;
             DO $$ BEGIN EXECUTE format('REVOKE %I FROM {app}', current_user); END $$;
             DROP OWNED BY {app}; DROP ROLE {app};"
        ),
    );
}

#[test]
fn a_redaction_recorded_by_hand_of_what_redact_refuses_is_tampering() {
    let db = sealed("trust_redaction");
    let url = db.url().to_owned();
    // The owner "redacts" record 5's key: recorded with the right digest, so the row's digest
    // would come out as sealed if verify took any recorded erasure.
    psql(
        &db,
        r#"WITH r AS (
             INSERT INTO audit.auditlog_redactions (reason, table_schema, table_name, record_pk, columns, target)
             VALUES ('hide it', 'public', 'users', '{"id": 5}', NULL, 'every column but the key')
             RETURNING redaction_id)
           INSERT INTO audit.auditlog_redacted_values (redaction_id, entry_id, column_name, key, digest)
           SELECT r.redaction_id, l.id, 'record_pk', 'id',
                  sha256(convert_to('id', 'UTF8') || '\x00'::bytea || convert_to('5', 'UTF8'))
             FROM r, audit.auditlog AS l WHERE l.record_pk = '{"id": 5}';
           UPDATE audit.auditlog SET record_pk = '{"id": "[redacted]"}' WHERE record_pk = '{"id": 5}';"#,
    );
    let found = finds(&["verify"], &url);
    assert!(
        found.contains("records an erasure of record_pk \"id\" of entry"),
        "{found}"
    );
    assert!(found.contains("was changed after seal"), "{found}");
}

#[test]
fn no_row_a_writer_stores_makes_a_command_fail() {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database("trust_hostile_rows")
        .unwrap();
    let url = db.url().to_owned();
    psql(&db, &ok(&["sql", "table"], &url));
    psql(&db, hostile::TABLE);
    psql(&db, &ok(&["sql", "trigger", "--table", "h"], &url));
    psql(&db, &hostile::writes());
    for id in ["1", "2"] {
        let out = ok(&["history", "h", id], &url);
        assert!(out.contains("UPDATE"), "{out}");
        let json = ok(&["history", "h", id, "--json"], &url);
        serde_json::from_str::<serde_json::Value>(&json).expect("--json is JSON");
    }
    // Control and bidirectional characters are escaped on a terminal's table.
    let table = ok(&["history", "h", "2"], &url);
    assert!(
        table.contains(r"\u{202e}") && !table.contains('\u{202e}'),
        "{table}"
    );
    for txid in psql(&db, "SELECT DISTINCT txid FROM audit.auditlog").lines() {
        ok(&["tx", txid.trim()], &url);
        ok(&["tx", txid.trim(), "--json"], &url);
    }
}

#[test]
fn a_context_key_given_twice_is_stored_once_and_redaction_erases_what_readers_see() {
    let db = sealed("trust_duplicate_key");
    let url = db.url().to_owned();
    psql(
        &db,
        r#"BEGIN;
           SELECT set_config('pg_audit.context', '{"user_id":"victim@example.com","user_id":"other-user"}', true);
           UPDATE users SET name = 'changed' WHERE id = 3;
           COMMIT;"#,
    );
    let stored = psql(
        &db,
        "SELECT context::text FROM audit.auditlog WHERE record_pk = '{\"id\": 3}' AND operation = 'UPDATE'",
    );
    assert_eq!(stored.trim(), r#"{"user_id": "other-user"}"#);
    // The victim's id was never stored: there is nothing of theirs to erase.
    let out = pg_audit(
        &["redact", "--user", "victim@example.com", "--reason", "GDPR"],
        &url,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no entry, live or archived, holds a value to erase")
    );
    // The one readers see is erased, and the seals still verify.
    ok(
        &["redact", "--user", "other-user", "--reason", "GDPR"],
        &url,
    );
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog WHERE context::text LIKE '%other-user%'"
        )
        .trim(),
        "0"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        ok(&["seal"], &url);
        if psql(&db, "SELECT count(*) FROM audit.auditlog WHERE id > (SELECT max(last_id) FROM audit.auditlog_seals)").trim() == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(ok(&["verify"], &url).contains("ok:"));
}

#[test]
fn redaction_reaches_partitions_prune_detached() {
    let db = audited("trust_detached", "id int PRIMARY KEY, email text");
    let url = db.url().to_owned();
    psql(
        &db,
        "CREATE TABLE audit.auditlog_p20200101 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         INSERT INTO users VALUES (1, 'secret-old@example.com'), (2, 'b@example.com');
         UPDATE audit.auditlog SET changed_at = '2020-01-05';
         UPDATE users SET email = 'secret-new@example.com' WHERE id = 1;",
    );
    ok(&["partitions", "prune", "--older-than", "1 year"], &url);
    assert_eq!(
        psql(&db, "SELECT count(*) FROM audit.auditlog_p20200101 WHERE new_values::text LIKE '%secret-old%'").trim(),
        "1",
        "detached, not dropped"
    );
    let out = ok(
        &[
            "redact",
            "--table",
            "users",
            "--key",
            "1",
            "--columns",
            "email",
            "--reason",
            "GDPR",
            "--json",
        ],
        &url,
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["detached_entries"].as_array().unwrap().len(),
        1,
        "{out}"
    );
    for table in ["audit.auditlog", "audit.auditlog_p20200101"] {
        assert_eq!(
            psql(&db, &format!("SELECT count(*) FROM {table} WHERE old_values::text LIKE '%secret%' OR new_values::text LIKE '%secret%'")).trim(),
            "0",
            "{table}"
        );
    }
}

#[test]
fn a_catalogue_row_pointing_anywhere_is_named_not_read() {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database("trust_catalogue")
        .unwrap();
    let url = db.url().to_owned();
    psql(&db, &ok(&["sql", "table"], &url));
    psql(&db, "CREATE TABLE users (id int PRIMARY KEY, email text)");
    psql(&db, &ok(&["sql", "trigger", "--table", "users"], &url));
    psql(
        &db,
        "CREATE TABLE audit.auditlog_p20200101 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         INSERT INTO users VALUES (1, 'a@example.com');
         UPDATE audit.auditlog SET changed_at = '2020-01-05';
         UPDATE users SET email = 'b@example.com' WHERE id = 1;",
    );
    let dir = std::env::temp_dir().join(format!("pg-audit-catalogue-{}", std::process::id()));
    ok(
        &[
            "archive",
            "--older-than",
            "1 month",
            "--to",
            dir.to_str().unwrap(),
        ],
        &url,
    );
    // The owner adds a catalogue row pointing at a file the archive never wrote.
    psql(
        &db,
        "INSERT INTO audit.auditlog_archives (partition_name, range_start, range_end, location, row_count, bytes, content_sha256)
         VALUES ('audit.auditlog_p20190101', '2019-01-01', '2019-02-01', 'file:///etc/passwd', 1, 1, '\\x00'::bytea)",
    );
    let out = pg_audit(&["history", "users", "1", "--archived"], &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("INSERT") && stdout.contains("UPDATE"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "archived to file:///etc/passwd, which is not a file the archive writes for it"
        ),
        "{stderr}"
    );
    let found = finds(&["verify"], &url);
    assert!(found.contains("file:///etc/passwd"), "{found}");
    // A FIFO named as the archive names its files: not opened (it would hang every reader).
    let fifo = dir.join("audit.auditlog_p20180101.0000000000000000.parquet");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    psql(
        &db,
        &format!(
            "INSERT INTO audit.auditlog_archives (partition_name, range_start, range_end, location, row_count, bytes, content_sha256)
             VALUES ('audit.auditlog_p20180101', '2018-01-01', '2018-02-01', 'file://{}', 1, 1, '\\x0000000000000000'::bytea)",
            fifo.display()
        ),
    );
    let out = Command::new("timeout")
        .args([
            "60",
            env!("CARGO_BIN_EXE_pg-audit"),
            "history",
            "users",
            "1",
            "--archived",
        ])
        .env("DATABASE_URL", &url)
        .output()
        .expect("pg-audit runs");
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a regular file"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `verify --since-last FILE` continues from the last verification that found nothing altered:
/// it recomputes only the seals made since (a row changed in one is found), checks the earlier
/// seals' chain and that the seal it stopped at is unchanged, and writes the file only when
/// nothing is altered; a full `verify` still rereads everything.
#[test]
fn verify_since_last_rechecks_new_seals_and_the_chain_of_the_rest() {
    let db = sealed("trust_since_last");
    let url = db.url().to_owned();
    let dir = std::env::temp_dir().join(format!("pg-audit-since-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("verified.json");
    let _ = std::fs::remove_file(&state);
    let state_arg = state.to_str().unwrap();
    let first = ok(&["verify", "--since-last", state_arg], &url);
    assert!(
        first.starts_with("ok:") && !first.contains("verified before"),
        "{first}"
    );
    let checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(checkpoint["seal_id"].as_i64().unwrap() >= 1, "{checkpoint}");

    // New rows, sealed: only their seal is recomputed.
    psql(
        &db,
        "INSERT INTO users SELECT g, 'later', 'Later' FROM generate_series(100, 110) AS g",
    );
    seal_all(&db, &[]);
    let saved = std::fs::read_to_string(&state).unwrap();
    // A row of a new seal changed: found, and the file is left as it was.
    psql(
        &db,
        "ALTER TABLE audit.auditlog DISABLE TRIGGER USER;
         UPDATE audit.auditlog SET db_user = 'mallory' WHERE id = (SELECT max(id) FROM audit.auditlog);",
    );
    let found = finds(&["verify", "--since-last", state_arg], &url);
    assert!(found.contains("was changed after seal"), "{found}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), saved);
    psql(
        &db,
        "UPDATE audit.auditlog SET db_user = 'postgres' WHERE id = (SELECT max(id) FROM audit.auditlog);",
    );
    let again = ok(&["verify", "--since-last", state_arg], &url);
    assert!(
        again.contains("verified before, their chain checked"),
        "{again}"
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    // A row of a seal verified before changed: only a full verification rereads it.
    psql(
        &db,
        "UPDATE audit.auditlog SET db_user = 'mallory' WHERE id = 1;",
    );
    assert!(ok(&["verify", "--since-last", state_arg], &url).starts_with("ok:"));
    let full = finds(&["verify"], &url);
    assert!(full.contains("was changed after seal"), "{full}");
    psql(
        &db,
        "UPDATE audit.auditlog SET db_user = 'postgres' WHERE id = 1;",
    );
    // The seal it stopped at rewritten: found from the chain alone.
    psql(
        &db,
        &format!(
            "ALTER TABLE audit.auditlog_seals DISABLE TRIGGER USER;
             UPDATE audit.auditlog_seals SET hash = sha256('forged') WHERE seal_id = {};",
            serde_json::from_str::<serde_json::Value>(&saved).unwrap()["seal_id"]
        ),
    );
    let found = finds(&["verify", "--since-last", state_arg], &url);
    assert!(found.contains("it was rewritten since"), "{found}");
    // A garbled file is refused, naming the fix.
    std::fs::write(&state, "not json").unwrap();
    let out = pg_audit(&["verify", "--since-last", state_arg], &url);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("remove it for a full verification"));
}

/// `seal --every SECONDS` keeps sealing on one connection until SIGTERM, saying what each run
/// sealed, and exits 0.
#[test]
fn seal_every_keeps_sealing_until_told_to_stop() {
    let db = sealed("trust_seal_every");
    let url = db.url().to_owned();
    let sealer = std::process::Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(["seal", "--every", "1"])
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    psql(
        &db,
        "INSERT INTO users SELECT g, 'x', 'y' FROM generate_series(200, 240) AS g",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while psql(
        &db,
        "SELECT count(*) FROM audit.auditlog WHERE id > (SELECT coalesce(max(last_id), 0) FROM audit.auditlog_seals)",
    )
    .trim()
        != "0"
    {
        assert!(std::time::Instant::now() < deadline, "the sealer sealed nothing");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &sealer.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = sealer.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    // The 41 rows, in one seal or more: a run that sees other transactions running (other
    // tests share the server) seals up to what the previous run saw.
    let said = String::from_utf8_lossy(&out.stdout);
    let sealed: u64 = said
        .lines()
        .filter_map(|l| {
            l.strip_prefix("sealed ")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(sealed, 41, "{said}");
}

/// `partitions prune --drop` after sealing is recorded (what, when, by whom, which ids), and
/// `verify` takes the rows it removed as pruned, not deleted, names the prunes, and still
/// reports a row deleted by hand, also beside pruned ones in the same seal.
#[test]
fn verify_takes_recorded_prunes_as_pruned_not_deleted() {
    let db = audited("trust_pruned", "id int PRIMARY KEY, email text");
    let url = db.url().to_owned();
    // Ids 1..=10 in an old month's partition, 11..=20 current, and 15 moved to the DEFAULT
    // partition with an old time, which `--drop` deletes: one seal covers all three.
    psql(
        &db,
        "CREATE TABLE audit.auditlog_p20200101 PARTITION OF audit.auditlog FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 10) AS g;
         UPDATE audit.auditlog SET changed_at = '2020-01-05';
         INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(11, 20) AS g;
         UPDATE audit.auditlog SET changed_at = '2019-06-01' WHERE id = 15;",
    );
    seal_all(&db, &[]);
    ok(
        &["partitions", "prune", "--older-than", "1 year", "--drop"],
        &url,
    );
    assert_eq!(
        psql(
            &db,
            "SELECT string_agg(relation || ' ' || action || ' ' || row_count || ' ' || run_starts::text || run_ends::text || ' ' || (pruned_by = session_user), '; ' ORDER BY prune_id) FROM audit.auditlog_prunes"
        )
        .trim(),
        "audit.auditlog_p20200101 dropped 10 {1}{10} true; audit.auditlog_default deleted old rows 1 {15}{15} true"
    );
    let refused = db
        .psql("UPDATE audit.auditlog_prunes SET row_count = 0")
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let out = ok(&["verify"], &url);
    assert!(
        out.contains("audit.auditlog_p20200101 (ids 1..=10, 10 row(s)) dropped at"),
        "{out}"
    );
    assert!(
        out.contains("audit.auditlog_default (ids 15..=15, 1 row(s)) deleted old rows at"),
        "{out}"
    );
    assert!(
        out.contains("ok: ") && out.contains("11 sealed row(s) removed by 2 recorded prune(s)"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&["verify", "--json"], &url)).unwrap();
    assert_eq!(json["pruned_rows"], 11, "{json}");
    assert_eq!(
        json["prunes"][0]["id_runs"],
        serde_json::json!([[1, 10]]),
        "{json}"
    );
    // A row deleted by hand beside the pruned ones is still a deletion.
    psql(&db, "DELETE FROM audit.auditlog WHERE id = 16");
    let out = pg_audit(&["verify"], &url);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("entry 16 was deleted after seal"), "{said}");
}

/// `seal` and `verify --jobs N` read seals' rows on several sessions: the seals they make chain
/// as one session's would, and a verification on four sessions finds what one finds.
#[test]
fn seal_and_verify_on_several_sessions_agree_with_one() {
    let db = audited("trust_jobs", "id int PRIMARY KEY, email text");
    let url = db.url().to_owned();
    psql(
        &db,
        "INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 60) AS g;
         UPDATE users SET email = 'x' || email WHERE id % 3 = 0;",
    );
    seal_all(&db, &["--max-rows", "7", "--jobs", "3"]);
    let seals: u32 = psql(&db, "SELECT count(*) FROM audit.auditlog_seals")
        .trim()
        .parse()
        .unwrap();
    assert!(seals >= 12, "{seals} seals for 80 rows of at most 7");
    let one = ok(&["verify", "--jobs", "1"], &url);
    let four = ok(&["verify", "--jobs", "4"], &url);
    assert!(one.starts_with("ok: "), "{one}");
    assert_eq!(one, four);
    psql(
        &db,
        "ALTER TABLE audit.auditlog DISABLE TRIGGER USER;
         UPDATE audit.auditlog SET new_values = '{\"id\": 50, \"email\": \"forged\"}' WHERE id = 50;",
    );
    for jobs in ["1", "4"] {
        let out = pg_audit(&["verify", "--jobs", jobs], &url);
        assert_eq!(out.status.code(), Some(1), "--jobs {jobs}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("entry 50 was changed after seal"),
            "--jobs {jobs}: {said}"
        );
    }
    let refused = pg_audit(&["verify", "--jobs", "0"], &url);
    assert_eq!(refused.status.code(), Some(2));
}
