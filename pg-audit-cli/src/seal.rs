//! `pg-audit seal`, `verify` and `redact`: tamper evidence over the log and its archive, and
//! the erasure of a person's data that keeps it.

use std::path::Path;

use pg_audit::QualifiedName;
use pg_audit_archive::{Commit, Sealing};
use pg_audit_diesel::log::AuditReader;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::options::{Db, Jobs, Result, helper_sessions};
use crate::output::{Progress, Table};

/// `pg-audit seal [--max-rows N] [--export FILE]`.
pub(crate) fn seal(max_rows: u32, export: Option<&Path>, jobs: u16, db: &Db) -> Result<()> {
    db.with_client(async |client, log| {
        let helpers = helper_sessions(db.url()?, usize::from(jobs)).await?;
        let sealing = Sealing {
            max_rows,
            commit: Commit::Synchronous,
            helpers: &helpers,
        };
        let progress = Progress::new(0, "sealing");
        let made = pg_audit_archive::seal(client, log, &sealing, &|m| {
            progress.step(&format!("seal {} (ids {}..={})", m.seal_id, m.first_id, m.last_id));
        })
        .await?;
        drop(progress);
        let mut table = Table::new(&["seal", "first_id", "last_id", "rows"]);
        for m in &made {
            table.push(vec![
                json!(m.seal_id),
                json!(m.first_id),
                json!(m.last_id),
                json!(m.row_count),
            ]);
        }
        let progress = client.query_one(&log.seal_progress_sql(), &[]).await?;
        let unsealed: i64 = progress.get(2);
        table.finish(
            db.json,
            &format!(
                "nothing new to seal ({unsealed} row(s) wait for their transactions, or for the next run, to be sealed)"
            ),
            &format!(
                "sealed {} row(s) in {} seal(s); {unsealed} row(s) not yet sealable",
                made.iter().map(|m| m.row_count).sum::<i64>(),
                made.len()
            ),
        );
        if let Some(path) = export {
            let seals = pg_audit_archive::seals(client, log).await?;
            if seals.is_empty() {
                return Err(format!(
                    "no seals to export to {}: nothing is sealed yet (rows are sealed once their transactions have ended; run `pg-audit seal` again)",
                    path.display()
                )
                .into());
            }
            std::fs::write(path, pg_audit_archive::write_export(&seals))
                .map_err(|e| format!("cannot write the seals to {}: {e}", path.display()))?;
            if !db.json {
                crate::output::line(&format!(
                    "exported {} seal(s) to {}: keep the file outside the database, and pass it to `pg-audit verify --seals`",
                    seals.len(),
                    path.display()
                ));
            }
        }
        Ok(())
    })
}

/// `pg-audit seal --every SECONDS`: seals, waits, and again, on one connection, until Ctrl-C
/// or SIGTERM; a line for each run that sealed something.
pub(crate) fn keep_sealing(
    max_rows: u32,
    every: std::time::Duration,
    jobs: u16,
    db: &Db,
) -> Result<()> {
    db.with_client(async |client, log| {
        let helpers = helper_sessions(db.url()?, usize::from(jobs)).await?;
        let sealing = Sealing {
            max_rows,
            commit: Commit::Asynchronous,
            helpers: &helpers,
        };
        let stop = crate::capture::shutdown();
        tokio::pin!(stop);
        loop {
            let made = pg_audit_archive::seal(client, log, &sealing, &|_| {}).await?;
            if let (Some(first), Some(last)) = (made.first(), made.last()) {
                let rows: i64 = made.iter().map(|m| m.row_count).sum();
                if db.json {
                    crate::output::line(
                        &json!({"seals": made.len(), "rows": rows, "first_id": first.first_id, "last_id": last.last_id})
                            .to_string(),
                    );
                } else {
                    crate::output::line(&format!(
                        "sealed {rows} row(s) (ids {}..={}) in {} seal(s)",
                        first.first_id,
                        last.last_id,
                        made.len()
                    ));
                }
            }
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(every) => {}
            }
        }
    })
}

/// `pg-audit verify [--seals FILE]`: `Ok(true)` when nothing was altered.
pub(crate) fn verify(
    seals_file: Option<&Path>,
    since_last: Option<&Path>,
    jobs: Jobs,
    db: &Db,
) -> Result<bool> {
    let exported = match seals_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the exported seals {}: {e}", path.display()))?;
            let seals = pg_audit_archive::read_export(&text)
                .map_err(|e| format!("{} {e}", path.display()))?;
            Some(seals)
        }
    };
    let since = match since_last {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let checkpoint = serde_json::from_str::<Value>(&text)
                .ok()
                .as_ref()
                .and_then(pg_audit_archive::Checkpoint::from_json)
                .ok_or_else(|| {
                    format!(
                        "{} is not what `pg-audit verify --since-last` writes; remove it for a full verification",
                        path.display()
                    )
                })?;
            Some(checkpoint)
        }
        _ => None,
    };
    let report = db.with_client(async |client, log| {
        let helpers = jobs.helpers(db.url()?).await?;
        let options = pg_audit_archive::Options {
            exported: exported.as_deref(),
            since: since.as_ref(),
            helpers: &helpers,
        };
        let progress = Progress::new(0, "verifying");
        let report = pg_audit_archive::verify(client, log, &options, &|step| {
            progress.at(step.phase, step.step, step.steps, step.item);
        })
        .await?;
        Ok(report)
    })?;
    if db.json {
        crate::output::line(&report.to_json().to_string());
    } else {
        let mut table = Table::new(&["problem"]);
        for p in &report.problems {
            table.push(vec![json!(p)]);
        }
        if !report.ok() {
            table.print(false);
        }
        if report.pruned_rows > 0 {
            let mut pruned = Table::new(&["pruned"]);
            for p in &report.prunes {
                pruned.push(vec![json!(p.describe())]);
            }
            pruned.print(false);
        }
        crate::output::line(&report.summary());
    }
    if let (Some(path), Some(checkpoint)) = (since_last, &report.checkpoint) {
        // Written whole, then moved into place: an interrupted write never leaves half a file.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, format!("{}\n", checkpoint.to_json()))
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(report.ok())
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
    db.with_client(async |client, log| {
        if let (Some((table, key)), Some(columns)) = (&record, &columns) {
            check_columns(client, table, key, columns).await?;
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
        let done = pg_audit_archive::redact(client, log, args.reason, &erase, &|f| {
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
        Ok(())
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
