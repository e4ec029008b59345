//! `pg-audit seal`, `verify` and `redact`: tamper evidence over the log and its archive, and
//! the erasure of a person's data that keeps it.

use std::io::Write as _;

use pg_audit::sql::seal::SEAL_ROW_BYTES;
use pg_audit::{AuditLog, QualifiedName};
use pg_audit_diesel::log::AuditReader;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::options::{Db, Result};
use crate::output::{Progress, Table};

/// `pg-audit seal [--max-rows N] [--export FILE]`.
pub(crate) fn seal(max_rows: u32, export: Option<&std::path::Path>, db: &Db) -> Result<()> {
    let (_, log) = db.connect()?;
    let url = db.url()?.to_owned();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = pg_audit_archive::connect(&url).await?;
        let made = client
            .query(&log.seal_sql(max_rows), &[])
            .await
            .map_err(|e| format!("cannot seal: {}", db_message(&e)))?;
        let mut table = Table::new(&["seal", "first_id", "last_id", "rows"]);
        for r in &made {
            table.push(vec![
                json!(r.get::<_, i64>(0)),
                json!(r.get::<_, i64>(1)),
                json!(r.get::<_, i64>(2)),
                json!(r.get::<_, i64>(3)),
            ]);
        }
        let progress = client
            .query_one(&log.seal_progress_sql(), &[])
            .await?;
        let unsealed: i64 = progress.get(2);
        if db.json {
            table.print(true);
        } else if made.is_empty() {
            crate::output::line(&format!(
                "nothing new to seal ({unsealed} row(s) wait for their transactions, or for the next run, to be sealed)"
            ));
        } else {
            table.print(false);
            crate::output::line(&format!(
                "sealed {} row(s) in {} seal(s); {unsealed} row(s) not yet sealable",
                made.iter().map(|r| r.get::<_, i64>(3)).sum::<i64>(),
                made.len()
            ));
        }
        if let Some(path) = export {
            let seals = load_seals(&client, &log).await?;
            if seals.is_empty() {
                return Err(format!(
                    "no seals to export to {}: nothing is sealed yet (rows are sealed once their transactions have ended; run `pg-audit seal` again)",
                    path.display()
                )
                .into());
            }
            let mut file = std::fs::File::create(path)
                .map_err(|e| format!("cannot write the seals to {}: {e}", path.display()))?;
            for s in &seals {
                writeln!(file, "{}", s.to_json())
                    .map_err(|e| format!("cannot write the seals to {}: {e}", path.display()))?;
            }
            if !db.json {
                crate::output::line(&format!(
                    "exported {} seal(s) to {}: keep the file outside the database, and pass it to `pg-audit verify --seals`",
                    seals.len(),
                    path.display()
                ));
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// A seal as stored.
#[derive(Debug, Clone, PartialEq)]
struct Seal {
    seal_id: i64,
    first_id: i64,
    last_id: i64,
    row_count: i64,
    rows: Vec<u8>,
    prev_hash: Option<Vec<u8>>,
    hash: Vec<u8>,
}

impl Seal {
    fn to_json(&self) -> Value {
        json!({
            "seal_id": self.seal_id,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "row_count": self.row_count,
            "rows": hex(&self.rows),
            "prev_hash": self.prev_hash.as_deref().map(hex),
            "hash": hex(&self.hash),
        })
    }

    fn from_json(v: &Value) -> Option<Seal> {
        let bytes = |k: &str| v.get(k)?.as_str().and_then(unhex);
        Some(Seal {
            seal_id: v.get("seal_id")?.as_i64()?,
            first_id: v.get("first_id")?.as_i64()?,
            last_id: v.get("last_id")?.as_i64()?,
            row_count: v.get("row_count")?.as_i64()?,
            rows: bytes("rows")?,
            prev_hash: match v.get("prev_hash")? {
                Value::Null => None,
                _ => Some(bytes("prev_hash")?),
            },
            hash: bytes("hash")?,
        })
    }

    /// The (id, digest prefix) pairs it holds.
    fn entries(rows: &[u8]) -> Vec<(i64, [u8; 8])> {
        rows.chunks_exact(SEAL_ROW_BYTES)
            .map(|c| {
                (
                    i64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
                    c[8..].try_into().expect("8 bytes"),
                )
            })
            .collect()
    }
}

async fn load_seals(client: &Client, log: &AuditLog) -> Result<Vec<Seal>> {
    Ok(client
        .query(&log.list_seals_sql(), &[])
        .await?
        .iter()
        .map(|r| Seal {
            seal_id: r.get(0),
            first_id: r.get(1),
            last_id: r.get(2),
            row_count: r.get(3),
            rows: r.get(4),
            prev_hash: r.get(5),
            hash: r.get(6),
        })
        .collect())
}

/// `pg-audit verify [--seals FILE]`: `Ok(true)` when nothing was altered.
pub(crate) fn verify(seals_file: Option<&std::path::Path>, db: &Db) -> Result<bool> {
    let (_, log) = db.connect()?;
    let url = db.url()?.to_owned();
    let exported: Option<Vec<Seal>> = match seals_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the exported seals {}: {e}", path.display()))?;
            let mut seals = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let seal = serde_json::from_str::<Value>(line)
                    .ok()
                    .as_ref()
                    .and_then(Seal::from_json)
                    .ok_or_else(|| {
                        format!(
                            "{} line {}: not a seal as `pg-audit seal --export` writes it",
                            path.display(),
                            n + 1
                        )
                    })?;
                seals.push(seal);
            }
            if seals.is_empty() {
                return Err(format!(
                    "{} holds no seals: export them with `pg-audit seal --export FILE`",
                    path.display()
                )
                .into());
            }
            Some(seals)
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Every digest is recomputed by queries this program sends, calling built-in functions
        // only, in a session with pg-audit's settings pinned: never by a function of the log's,
        // which its owner (whom seals guard against) could replace.
        let client = pg_audit_archive::connect(&url).await?;
        let mut problems: Vec<String> = Vec::new();
        for r in client.query(&log.unexpected_relations_sql(), &[]).await? {
            let (relation, kind): (String, String) = (r.get(0), r.get(1));
            problems.push(format!(
                "{relation} is not the table pg-audit made (relkind {kind}, or a rule on it): what verify reads from it may not be what readers see"
            ));
        }
        let archived_table = "pg_temp.pg_audit_verify";
        let files = pg_audit_archive::archived_files(&client, &log).await?;
        let archived = if files.is_empty() {
            None
        } else {
            let progress = Progress::new(files.len(), "reading the archive");
            let (_, mismatches) =
                pg_audit_archive::load_archived(&client, &log, archived_table, &|f| {
                    progress.step(&f.partition_name);
                    progress.done();
                })
                .await?;
            problems.extend(mismatches);
            Some(archived_table)
        };
        let seals = load_seals(&client, &log).await?;
        let reseal = log.reseal_sql(archived);
        let progress = Progress::new(seals.len(), "verifying seals");
        let mut previous: Option<&Seal> = None;
        let mut rows = 0i64;
        for seal in &seals {
            progress.step(&format!("seal {}", seal.seal_id));
            // The first seal starts after what was archived before sealing began.
            let expected_first = previous.map_or(seal.first_id, |p| p.last_id + 1);
            let expected_prev = previous.map(|p| p.hash.clone());
            if seal.first_id != expected_first || seal.prev_hash != expected_prev {
                problems.push(format!(
                    "seal {} does not follow seal {}: a seal was removed, replaced or inserted (the chain breaks at ids {}..={})",
                    seal.seal_id,
                    previous.map_or("(none)".to_owned(), |p| p.seal_id.to_string()),
                    seal.first_id,
                    seal.last_id
                ));
            }
            let now = client
                .query_one(&reseal, &[&seal.first_id, &seal.last_id, &seal.prev_hash])
                .await?;
            let (count, now_rows, now_hash): (i64, Vec<u8>, Vec<u8>) =
                (now.get(0), now.get(1), now.get(2));
            rows += count;
            if now_rows != seal.rows {
                problems.push(first_difference(seal, &now_rows));
            } else if now_hash != seal.hash || count != seal.row_count {
                problems.push(format!(
                    "seal {} (ids {}..={}) was altered: its hash no longer matches the rows it covers",
                    seal.seal_id, seal.first_id, seal.last_id
                ));
            }
            previous = Some(seal);
            progress.done();
        }
        drop(progress);
        if let Some(exported) = &exported {
            for copy in exported {
                match seals.iter().find(|s| s.seal_id == copy.seal_id) {
                    None => problems.push(format!(
                        "seal {} of the exported copy is missing from the database",
                        copy.seal_id
                    )),
                    Some(s) if s != copy => problems.push(format!(
                        "seal {} in the database differs from the exported copy: one of them was altered",
                        copy.seal_id
                    )),
                    Some(_) => {}
                }
            }
        }
        // Rows no seal covers: below the first seal (archived or written before sealing began;
        // an id below 1 the log never hands out), and above the last (not yet sealed).
        let all_rows = match archived {
            Some(t) => format!("(SELECT id FROM {} UNION ALL SELECT id FROM {t})", log.table()),
            None => format!("(SELECT id FROM {})", log.table()),
        };
        let first = seals.first().map_or(i64::MAX, |s| s.first_id);
        let last = seals.last().map_or(0, |s| s.last_id);
        let outside = client
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE id < $1), count(*) FILTER (WHERE id > $2),
                            coalesce(array_agg(id ORDER BY id) FILTER (WHERE id < 1), '{{}}')
                       FROM {all_rows} AS r"
                ),
                &[&first, &last],
            )
            .await?;
        let (before_first, unsealed, impossible): (i64, i64, Vec<i64>) =
            (outside.get(0), outside.get(1), outside.get(2));
        // Below the first seal only archived rows belong (archived before sealing began): a
        // live one there, or an id both live and archived, was put in by hand.
        if !seals.is_empty() {
            let live_below: Vec<i64> = client
                .query(
                    &format!(
                        "SELECT id FROM {} WHERE id < $1 AND id >= 1 ORDER BY id LIMIT 5",
                        log.table()
                    ),
                    &[&first],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if let Some(id) = live_below.first() {
                problems.push(format!(
                    "entry {id} is in the log below the first seal (ids from {first}), where only rows archived before sealing began belong: inserted by hand"
                ));
            }
        }
        if let Some(t) = archived {
            let both: Vec<i64> = client
                .query(
                    &format!(
                        "SELECT l.id FROM {} AS l JOIN {t} AS a ON a.id = l.id ORDER BY l.id LIMIT 5",
                        log.table()
                    ),
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if let Some(id) = both.first() {
                problems.push(format!(
                    "entry {id} is both in the log and in an archived file: a row was inserted with an archived id"
                ));
            }
        }
        for r in client
            .query(&log.unjustified_redactions_sql(archived), &[])
            .await?
        {
            let (redaction, entry, column, key): (i64, i64, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            problems.push(format!(
                "redaction {redaction} records an erasure of {column} {key:?} of entry {entry} that redact never makes (a key, another record's entry, or a column it did not name): recorded by hand"
            ));
        }
        for r in client.query(&log.unerased_sql(archived), &[]).await? {
            let (entry, column, key, redaction): (i64, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            problems.push(format!(
                "entry {entry}: the value of {column} {key:?} that redaction {redaction} erased is present again"
            ));
        }
        if let Some(id) = impossible.first() {
            problems.push(format!(
                "entry {id} has an id the log never hands out ({} such entries): inserted by hand",
                impossible.len()
            ));
        }
        let redactions: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", log.redactions_table()), &[])
            .await?
            .get(0);
        let redacted: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", log.redacted_values_table()), &[])
            .await?
            .get(0);
        let mut table = Table::new(&["problem"]);
        for p in &problems {
            table.push(vec![json!(p)]);
        }
        if db.json {
            let report = json!({
                "ok": problems.is_empty(),
                "seals": seals.len(),
                "sealed_rows": rows,
                "unsealed_rows": unsealed,
                "rows_before_first_seal": before_first,
                "archived_files": files.len(),
                "redactions": redactions,
                "redacted_values": redacted,
                "problems": problems,
            });
            crate::output::line(&report.to_string());
        } else {
            if !problems.is_empty() {
                table.print(false);
            }
            crate::output::line(&format!(
                "{}: {} seal(s) over {rows} row(s) ({} archived file(s)); {redacted} value(s) erased by {redactions} recorded redaction(s); {unsealed} row(s) not yet sealed{}",
                if problems.is_empty() { "ok" } else { "ALTERED" },
                seals.len(),
                files.len(),
                if before_first > 0 && !seals.is_empty() {
                    format!("; {before_first} row(s) older than the first seal, not covered")
                } else {
                    String::new()
                }
            ));
        }
        Ok::<_, Box<dyn std::error::Error>>(problems.is_empty())
    })
}

/// What differs first between a seal's rows and the rows now.
fn first_difference(seal: &Seal, now: &[u8]) -> String {
    let then = Seal::entries(&seal.rows);
    let now = Seal::entries(now);
    if let Some(pair) = now.windows(2).find(|w| w[0].0 == w[1].0) {
        return format!(
            "entry {} appears twice in the range of seal {}: a row was inserted with an existing id",
            pair[0].0, seal.seal_id
        );
    }
    let (mut i, mut j) = (0, 0);
    while i < then.len() || j < now.len() {
        match (then.get(i), now.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    return format!(
                        "entry {} was changed after seal {} (not by a recorded redaction)",
                        a.0, seal.seal_id
                    );
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                return format!("entry {} was deleted after seal {}", a.0, seal.seal_id);
            }
            (Some(a), None) => {
                return format!("entry {} was deleted after seal {}", a.0, seal.seal_id);
            }
            (_, Some(b)) => {
                return format!(
                    "entry {} was inserted after seal {} (which covers ids {}..={})",
                    b.0, seal.seal_id, seal.first_id, seal.last_id
                );
            }
            (None, None) => unreachable!("the loop runs while either has rows"),
        }
    }
    format!("seal {} differs from its rows", seal.seal_id)
}

/// What `pg-audit redact` erases.
pub(crate) struct RedactArgs<'a> {
    pub(crate) table: Option<&'a str>,
    pub(crate) key: Option<&'a str>,
    pub(crate) columns: Option<Vec<String>>,
    pub(crate) user: Option<&'a str>,
    pub(crate) reason: &'a str,
}

/// `pg-audit redact`.
pub(crate) fn redact(args: RedactArgs<'_>, db: &Db) -> Result<()> {
    if args.reason.trim().is_empty() {
        return Err("--reason is empty: say why the values are erased (it is recorded)".into());
    }
    let (mut conn, log) = db.connect()?;
    let url = db.url()?.to_owned();
    let record = match (args.table, args.key, args.user) {
        (Some(table), Some(key), None) => {
            let reader = AuditReader::with_log(log.clone());
            let table = crate::options::qualify(&mut conn, &log, &QualifiedName::parse(table)?)?;
            let key = crate::inspect::key_object(&mut conn, &reader, &table, key)?;
            Some((table, key))
        }
        (None, None, Some(user)) => {
            if user.trim().is_empty() {
                return Err("--user is empty: give the user id to erase".into());
            }
            None
        }
        _ => {
            return Err(
                "name what to erase: --table and --key (with --columns, or every column but the key), or --user"
                    .into(),
            );
        }
    };
    // Each column once, in the order given.
    let columns: Option<Vec<String>> = args.columns.as_ref().map(|c| {
        let mut seen = Vec::new();
        for name in c {
            if !seen.contains(name) {
                seen.push(name.clone());
            }
        }
        seen
    });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = pg_audit_archive::connect(&url).await?;
        if let (Some((table, key)), Some(columns)) = (&record, &columns) {
            check_columns(&client, table, key, columns).await?;
        }
        let erase = match &record {
            Some((table, key)) => pg_audit_archive::Erase::Record {
                table,
                key,
                columns: columns.as_deref(),
            },
            None => pg_audit_archive::Erase::User(args.user.expect("checked above")),
        };
        let progress = Progress::new(0, "reading the archive");
        let done = pg_audit_archive::redact(&client, &log, args.reason, &erase, &|f| {
            progress.step(&f.partition_name);
        })
        .await?;
        drop(progress);
        if db.json {
            let report = json!({
                "redaction_id": done.redaction_id,
                "live_entries": done.live_entries,
                "detached_entries": done.detached_entries,
                "archived_entries": done.archived_entries,
                "files_rewritten": done.files_rewritten,
            });
            crate::output::line(&report.to_string());
        } else {
            crate::output::line(&format!(
                "redaction {}: erased values in {} live, {} detached and {} archived entries ({} file(s) rewritten); recorded with its reason, `pg-audit verify` still passes",
                done.redaction_id,
                done.live_entries.len(),
                done.detached_entries.len(),
                done.archived_entries.len(),
                done.files_rewritten.len()
            ));
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Refuses a column the table lacks or a key column, before anything is recorded.
async fn check_columns(
    client: &Client,
    table: &QualifiedName,
    key: &Value,
    columns: &[String],
) -> Result<()> {
    let key_columns: Vec<&String> = key
        .as_object()
        .map(|k| k.keys().collect())
        .unwrap_or_default();
    if let Some(c) = columns.iter().find(|c| key_columns.contains(c)) {
        return Err(format!(
            "{c} is part of the key of {table}, which identifies the record in every entry and is not erased; name the other columns"
        )
        .into());
    }
    let existing: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
              WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table.to_string()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // A table dropped since keeps its entries: its columns are not checked.
    if let Some(c) = columns
        .iter()
        .find(|c| !existing.is_empty() && !existing.contains(c))
    {
        return Err(format!(
            "{table} has no column {c:?} (its columns: {}): nothing was erased",
            existing.join(", ")
        )
        .into());
    }
    Ok(())
}

/// The server's message, with its detail and hint.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut m = d.message().to_owned();
            if let Some(h) = d.hint() {
                m.push_str(&format!(" (hint: {h})"));
            }
            m
        }
        None => e.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
