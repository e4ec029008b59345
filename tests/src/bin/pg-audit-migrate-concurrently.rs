//! Test helper: runs pg-audit's embedded migrations against a database at a given instant, so
//! several processes can start them at the same moment (see `tests/migrations.rs`).
//!
//! Usage: `pg-audit-migrate-concurrently DATABASE_URL START_AT_UNIX_MILLIS [plain|locked]`:
//! `plain` runs `conn.run_pending_migrations(pg_audit_diesel::migrations())`, `locked` runs
//! `pg_audit_diesel::run_migrations`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use pg_audit_diesel::pg_audit;

diesel::table! {
    accounts (id) {
        id -> Int4,
        owner -> Text,
        balance -> Int8,
    }
}

#[pg_audit(track_only = [owner, balance])]
#[derive(Queryable)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub id: i32,
    pub owner: String,
    pub balance: i64,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(start), mode) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: pg-audit-migrate-concurrently DATABASE_URL START_AT_UNIX_MILLIS");
        std::process::exit(2);
    };
    let start = UNIX_EPOCH + Duration::from_millis(start.parse().expect("milliseconds"));
    let mut conn = PgConnection::establish(&url).expect("connect");
    if let Ok(wait) = start.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
    let applied = match mode.as_deref() {
        Some("locked") => pg_audit_diesel::run_migrations(&mut conn, pg_audit_diesel::migrations()),
        _ => conn
            .run_pending_migrations(pg_audit_diesel::migrations())
            .map(|versions| versions.iter().map(ToString::to_string).collect()),
    };
    match applied {
        Ok(applied) => println!("{}", applied.len()),
        Err(e) => {
            eprintln!("migrations failed: {e}");
            std::process::exit(1);
        }
    }
}
