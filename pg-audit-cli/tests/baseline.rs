//! `pg-audit baseline`: rows that existed before auditing began, written to the log as
//! SNAPSHOT entries — every row once, as the triggers would log it, resumable after a kill,
//! and ordered against writers changing rows while it runs.

#[path = "support/cli.rs"]
mod cli;

use cli::{ok, pg_audit, psql};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pg_audit_tempdb::TempDatabase;

/// A database with the log and `accounts` (composite key, a secret column, an `active` flag)
/// holding `rows` rows written before its triggers were installed.
fn accounts(hint: &str, rows: u32, options: &[&str]) -> TempDatabase<'static> {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database(hint)
        .unwrap();
    let url = db.url().to_owned();
    psql(&db, &ok(&["sql", "table"], &url));
    psql(
        &db,
        &format!(
            "CREATE TABLE accounts (org text, id int, name text, secret text, active boolean NOT NULL,
                                    PRIMARY KEY (org, id));
             INSERT INTO accounts SELECT 'org' || (g % 3), g, 'name ' || g, 's' || g, g % 5 <> 0
               FROM generate_series(1, {rows}) AS g;"
        ),
    );
    let mut install = vec!["sql", "trigger", "--table", "accounts"];
    install.extend_from_slice(options);
    psql(&db, &ok(&install, &url));
    db
}

/// The rows of the table not matching their newest entry's state in the log (empty: the log
/// ends where the table stands), as `key|problem` lines.
fn log_disagrees(db: &TempDatabase<'_>, values: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT pg_catalog.jsonb_build_object('org', a.org, 'id', a.id)::text || '|' ||
                    coalesce(last.operation || ' ' || coalesce(last.new_values::text, 'null'), 'no entry')
               FROM accounts AS a
               LEFT JOIN LATERAL (
                    SELECT l.operation, l.new_values FROM audit.auditlog AS l
                     WHERE l.record_pk = pg_catalog.jsonb_build_object('org', a.org, 'id', a.id)
                     ORDER BY l.id DESC LIMIT 1) AS last ON true
              WHERE last.new_values IS DISTINCT FROM {values}
              ORDER BY 1"
        ),
    )
}

#[test]
fn every_row_gets_one_snapshot_logged_as_its_insert_would_be() {
    let db = accounts(
        "baseline_rows",
        103,
        &["--exclude-fields", "secret", "--condition", "NEW.active"],
    );
    let url = db.url().to_owned();
    let out = ok(
        &[
            "baseline",
            "--table",
            "accounts",
            "--batch-size",
            "10",
            "--reason",
            "day one",
            "--user",
            "ops",
        ],
        &url,
    );
    // 103 rows, one in five inactive (the condition leaves them out, as an insert's would).
    assert!(out.contains("83 rows"), "{out}");
    assert_eq!(
        psql(
            &db,
            "SELECT count(*), count(DISTINCT record_pk), bool_and(new_values ? 'secret'),
                    bool_and(old_values IS NULL), min(context->>'change_reason'), min(context->>'user_id'),
                    min(context->>'source')
               FROM audit.auditlog WHERE operation = 'SNAPSHOT'"
        ),
        "83|83|f|t|day one|ops|pg-audit baseline"
    );
    // Each active row's newest entry is its snapshot, holding what an insert would log.
    assert_eq!(
        log_disagrees(&db, "CASE WHEN a.active THEN to_jsonb(a) - 'secret' END"),
        ""
    );
    // A finished baseline is not repeated unless asked.
    let again = ok(&["baseline", "--table", "accounts"], &url);
    assert!(again.contains("finished earlier"), "{again}");
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog WHERE operation = 'SNAPSHOT'"
        ),
        "83"
    );
    ok(&["baseline", "--table", "accounts", "--again"], &url);
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog WHERE operation = 'SNAPSHOT'"
        ),
        "166"
    );
    // The history shows the snapshot as the record's first entry.
    let history = ok(&["history", "accounts", "org1,1"], &url);
    assert!(history.contains("SNAPSHOT"), "{history}");
    // A table that is not audited is refused with the fix.
    psql(&db, "CREATE TABLE plain (id int PRIMARY KEY)");
    let out = pg_audit(&["baseline", "--table", "plain"], &url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not audited") && err.contains("sql trigger"),
        "{err}"
    );
}

#[test]
fn a_killed_baseline_resumes_without_writing_a_row_twice() {
    let db = accounts("baseline_resume", 3_000, &[]);
    let url = db.url().to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(["baseline", "--table", "accounts", "--batch-size", "1"])
        .env("DATABASE_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = psql(
            &db,
            "SELECT coalesce((SELECT rows FROM audit.auditlog_baselines), 0)",
        )
        .parse()
        .unwrap();
        if done >= 50 {
            break;
        }
        assert!(Instant::now() < deadline, "the baseline made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial: i64 = psql(
        &db,
        "SELECT count(*) FROM audit.auditlog WHERE operation = 'SNAPSHOT'",
    )
    .parse()
    .unwrap();
    assert!(partial < 3_000, "the kill came too late to test a resume");
    let out = ok(
        &["baseline", "--table", "accounts", "--batch-size", "500"],
        &url,
    );
    assert!(out.contains("3000 rows"), "{out}");
    assert_eq!(
        psql(
            &db,
            "SELECT count(*), count(DISTINCT record_pk) FROM audit.auditlog WHERE operation = 'SNAPSHOT'"
        ),
        "3000|3000"
    );
    assert_eq!(log_disagrees(&db, "to_jsonb(a)"), "");
}

#[test]
fn writers_during_a_baseline_leave_the_log_ending_where_the_table_stands() {
    let db = accounts("baseline_writers", 5_000, &[]);
    let url = db.url().to_owned();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Writers updating, deleting and inserting rows all over the key range meanwhile.
        for writer in 0..2 {
            let (db, stop) = (&db, &stop);
            scope.spawn(move || {
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    psql(
                        db,
                        &format!(
                            "UPDATE accounts SET name = 'w{writer} r{round}' WHERE id % 97 = {round} % 97;
                             DELETE FROM accounts WHERE id = {round} * 7 + {writer};
                             INSERT INTO accounts VALUES ('org9', 100000 + {round} * 2 + {writer}, 'new', 's', true);"
                        ),
                    );
                }
            });
        }
        ok(
            &["baseline", "--table", "accounts", "--batch-size", "50"],
            &url,
        );
        stop.store(true, Ordering::Relaxed);
    });
    // Every row's newest entry (by id) holds the row as it stands: a snapshot never
    // overtook a change it had not seen.
    assert_eq!(log_disagrees(&db, "to_jsonb(a)"), "");
    assert!(
        psql(
            &db,
            "SELECT count(*) > 0 FROM audit.auditlog WHERE operation = 'UPDATE'"
        ) == "t"
    );
}
