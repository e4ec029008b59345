//! The history of one record among millions of audit rows: it must come back in milliseconds,
//! through the `record_key` index, without scanning partitions.

use std::io::Write as _;
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use pg_audit::{AuditLog, Ident, QualifiedName};
use pg_audit_diesel::log::{AuditReader, Page};
use serde_json::json;

pub(crate) const TABLES: u64 = 20;
/// Records per table: with 10 million rows, each record has 20 changes spread over the whole
/// time range, so its history spans every partition.
pub(crate) const RECORDS: u64 = 25_000;
/// Users writing the changes (each transaction of three rows one user, one request id), and
/// one more, `rare`, writing one change in 100,000.
pub(crate) const USERS: u64 = 1_000;

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// Fills the log with `rows` rows over monthly partitions back to the oldest (one change a
/// second, across [`TABLES`] tables of [`RECORDS`] records each); returns the months.
pub(crate) fn fill(conn: &mut PgConnection, rows: u64) -> Result<u64, Box<dyn std::error::Error>> {
    // Monthly partitions back to the oldest row (one second apart), as a log running that long
    // would have them.
    let months = rows / (30 * 86_400) + 1;
    conn.batch_execute(&format!(
        "DO $$ BEGIN FOR m IN 1..{months} LOOP
           EXECUTE format('CREATE TABLE audit.%I PARTITION OF audit.auditlog FOR VALUES FROM (%L) TO (%L)',
             'auditlog_p' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') - m * interval '1 month', 'YYYYMMDD'),
             (date_trunc('month', now() AT TIME ZONE 'UTC') - m * interval '1 month') AT TIME ZONE 'UTC',
             (date_trunc('month', now() AT TIME ZONE 'UTC') - (m - 1) * interval '1 month') AT TIME ZONE 'UTC');
         END LOOP; END $$;"
    ))?;
    eprintln!(
        "filling the log with {rows} rows ({TABLES} tables, {RECORDS} records each, one change a \
         second)..."
    );
    let batch = 1_000_000;
    let start = Instant::now();
    for from in (0..rows).step_by(batch as usize) {
        let to = (from + batch).min(rows);
        conn.batch_execute(&format!(
            "INSERT INTO audit.auditlog (changed_at, tx_started_at, txid, operation, schema_name, table_name,
                                         record_key, record_pk, old_values, new_values, context)
             SELECT ts, ts, 1000000 + g / 3, (ARRAY['INSERT', 'UPDATE', 'DELETE'])[1 + g % 3], 'public', 't' || (g % {TABLES}),
                    jsonb_hash_extended(k, hashtext('public.t' || (g % {TABLES}))), k,
                    NULL, k || jsonb_build_object('name', 'name ' || g, 'price', g % 1000),
                    json_build_object('user_id', CASE WHEN g % 100000 = 7 THEN 'rare' ELSE 'user-' || (g / 3) % {USERS} END,
                                      'request_id', 'r-' || g / 3)
               FROM generate_series({from}, {to} - 1) AS g,
                    LATERAL (SELECT now() - ({rows} - g) * interval '1 second' AS ts,
                                    jsonb_build_object('id', (g / {TABLES}) % {RECORDS}) AS k) AS x"
        ))?;
        eprint!("\r  {to} rows, {:.0} s", start.elapsed().as_secs_f64());
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    conn.batch_execute("ANALYZE audit.auditlog")?;

    Ok(months)
}

pub(crate) fn run(
    conn: &mut PgConnection,
    url: &str,
    rows: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let log = AuditLog::new();
    let months = fill(conn, rows)?;
    let reader = AuditReader::with_log(log.clone());
    let mut conn = PgConnection::establish(url)?;
    let lookup = |i: u64| -> Result<(QualifiedName, serde_json::Value), pg_audit::Error> {
        let table = QualifiedName::new(
            Some(Ident::new("public")?),
            Ident::new(format!("t{}", i * 7 % TABLES))?,
        );
        Ok((table, json!({"id": (i * 7919) % RECORDS})))
    };
    // The same 1000 lookups through Diesel's reader, then sqlx's (the same queries).
    let mut diesel = Vec::new();
    let mut found = 0;
    for i in 0..1000u64 {
        let (table, key) = lookup(i)?;
        let start = Instant::now();
        let entries = reader.history_of(&mut conn, &table, &key, Page::first(50))?;
        diesel.push(start.elapsed().as_secs_f64() * 1000.0);
        found += entries.len();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sqlx_reader = pg_audit_sqlx::AuditReader::with_log(log.clone());
    let mut sq = runtime.block_on(<sqlx::PgConnection as sqlx::Connection>::connect(url))?;
    let mut on_sqlx = Vec::new();
    for i in 0..1000u64 {
        let (table, key) = lookup(i)?;
        let start = Instant::now();
        let entries =
            runtime.block_on(sqlx_reader.history(&mut sq, &table, &key, Page::first(50)))?;
        on_sqlx.push(start.elapsed().as_secs_f64() * 1000.0);
        found -= entries.len();
    }
    assert_eq!(found, 0, "both readers found the same entries");
    for (name, latencies) in [("Diesel", &mut diesel), ("sqlx", &mut on_sqlx)] {
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        println!(
            "\nHistory of one record among {rows} audit rows ({} monthly partitions and the DEFAULT), 1000 lookups of random records \
             through {name}'s reader: median {:.2} ms, p95 {:.2} ms, max {:.2} ms.",
            months + 4,
            pct(0.5),
            pct(0.95),
            pct(1.0)
        );
    }
    println!();
    // The plan of the very query the reader runs.
    conn.batch_execute(&format!("PREPARE history AS {}", reader.history_sql()))?;
    let plan: Vec<PlanLine> = diesel::sql_query(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)
         EXECUTE history('public', 't2', '{\"id\": 4242}', NULL, 50)",
    )
    .load(&mut conn)?;
    println!("```text");
    for l in plan {
        println!("{}", l.line);
    }
    println!("```");
    Ok(())
}
