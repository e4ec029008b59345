//! `pg-audit archive`: old partitions to Parquet files, and a record's archived entries for
//! `history --archived`.

use pg_audit::QualifiedName;
use serde_json::{Value, json};

use crate::options::{Db, Result};
use crate::output::{Progress, Table};

/// `pg-audit archive --older-than INTERVAL --to LOCATION`.
pub(crate) fn archive(older_than: &str, to: &str, db: &Db) -> Result<()> {
    let archive = pg_audit_archive::Archive::open(to)?;
    db.with_client(async |client, log| {
        let candidates = pg_audit_archive::candidates(client, log, older_than).await?;
        let mut table = Table::new(&[
            "partition",
            "rows",
            "database_bytes",
            "file_bytes",
            "location",
        ]);
        let progress = Progress::new(candidates.len(), "archiving");
        for c in &candidates {
            progress.step(&c.partition_name);
            let done = pg_audit_archive::archive_partition(client, log, c, &archive, &|rows| {
                progress.step(&format!("{}: {rows} rows written", c.partition_name));
            })
            .await?;
            tracing::info!(
                target: "pg_audit",
                partition = done.partition_name,
                rows = done.row_count,
                bytes = done.bytes,
                location = done.location,
                "partition archived"
            );
            if !db.json {
                progress.line(&format!(
                    "archived {} ({} rows, {} bytes in the database, {} in {}) and dropped it",
                    done.partition_name,
                    done.row_count,
                    done.total_bytes,
                    done.bytes,
                    done.location
                ));
            }
            table.push(vec![
                json!(done.partition_name),
                json!(done.row_count),
                json!(done.total_bytes),
                json!(done.bytes),
                json!(done.location),
            ]);
            progress.done();
        }
        drop(progress);
        table.finish_told(
            db.json,
            &format!("no partition ended more than {older_than} ago; nothing to archive"),
        );
        Ok(())
    })
}

/// `pg-audit archive list`: the archive catalogue.
pub(crate) fn list(db: &Db) -> Result<()> {
    db.with_client(async |client, log| {
        let files = pg_audit_archive::archived_files(client, log).await?;
        let mut table = Table::new(&[
            "partition",
            "from",
            "until",
            "rows",
            "bytes",
            "location",
            "archived_at",
        ]);
        for f in files {
            table.push(vec![
                json!(f.partition_name),
                json!(f.range_start),
                json!(f.range_end),
                json!(f.row_count),
                json!(f.bytes),
                json!(f.location),
                json!(f.archived_at),
            ]);
        }
        table.finish(db.json, "nothing is archived", "");
        Ok(())
    })
}

/// The archived entries of one record, the files not read named on standard error.
pub(crate) fn history(
    db: &Db,
    table: &QualifiedName,
    key: &Value,
) -> Result<pg_audit_archive::ArchivedHistory> {
    let found = db.with_client(async |client, log| {
        Ok(pg_audit_archive::history(client, log, table, key).await?)
    })?;
    for location in &found.missing {
        crate::output::diagnostic(
            crate::output::Level::Warn,
            &format!(
                "the archived file {location} is missing; its entries are not shown (`pg-audit verify` reports it)"
            ),
        );
    }
    for problem in &found.unreadable {
        crate::output::diagnostic(
            crate::output::Level::Warn,
            &format!(
                "{}; its entries are not shown",
                crate::output::escape_controls(problem)
            ),
        );
    }
    Ok(found)
}
