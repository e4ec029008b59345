//! A baseline of a large table while writers update it: how long the baseline takes, and what
//! the writers' statements cost meanwhile against the same writers without it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};

/// Writers updating random rows, one statement a transaction.
const WRITERS: u64 = 2;

pub(crate) fn run(
    conn: &mut PgConnection,
    url: &str,
    rows: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let log = AuditLog::new();
    conn.batch_execute(&log.create_sql())?;
    eprintln!("filling public.accounts with {rows} rows");
    conn.batch_execute(&format!(
        "CREATE TABLE public.accounts (id int PRIMARY KEY, name text NOT NULL, balance int NOT NULL);
         INSERT INTO public.accounts SELECT g, 'name ' || g, g % 1000 FROM generate_series(1, {rows}) AS g;"
    ))?;
    conn.batch_execute("VACUUM ANALYZE public.accounts")?;
    let table = QualifiedName::parse("public.accounts")?;
    let spec = TriggerSpec::builder(table.clone())
        .primary_key(["id"])
        .build()?;
    conn.batch_execute(&spec.install_sql(&log))?;

    let without = writers(url, rows, || std::thread::sleep(Duration::from_secs(15)))?;
    let mut taken = None;
    let with = writers(url, rows, || {
        let mut conn = PgConnection::establish(url).expect("connects");
        let start = Instant::now();
        let outcome = pg_audit_diesel::take_baseline(
            &mut conn,
            &log,
            &table,
            &pg_audit_diesel::Baseline::default(),
            |_| {},
        )
        .expect("the baseline runs");
        taken = Some((outcome.rows, start.elapsed()));
    })?;
    let (written, elapsed) = taken.expect("the baseline ran");
    println!(
        "baseline of {rows} rows: {written} SNAPSHOT entries in {:.1} s ({:.0} rows/s), batches of {}",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64(),
        pg_audit_diesel::Baseline::default().batch_size
    );
    println!(
        "{WRITERS} writers updating random rows, one UPDATE a transaction (ms):\n\
         \x20                  updates      p50     p99   p99.9     max\n\
         \x20 without baseline {}\n\
         \x20 during baseline  {}",
        without.line(),
        with.line()
    );
    Ok(())
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn at(&self, q: f64) -> f64 {
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i].as_secs_f64() * 1e3
    }

    fn line(&self) -> String {
        format!(
            "{:>8} {:>8.2} {:>7.2} {:>7.2} {:>7.1}",
            self.0.len(),
            self.at(0.5),
            self.at(0.99),
            self.at(0.999),
            self.at(1.0)
        )
    }
}

/// The writers' latencies while `during` runs.
fn writers(
    url: &str,
    rows: u64,
    during: impl FnOnce(),
) -> Result<Latencies, Box<dyn std::error::Error>> {
    let stop = AtomicBool::new(false);
    let mut all = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut conn = PgConnection::establish(url).expect("connects");
                    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (w + 1);
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let id = 1 + seed % rows;
                        let start = Instant::now();
                        conn.batch_execute(&format!(
                            "UPDATE public.accounts SET balance = balance + 1 WHERE id = {id}"
                        ))
                        .expect("the update runs");
                        out.push(start.elapsed());
                    }
                    out
                })
            })
            .collect();
        during();
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a writer"))
            .collect::<Vec<_>>()
    });
    all.sort();
    Ok(Latencies(all))
}
