//! Archiving one partition: written, read back and compared, recorded, dropped — in that order,
//! so an interruption anywhere leaves the partition in place and a second run starts it again.

use object_store::ObjectStoreExt as _;
use pg_audit::{AuditLog, Ident, QualifiedName, Retention};
use tokio_postgres::Client;

use crate::catalogue::lock_archive;
use crate::file::file_metadata;
use crate::read::{file_digests, write_file};
use crate::{Archive, Error, db};

/// A partition old enough to archive.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// As the log lists it: `schema.name`.
    pub partition_name: String,
    /// Its schema and name.
    pub table: QualifiedName,
    /// Its range, as the server prints timestamps.
    pub range_start: String,
    /// The end of its range (exclusive).
    pub range_end: String,
    /// Its size in the database, indexes included.
    pub total_bytes: i64,
}

/// An archived partition, as recorded in the catalogue.
#[derive(Debug, Clone)]
pub struct Archived {
    /// The partition, now dropped.
    pub partition_name: String,
    /// Where its file is.
    pub location: String,
    /// Rows archived.
    pub row_count: i64,
    /// The file's size.
    pub bytes: u64,
    /// The partition's size in the database before.
    pub total_bytes: i64,
}

/// The partitions whose whole range ended more than `older_than` (a PostgreSQL interval:
/// `'6 months'`, `'1 year'`) ago, oldest first.
pub async fn candidates(
    client: &Client,
    log: &AuditLog,
    older_than: &str,
) -> Result<Vec<Candidate>, Error> {
    let positive: bool = client
        .query_one("SELECT $1::text::interval > interval '0'", &[&older_than])
        .await
        .map_err(db(format!(
            "{older_than:?} is not an interval such as '6 months' or '1 year'"
        )))?
        .get(0);
    if !positive {
        return Err(Error::Refused(format!(
            "--older-than {older_than:?} is not a positive interval: only partitions whose whole range ended that long ago are archived"
        )));
    }
    let rows = client
        .query(&log.partitions_older_than_sql(), &[&older_than])
        .await
        .map_err(db(format!(
            "cannot list the partitions older than {older_than:?} (an interval such as '6 months')"
        )))?;
    rows.iter()
        .map(|r| {
            let schema = Ident::new(r.get::<_, String>(4));
            let name = Ident::new(r.get::<_, String>(5));
            match (schema, name) {
                (Ok(schema), Ok(name)) => Ok(Candidate {
                    partition_name: r.get(0),
                    table: QualifiedName::new(Some(schema), name),
                    range_start: r.get(1),
                    range_end: r.get(2),
                    total_bytes: r.get(3),
                }),
                (Err(e), _) | (_, Err(e)) => Err(Error::Refused(format!(
                    "partition {} has a name pg-audit cannot use: {e}",
                    r.get::<_, String>(0)
                ))),
            }
        })
        .collect()
}

/// Archives `partition`: its rows written to `archive` as `<partition>.parquet` (replacing a
/// file an interrupted run left), read back and compared with the partition (row count and the
/// digest of every row), recorded in the catalogue and the partition dropped, in one
/// transaction. `progress` hears the rows written so far.
///
/// Refused while seals exist and the partition holds rows not yet sealed (seal first: once
/// dropped, the sealer would not see them). Run by the log's owner.
pub async fn archive_partition(
    client: &Client,
    log: &AuditLog,
    partition: &Candidate,
    archive: &Archive,
    progress: &dyn Fn(u64),
) -> Result<Archived, Error> {
    let qualified = &partition.table;
    // Archive and redaction exclude each other: a redaction between the read and the drop
    // would be lost.
    lock_archive(client, log, true).await?;
    let result = archive_locked(client, log, partition, qualified, archive, progress).await;
    let _ = lock_archive(client, log, false).await;
    result
}

async fn archive_locked(
    client: &Client,
    log: &AuditLog,
    partition: &Candidate,
    qualified: &QualifiedName,
    archive: &Archive,
    progress: &dyn Fn(u64),
) -> Result<Archived, Error> {
    let name = &partition.partition_name;
    let unsealed = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT FROM {seals}) AND coalesce((SELECT max(id) FROM {qualified}), 0) > coalesce((SELECT max(last_id) FROM {seals}), 0)",
                seals = log.seals_table()
            ),
            &[],
        )
        .await
        .map_err(db(format!("cannot read {name}")))?;
    if unsealed.get::<_, bool>(0) {
        return Err(Error::Refused(format!(
            "{name} holds rows not yet sealed: run `pg-audit seal` (or `{}`) first, so that the seals cover them before they leave the database",
            log.seal_sql(pg_audit::sql::seal::DEFAULT_SEAL_ROWS)
        )));
    }
    let recorded = client
        .query_opt(
            &format!(
                "SELECT location FROM {} WHERE partition_name = $1",
                log.archives_table()
            ),
            &[name],
        )
        .await
        .map_err(db("cannot read the archive catalogue"))?;
    if let Some(row) = recorded {
        return Err(Error::Refused(format!(
            "a partition named {name} was archived before, to {}: rename or drop this one; the archived file is left as it is",
            row.get::<_, String>(0)
        )));
    }
    // The rows are written under a name of this run's, digested as they go; then the file
    // takes the name carrying its content digest (a file of another log, database or
    // partition of the same name is never replaced, and a run interrupted before the drop
    // replaces only its own file, with the same rows), and is read back and digested again.
    let erased = crate::digest::erased(client, log, None, i64::MIN, i64::MAX).await?;
    let partial = archive.path(&format!(
        "{name}.partial-{}-{}.parquet",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let metadata = file_metadata(
        log,
        name,
        &partition.range_start,
        &partition.range_end,
        false,
    );
    let (bytes, expected) = write_file(
        client,
        &log.archive_rows_sql(&qualified.to_string()),
        archive,
        (&partial, partial.as_ref()),
        metadata,
        &erased,
        progress,
    )
    .await?;
    let file = format!("{name}.{}.parquet", &hex::encode(&expected.digest)[..16]);
    let path = archive.path(&file);
    let location = archive.url(&file);
    archive
        .store
        .rename(&partial, &path)
        .await
        .map_err(|e| Error::Store(format!("cannot name the archived file {location}"), e))?;
    let read_back = file_digests(archive, &path, &location, &erased, &mut |_| {}).await?;
    if read_back != expected {
        return Err(Error::Mismatch(format!(
            "{location} read back differs from {name} ({} rows, {} in the file; digest {} against {}): the partition is kept; check the storage and run again",
            expected.rows,
            read_back.rows,
            hex::encode(&read_back.digest),
            hex::encode(&expected.digest)
        )));
    }

    // Record and drop in one transaction, the partition locked against late writes.
    client
        .batch_execute(&format!("BEGIN; LOCK TABLE {qualified} IN SHARE MODE;"))
        .await
        .map_err(db(format!("cannot lock {name}")))?;
    let finish = async {
        let now = client
            .query_one(
                &format!("SELECT count(*), min(id), max(id) FROM {qualified}"),
                &[],
            )
            .await
            .map_err(db(format!("cannot read {name}")))?;
        let (n, lo, hi): (i64, Option<i64>, Option<i64>) = (now.get(0), now.get(1), now.get(2));
        if (n, lo, hi) != (expected.rows, expected.min_id, expected.max_id) {
            return Err(Error::Mismatch(format!(
                "{name} changed while it was archived ({n} rows, was {}): the partition is kept; run again",
                expected.rows
            )));
        }
        client
            .execute(
                &log.insert_archive_sql(),
                &[
                    name,
                    &partition.range_start,
                    &partition.range_end,
                    &location,
                    &expected.rows,
                    &expected.min_id,
                    &expected.max_id,
                    &(bytes as i64),
                    &expected.digest,
                ],
            )
            .await
            .map_err(db(format!("cannot record {name} in the archive catalogue")))?;
        // The partition's range ended before now, so any cutoff in the past reaches it.
        let dropped = client
            .query(
                &log.prune_partition_sql("0 seconds", Retention::Drop, name)
                    .map_err(|e| Error::Refused(e.to_string()))?,
                &[],
            )
            .await
            .map_err(db(format!("cannot drop {name}")))?;
        if dropped.is_empty() {
            return Err(Error::Refused(format!(
                "{name} could not be dropped (is it still a partition of {}?)",
                log.table()
            )));
        }
        Ok(())
    }
    .await;
    match finish {
        Ok(()) => client
            .batch_execute("COMMIT")
            .await
            .map_err(db(format!("cannot commit the archive of {name}")))?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(Archived {
        partition_name: name.clone(),
        location,
        row_count: expected.rows,
        bytes,
        total_bytes: partition.total_bytes,
    })
}
