//! The admin's pages at size: the log of `--history`, the audited tables it names, the admin
//! router served on loopback, and each page requested many times with random parameters.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};

use crate::history::{RECORDS, TABLES, USERS, fill};

const REQUESTS: u64 = 200;

/// A page's name, how many requests, and its path for the i-th request.
type PageSpec = (&'static str, u64, Box<dyn Fn(u64) -> String>);

pub(crate) fn run(
    conn: &mut PgConnection,
    url: &str,
    rows: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    fill(conn, rows)?;
    let log = AuditLog::new();
    // The audited tables the log names, installed (their install records are what the table
    // pages read), each holding its records: "as of a time" reads the table too, and finds
    // every row of it in the log.
    for t in 0..TABLES {
        conn.batch_execute(&format!(
            "CREATE TABLE public.t{t} (id int PRIMARY KEY, name text, price int);
             INSERT INTO public.t{t} SELECT g, 'name ' || g, g % 1000 FROM generate_series(0, {}) AS g;",
            RECORDS - 1
        ))?;
        let spec = TriggerSpec::builder(QualifiedName::parse(&format!("public.t{t}"))?)
            .primary_key(["id"])
            .build()?;
        conn.batch_execute(&spec.install_sql(&log))?;
    }
    // What autovacuum does to a log filled over months: BRIN ranges summarized, statistics.
    conn.batch_execute("VACUUM (ANALYZE) audit.auditlog")?;
    // The counts, as a run of `pg-audit partitions count` keeps them; one hour's entries
    // (3,600 here) left past them, as a log counted every few minutes would have at worst.
    let start = Instant::now();
    let counted: Vec<Counted> = diesel::sql_query(log.count_sql(rows as i64 - 3_600)).load(conn)?;
    let took = start.elapsed().as_secs_f64();
    let sizes: Vec<Sizes> = diesel::sql_query(
        "SELECT pg_total_relation_size('audit.auditlog_counts') AS counts,
                pg_total_relation_size('audit.auditlog_context_counts') AS context,
                pg_total_relation_size('audit.auditlog_records') AS records,
                (SELECT sum(pg_total_relation_size(p.relid))::bigint FROM pg_partition_tree('audit.auditlog') AS p) AS log",
    )
    .load(conn)?;
    if let (Some(c), Some(s)) = (counted.first(), sizes.first()) {
        println!(
            "\nCounted {} entries in {took:.1} s ({:.0} entries/s), {} left past the counts; \
             the counts take {:.1} MB (per table {:.1} MB, per user and request {:.1} MB, \
             records {:.1} MB) beside the log's {:.1} MB.",
            c.through_id,
            c.through_id as f64 / took,
            rows as i64 - c.through_id,
            (s.counts + s.context + s.records) as f64 / 1e6,
            s.counts as f64 / 1e6,
            s.context as f64 / 1e6,
            s.records as f64 / 1e6,
            s.log as f64 / 1e6,
        );
    }
    conn.batch_execute("VACUUM (ANALYZE) audit.auditlog_counts, audit.auditlog_context_counts, audit.auditlog_records")?;
    let month_ago: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "to_char(now() AT TIME ZONE 'UTC' - interval '35 days', 'YYYY-MM-DD\"T\"00:00')",
    ))
    .get_result(conn)?;
    let as_of = month_ago.clone();
    let recent: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "to_char(now() AT TIME ZONE 'UTC' - interval '1 minute', 'YYYY-MM-DD\"T\"HH24:MI')",
    ))
    .get_result(conn)?;
    let day_after: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "to_char(now() AT TIME ZONE 'UTC' - interval '34 days', 'YYYY-MM-DD\"T\"00:00')",
    ))
    .get_result(conn)?;

    let pool = Pool::builder()
        .max_size(4)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    let admin = pg_audit_admin::router(pool).authorize(|_| pg_audit_admin::Access::Read);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().nest_service("/audit", admin)).await;
    });

    let newest: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT max(id) FROM audit.auditlog)",
    ))
    .get_result(conn)?;
    let pages: Vec<PageSpec> = vec![
        ("activity", REQUESTS, Box::new(|_| "/audit".to_owned())),
        (
            "activity, next pages",
            REQUESTS,
            Box::new(move |i| format!("/audit?before={}", newest - (i as i64 * 977) % 1_000_000)),
        ),
        (
            "activity, one table",
            REQUESTS,
            Box::new(|i| format!("/audit?table=public.t{}", i % TABLES)),
        ),
        (
            "activity, one user",
            REQUESTS,
            Box::new(|i| format!("/audit?user=user-{}", (i * 7) % USERS)),
        ),
        (
            "activity, a user with one entry in 100,000",
            REQUESTS,
            Box::new(|_| "/audit?user=rare".to_owned()),
        ),
        (
            "activity, a user with no entries",
            REQUESTS,
            Box::new(|i| format!("/audit?user=nobody-{i}")),
        ),
        (
            "activity, one request",
            REQUESTS,
            Box::new(move |i| format!("/audit?request=r-{}", (i * 104_729) % (rows / 3))),
        ),
        (
            "activity, a request with no entries",
            REQUESTS,
            Box::new(|i| format!("/audit?request=none-{i}")),
        ),
        (
            "activity, one operation",
            REQUESTS,
            Box::new(|_| "/audit?op=DELETE".to_owned()),
        ),
        (
            "activity, an operation with no entries",
            REQUESTS,
            Box::new(|_| "/audit?op=TRUNCATE".to_owned()),
        ),
        (
            "activity, one table and operation",
            REQUESTS,
            Box::new(|i| format!("/audit?table=public.t{}&op=UPDATE", i % TABLES)),
        ),
        (
            "activity, one day a month ago",
            REQUESTS,
            Box::new(move |_| format!("/audit?from={month_ago}&until={day_after}")),
        ),
        (
            "user (the last 90 days)",
            REQUESTS,
            Box::new(|i| format!("/audit/user?id=user-{}", (i * 7) % USERS)),
        ),
        (
            "request",
            REQUESTS,
            Box::new(move |i| format!("/audit/request?id=r-{}", (i * 104_729) % (rows / 3))),
        ),
        (
            "activity, one record",
            REQUESTS,
            Box::new(|i| {
                format!(
                    "/audit?table=public.t{}&key=%7B%22id%22%3A{}%7D",
                    i % TABLES,
                    (i * 7919) % RECORDS
                )
            }),
        ),
        (
            "record",
            REQUESTS,
            Box::new(|i| {
                format!(
                    "/audit/record?table=public.t{}&key=%7B%22id%22%3A{}%7D",
                    i % TABLES,
                    (i * 7919) % RECORDS
                )
            }),
        ),
        (
            "transaction",
            REQUESTS,
            Box::new(move |i| format!("/audit/tx/{}", 1_000_000 + (i * 104_729) % (rows / 3))),
        ),
        ("tables", REQUESTS, Box::new(|_| "/audit/tables".to_owned())),
        (
            "partitions",
            REQUESTS,
            Box::new(|_| "/audit/partitions".to_owned()),
        ),
        (
            "table (configuration, drift, 30 days' chart)",
            REQUESTS,
            Box::new(|i| format!("/audit/table?name=public.t{}", i % TABLES)),
        ),
        (
            "table as of a month ago (first page of rows)",
            REQUESTS / 4,
            Box::new(move |i| format!("/audit/table?name=public.t{}&at={as_of}", i % TABLES)),
        ),
        (
            "table as of a minute ago (its last hour uncounted)",
            REQUESTS / 4,
            Box::new(move |i| format!("/audit/table?name=public.t{}&at={recent}", i % TABLES)),
        ),
        (
            "table as of before the log began",
            REQUESTS / 4,
            Box::new(|i| {
                format!(
                    "/audit/table?name=public.t{}&at=2000-01-01T00:00",
                    i % TABLES
                )
            }),
        ),
    ];
    println!("\nThe admin's pages over a log of {rows} rows:\n");
    println!("| page | requests | median | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (name, requests, path) in &pages {
        let mut latencies = Vec::new();
        for i in 0..*requests {
            let start = Instant::now();
            let status = get(addr, &path(i))?;
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            if status != 200 {
                return Err(format!("{name}: {} answered {status}", path(i)).into());
            }
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        println!(
            "| {name} | {requests} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            pct(0.5),
            pct(0.95),
            pct(0.99),
            pct(1.0)
        );
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    through_id: i64,
}

#[derive(QueryableByName)]
struct Sizes {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    counts: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    context: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    records: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
}

/// The status of `GET path`, the whole body read.
fn get(addr: SocketAddr, path: &str) -> Result<u16, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response[..response.len().min(20)]).into_owned();
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}
