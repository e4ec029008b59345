//! Capture from the write-ahead log, against a real server with `wal_level = logical`: the
//! same workload on a trigger-captured table and its WAL-captured twin gives the same entries;
//! the worker killed mid-batch, and the server crashed, lose and repeat nothing; clear errors.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pg_audit::sql::capture::emit_context_sql;
use pg_audit::{AuditLog, Capture, QualifiedName, TriggerSpec};
use pg_audit_tempdb::Cluster;

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
const PAIRS: [(&str, Configure); 4] = [
    ("plain", |b| b),
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
                    score numeric, tags text[], doc jsonb, seen timestamptz, big text);\n"
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
               FROM audit.auditlog WHERE table_name = '{table}'
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
