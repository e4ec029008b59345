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
        let client = pg_audit_archive::connect(&url).await?;
        let mut problems: Vec<String> = Vec::new();
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
            let table = QualifiedName::parse(table)?;
            let key = crate::admin::key_object(&mut conn, &reader, &table, key)?;
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
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = pg_audit_archive::connect(&url).await?;
        let erase = match &record {
            Some((table, key)) => pg_audit_archive::Erase::Record {
                table,
                key,
                columns: args.columns.as_deref(),
            },
            None => pg_audit_archive::Erase::User(args.user.expect("checked above")),
        };
        check_redaction(&client, &log, &record, &args).await?;
        let (schema, table, key, target) = match &record {
            Some((table, key)) => (
                Some(table.schema.as_ref().map_or("public", |s| s.as_str()).to_owned()),
                Some(table.name.as_str().to_owned()),
                Some(key.to_string()),
                match &args.columns {
                    Some(c) => format!("columns {}", c.join(", ")),
                    None => "every column but the key".to_owned(),
                },
            ),
            None => (None, None, None, "context user_id".to_owned()),
        };
        let redaction: i64 = client
            .query_one(
                &log.insert_redaction_sql(),
                &[&args.reason, &schema, &table, &key, &args.columns, &target],
            )
            .await
            .map_err(|e| format!("cannot record the redaction: {}", db_message(&e)))?
            .get(0);
        let live = pg_audit_archive::redact_in(&client, &log, &log.table().to_string(), redaction, &erase).await?;
        let files = pg_audit_archive::archived_files(&client, &log).await?;
        let progress = Progress::new(files.len(), "redacting archived files");
        let mut archived = Vec::new();
        let mut rewritten = Vec::new();
        for f in &files {
            progress.step(&f.partition_name);
            let ids = pg_audit_archive::rewrite_redacted(&client, &log, f, redaction, &erase).await?;
            if !ids.is_empty() {
                rewritten.push(f.location.clone());
                archived.extend(ids);
            }
            progress.done();
        }
        drop(progress);
        let report = json!({
            "redaction_id": redaction,
            "live_entries": live,
            "archived_entries": archived,
            "files_rewritten": rewritten,
        });
        if db.json {
            crate::output::line(&report.to_string());
        } else if live.is_empty() && archived.is_empty() {
            crate::output::line(&format!(
                "redaction {redaction}: nothing to erase (no entry holds those values, or they were erased before)"
            ));
        } else {
            crate::output::line(&format!(
                "redaction {redaction}: erased values in {} live and {} archived entries ({} file(s) rewritten); recorded with its reason, `pg-audit verify` still passes",
                live.len(),
                archived.len(),
                rewritten.len()
            ));
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Refuses a redaction that names a column the table lacks or a key column, or that would
/// erase nothing: nothing is recorded then.
async fn check_redaction(
    client: &Client,
    log: &AuditLog,
    record: &Option<(QualifiedName, Value)>,
    args: &RedactArgs<'_>,
) -> Result<()> {
    let Some((table, key)) = record else {
        let user = args.user.expect("a user when no record");
        let live: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE context->>'user_id' = $1",
                    log.table()
                ),
                &[&user],
            )
            .await?
            .get(0);
        let archived = pg_audit_archive::archived_files(client, log).await?;
        if live == 0 && archived.is_empty() {
            return Err(format!(
                "no log entry has the user id {user:?} in its context: nothing to erase, nothing recorded"
            )
            .into());
        }
        return Ok(());
    };
    if let Some(columns) = &args.columns {
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
    }
    let schema = table.schema.as_ref().map_or("public", |s| s.as_str());
    let live: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE (record_key = {k} OR old_record_key = {k})
                    AND schema_name = $1 AND table_name = $2
                    AND (record_pk = $3::text::jsonb OR old_record_pk = $3::text::jsonb)",
                log.table(),
                k = pg_audit::sql::shape::record_key_expr(
                    "$1::text",
                    "$2::text",
                    "$3::text::jsonb"
                )
            ),
            &[&schema, &table.name.as_str(), &key.to_string()],
        )
        .await?
        .get(0);
    if live == 0
        && pg_audit_archive::history(client, log, table, key)
            .await?
            .is_empty()
    {
        return Err(format!(
            "no log entry of {table} {}, live or archived: nothing to erase, nothing recorded",
            pg_audit_diesel::log::key_text(key)
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
