//! Erasure reaching the archive: a redaction recorded and applied to the live log in one
//! transaction, then each archived file holding an erased value written again and read back.

use pg_audit::{AuditLog, QualifiedName};
use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::catalogue::lock_archive;
use crate::file::file_metadata;
use crate::read::{
    ArchivedFile, archived_files, check_against_catalogue, fresh_table, history_from, load_path,
    record_key_sql, write_file,
};
use crate::{Error, db};

/// What a redaction erases: one record's columns, or a user id in contexts.
#[derive(Debug, Clone)]
pub enum Erase<'a> {
    /// Columns of one record (`None`: every column but the key's).
    Record {
        /// Its table (without a schema: `public`).
        table: &'a QualifiedName,
        /// Its key object.
        key: &'a Value,
        /// The columns.
        columns: Option<&'a [String]>,
    },
    /// The `user_id` of contexts.
    User(&'a str),
}

impl Erase<'_> {
    /// The parameters of [`AuditLog::redact_sql`] after the redaction id.
    fn params(&self) -> EraseParams {
        match self {
            Erase::Record {
                table,
                key,
                columns,
            } => EraseParams {
                schema: Some(
                    table
                        .schema
                        .as_ref()
                        .map_or("public", |s| s.as_str())
                        .to_owned(),
                ),
                table: Some(table.name.as_str().to_owned()),
                key: Some(key.to_string()),
                columns: columns.map(<[String]>::to_vec),
                user: None,
            },
            Erase::User(user) => EraseParams {
                schema: None,
                table: None,
                key: None,
                columns: None,
                user: Some((*user).to_owned()),
            },
        }
    }

    /// What the redaction log says it targets (never the erased values).
    fn target(&self) -> String {
        match self {
            Erase::Record {
                columns: Some(c), ..
            } => format!("columns {}", c.join(", ")),
            Erase::Record { columns: None, .. } => "every column but the key".to_owned(),
            Erase::User(_) => "context user_id".to_owned(),
        }
    }
}

/// A redaction's parameters as the SQL takes them.
struct EraseParams {
    schema: Option<String>,
    table: Option<String>,
    key: Option<String>,
    columns: Option<Vec<String>>,
    user: Option<String>,
}

/// What a redaction changed.
#[derive(Debug, Clone)]
pub struct Redacted {
    /// Its id in the redaction log.
    pub redaction_id: i64,
    /// The live entries changed.
    pub live_entries: Vec<i64>,
    /// The entries changed in partitions `prune` detached and left as tables.
    pub detached_entries: Vec<i64>,
    /// The archived entries changed.
    pub archived_entries: Vec<i64>,
    /// The files written again.
    pub files_rewritten: Vec<String>,
}

/// Erases values in every log entry, live and archived, and records the redaction with
/// `reason`: first, in one transaction, the redaction, the digests of the values erased (so the
/// seals verify whichever form a row is in), the live entries, and which archived files hold
/// such values; then each of those files is written again and read back. Refused, with nothing
/// recorded, when no entry holds a value to erase. An interruption between the two leaves
/// files that still verify; running the redaction again finishes them. `progress` hears each
/// archived file as it is read. Run by the log's owner.
pub async fn redact(
    client: &Client,
    log: &AuditLog,
    reason: &str,
    erase: &Erase<'_>,
    progress: &dyn Fn(&ArchivedFile),
) -> Result<Redacted, Error> {
    lock_archive(client, log, true).await?;
    client
        .batch_execute("BEGIN")
        .await
        .map_err(db("cannot start the redaction"))?;
    let first = record_redaction(client, log, reason, erase, progress).await;
    let result = match first {
        Ok(Some(found)) => match client.batch_execute("COMMIT").await {
            Ok(()) => rewrite_files(client, log, found, erase).await,
            Err(e) => Err(Error::Db("cannot commit the redaction".into(), e)),
        },
        Ok(None) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(Error::Refused(
                "no entry, live or archived, holds a value to erase: nothing was recorded".into(),
            ))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    };
    let _ = lock_archive(client, log, false).await;
    result
}

/// The first phase, in the caller's transaction: `None` when there is nothing to erase.
async fn record_redaction(
    client: &Client,
    log: &AuditLog,
    reason: &str,
    erase: &Erase<'_>,
    progress: &dyn Fn(&ArchivedFile),
) -> Result<Option<(Redacted, Vec<ArchivedFile>)>, Error> {
    let p = erase.params();
    let redaction_id: i64 = client
        .query_one(
            &log.insert_redaction_sql(),
            &[
                &reason,
                &p.schema,
                &p.table,
                &p.key,
                &p.columns,
                &erase.target(),
            ],
        )
        .await
        .map_err(db("cannot record the redaction"))?
        .get(0);
    let live_entries = erase_in(client, log, &log.table().to_string(), redaction_id, erase).await?;
    // Partitions detached by `prune` (without --drop) still hold entries: erased too.
    let mut detached_entries = Vec::new();
    for row in client
        .query(&log.detached_partitions_sql(), &[])
        .await
        .map_err(db("cannot list the detached partitions"))?
    {
        let name: String = row.get(0);
        detached_entries.extend(erase_in(client, log, &name, redaction_id, erase).await?);
    }
    let record_key = match erase {
        Erase::Record { table, key, .. } => {
            let schema = table.schema.as_ref().map_or("public", |s| s.as_str());
            Some(
                client
                    .query_one(
                        &record_key_sql(),
                        &[&schema, &table.name.as_str(), &key.to_string()],
                    )
                    .await
                    .map_err(db("cannot compute the record's key"))?
                    .get::<_, i64>(0),
            )
        }
        Erase::User(_) => None,
    };
    let work = "pg_temp.pg_audit_archive_redact";
    let mut archived_entries = Vec::new();
    let mut files = Vec::new();
    for file in archived_files(client, log).await? {
        progress(&file);
        // A record's redaction skips the files whose statistics cannot hold it.
        if let (Some(k), Erase::Record { table, key, .. }) = (record_key, erase)
            && history_from(std::slice::from_ref(&file), k, table, key)
                .await?
                .entries
                .is_empty()
        {
            continue;
        }
        let (archive, path) = file.open()?;
        fresh_table(client, log, work).await?;
        load_path(client, log, &archive, &path, work).await?;
        let ids = erase_in(client, log, work, redaction_id, erase).await?;
        if !ids.is_empty() {
            archived_entries.extend(ids);
            files.push(file);
        }
    }
    if live_entries.is_empty() && detached_entries.is_empty() && archived_entries.is_empty() {
        return Ok(None);
    }
    archived_entries.sort_unstable();
    Ok(Some((
        Redacted {
            redaction_id,
            live_entries,
            detached_entries,
            archived_entries,
            files_rewritten: Vec::new(),
        },
        files,
    )))
}

/// The second phase: each file holding erased values written again, its digests committed.
async fn rewrite_files(
    client: &Client,
    log: &AuditLog,
    (mut redacted, files): (Redacted, Vec<ArchivedFile>),
    erase: &Erase<'_>,
) -> Result<Redacted, Error> {
    for file in &files {
        rewrite_file(client, log, file, redacted.redaction_id, erase).await?;
        redacted.files_rewritten.push(file.location.clone());
    }
    Ok(redacted)
}

/// Writes `file` again with the values of redaction `redaction` erased, and reads it back.
async fn rewrite_file(
    client: &Client,
    log: &AuditLog,
    file: &ArchivedFile,
    redaction: i64,
    erase: &Erase<'_>,
) -> Result<(), Error> {
    let work = "pg_temp.pg_audit_archive_redact";
    let (archive, path) = file.open()?;
    fresh_table(client, log, work).await?;
    load_path(client, log, &archive, &path, work).await?;
    // The digests are recorded: this marks the values (and records nothing new).
    erase_in(client, log, work, redaction, erase).await?;
    let metadata = file_metadata(
        log,
        &file.partition_name,
        &file.range_start,
        &file.range_end,
        true,
    );
    write_file(
        client,
        &log.archive_rows_sql(work),
        &archive,
        (&path, &file.location),
        metadata,
        &crate::digest::Erased::new(),
        &|_| {},
    )
    .await?;
    let check = "pg_temp.pg_audit_archive_check";
    fresh_table(client, log, check).await?;
    load_path(client, log, &archive, &path, check).await?;
    check_against_catalogue(client, log, check, file).await
}

/// Runs the redaction over `target` (the log, or a temporary table of archived rows), in the
/// caller's transaction: the entries changed.
async fn erase_in(
    client: &Client,
    log: &AuditLog,
    target: &str,
    redaction: i64,
    erase: &Erase<'_>,
) -> Result<Vec<i64>, Error> {
    let p = erase.params();
    let params: [&(dyn ToSql + Sync); 6] =
        [&redaction, &p.schema, &p.table, &p.key, &p.columns, &p.user];
    let rows = client
        .query(&log.redact_sql(target), &params)
        .await
        .map_err(db(format!("cannot redact in {target}")))?;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    Ok(ids)
}
