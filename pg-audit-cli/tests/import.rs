//! `pg-audit import`: the history kept by audit-trigger and supa_audit — installed from their
//! own SQL (`tests/fixtures/`), their own triggers writing it — becomes the entries pg-audit's
//! triggers write for the same statements on a twin table: same operations, keys (across a
//! key change), values (typed again from audit-trigger's hstore), times, and transaction and
//! user where the source has them. Running it again imports only what is new; what cannot be
//! mapped is counted and named.

#[path = "support/cli.rs"]
mod cli;

use cli::{ok, pg_audit, psql};

use pg_audit_tempdb::TempDatabase;
use serde_json::Value;

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The same statements on the tool's table `people` and on `twin`, audited by pg-audit's
/// triggers, in the same transactions; `round` varies the values.
fn workload(db: &TempDatabase<'_>, round: u32) {
    let base = round * 10;
    let mut sql = String::from("BEGIN;");
    for t in ["people", "twin"] {
        sql.push_str(&format!(
            "INSERT INTO {t} VALUES ({a}, 'Ann', true, 1.5, '{{\"tags\": [\"x\"], \"n\": 1}}', '2026-01-02'),
                                   ({b}, 'Bob', false, NULL, NULL, NULL);",
            a = base + 1,
            b = base + 2
        ));
    }
    sql.push_str("COMMIT;");
    let mut tx = String::from("BEGIN;");
    for t in ["people", "twin"] {
        tx.push_str(&format!(
            "UPDATE {t} SET name = 'Anna', score = 2.25 WHERE id = {a};
             UPDATE {t} SET id = {c} WHERE id = {b};
             DELETE FROM {t} WHERE id = {a};",
            a = base + 1,
            b = base + 2,
            c = base + 3
        ));
    }
    tx.push_str("COMMIT;");
    psql(db, &sql);
    psql(db, &tx);
}

/// The entries of `table`, as comparable rows.
fn entries(db: &TempDatabase<'_>, table: &str, columns: &str) -> Vec<Value> {
    let out = psql(
        db,
        &format!(
            "SELECT coalesce(json_agg(json_build_array({columns}) ORDER BY id), '[]') FROM audit.auditlog
              WHERE table_name = '{table}' AND operation <> 'DDL'"
        ),
    );
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn setup(hint: &str, tool_sql: &str, twin_options: &[&str]) -> TempDatabase<'static> {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database(hint)
        .unwrap();
    psql(&db, tool_sql);
    psql(&db, &ok(&["sql", "table"], db.url()));
    for t in ["people", "twin"] {
        psql(
            &db,
            &format!(
                "CREATE TABLE {t} (id int PRIMARY KEY, name text, active boolean, score numeric, meta jsonb, born date)"
            ),
        );
    }
    let mut install = vec!["sql", "trigger", "--table", "twin"];
    install.extend_from_slice(twin_options);
    psql(&db, &ok(&install, db.url()));
    db
}

#[test]
fn audit_trigger_history_becomes_the_entries_pg_audit_writes() {
    let db = setup(
        "import_audit_trigger",
        &fixture("audit-trigger/audit.sql"),
        &[],
    );
    let url = db.url().to_owned();
    psql(&db, "SELECT audit.audit_table('public.people')");
    // A table audited by statement only: no row values to import.
    psql(
        &db,
        "CREATE TABLE tally (id int PRIMARY KEY, n int);
         SELECT audit.audit_table('public.tally', false, false);
         INSERT INTO tally VALUES (1, 1); UPDATE tally SET n = 2; TRUNCATE tally;",
    );
    workload(&db, 0);
    psql(&db, "BEGIN; TRUNCATE people; TRUNCATE twin; COMMIT;");
    // Not audited by pg-audit yet: left for later, unless taken as the source logged it.
    let out = ok(&["import", "--from", "audit-trigger"], &url);
    assert!(out.contains("not audited by pg-audit yet"), "{out}");
    assert_eq!(entries(&db, "people", "id").len(), 0);
    let out = ok(
        &[
            "import",
            "--from",
            "audit-trigger",
            "--batch-size",
            "2",
            "--as-logged",
        ],
        &url,
    );
    assert!(
        out.contains("\"public\".\"people\"  6            6"),
        "{out}"
    );
    assert!(out.contains("statement-level"), "{out}");
    // Same operations, keys, values, transactions (their ids and start) and session users.
    let columns =
        "operation, record_pk, old_record_pk, old_values, new_values, tx_started_at, txid, db_user";
    let twin = entries(&db, "twin", columns);
    assert_eq!(twin.len(), 6, "{twin:?}");
    assert_eq!(entries(&db, "people", columns), twin);
    // Each entry's time is its statement's, as audit-trigger recorded it.
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog AS l JOIN audit.logged_actions AS a
                 ON a.event_id = (l.context -> 'metadata' ->> 'audit_trigger_event_id')::bigint
              WHERE l.table_name = 'people' AND l.changed_at = a.action_tstamp_stm"
        ),
        "6"
    );
    // The statement-only table: its TRUNCATE imported, its two row changes not.
    assert_eq!(
        psql(
            &db,
            "SELECT rows || '/' || unmapped FROM audit.auditlog_imports WHERE table_name = 'tally'"
        ),
        "1/2"
    );
    // The context says where each entry came from.
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog WHERE table_name = 'people'
                AND context ->> 'source' = 'import audit-trigger'
                AND (context -> 'metadata' ->> 'audit_trigger_event_id') IS NOT NULL"
        ),
        "6"
    );

    // Again: nothing new; after more changes, only those.
    ok(&["import", "--from", "audit-trigger", "--as-logged"], &url);
    assert_eq!(entries(&db, "people", columns).len(), 6);
    // A value the table's type refuses is set aside and named; the rows after it are imported.
    psql(
        &db,
        "INSERT INTO audit.logged_actions (schema_name, table_name, relid, action_tstamp_tx, action_tstamp_stm,
                                           action_tstamp_clk, action, row_data, statement_only)
         VALUES ('public', 'people', 'people'::regclass, now(), now(), now(), 'I', 'id=>99, score=>\"not a number\"', false)",
    );
    workload(&db, 1);
    let out = cli::pg_audit(&["import", "--from", "audit-trigger", "--as-logged"], &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 entries imported"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not imported: invalid input syntax for type numeric"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        entries(&db, "people", columns),
        entries(&db, "twin", columns)
    );
    // pg-audit's reader follows the imported record across its key change.
    let history = ok(&["history", "people", "13"], &url);
    assert!(history.contains("id: 12 → 13"), "{history}");
    assert!(history.contains("INSERT"), "{history}");
}

/// How the supa_audit test's tables are audited by pg-audit.
const MASKED: &[&str] = &["--exclude-fields", "born", "--mask-fields", "name"];

#[test]
fn supa_audit_history_becomes_the_entries_pg_audit_writes() {
    // An extension script run as plain SQL: without the calls only an extension may make.
    let script: String = fixture("supa_audit/supa_audit--0.3.1.sql")
        .lines()
        .filter(|l| !l.contains("pg_extension_config_dump"))
        .collect::<Vec<_>>()
        .join("\n");
    let db = setup(
        "import_supa_audit",
        &format!("CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\";\n{script}"),
        MASKED,
    );
    let url = db.url().to_owned();
    psql(
        &db,
        "SELECT audit.enable_tracking('public.people'::regclass)",
    );
    workload(&db, 0);
    psql(&db, "BEGIN; TRUNCATE people; TRUNCATE twin; COMMIT;");
    // pg-audit takes over `people` configured as its twin: what it keeps out of the log (a
    // column excluded, one masked) stays out of the imported history too.
    let mut install = vec!["sql", "trigger", "--table", "people"];
    install.extend_from_slice(MASKED);
    psql(&db, &ok(&install, &url));
    let out = ok(&["import", "--from", "supa-audit"], &url);
    assert!(out.contains("6 entries imported"), "{out}");
    // supa_audit keeps the transaction's time, not the statement's, and no transaction id.
    let columns = "operation, record_pk, old_record_pk, old_values, new_values";
    assert_eq!(
        entries(&db, "people", columns),
        entries(&db, "twin", columns)
    );
    assert_eq!(
        entries(&db, "people", "tx_started_at"),
        entries(&db, "twin", "tx_started_at")
    );
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM audit.auditlog WHERE table_name = 'people'
                AND (concat(old_values, new_values)::text LIKE '%Ann%' OR concat(old_values, new_values)::text LIKE '%born%')"
        ),
        "0"
    );
    ok(&["import", "--from", "supa-audit"], &url);
    assert_eq!(entries(&db, "people", columns).len(), 6);
    // A tool not installed is named.
    let out = pg_audit(&["import", "--from", "audit-trigger"], &url);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit.logged_actions does not exist"));
}
