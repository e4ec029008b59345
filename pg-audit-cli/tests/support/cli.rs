//! Running the program against a test database: its output, its failures, and `psql`.

use std::process::{Command, Output};

use pg_audit_tempdb::TempDatabase;

/// `pg-audit ARGS` with `DATABASE_URL` set to `url`.
pub(crate) fn pg_audit(args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("pg-audit runs")
}

/// `pg-audit ARGS`, which must succeed: its standard output.
pub(crate) fn ok(args: &[&str], url: &str) -> String {
    let out = pg_audit(args, url);
    assert!(
        out.status.success(),
        "pg-audit {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `sql` run by `psql` in `db`, which must succeed: what it printed, trimmed.
pub(crate) fn psql(db: &TempDatabase<'_>, sql: &str) -> String {
    db.psql(sql)
        .unwrap_or_else(|e| panic!("{e}\n{sql}"))
        .trim()
        .to_owned()
}
