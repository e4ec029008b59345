//! Capture from the write-ahead log, against a real server with `wal_level = logical`: the
//! same workload on a trigger-captured table and its WAL-captured twin gives the same entries;
//! the worker killed mid-batch, and the server crashed, lose and repeat nothing; clear errors.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pg_audit::sql::capture::emit_context_sql;
use pg_audit::{AuditLog, Capture, QualifiedName, TriggerSpec};
use pg_audit_tempdb::Cluster;

#[path = "support/http.rs"]
mod http;

fn logical_cluster(name: &str) -> Cluster {
    Cluster::start_private(
        name,
        &[
            ("wal_level", "logical"),
            ("max_replication_slots", "10"),
            ("max_wal_senders", "10"),
        ],
    )
    .expect("a private server starts")
}

fn pg_audit(args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("pg-audit runs")
}

/// A running `pg-audit capture`, killed if the test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pg-audit capture` and waits until its slot exists: changes committed before are not
/// captured.
fn spawn_worker(url: &str, batch_rows: &str) -> Running {
    let worker = start_worker(url, batch_rows);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&pg_audit(&["capture", "status", "--json"], url).stdout)
        .contains("\"slot_exists\":true")
    {
        assert!(
            Instant::now() < deadline,
            "the worker did not create its slot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    worker
}

fn start_worker(url: &str, batch_rows: &str) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_pg-audit"))
            .args([
                "capture",
                "--batch-rows",
                batch_rows,
                "--batch-wait-ms",
                "20",
            ])
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "pg_audit=info,warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pg-audit capture starts"),
    )
}

fn terminate(mut worker: Running) {
    let child = &mut worker.0;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The twin tables, each pair configured alike: (trigger table, WAL table, configure).
type Configure = fn(pg_audit::TriggerSpecBuilder) -> pg_audit::TriggerSpecBuilder;
const PAIRS: [(&str, Configure); 5] = [
    ("plain", |b| b),
    ("masked", |b| b.mask(["secret", "doc", "score"])),
    ("excl", |b| b.exclude_fields(["secret"])),
    ("tracked", |b| b.track_only(["name", "score", "tags"])),
    ("cond", |b| b.condition("NEW.active")),
];

fn install(db: &pg_audit_tempdb::TempDatabase<'_>) {
    let log = AuditLog::new();
    let mut sql = log.create_sql();
    for (name, configure) in PAIRS {
        for (suffix, capture) in [("trig", Capture::Trigger), ("wal", Capture::Wal)] {
            let table = format!("{name}_{suffix}");
            sql.push_str(&format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, name text, secret text, active boolean,
                    score numeric, tags text[], doc jsonb, seen timestamptz, big text,
                    -- The stream leaves generated columns out; the worker computes them.
                    label text GENERATED ALWAYS AS (upper(name) || ':' || coalesce(score::text, '-')) STORED,
                    tag_count int GENERATED ALWAYS AS (cardinality(tags)) STORED);\n"
            ));
            let spec = configure(TriggerSpec::builder(
                QualifiedName::parse(&format!("public.{table}")).unwrap(),
            ))
            .capture(capture)
            .build()
            .unwrap();
            sql.push_str(&spec.install_sql(&log));
        }
    }
    db.batch_execute(&sql)
        .expect("the log and the twins install");
}

/// A deterministic pseudo-random workload, the same statements on both twins of every pair, in
/// the same transactions.
fn workload(seed: u64, transactions: usize) -> Vec<String> {
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut out = Vec::new();
    for i in 0..transactions {
        let mut statements: Vec<String> = Vec::new();
        let ops = 1 + next(4);
        for _ in 0..ops {
            let id = next(40);
            let stmt = match next(14) {
                0..=3 => format!(
                    "INSERT INTO {{t}} VALUES ({id}, 'n{}', 's{}', {}, {}.{}, ARRAY['a,b', NULL, 'q\"x'], '{{\"k\": [1, 2.50, null]}}', '2026-11-30 10:00:00+00', NULL) ON CONFLICT (id) DO NOTHING",
                    next(100),
                    next(100),
                    next(2) == 0,
                    next(1000),
                    next(100)
                ),
                4..=5 => format!("UPDATE {{t}} SET name = 'u{}' WHERE id = {id}", next(100)),
                6 => format!("UPDATE {{t}} SET secret = 'x{}' WHERE id = {id}", next(100)),
                7 => format!(
                    "UPDATE {{t}} SET active = NOT active, score = score + 1 WHERE id = {id}"
                ),
                8 => format!("UPDATE {{t}} SET id = id + 100 WHERE id = {id}"),
                9 => format!("DELETE FROM {{t}} WHERE id = {id}"),
                10 => "UPDATE {t} SET score = score * 2 WHERE id % 3 = 0".to_owned(),
                11 => format!(
                    "UPDATE {{t}} SET big = (SELECT string_agg(md5((g * {id})::text), '') FROM generate_series(1, 4000) AS g) WHERE id = {id}"
                ),
                12 => format!(
                    "UPDATE {{t}} SET tags = tags || 'more'::text, seen = seen + interval '1 day' WHERE id = {id}"
                ),
                _ => "DELETE FROM {t} WHERE id > 120".to_owned(),
            };
            statements.push(stmt);
        }
        let context = match next(3) {
            0 => None,
            _ => Some(format!(
                r#"{{"user_id": "u{}", "change_reason": "step {i}", "metadata": {{"n": {i}}}}}"#,
                next(5)
            )),
        };
        let mut tx = String::from("BEGIN;\n");
        if let Some(ctx) = &context {
            let quoted = pg_audit::quote_literal(ctx).unwrap();
            tx.push_str(&format!(
                "SET LOCAL pg_audit.context = {quoted}; SELECT {};\n",
                emit_context_sql(&quoted)
            ));
        }
        let savepoint = next(5) == 0;
        for (k, stmt) in statements.iter().enumerate() {
            if savepoint && k == 0 {
                tx.push_str("SAVEPOINT s;\n");
            }
            for (name, _) in PAIRS {
                for suffix in ["trig", "wal"] {
                    tx.push_str(&stmt.replace("{t}", &format!("{name}_{suffix}")));
                    tx.push_str(";\n");
                }
            }
            if savepoint && k == 0 {
                tx.push_str("ROLLBACK TO SAVEPOINT s;\n");
            }
        }
        tx.push_str(match next(8) {
            0 => "ROLLBACK;\n",
            _ => "COMMIT;\n",
        });
        out.push(tx);
        // Now and then, a TRUNCATE or a column added and dropped while the worker runs.
        if i % 37 == 36 {
            let mut tx = String::from("BEGIN;\n");
            for (name, _) in PAIRS {
                for suffix in ["trig", "wal"] {
                    tx.push_str(&format!("TRUNCATE {name}_{suffix};\n"));
                }
            }
            tx.push_str("COMMIT;\n");
            out.push(tx);
        }
        if i % 53 == 20 {
            for (name, _) in PAIRS {
                for suffix in ["trig", "wal"] {
                    out.push(format!(
                        "ALTER TABLE {name}_{suffix} ADD COLUMN extra{i} int DEFAULT {i};\n"
                    ));
                }
            }
        }
        if i % 53 == 40 {
            let added = i - 20;
            for (name, _) in PAIRS {
                for suffix in ["trig", "wal"] {
                    out.push(format!(
                        "ALTER TABLE {name}_{suffix} DROP COLUMN extra{added};\n"
                    ));
                }
            }
        }
    }
    out
}

/// Every entry of `table` as comparable text: everything but the capture-dependent times, the
/// id and the table's name; `db_user` only where the transaction carried a context.
fn entries(db: &pg_audit_tempdb::TempDatabase<'_>, table: &str) -> Vec<String> {
    let out = db
        .psql(&format!(
            "SELECT ROW(txid, operation, record_pk, old_record_pk, old_values, new_values,
                    context::jsonb, CASE WHEN context IS NOT NULL THEN db_user END,
                    record_key IS NOT DISTINCT FROM pg_catalog.jsonb_hash_extended(record_pk, pg_catalog.hashtext('public.' || table_name)))::text
               FROM audit.auditlog WHERE table_name = '{table}' AND operation <> 'DDL'
                AND (record_pk ->> 'id')::int IS DISTINCT FROM 100000 AND NOT coalesce((record_pk ->> 'id')::int >= 100000, false)
              ORDER BY txid, id"
        ))
        .unwrap();
    out.lines().map(str::to_owned).collect()
}

/// Sentinel rows (ids from 100000) mark the end of a workload; comparisons leave them out.
static SENTINEL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100_000);

/// Waits until the worker wrote a sentinel transaction run after the workload.
fn wait_for_sentinel(db: &pg_audit_tempdb::TempDatabase<'_>, worker: &mut Running) {
    let id = SENTINEL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    db.batch_execute(&format!(
        "INSERT INTO plain_wal (id, name) VALUES ({id}, 'sentinel')"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = db
            .psql(&format!("SELECT count(*) FROM audit.auditlog WHERE table_name = 'plain_wal' AND record_pk = '{{\"id\": {id}}}'"))
            .unwrap();
        if n.trim() == "1" {
            break;
        }
        assert!(
            worker.0.try_wait().unwrap().is_none(),
            "the worker stopped before writing the sentinel"
        );
        assert!(Instant::now() < deadline, "the worker did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_twins_agree(db: &pg_audit_tempdb::TempDatabase<'_>) {
    for (name, _) in PAIRS {
        let trig = entries(db, &format!("{name}_trig"));
        let wal = entries(db, &format!("{name}_wal"));
        assert!(
            trig.len() > 20,
            "{name}: the workload logged too little ({})",
            trig.len()
        );
        if trig != wal {
            let first = trig
                .iter()
                .zip(&wal)
                .position(|(a, b)| a != b)
                .unwrap_or(trig.len().min(wal.len()));
            panic!(
                "{name}: {} trigger entries, {} WAL entries; first difference at {first}:\ntrigger: {:?}\nwal:     {:?}",
                trig.len(),
                wal.len(),
                trig.get(first),
                wal.get(first)
            );
        }
    }
}

#[test]
fn the_wal_twin_logs_what_the_trigger_twin_logs() {
    let cluster = logical_cluster("capture-diff");
    let server = cluster.server();
    let db = server.create_database("capture_diff").unwrap();
    install(&db);
    let mut worker = spawn_worker(db.url(), "200");
    for tx in workload(7, 400) {
        db.batch_execute(&tx).unwrap();
    }
    wait_for_sentinel(&db, &mut worker);
    assert_twins_agree(&db);
    // The masked twins' digests agree above; no masked value reached the log in clear.
    let clear = db
        .psql(
            "SELECT count(*) FROM audit.auditlog AS l, LATERAL (VALUES (l.old_values), (l.new_values)) AS v(x),
                    LATERAL pg_catalog.jsonb_each(v.x) AS e
              WHERE l.table_name LIKE 'masked%' AND e.key IN ('secret', 'doc', 'score')
                AND NOT (e.value #>> '{}') LIKE 'hmac-sha256:%'",
        )
        .unwrap();
    assert_eq!(clear.trim(), "0");

    // Context, user and transaction id came from the message; the status says caught up.
    let status = pg_audit(&["capture", "status", "--json"], db.url());
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    // Named for the log and the database: slot names are shared by a server's databases.
    assert!(
        status["slot"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pg_audit_audit_auditlog_{}", db.name())),
        "{status}"
    );
    assert_eq!(status["slot_exists"], true);
    assert_eq!(status["active"], true);
    assert!(status["last_commit"].is_string(), "{status}");
    // A drift check passes for the WAL tables and names a missing replica identity.
    assert!(pg_audit(&["check"], db.url()).status.success());
    db.batch_execute("ALTER TABLE plain_wal REPLICA IDENTITY DEFAULT")
        .unwrap();
    let check = pg_audit(&["check"], db.url());
    assert_eq!(check.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("REPLICA IDENTITY FULL"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    terminate(worker);
}

#[test]
fn a_worker_killed_mid_batch_and_a_crashed_server_lose_and_repeat_nothing() {
    let mut cluster = logical_cluster("capture-crash");
    let server = cluster.server();
    let db = server.create_database("capture_crash").unwrap();
    install(&db);
    let url = db.url().to_owned();
    let transactions = workload(11, 600);
    let mut worker = spawn_worker(&url, "25");
    for (i, tx) in transactions.iter().enumerate() {
        db.batch_execute(tx).unwrap();
        if i % 90 == 45 {
            // SIGKILL: whatever batch is in flight is lost with the process.
            worker.0.kill().unwrap();
            worker.0.wait().unwrap();
            worker = spawn_worker(&url, "25");
        }
        if i == 300 {
            // The server crashes under the worker, which reconnects to the restarted server.
            cluster.kill().unwrap();
            cluster.start().unwrap();
        }
    }
    wait_for_sentinel(&db, &mut worker);
    assert_twins_agree(&db);
    terminate(worker);
}

#[test]
fn errors_name_the_fix() {
    // wal_level = replica: the worker refuses and says how to change it.
    let server = pg_audit_tempdb::shared().unwrap();
    let db = server.create_database("capture_errors").unwrap();
    let out = pg_audit(&["capture"], db.url());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wal_level") && stderr.contains("logical"),
        "{stderr}"
    );

    let cluster = logical_cluster("capture-errors");
    let server = cluster.server();
    let db = server.create_database("capture_errors").unwrap();
    // No table installed for WAL capture.
    db.batch_execute(&AuditLog::new().create_sql()).unwrap();
    let stderr = String::from_utf8_lossy(&pg_audit(&["capture"], db.url()).stderr).into_owned();
    assert!(stderr.contains("capture = wal"), "{stderr}");
    install(&db);
    // A role without REPLICATION.
    db.batch_execute("CREATE ROLE plain LOGIN").unwrap();
    let plain = db.url().replacen("postgres@", "plain@", 1);
    let stderr = String::from_utf8_lossy(&pg_audit(&["capture"], &plain).stderr).into_owned();
    assert!(stderr.contains("ALTER ROLE plain REPLICATION"), "{stderr}");
    // A slot the worker did not create is refused, and left alone.
    let status = pg_audit(&["capture", "status", "--json"], db.url());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let slot = status["slot"].as_str().unwrap().to_owned();
    db.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))
    .unwrap();
    let stderr = String::from_utf8_lossy(&pg_audit(&["capture"], db.url()).stderr).into_owned();
    assert!(stderr.contains("is not this worker's"), "{stderr}");
    db.batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .unwrap();
    // The worker's own slot goes with drop-slot; a missing slot it wrote through is named.
    let mut worker = spawn_worker(db.url(), "10");
    wait_for_sentinel(&db, &mut worker);
    terminate(worker);
    db.batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&pg_audit(&["capture"], db.url()).stderr).into_owned();
    assert!(
        stderr.contains("is missing") && stderr.contains("drop-slot"),
        "{stderr}"
    );
    let out = pg_audit(&["capture", "drop-slot"], db.url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut worker = spawn_worker(db.url(), "10");
    wait_for_sentinel(&db, &mut worker);
    terminate(worker);
    let out = pg_audit(&["capture", "drop-slot"], db.url());
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped replication slot"));
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            .trim(),
        "0"
    );
}

#[test]
fn hostile_writers_and_failing_conditions_do_not_stop_capture() {
    let cluster = logical_cluster("capture-hostile");
    let server = cluster.server();
    let db = server.create_database("capture_hostile").unwrap();
    install(&db);
    db.batch_execute(
        "CREATE TABLE qty (id int PRIMARY KEY, n int, secret text, note text);
         CREATE ROLE app LOGIN;
         GRANT ALL ON plain_wal, qty TO app;",
    )
    .unwrap();
    let log = AuditLog::new();
    let qty = |configure: Configure| {
        configure(TriggerSpec::builder(
            QualifiedName::parse("public.qty").unwrap(),
        ))
        .capture(Capture::Wal)
        .build()
        .unwrap()
        .install_sql(&log)
    };
    db.batch_execute(&qty(|b| {
        b.condition("100 / NEW.n > 1").exclude_fields(["secret"])
    }))
    .unwrap();
    let mut worker = spawn_worker(db.url(), "100");
    let app = db.url().replacen("postgres@", "app@", 1);
    // Messages the log cannot hold, from a plain role: the changes are logged without them.
    for message in [
        r#"{"tx_started_at": "garbage"}"#,
        r#"{"db_user": "a\u0000b", "context": {"user_id": "a\u0000b"}}"#,
        r#"{"context": "not an object"}"#,
        "not json",
    ] {
        db.server()
            .batch_execute(
                &app,
                &format!(
                    "BEGIN; SELECT pg_logical_emit_message(true, 'pg_audit', {}); INSERT INTO plain_wal (id, name) VALUES ((SELECT coalesce(max(id), 0) + 1 FROM plain_wal), 'hostile'); COMMIT;",
                    pg_audit::quote_literal(message).unwrap()
                ),
            )
            .unwrap();
    }
    // A condition that fails on a row (division by zero): logged, with the rows around it.
    db.batch_execute("INSERT INTO qty VALUES (1, 10, 's', 'n'); INSERT INTO qty VALUES (2, 0, 's', 'n'); INSERT INTO qty VALUES (3, 1000, 's', 'n')")
        .unwrap();
    // A reinstall that excludes one more column, with the worker running: later values of it
    // never reach the log.
    db.batch_execute(&qty(|b| {
        b.condition("100 / NEW.n > 1")
            .exclude_fields(["secret", "note"])
    }))
    .unwrap();
    db.batch_execute("INSERT INTO qty VALUES (4, 10, 'S', 'NOTE-MUST-NOT-BE-LOGGED')")
        .unwrap();
    wait_for_sentinel(&db, &mut worker);
    assert_eq!(
        db.psql("SELECT count(*) FROM audit.auditlog WHERE table_name = 'plain_wal' AND new_values ->> 'name' = 'hostile' AND context IS NULL")
            .unwrap()
            .trim(),
        "4"
    );
    assert_eq!(
        db.psql("SELECT string_agg(record_pk ->> 'id', ',' ORDER BY id) FROM audit.auditlog WHERE table_name = 'qty'")
            .unwrap()
            .trim(),
        "1,2,4"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM audit.auditlog WHERE table_name = 'qty' AND (new_values::text LIKE '%NOTE-MUST-NOT%' OR new_values ? 'secret')")
            .unwrap()
            .trim(),
        "0"
    );
    terminate(worker);

    // Without wal_level = logical, the install refuses rather than leave the table unaudited.
    let shared = pg_audit_tempdb::shared().unwrap();
    let replica = shared.create_database("capture_replica").unwrap();
    replica.batch_execute(&log.create_sql()).unwrap();
    replica
        .batch_execute("CREATE TABLE qty (id int PRIMARY KEY, n int)")
        .unwrap();
    let err = replica.batch_execute(&qty(|b| b)).unwrap_err().to_string();
    assert!(err.contains("needs wal_level = logical"), "{err}");
}

#[test]
fn two_databases_on_one_server_get_slots_of_their_own() {
    let cluster = logical_cluster("capture-two");
    let server = cluster.server();
    let a = server.create_database("capture_a").unwrap();
    let b = server.create_database("capture_b").unwrap();
    install(&a);
    install(&b);
    let mut wa = spawn_worker(a.url(), "100");
    let mut wb = spawn_worker(b.url(), "100");
    wait_for_sentinel(&a, &mut wa);
    wait_for_sentinel(&b, &mut wb);
    terminate(wb);
    // Dropping b's slot leaves a's running worker alone.
    assert!(
        pg_audit(&["capture", "drop-slot"], b.url())
            .status
            .success()
    );
    wait_for_sentinel(&a, &mut wa);
    terminate(wa);
}

#[test]
fn a_value_the_log_cannot_hold_is_logged_as_its_text_and_noted_never_stopping_capture() {
    let cluster = logical_cluster("capture-unholdable");
    let server = cluster.server();
    let db = server.create_database("capture_unholdable").unwrap();
    install(&db);
    let log = AuditLog::new();
    db.batch_execute(
        "CREATE TYPE pair AS (n int, j json);
         CREATE TABLE docs (id int PRIMARY KEY, j json, p pair);",
    )
    .unwrap();
    let spec = TriggerSpec::builder(QualifiedName::parse("public.docs").unwrap())
        .capture(Capture::Wal)
        .build()
        .unwrap();
    db.batch_execute(&spec.install_sql(&log)).unwrap();
    let mut worker = spawn_worker(db.url(), "100");
    // What json holds and jsonb cannot: \u0000, a lone surrogate; and a composite holding one.
    db.batch_execute(
        r#"INSERT INTO docs (id, j) VALUES (1, '{"a":"\u0000"}');
           INSERT INTO docs (id, j) VALUES (2, '"\ud800"'), (3, '{"fine": true}');
           INSERT INTO docs (id, p) VALUES (4, ROW(1, '{"b":"\u0000"}'));
           UPDATE docs SET j = '{"a":"ok"}' WHERE id = 1;"#,
    )
    .unwrap();
    wait_for_sentinel(&db, &mut worker);
    assert_eq!(
        db.psql(
            "SELECT string_agg(operation || ' ' || (record_pk ->> 'id') || ' ' || coalesce(new_values ->> 'j', '-') || ' ' || coalesce(new_values ->> 'p', '-'), E'\\n' ORDER BY id)
               FROM audit.auditlog WHERE table_name = 'docs'"
        )
        .unwrap()
        .trim(),
        "INSERT 1 {\"a\":\"\\u0000\"} -\n\
         INSERT 2 \"\\ud800\" -\n\
         INSERT 3 {\"fine\": true} -\n\
         INSERT 4 - (1,\"{\"\"b\"\":\"\"\\\\u0000\"\"}\")\n\
         UPDATE 1 {\"a\": \"ok\"} -",
        "each value logged as the JSON string of its text where jsonb cannot hold it"
    );
    // Noted where `capture status` shows them.
    let status = String::from_utf8(pg_audit(&["capture", "status"], db.url()).stdout).unwrap();
    assert!(status.contains("issues        4 "), "{status}");
    assert!(
        status.contains("column j: the log's jsonb cannot hold it"),
        "{status}"
    );
    assert!(
        status.contains("column p: the server could not convert it"),
        "{status}"
    );
    // The worker goes on, and after a restart too.
    terminate(worker);
    let mut worker = spawn_worker(db.url(), "100");
    db.batch_execute(r#"INSERT INTO docs (id, j) VALUES (5, '{"after": "\u0000"}')"#)
        .unwrap();
    wait_for_sentinel(&db, &mut worker);
    assert_eq!(
        db.psql("SELECT count(*) FROM audit.auditlog WHERE table_name = 'docs'")
            .unwrap()
            .trim(),
        "6"
    );
    // A change the log refuses whatever its values (here a constraint someone added): set
    // aside whole, the rest of its batch logged.
    db.batch_execute(
        r#"ALTER TABLE audit.auditlog ADD CONSTRAINT no_poison CHECK (NOT coalesce(new_values -> 'j' ? 'poison', false));
           BEGIN;
           INSERT INTO docs (id, j) VALUES (6, '{"poison": 1}');
           INSERT INTO docs (id, j) VALUES (7, '{"fine": 1}');
           COMMIT;"#,
    )
    .unwrap();
    wait_for_sentinel(&db, &mut worker);
    assert_eq!(
        db.psql("SELECT string_agg(record_pk ->> 'id', ',' ORDER BY id) FROM audit.auditlog WHERE table_name = 'docs' AND (record_pk ->> 'id')::int > 5")
            .unwrap()
            .trim(),
        "7"
    );
    let aside = db
        .psql("SELECT issue || ' | ' || raw FROM audit.auditlog_capture_issues WHERE column_name IS NULL")
        .unwrap();
    assert!(
        aside.contains("the log refused the change")
            && aside.contains("no_poison")
            && aside.contains(r#""j":{"poison": 1}"#),
        "{aside}"
    );
    terminate(worker);
}

/// Hostile and random values for every type: the fixed ones reach edges (empty, NaN, the
/// infinities, the largest and smallest numbers and dates, escapes, what `json` holds and
/// `jsonb` cannot, names of catalog objects), the random ones, from `seed`, mix escapes,
/// exponents and unicode.
fn fuzz_values(seed: u64) -> Vec<String> {
    let mut values: Vec<String> = [
        "",
        " ",
        "0",
        "-0",
        "1",
        "-1",
        "3.14",
        "1e308",
        "-1e308",
        "1e-320",
        "1e1000",
        "NaN",
        "Infinity",
        "-Infinity",
        "t",
        "f",
        "true",
        "null",
        "{}",
        "[]",
        "{1,2}",
        "{NULL}",
        r#"{"a","b"}"#,
        "{{1,2},{3,4}}",
        "[0:1]={1,2}",
        "(1,2)",
        "((1,2),(3,4))",
        "<(1,2),3>",
        "[1,5)",
        "empty",
        "{[1,5)}",
        "2026-01-01",
        "2026-01-01 23:30:00+05:30",
        "0044-03-15 BC",
        "294276-12-31 23:59:59",
        "infinity",
        "-infinity",
        "allballs",
        "1 day -02:00:00",
        "P1Y2M",
        r"\x00ff",
        r"\000",
        "'quoted'",
        r"back\slash",
        "tab\there",
        "new\nline",
        "é😀\u{202e}",
        r#"{"a":"\u0000"}"#,
        r#""\ud800""#,
        r#"{"a":1,"a":2}"#,
        "[1e400]",
        r#"{"deep":[[[[[[1]]]]]]}"#,
        "127.0.0.1",
        "::1/128",
        "08:00:2b:01:02:03",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "0/16B3748",
        "10:20:10,14,15",
        "101",
        "fat & rat",
        "$.a[*] ? (@ > 1)",
        "<x>1</x>",
        "pg_catalog",
        "pg_class",
        "int4",
        "=(integer,integer)",
        "postgres",
        "english",
        "simple",
        "$1,234.56",
        "12:34:56.789+05:45",
        "1.5e-7",
        "-1.5e+300",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    values.push("x".repeat(3000));
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const PIECES: &[&str] = &[
        r"\u0000", r"\ud800", r"\udc00", r"\u00e9", r"\\", r#"\""#, "é", "😀", "\u{202e}", "\t",
        " ", "a", "{", "}", ",", "\"",
    ];
    for _ in 0..20 {
        let kind = next() % 4;
        let value = match kind {
            0 => {
                let n = next() % 6;
                let text: String = (0..n)
                    .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                    .collect();
                format!(
                    r#"{{"k":"{text}","n":[{}e{}]}}"#,
                    next() % 1000,
                    (next() % 700) as i64 - 350
                )
            }
            1 => format!(
                "{}.{}e{}",
                next() % 100_000,
                next() % 1000,
                (next() % 640) as i64 - 320
            ),
            2 => (0..(next() % 8))
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect(),
            _ => format!(
                "{{{},{},NULL}}",
                next() % 1000,
                (next() % 2000) as i64 - 1000
            ),
        };
        values.push(value);
    }
    values
}

#[test]
fn every_type_with_hostile_values_is_captured_as_the_triggers_log_it_or_noted() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let cluster = logical_cluster("capture-fuzz");
    let server = cluster.server();
    let db = server.create_database("capture_fuzz").unwrap();
    install(&db);
    let log = AuditLog::new();
    // A column for every type a column can have, in a trigger-captured table and its
    // WAL-captured twin.
    let columns = db
        .psql(
            "SELECT string_agg(format('c%s %s', t.oid, format_type(t.oid, NULL)), ', ' ORDER BY t.oid)
               FROM pg_type AS t
              WHERE t.typnamespace = 'pg_catalog'::regnamespace AND t.typtype IN ('b', 'r', 'm') AND t.typisdefined
                -- Not the arrays of the catalogs' row types, nor of pseudo-types.
                AND NOT EXISTS (SELECT FROM pg_type AS e WHERE e.oid = t.typelem AND e.typtype IN ('c', 'p'))",
        )
        .unwrap();
    let mut sql = String::new();
    for (table, capture) in [("fz_trig", Capture::Trigger), ("fz_wal", Capture::Wal)] {
        sql.push_str(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, {});\n",
            columns.trim()
        ));
        sql.push_str(
            &TriggerSpec::builder(QualifiedName::parse(&format!("public.{table}")).unwrap())
                .capture(capture)
                .build()
                .unwrap()
                .install_sql(&log),
        );
    }
    db.batch_execute(&sql).unwrap();
    let values = fuzz_values(seed);
    let candidates = values
        .iter()
        .map(|v| pg_audit::quote_literal(v).unwrap())
        .collect::<Vec<_>>()
        .join(", ");
    // Each value each type reads, one row per (column, value) with that column alone set; the
    // trigger twin refuses what `to_jsonb` cannot convert, and is left without those rows.
    db.batch_execute(&format!(
        "CREATE TABLE vals (id serial PRIMARY KEY, col name, ty text, lit text);
         CREATE TABLE refused (id int PRIMARY KEY, error text);
         DO $$
         DECLARE c record; v text;
         BEGIN
             FOR c IN SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS ty FROM pg_attribute AS a
                       WHERE a.attrelid = 'fz_wal'::regclass AND a.attnum > 1 ORDER BY a.attnum LOOP
                 FOREACH v IN ARRAY ARRAY[{candidates}]::text[] LOOP
                     BEGIN
                         EXECUTE format('SELECT %L::%s', v, c.ty);
                         INSERT INTO vals (col, ty, lit) VALUES (c.attname, c.ty, v);
                     EXCEPTION WHEN OTHERS THEN NULL;
                     END;
                 END LOOP;
             END LOOP;
         END $$;"
    ))
    .unwrap();
    let mut worker = spawn_worker(db.url(), "500");
    let write = |template: &str, args: &str| {
        format!(
            "DO $$
             DECLARE r record;
             BEGIN
                 FOR r IN SELECT * FROM vals ORDER BY id LOOP
                     EXECUTE format({template}, 'fz_wal', {args});
                     BEGIN
                         EXECUTE format({template}, 'fz_trig', {args});
                     EXCEPTION WHEN OTHERS THEN
                         INSERT INTO refused VALUES (r.id, SQLERRM) ON CONFLICT DO NOTHING;
                     END;
                 END LOOP;
             END $$;"
        )
    };
    db.batch_execute(&write(
        "'INSERT INTO %I (id, %I) VALUES (%s, %L::%s)'",
        "r.col, r.id, r.lit, r.ty",
    ))
    .unwrap();
    // And back to NULL: the old values are captured too.
    db.batch_execute(&write(
        "'UPDATE %I SET %I = NULL WHERE id = %s'",
        "r.col, r.id",
    ))
    .unwrap();
    wait_for_sentinel(&db, &mut worker);
    let counts = db
        .psql("SELECT (SELECT count(*) FROM vals) || ' ' || (SELECT count(*) FROM refused)")
        .unwrap();
    eprintln!(
        "fuzz seed {seed}: {} (values, refused by the triggers)",
        counts.trim()
    );
    let rows: u32 = counts.split_whitespace().next().unwrap().parse().unwrap();
    let refused: u32 = counts.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        refused >= 2,
        "the values only the worker can log were not written: {counts}"
    );
    assert!(rows > 1500, "too few values read: {counts}");
    // Every change was captured, exactly once: what the triggers logged, and the insert and
    // update of each row they refused.
    assert_eq!(
        db.psql(
            "SELECT (SELECT count(*) FROM audit.auditlog WHERE table_name = 'fz_wal')
                  - (SELECT count(*) FROM audit.auditlog WHERE table_name = 'fz_trig')
                  - 2 * (SELECT count(*) FROM refused)"
        )
        .unwrap()
        .trim(),
        "0"
    );
    // Where the triggers logged it, the worker logged the same.
    let mismatches = db
        .psql(
            "SELECT string_agg(format('%s %s = %L: trigger %s / wal %s', v.ty, w.operation, v.lit,
                                      coalesce(t.new_values, t.old_values) -> v.col::text,
                                      coalesce(w.new_values, w.old_values) -> v.col::text), E'\\n')
               FROM vals AS v
               JOIN audit.auditlog AS w ON w.table_name = 'fz_wal' AND w.record_pk = jsonb_build_object('id', v.id)
               JOIN audit.auditlog AS t ON t.table_name = 'fz_trig' AND t.record_pk = w.record_pk AND t.operation = w.operation
              WHERE w.new_values IS DISTINCT FROM t.new_values OR w.old_values IS DISTINCT FROM t.old_values",
        )
        .unwrap();
    assert!(
        mismatches.trim().is_empty(),
        "seed {seed}: captured values differ from the triggers':\n{mismatches}"
    );
    // Where the triggers refused it, the worker logged the value's text and noted it.
    let unnoted = db
        .psql(
            "SELECT string_agg(format('%s %L: %s', v.ty, v.lit, r.error), E'\\n')
               FROM refused AS r JOIN vals AS v ON v.id = r.id
              WHERE NOT EXISTS (SELECT FROM audit.auditlog AS w
                                 WHERE w.table_name = 'fz_wal' AND w.record_pk = jsonb_build_object('id', v.id)
                                   AND w.operation = 'INSERT' AND w.new_values -> v.col::text = to_jsonb(v.lit))
                 OR NOT EXISTS (SELECT FROM audit.auditlog_capture_issues AS i
                                 WHERE i.table_name = 'fz_wal' AND i.record_pk::jsonb = jsonb_build_object('id', v.id)
                                   AND i.column_name = v.col::text)",
        )
        .unwrap();
    assert!(
        unnoted.trim().is_empty(),
        "seed {seed}: values the triggers refuse, not logged as their text and noted:\n{unnoted}"
    );
    terminate(worker);
}

/// A server that takes TLS only (`hostssl` rules, `hostnossl` rejected), as managed services
/// are set up: the worker's sessions and its replication connection, seal and verify all run
/// over `sslmode=verify-full` with the server's root; a root that did not sign the server's
/// certificate is refused with the reason; the string may be libpq's `key=value` form with
/// `PGSSLMODE` and `PGSSLROOTCERT` from the environment.
#[test]
fn over_tls_only_every_connection_checks_the_server() {
    let cluster = logical_cluster("capture-tls");
    let server = cluster.server();
    let db = server.create_database("capture_tls").unwrap();
    install(&db);
    let tls = cluster.require_tls().unwrap();
    let port = cluster.port();
    let name = db.name();
    let root = tls.root().display().to_string();
    let url = format!(
        "postgres://postgres@localhost:{port}/{name}?sslmode=verify-full&sslrootcert={root}"
    );
    // Without TLS the server refuses: everything below ran over TLS.
    let plain = format!("postgres://postgres@127.0.0.1:{port}/{name}?sslmode=disable");
    let out = pg_audit(&["capture", "status"], &plain);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no encryption"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut worker = spawn_worker(&url, "100");
    server
        .psql(
            &url,
            "INSERT INTO plain_wal (id, name) VALUES (1, 'over TLS')",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server
        .psql(
            &url,
            "SELECT count(*) FROM audit.auditlog WHERE table_name = 'plain_wal' AND record_pk = '{\"id\": 1}'",
        )
        .unwrap()
        .trim()
        != "1"
    {
        assert!(
            worker.0.try_wait().unwrap().is_none(),
            "the worker stopped"
        );
        assert!(Instant::now() < deadline, "the worker did not capture the row");
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(worker);
    // seal and verify (pg-audit-connect), history and check (libpq) over the same string.
    for command in [
        &["seal"][..],
        &["verify"],
        &["history", "plain_wal", "1"],
        &["check"],
    ] {
        let out = pg_audit(command, &url);
        assert!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The same as key=value pairs, TLS settings from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(["verify"])
        .env(
            "DATABASE_URL",
            format!("host=localhost port={port} user=postgres dbname={name}"),
        )
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `postgres:///db` over the Unix socket the environment names, as psql reads it.
    for command in [&["seal"][..], &["verify"], &["capture", "status"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
            .args(command)
            .env("DATABASE_URL", format!("postgres:///{name}"))
            .env("PGHOST", cluster.dir())
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A root that did not sign the server's certificate.
    let wrong = url.replace(&root, &tls.other_root().display().to_string());
    for command in [&["capture"][..], &["capture", "status"], &["verify"]] {
        let out = pg_audit(command, &wrong);
        assert!(!out.status.success(), "{command:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not signed by a root of sslrootcert"),
            "{command:?}: {stderr}"
        );
    }
}

/// `GET path` on the loopback port: status line and body.
fn http_get(port: u16, path: &str) -> (String, String) {
    http::get(port, &format!("127.0.0.1:{port}"), path, None)
}

/// A metric's value in Prometheus's text format.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `--metrics-listen`: the worker's metrics as Prometheus scrapes them, counting what it
/// wrote, and a health check that says whether it streams; `--log-format json` writes its
/// diagnostics as JSON objects, one a line.
#[test]
fn metrics_and_health_are_served_and_logs_are_json() {
    let cluster = logical_cluster("capture-metrics");
    let server = cluster.server();
    let db = server.create_database("capture_metrics").unwrap();
    install(&db);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args([
            "capture",
            "--batch-wait-ms",
            "20",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
            "-v",
        ])
        .env("DATABASE_URL", db.url())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut worker = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || http_get(port, "/health").0 != "HTTP/1.1 200 OK"
    {
        assert!(worker.0.try_wait().unwrap().is_none(), "the worker stopped");
        assert!(
            Instant::now() < deadline,
            "the worker never reported streaming"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(port, "/health").1, "streaming\n");
    db.batch_execute(
        "INSERT INTO plain_wal (id, name) SELECT g, 'n' FROM generate_series(1, 25) AS g;
         INSERT INTO cond_wal (id, name, active) VALUES (1, 'kept', true), (2, 'dropped', false);",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (status, text) = http_get(port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if metric(&text, "pg_audit_capture_entries_total") >= 26.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the entries were not counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // 27 changes, the condition kept 26 of them.
    assert_eq!(metric(&text, "pg_audit_capture_entries_total"), 26.0);
    assert_eq!(metric(&text, "pg_audit_capture_changes_total"), 27.0);
    assert!(metric(&text, "pg_audit_capture_batches_total") >= 1.0);
    assert_eq!(metric(&text, "pg_audit_capture_streaming"), 1.0);
    assert_eq!(metric(&text, "pg_audit_capture_errors_total"), 0.0);
    assert!(metric(&text, "pg_audit_capture_lag_seconds") >= 0.0);
    assert!(
        text.contains("# TYPE pg_audit_capture_lag_bytes gauge"),
        "{text}"
    );

    // SIGTERM: the worker stops; what it wrote on standard error is JSON, line by line.
    let pid = worker.0.id();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let child = std::mem::replace(&mut worker.0, Command::new("true").spawn().unwrap());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(stderr.contains("serving metrics"), "{stderr}");
}

/// A managed server's profile: after the database is made, nothing runs as a superuser. Its
/// owner — a role with REPLICATION, as `rds_replication` grants, and no other attribute —
/// installs the log and the triggers (one table captured from the WAL), makes partitions,
/// runs the worker, counts, seals, verifies, checks, archives and serves the admin; the
/// application's role writes. No event trigger is needed.
#[test]
fn the_whole_lifecycle_runs_without_a_superuser() {
    let cluster = logical_cluster("capture-managed");
    let server = cluster.server();
    let port = cluster.port();
    // What the provider's console does: a database and roles.
    let admin = cluster.url("postgres");
    server
        .batch_execute(
            &admin,
            "CREATE ROLE owner LOGIN REPLICATION; CREATE ROLE app LOGIN;",
        )
        .unwrap();
    server
        .batch_execute(&admin, "CREATE DATABASE managed OWNER owner")
        .unwrap();
    let owner = format!("postgres://owner@127.0.0.1:{port}/managed");
    let app = format!("postgres://app@127.0.0.1:{port}/managed");
    assert_eq!(
        server
            .psql(
                &owner,
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            .unwrap()
            .trim(),
        "f"
    );
    let run = |args: &[&str]| {
        let out = pg_audit(args, &owner);
        assert!(
            out.status.success(),
            "pg-audit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    server.psql(&owner, &run(&["sql", "table"])).unwrap();
    server
        .psql(
            &owner,
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             CREATE TABLE hot (id int PRIMARY KEY, n int);
             GRANT SELECT, INSERT, UPDATE, DELETE ON items, hot TO app;",
        )
        .unwrap();
    server
        .psql(&owner, &run(&["sql", "trigger", "--table", "items"]))
        .unwrap();
    server
        .psql(
            &owner,
            &run(&["sql", "trigger", "--table", "hot", "--capture", "wal"]),
        )
        .unwrap();
    run(&["partitions", "ensure"]);
    // An old month, to archive.
    server
        .psql(
            &owner,
            "CREATE TABLE audit.auditlog_p20240101 PARTITION OF audit.auditlog
                 FOR VALUES FROM ('2024-01-01 00:00+00') TO ('2024-02-01 00:00+00')",
        )
        .unwrap();

    let worker = spawn_worker(&owner, "100");
    server
        .psql(
            &app,
            "BEGIN; SET LOCAL pg_audit.context = '{\"user_id\": \"u1\"}';
             INSERT INTO items VALUES (1, 'a'); UPDATE items SET name = 'b' WHERE id = 1;
             INSERT INTO hot SELECT g, g FROM generate_series(1, 10) AS g; COMMIT;",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server
        .psql(
            &owner,
            "SELECT count(*) FROM audit.auditlog WHERE table_name = 'hot'",
        )
        .unwrap()
        .trim()
        != "10"
    {
        assert!(Instant::now() < deadline, "the worker did not capture hot");
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(worker);
    // The application may not touch the log.
    assert!(server.psql(&app, "DELETE FROM audit.auditlog").is_err());

    run(&["partitions", "count"]);
    run(&["seal"]);
    run(&["verify"]);
    run(&["check"]);
    assert!(run(&["history", "items", "1"]).contains("u1"));
    let dir = cluster.dir().join("archived");
    run(&[
        "archive",
        "--older-than",
        "1 year",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert!(run(&["archive", "list"]).contains("auditlog_p20240101"));
    run(&["verify"]);

    // The admin, read-only on loopback, as the owner.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _admin = Running(
        Command::new(env!("CARGO_BIN_EXE_pg-audit"))
            .args(["admin", "--listen", &format!("127.0.0.1:{admin_port}")])
            .env("DATABASE_URL", &owner)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(Instant::now() < deadline, "the admin did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http_get(admin_port, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("u1"), "{body}");
    let (status, _) = http_get(admin_port, "/table?name=public.hot");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// A masked column renamed under the worker: the change is logged with its key only, the
/// capture issue says why, and the value is nowhere in the log or the issues.
#[test]
fn a_renamed_masked_column_withholds_values_rather_than_log_them() {
    let cluster = logical_cluster("capture-mask-rename");
    let server = cluster.server();
    let db = server.create_database("capture_mask_rename").unwrap();
    install(&db);
    let mut worker = spawn_worker(db.url(), "50");
    db.batch_execute(
        "INSERT INTO masked_wal (id, name, secret) VALUES (1, 'a', 'S3CRET-ONE');
         ALTER TABLE masked_wal RENAME COLUMN secret TO hidden;
         UPDATE masked_wal SET hidden = 'S3CRET-TWO', name = 'b' WHERE id = 1;",
    )
    .unwrap();
    wait_for_sentinel(&db, &mut worker);
    terminate(worker);
    let logged = db
        .psql(
            "SELECT operation || ' ' || coalesce(new_values::text, '') FROM audit.auditlog
              WHERE table_name = 'masked_wal' AND operation <> 'DDL' ORDER BY id",
        )
        .unwrap();
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(lines.len(), 2, "{logged}");
    assert!(lines[0].contains("hmac-sha256:"), "{logged}");
    assert_eq!(lines[1], r#"UPDATE {"id": 1}"#, "{logged}");
    let everything = db
        .psql(
            "SELECT string_agg(t::text, ' ') FROM (SELECT l::text AS t FROM audit.auditlog AS l
              UNION ALL SELECT i::text FROM audit.auditlog_capture_issues AS i) AS x",
        )
        .unwrap();
    assert!(!everything.contains("S3CRET"), "{everything}");
    assert!(
        everything.contains("which its audit keeps out of the log"),
        "{everything}"
    );
}
