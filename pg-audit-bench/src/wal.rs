//! Capture from the write-ahead log against triggers and the unaudited table, on a server with
//! `wal_level = logical`:
//!
//! 1. the write path alone (no slot, no worker: what a writing transaction pays — the context
//!    message, `REPLICA IDENTITY FULL`'s old rows in the WAL), single-row and bulk;
//! 2. the whole system: the same single-row writes with the capture worker running on the same
//!    machine, and the lag it holds under sustained single-row load.

use std::time::{Duration, Instant, SystemTime};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use pg_audit::{AuditLog, Capture, QualifiedName, TriggerSpec};

use crate::report::{Goal, Measure, Report};
use crate::{Bench, ROWS, context_sql, fill_rows};

/// The variant the goals are about.
const WAL: &str = "pg-audit wal";

/// The variants: the unaudited table, triggers, capture from the WAL, and — to tell the
/// context message's cost from the capture's — the unaudited table written in the WAL
/// variant's transactions, context message included.
const VARIANTS: [(&str, &str); 4] = [
    ("plain", "bench_plain"),
    ("pg-audit", "bench_trigger"),
    (WAL, "bench_wal"),
    (PLAIN_MESSAGE, "bench_plain"),
];

/// The unaudited table in transactions that set the context and emit its message.
const PLAIN_MESSAGE: &str = "plain + context message";

/// The pgbench script of `statement` on `variant`'s table.
fn script(variant: &str, statement: &str) -> String {
    let body = match variant {
        "plain" => format!("{statement};"),
        "pg-audit" => format!(
            "BEGIN \\; {} \\; {statement} \\; COMMIT;",
            context_sql(false)
        ),
        _ => format!(
            "BEGIN \\; {} \\; {statement} \\; COMMIT;",
            context_sql(true)
        ),
    };
    format!("\\set id random(1, {ROWS})\n{body}\n")
}

const SINGLE: [(&str, &str); 3] = [
    (
        "INSERT",
        "INSERT INTO {t} (name, email, price, quantity, description) VALUES ('n' || :id, 'e' || :id || '@example.com', :id / 100.0, :id % 7, repeat('d', 200))",
    ),
    (
        "UPDATE",
        "UPDATE {t} SET price = price + 1, updated_at = now() WHERE id = :id",
    ),
    (
        "DELETE",
        "DELETE FROM {t} WHERE id = (SELECT nextval('{t}_delete_seq'))",
    ),
];

pub(crate) fn run(bench: &mut Bench, version: &str) -> Result<(), Box<dyn std::error::Error>> {
    let log = AuditLog::new();
    for (name, table) in VARIANTS {
        if name == PLAIN_MESSAGE {
            continue; // the plain table
        }
        bench.create_table(table)?;
        let spec = |capture| {
            TriggerSpec::builder(QualifiedName::parse(table).expect("valid"))
                .capture(capture)
                .build()
                .expect("valid spec")
                .install_sql(&log)
        };
        match name {
            "plain" => {}
            "pg-audit" => bench.conn.batch_execute(&spec(Capture::Trigger))?,
            _ => bench.conn.batch_execute(&spec(Capture::Wal))?,
        }
    }
    let mut report = Report::new(version, bench.opts.reps);

    // 1. The write path alone.
    for clients in [1, 2] {
        for (op, sql) in SINGLE {
            let name = format!(
                "write path: single-row {op}, {clients} client{}",
                if clients > 1 { "s" } else { "" }
            );
            if !bench.opts.wants(&name) {
                continue;
            }
            eprintln!("{name}...");
            let mut measure = Measure::throughput(&name, Goal::AtLeast(0.85)).judging(WAL);
            for _ in 0..bench.opts.reps {
                for (variant, table) in VARIANTS {
                    bench.reset(table)?;
                    let tps = bench.pgbench(
                        &script(variant, &sql.replace("{t}", table)),
                        clients,
                        bench.opts.txns,
                    )?;
                    measure.add(variant, tps);
                }
            }
            report.push(measure);
        }
    }
    let bulk = [
        ("write path: bulk UPDATE of 100k rows", Goal::AtMost(1.6)),
        ("write path: bulk DELETE of 100k rows", Goal::AtMost(3.0)),
    ];
    if bulk.iter().any(|(n, _)| bench.opts.wants(n)) {
        eprintln!("write path: bulk statements...");
        let mut measures: Vec<Measure> = bulk
            .iter()
            .map(|(n, g)| Measure::time(n, *g).judging(WAL))
            .collect();
        for _ in 0..bench.opts.reps {
            for (variant, table) in VARIANTS {
                bench.conn.batch_execute(&format!(
                    "TRUNCATE {table} RESTART IDENTITY; INSERT INTO {table} (name, email, price, quantity, description) {}; TRUNCATE audit.auditlog;",
                    fill_rows(ROWS)
                ))?;
                bench.settle(table)?;
                let statements = [
                    format!(
                        "UPDATE {table} SET price = price + 1, quantity = quantity + 1, updated_at = now()"
                    ),
                    format!("DELETE FROM {table}"),
                ];
                for (i, statement) in statements.iter().enumerate() {
                    let ctx = |emit| {
                        context_sql(emit)
                            .replace(":client_id", "1")
                            .replace(":id", "1")
                    };
                    let batch = match variant {
                        "plain" => statement.clone(),
                        "pg-audit" => format!("BEGIN; {}; {statement}; COMMIT;", ctx(false)),
                        _ => format!("BEGIN; {}; {statement}; COMMIT;", ctx(true)),
                    };
                    let start = Instant::now();
                    bench.conn.batch_execute(&batch)?;
                    measures[i].add(variant, start.elapsed().as_secs_f64());
                    bench.settle(table)?;
                }
            }
        }
        for m in measures {
            report.push(m);
        }
    }

    // 2. The whole system: the worker running beside the writers.
    for (name, table) in VARIANTS {
        if name != PLAIN_MESSAGE {
            bench.reset(table)?;
        }
    }
    let worker = Worker::start(&bench.url)?;
    let mut lags: Vec<LagRuns> = Vec::new();
    for (op, sql) in &SINGLE[..2] {
        let name = format!("with the worker: single-row {op}, 1 client");
        if !bench.opts.wants(&name) {
            continue;
        }
        eprintln!("{name}...");
        let mut measure = Measure::throughput(&name, Goal::AtLeast(0.65)).judging(WAL);
        let mut lag = (
            format!("single-row {op}, 1 client"),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for _ in 0..bench.opts.reps {
            for (variant, table) in [VARIANTS[0], VARIANTS[2]] {
                let script = script(variant, &sql.replace("{t}", table));
                let (tps, samples) = run_sampling_lag(bench, &script, 1, bench.opts.txns)?;
                measure.add(variant, tps);
                if variant == WAL {
                    lag.1.push(tps);
                    summarize(&samples, &mut lag);
                }
            }
        }
        report.push(measure);
        lags.push(lag);
        worker.wait_caught_up(&mut bench.conn)?;
    }
    let name = "with the worker: lag under single-row UPDATEs as fast as 2 clients go";
    if bench.opts.wants(name) {
        eprintln!("{name}...");
        let mut lag = (
            "single-row UPDATE, 2 clients, saturating both cores".to_owned(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for _ in 0..bench.opts.reps {
            let script = script(WAL, &SINGLE[1].1.replace("{t}", "bench_wal"));
            let (tps, samples) = run_sampling_lag(bench, &script, 2, bench.opts.txns * 2)?;
            lag.1.push(tps);
            summarize(&samples, &mut lag);
            worker.wait_caught_up(&mut bench.conn)?;
        }
        lags.push(lag);
    }
    for (load, rate, p50, p95, max) in lags {
        let mut m = Measure::count(&format!("{load}: rate (tx/s)"));
        rate.iter().for_each(|v| m.add(WAL, *v));
        report.push(m);
        for (what, values, goal) in [
            ("median", p50, false),
            ("95th percentile", p95, true),
            ("largest", max, false),
        ] {
            let mut m = Measure::count(&format!(
                "{load}: lag, {what} of samples every 100 ms (s){}",
                if goal { " — goal < 1 s" } else { "" }
            ));
            values.iter().for_each(|v| m.add(WAL, *v));
            report.push(m);
        }
    }
    worker.stop();
    println!("{}", report.render());
    Ok(())
}

/// One load's runs: its name, and per run the rate, the median, 95th percentile and largest
/// lag sampled.
type LagRuns = (String, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Runs `script` while sampling the worker's lag every 100 ms: the throughput and the samples.
fn run_sampling_lag(
    bench: &Bench,
    script: &str,
    clients: u32,
    txns: u32,
) -> Result<(f64, Vec<f64>), Box<dyn std::error::Error>> {
    let (tps, samples) = std::thread::scope(|scope| {
        let (cluster, scripts) = (&bench.cluster, &bench.scripts);
        let load = scope.spawn(move || {
            crate::pgbench(cluster, scripts, script, clients, txns).map_err(|e| e.to_string())
        });
        let mut conn = PgConnection::establish(&bench.url).expect("a sampling session");
        let started = SystemTime::now();
        let mut samples = Vec::new();
        while !load.is_finished() {
            samples.push(Worker::lag_seconds(&mut conn, started).unwrap_or(f64::NAN));
            std::thread::sleep(Duration::from_millis(100));
        }
        (load.join().expect("pgbench thread"), samples)
    });
    Ok((tps?, samples))
}

/// The median, 95th percentile and largest of `samples` into `lag`.
fn summarize(samples: &[f64], lag: &mut LagRuns) {
    let mut samples: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    lag.2.push(at(0.5));
    lag.3.push(at(0.95));
    lag.4.push(at(1.0));
}

/// The capture worker on a runtime of its own.
struct Worker {
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(QueryableByName)]
struct Lag {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    lag: Option<f64>,
}

impl Worker {
    fn start(url: &str) -> Result<Worker, Box<dyn std::error::Error>> {
        let worker = pg_audit_capture::Worker::new(url)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            if let Err(e) = runtime.block_on(worker.run(async {
                let _ = stopped.await;
            })) {
                eprintln!("pg-audit-bench: the capture worker stopped: {e}");
            }
        });
        // Until the slot exists, nothing is captured.
        let mut conn = PgConnection::establish(url)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "EXISTS (SELECT FROM {} AS p JOIN pg_replication_slots AS s ON s.slot_name = p.slot)",
            AuditLog::new().capture_progress_table()
        )))
        .get_result::<bool>(&mut conn)
        .unwrap_or(false)
        {
            if Instant::now() > deadline {
                return Err("the capture worker did not start".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Worker {
            stop: std::sync::Mutex::new(Some(stop)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// How far behind the log is, under continuous writes: seconds between now and the newest
    /// change it holds (each write sets `updated_at = now()`, its transaction's start), or the
    /// run's start when it holds none of the run's changes yet.
    fn lag_seconds(conn: &mut PgConnection, run_started: SystemTime) -> QueryResult<f64> {
        let row: Lag = diesel::sql_query(
            "SELECT extract(epoch FROM clock_timestamp() - greatest($1 AT TIME ZONE 'UTC',
                    (SELECT (new_values ->> 'updated_at')::timestamptz FROM audit.auditlog
                      WHERE table_name = 'bench_wal' ORDER BY id DESC LIMIT 1)))::float8 AS lag",
        )
        .bind::<diesel::sql_types::Timestamp, _>(run_started)
        .get_result(conn)?;
        Ok(row.lag.unwrap_or(0.0))
    }

    /// Waits until the worker wrote every captured commit (the table's last change is in the
    /// log).
    fn wait_caught_up(&self, conn: &mut PgConnection) -> Result<(), Box<dyn std::error::Error>> {
        conn.batch_execute("INSERT INTO bench_wal (name, email, price, quantity, description) VALUES ('sentinel', 's', 0, 0, '')")?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let done: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT count(*) FROM audit.auditlog WHERE table_name = 'bench_wal' AND new_values ->> 'name' = 'sentinel')",
            ))
            .get_result(conn)?;
            if done > 0 {
                conn.batch_execute(
                    "DELETE FROM audit.auditlog WHERE new_values ->> 'name' = 'sentinel'",
                )?;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the capture worker did not catch up in 10 minutes".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("not poisoned").take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.lock().expect("not poisoned").take() {
            let _ = thread.join();
        }
    }
}
