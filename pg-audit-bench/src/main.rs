//! pg-audit's overhead against unaudited writes, measured on a real PostgreSQL.
//!
//! ```sh
//! cargo run --release -p pg-audit-bench            # the full run (about 15 minutes)
//! cargo run --release -p pg-audit-bench -- --quick # fewer, shorter repetitions
//! ```
//!
//! It starts a private PostgreSQL from the local binaries (as the tests do), creates one
//! 100k-row table per variant, and for every workload runs each variant in turn, repetition
//! after repetition, so that drift on a noisy machine hits all variants alike. Each result is
//! a ratio against the unaudited table measured in the same repetition; the table shows the
//! median with the min and max over the repetitions.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use diesel::connection::{InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use pg_audit::AuditLog;
use pg_audit_diesel::{AuditConnectionExt, AuditContext};
use pg_audit_tempdb::Cluster;

mod admin;
mod baseline;
mod designs;
mod history;
mod report;
mod wal;

use designs::Variant;
use report::{Goal, Measure, Report};

/// Rows in each benchmark table.
const ROWS: u32 = 100_000;

/// Server settings: the issue's (synchronous_commit off), with checkpoints and autovacuum out
/// of the measured runs (the bench checkpoints and vacuums between runs itself) and JIT off so
/// bulk statements are not compiled in some runs and not others.
const SETTINGS: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("full_page_writes", "on"),
    ("synchronous_commit", "off"),
    ("shared_buffers", "1GB"),
    ("max_wal_size", "16GB"),
    ("checkpoint_timeout", "1h"),
    ("autovacuum", "off"),
    ("jit", "off"),
    ("max_connections", "50"),
];

struct Options {
    reps: usize,
    /// Transactions per pgbench client in single-row runs.
    txns: u32,
    /// Transactions per side in the Diesel comparison.
    diesel_txns: u32,
    only: Option<String>,
    designs: bool,
    /// Also tables with masked and with excluded columns.
    masks: bool,
    /// Rows of the log for the history-lookup benchmark; 0: not run.
    history_rows: u64,
    /// Rows of the log for the admin's pages benchmark; 0: not run.
    admin_rows: u64,
    /// Capture from the write-ahead log against triggers, instead of the main workloads.
    wal: bool,
    /// Rows of the table for the baseline benchmark; 0: not run.
    baseline_rows: u64,
}

impl Options {
    fn parse() -> Options {
        let mut opts = Options {
            reps: 5,
            txns: 20_000,
            diesel_txns: 4_000,
            only: None,
            designs: false,
            masks: false,
            history_rows: 0,
            admin_rows: 0,
            wal: false,
            baseline_rows: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => {
                    opts.reps = 3;
                    opts.txns = 8_000;
                    opts.diesel_txns = 1_500;
                }
                "--smoke" => {
                    opts.reps = 1;
                    opts.txns = 200;
                    opts.diesel_txns = 50;
                }
                "--reps" => {
                    opts.reps = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage())
                }
                "--only" => opts.only = Some(args.next().unwrap_or_else(|| usage())),
                "--designs" => opts.designs = true,
                "--masks" => opts.masks = true,
                "--history" => {
                    opts.history_rows = args
                        .next()
                        .filter(|n| !n.starts_with("--"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(10_000_000);
                }
                "--admin" => {
                    opts.admin_rows = args
                        .next()
                        .filter(|n| !n.starts_with("--"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(10_000_000);
                }
                "--wal" => opts.wal = true,
                "--baseline" => {
                    opts.baseline_rows = args
                        .next()
                        .filter(|n| !n.starts_with("--"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1_000_000);
                }
                "-h" | "--help" => usage(),
                other => {
                    eprintln!("unknown argument `{other}`");
                    usage();
                }
            }
        }
        opts
    }

    fn wants(&self, workload: &str) -> bool {
        self.only.as_deref().is_none_or(|w| workload.contains(w))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: pg-audit-bench [--quick | --smoke] [--reps N] [--only WORKLOAD-SUBSTRING] [--designs] [--masks]\n\
         \x20      pg-audit-bench --history [ROWS]\n\
         \x20      pg-audit-bench --admin [ROWS]\n\
         \x20      pg-audit-bench --wal [--quick | --smoke]\n\
         \x20      pg-audit-bench --baseline [ROWS]\n\
         \n\
         --quick    3 repetitions of shorter runs\n\
         --smoke    1 tiny repetition: checks the benchmark works (used by CI)\n\
         --designs  also measure the trigger designs that were not chosen (docs/performance.md)\n\
         --masks    also tables with two masked, and with two excluded, columns\n\
         --history  only the history lookup: fill the log with ROWS rows (default 10 million)\n\
         \x20          and time reading one record's history\n\
         --admin    the same log, and the admin's pages timed over HTTP\n\
         --wal      capture from the write-ahead log: the write path, and the whole system\n\
         \x20          with the capture worker running, and its lag\n\
         --baseline a baseline of a table of ROWS rows (default 1 million) while writers\n\
         \x20          update it: its speed, and the writers' latencies with and without it"
    );
    std::process::exit(2);
}

struct Bench {
    cluster: Cluster,
    url: String,
    conn: PgConnection,
    scripts: PathBuf,
    opts: Options,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("pg-audit-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let opts = Options::parse();
    eprintln!("starting a private PostgreSQL for the benchmark...");
    let mut settings = SETTINGS.to_vec();
    if opts.wal {
        // Every variant runs on the same server: the unaudited table pays for
        // `wal_level = logical` too.
        settings.extend([
            ("wal_level", "logical"),
            ("max_replication_slots", "4"),
            ("max_wal_senders", "4"),
        ]);
    }
    let cluster = Cluster::start_private("bench", &settings)?;
    let url = cluster.url("postgres");
    let mut conn = PgConnection::establish(&url)?;
    let scripts = cluster.dir().join("scripts");
    fs::create_dir_all(&scripts)?;
    let version: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("version()"))
        .get_result(&mut conn)?;
    conn.batch_execute(&AuditLog::new().create_sql())?;
    conn.batch_execute(designs::FLOOR_SETUP)?;
    let mut bench = Bench {
        cluster,
        url,
        conn,
        scripts,
        opts,
    };
    if bench.opts.baseline_rows > 0 {
        return baseline::run(&mut bench.conn, &bench.url, bench.opts.baseline_rows);
    }
    if bench.opts.admin_rows > 0 {
        return admin::run(&mut bench.conn, &bench.url, bench.opts.admin_rows);
    }
    if bench.opts.wal {
        return wal::run(&mut bench, &version);
    }
    if bench.opts.history_rows > 0 {
        return history::run(&mut bench.conn, &bench.url, bench.opts.history_rows);
    }
    let variants = designs::variants(bench.opts.designs, bench.opts.masks);
    for v in &variants {
        bench.create_table(&v.table())?;
        bench.install(v)?;
    }
    let mut report = Report::new(&version, bench.opts.reps);
    bench.single_row(&variants, &mut report)?;
    bench.untracked_update(&mut report)?;
    bench.bulk(&variants, &mut report)?;
    bench.diesel_transactions(&mut report)?;
    bench.sqlx_transactions(&mut report)?;
    println!("{}", report.render());
    Ok(())
}

/// The context every audited write in the benchmark carries, all six fields (with pgbench's
/// `:client_id` and `:id` in it).
const CONTEXT_JSON: &str = "{\"user_id\":\"user-:client_id\",\"request_id\":\"req-:id\",\
     \"change_reason\":\"benchmark change\",\"client_addr\":\"203.0.113.9\",\
     \"source\":\"pg-audit-bench\",\"metadata\":{\"bench\":true}}";

/// The context set as the runtime sets it, through the engine's one statement: `SET LOCAL` in
/// the same round trip as the write, or with `emit_to_wal` the setting and its logical message.
fn context_sql(emit_to_wal: bool) -> String {
    pg_audit::context::set_sql(CONTEXT_JSON, emit_to_wal).expect("no NUL")
}

fn full_context() -> AuditContext {
    AuditContext::new()
        .user_id("user-1")
        .request_id("req-1")
        .change_reason("benchmark change")
        .client_addr("203.0.113.9")
        .source("pg-audit-bench")
        .metadata(serde_json::json!({"bench": true}))
}

impl Bench {
    fn install(&mut self, v: &Variant) -> QueryResult<()> {
        let sql = v.install(&v.table());
        if sql.is_empty() {
            Ok(())
        } else {
            self.conn.batch_execute(&sql)
        }
    }

    fn create_table(&mut self, table: &str) -> QueryResult<()> {
        self.conn.batch_execute(&format!(
            "CREATE TABLE {table} (
                id serial PRIMARY KEY,
                name text NOT NULL,
                email text NOT NULL,
                price numeric(12,2) NOT NULL,
                quantity integer NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(),
                description text NOT NULL
            );
            CREATE SEQUENCE {table}_delete_seq;"
        ))
    }

    /// Refills `table` with the canonical rows without firing triggers, then clears the logs,
    /// vacuums and checkpoints, so every measured run starts from the same state.
    fn reset(&mut self, table: &str) -> QueryResult<()> {
        self.conn.batch_execute(&format!(
            "SET session_replication_role = replica;
             TRUNCATE {table} RESTART IDENTITY;
             INSERT INTO {table} (name, email, price, quantity, description) {rows};
             SET session_replication_role = DEFAULT;
             SELECT setval('{table}_delete_seq', 1, false);
             TRUNCATE audit.auditlog, floor_log;",
            rows = fill_rows(ROWS)
        ))?;
        self.settle(table)
    }

    /// VACUUM and CHECKPOINT, each on its own: neither may run inside a multi-statement batch.
    fn settle(&mut self, table: &str) -> QueryResult<()> {
        self.conn
            .batch_execute(&format!("VACUUM ANALYZE {table}"))?;
        self.conn.batch_execute("CHECKPOINT")
    }

    fn pgbench(
        &self,
        script: &str,
        clients: u32,
        txns: u32,
    ) -> Result<f64, Box<dyn std::error::Error>> {
        pgbench(&self.cluster, &self.scripts, script, clients, txns)
    }

    fn single_row(
        &mut self,
        variants: &[Variant],
        report: &mut Report,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let ops: [(&str, &str, Goal); 3] = [
            (
                "INSERT",
                "INSERT INTO {t} (name, email, price, quantity, description) VALUES ('n' || :id, 'e' || :id || '@example.com', :id / 100.0, :id % 7, repeat('d', 200))",
                Goal::AtLeast(0.60),
            ),
            (
                "UPDATE",
                "UPDATE {t} SET price = price + 1, updated_at = now() WHERE id = :id",
                Goal::AtLeast(0.60),
            ),
            (
                "DELETE",
                "DELETE FROM {t} WHERE id = (SELECT nextval('{t}_delete_seq'))",
                Goal::AtLeast(0.60),
            ),
        ];
        for clients in [1, 2] {
            for (op, sql, goal) in ops {
                let name = format!(
                    "single-row {op}, {clients} client{}",
                    if clients > 1 { "s" } else { "" }
                );
                if !self.opts.wants(&name) {
                    continue;
                }
                eprintln!("{name}...");
                let mut measure = Measure::throughput(&name, goal);
                for _ in 0..self.opts.reps {
                    for v in variants {
                        let table = v.table();
                        self.reset(&table)?;
                        let statement = sql.replace("{t}", &table);
                        let script = if v.audited {
                            format!(
                                "\\set id random(1, {ROWS})\nBEGIN \\; {} \\; {statement} \\; COMMIT;\n",
                                context_sql(false)
                            )
                        } else {
                            format!("\\set id random(1, {ROWS})\n{statement};\n")
                        };
                        let tps = self.pgbench(&script, clients, self.opts.txns)?;
                        measure.add(v.name, tps);
                    }
                }
                report.push(measure);
            }
        }
        Ok(())
    }

    /// An UPDATE that changes no audited column: the table tracks only `name` and `email`.
    fn untracked_update(&mut self, report: &mut Report) -> Result<(), Box<dyn std::error::Error>> {
        let name = "single-row UPDATE of no audited column, 2 clients";
        if !self.opts.wants(name) {
            return Ok(());
        }
        eprintln!("{name}...");
        let tracked: Vec<Variant> = designs::tracked_variants(self.opts.designs);
        for v in &tracked {
            let table = v.table();
            if v.name != "plain" {
                self.create_table(&table)?;
                self.install(v)?;
            }
        }
        let mut measure = Measure::throughput(name, Goal::AtLeast(0.90));
        for _ in 0..self.opts.reps {
            for v in &tracked {
                let table = v.table();
                self.reset(&table)?;
                let statement = format!(
                    "UPDATE {table} SET price = price + 1, updated_at = now() WHERE id = :id"
                );
                let script = if v.audited {
                    format!(
                        "\\set id random(1, {ROWS})\nBEGIN \\; {} \\; {statement} \\; COMMIT;\n",
                        context_sql(false)
                    )
                } else {
                    format!("\\set id random(1, {ROWS})\n{statement};\n")
                };
                measure.add(v.name, self.pgbench(&script, 2, self.opts.txns)?);
            }
        }
        report.push(measure);
        Ok(())
    }

    fn bulk(
        &mut self,
        variants: &[Variant],
        report: &mut Report,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let names = [
            "bulk INSERT of 100k rows",
            "bulk UPDATE of 100k rows",
            "bulk DELETE of 100k rows",
        ];
        if !names.iter().any(|n| self.opts.wants(n)) {
            return Ok(());
        }
        eprintln!("bulk statements...");
        let goals = [Goal::AtMost(3.0), Goal::AtMost(3.0), Goal::AtMost(8.0)];
        let mut measures: Vec<Measure> = names
            .iter()
            .zip(goals)
            .map(|(n, g)| Measure::time(n, g))
            .collect();
        let mut storage = Measure::storage("audit storage per change (bytes, table + indexes)");
        for _ in 0..self.opts.reps {
            for v in variants {
                let table = v.table();
                self.conn.batch_execute(&format!(
                    "TRUNCATE {table} RESTART IDENTITY; TRUNCATE audit.auditlog, floor_log;"
                ))?;
                self.settle(&table)?;
                let statements = [
                    format!(
                        "INSERT INTO {table} (name, email, price, quantity, description) {}",
                        fill_rows(ROWS)
                    ),
                    format!(
                        "UPDATE {table} SET price = price + 1, quantity = quantity + 1, updated_at = now()"
                    ),
                    format!("DELETE FROM {table}"),
                ];
                for (i, statement) in statements.iter().enumerate() {
                    let batch = if v.audited {
                        let ctx = context_sql(false)
                            .replace(":client_id", "1")
                            .replace(":id", "1");
                        format!("BEGIN; {ctx}; {statement}; COMMIT;")
                    } else {
                        statement.clone()
                    };
                    let start = Instant::now();
                    self.conn.batch_execute(&batch)?;
                    measures[i].add(v.name, start.elapsed().as_secs_f64());
                    self.settle(&table)?;
                }
                if v.audited {
                    let (rows, bytes) = log_size(&mut self.conn)?;
                    storage.add(v.name, bytes as f64 / rows.max(1) as f64);
                }
            }
        }
        for m in measures {
            report.push(m);
        }
        report.push(storage);
        Ok(())
    }

    /// The same one-row Diesel transaction three ways, alternated in chunks: on the unaudited
    /// table, on the audited table without context, and on the audited table through
    /// `with_audit_context` with a full context; also counts round trips per transaction.
    fn diesel_transactions(
        &mut self,
        report: &mut Report,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let name = "Diesel transaction with full context, against the same transaction without (audited table)";
        if !self.opts.wants("Diesel") {
            return Ok(());
        }
        eprintln!("Diesel transactions...");
        let mut conn = PgConnection::establish(&self.url)?;
        let trips = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&trips);
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if matches!(event, InstrumentationEvent::StartQuery { .. }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let plain_table = designs::PLAIN.table();
        let audited_table = designs::AUTO.table();
        let ctx = full_context();
        let update = |conn: &mut PgConnection, table: &str, id: i32| {
            diesel::sql_query(format!(
                "UPDATE {table} SET price = price + 1, updated_at = now() WHERE id = $1"
            ))
            .bind::<diesel::sql_types::Integer, _>(id)
            .execute(conn)
        };
        let mut helper = Measure::throughput(name, Goal::AtLeast(0.90));
        let mut total = Measure::throughput(
            "Diesel transaction with full context, against an unaudited table",
            Goal::None,
        );
        let mut round_trips = Measure::count("round trips per Diesel transaction");
        let chunks = 4;
        let per_chunk = (self.opts.diesel_txns / chunks).max(1);
        for _ in 0..self.opts.reps {
            self.reset(&plain_table)?;
            self.reset(&audited_table)?;
            // seconds and round trips: unaudited, audited without context, with context
            let mut secs = [0.0f64; 3];
            let mut counts = [0usize; 3];
            for chunk in 0..chunks {
                for way in 0..3 {
                    let ids =
                        (0..per_chunk).map(|i| (chunk * per_chunk + i) as i32 % ROWS as i32 + 1);
                    trips.store(0, Ordering::Relaxed);
                    let start = Instant::now();
                    for id in ids {
                        match way {
                            0 => conn.transaction(|c| update(c, &plain_table, id))?,
                            1 => conn.transaction(|c| update(c, &audited_table, id))?,
                            _ => {
                                conn.with_audit_context(&ctx, |c| update(c, &audited_table, id))?
                            }
                        };
                    }
                    secs[way] += start.elapsed().as_secs_f64();
                    counts[way] += trips.swap(0, Ordering::Relaxed);
                }
            }
            let n = f64::from(per_chunk * chunks);
            helper.add("plain", n / secs[1]);
            helper.add("pg-audit", n / secs[2]);
            total.add("plain", n / secs[0]);
            total.add("pg-audit", n / secs[2]);
            round_trips.add("plain", counts[1] as f64 / n);
            round_trips.add("pg-audit", counts[2] as f64 / n);
        }
        report.push(helper);
        report.push(total);
        report.push(round_trips);
        Ok(())
    }

    /// The same one-row transaction on sqlx: `pool.begin()` on the unaudited and the audited
    /// table, and `pool.begin_audited(&ctx)` with the full context, on a pool of one connection.
    fn sqlx_transactions(&mut self, report: &mut Report) -> Result<(), Box<dyn std::error::Error>> {
        use pg_audit_sqlx::AuditedBegin as _;
        let name = "sqlx transaction with full context, against the same transaction without (audited table)";
        if !self.opts.wants("sqlx") {
            return Ok(());
        }
        eprintln!("sqlx transactions...");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let pool = runtime.block_on(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&self.url),
        )?;
        let plain_table = designs::PLAIN.table();
        let audited_table = designs::AUTO.table();
        let ctx = full_context();
        let mut helper = Measure::throughput(name, Goal::AtLeast(0.90));
        let mut total = Measure::throughput(
            "sqlx transaction with full context, against an unaudited table",
            Goal::None,
        );
        let chunks = 4;
        let per_chunk = (self.opts.diesel_txns / chunks).max(1);
        for _ in 0..self.opts.reps {
            self.reset(&plain_table)?;
            self.reset(&audited_table)?;
            // seconds: unaudited, audited without context, with context
            let mut secs = [0.0f64; 3];
            for chunk in 0..chunks {
                for (way, slot) in secs.iter_mut().enumerate() {
                    let start = Instant::now();
                    runtime.block_on(async {
                        for i in 0..per_chunk {
                            let id = (chunk * per_chunk + i) as i32 % ROWS as i32 + 1;
                            let (mut tx, table) = match way {
                                0 => (pool.begin().await?, &plain_table),
                                1 => (pool.begin().await?, &audited_table),
                                _ => (pool.begin_audited(&ctx).await?, &audited_table),
                            };
                            sqlx::query(sqlx::AssertSqlSafe(format!(
                                "UPDATE {table} SET price = price + 1, updated_at = now() WHERE id = $1"
                            )))
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                            tx.commit().await?;
                        }
                        Ok::<_, sqlx::Error>(())
                    })?;
                    *slot += start.elapsed().as_secs_f64();
                }
            }
            let n = f64::from(per_chunk * chunks);
            helper.add("plain", n / secs[1]);
            helper.add("pg-audit", n / secs[2]);
            total.add("plain", n / secs[0]);
            total.add("pg-audit", n / secs[2]);
        }
        report.push(helper);
        report.push(total);
        Ok(())
    }
}

/// `SELECT ...` producing `n` realistic rows: text, numeric, an integer and a 200-byte text.
fn fill_rows(n: u32) -> String {
    format!(
        "SELECT 'name ' || g, 'user' || g || '@example.com', (g % 10000) / 100.0, g % 97, repeat(md5(g::text), 7)::varchar(200)
           FROM generate_series(1, {n}) AS g"
    )
}

/// Rows in the audit log, and its size (heap, TOAST and indexes of every partition).
fn log_size(conn: &mut PgConnection) -> QueryResult<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        rows: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        bytes: i64,
    }
    let size: Size = diesel::sql_query(
        "SELECT (SELECT count(*) FROM audit.auditlog) AS rows,
                (SELECT coalesce(sum(total_bytes), 0)::bigint FROM audit.auditlog_partitions()) AS bytes",
    )
    .get_result(conn)?;
    Ok((size.rows, size.bytes))
}

fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `script` with pgbench (`clients` clients, `txns` transactions each); returns tps.
fn pgbench(
    cluster: &Cluster,
    scripts: &std::path::Path,
    script: &str,
    clients: u32,
    txns: u32,
) -> Result<f64, Box<dyn std::error::Error>> {
    let path = scripts.join(format!("s{}.sql", hash(script)));
    fs::write(&path, script)?;
    let output = Command::new(cluster.bindir().join("pgbench"))
        .args(["-n", "-M", "simple", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &cluster.port().to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.to_string(),
            "-t",
            &txns.to_string(),
        ])
        .arg("-f")
        .arg(&path)
        .arg("postgres")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !stdout.contains("tps = ") {
        return Err(format!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or("no tps in pgbench output")?;
    Ok(tps)
}
