//! Reading the archive: the catalogue, a record's archived entries (only the row groups whose
//! statistics can hold its key), rows loaded back into the server (for `verify` and the
//! read-back check), and a file rewritten after a redaction.

use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _, TryStreamExt as _, pin_mut};
use object_store::ObjectStoreExt as _;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::file::statistics::Statistics;
use pg_audit::sql::shape::record_key_expr;
use pg_audit::{AuditLog, Operation, QualifiedName};
use pg_audit_diesel::AuditContext;
use pg_audit_diesel::log::AuditEntry;
use serde_json::Value;
use tokio_postgres::Client;

use crate::catalogue::{Content, ContentDigest, content};
use crate::file::{BATCH_ROWS, BatchBuilder, append_csv, ints, properties, schema, texts};
use crate::store::ObjectReader;
use crate::{Archive, Error, db, pq};

/// An archived partition, as the catalogue records it.
#[derive(Debug, Clone)]
pub struct ArchivedFile {
    /// The partition it was.
    pub partition_name: String,
    /// Its range.
    pub range_start: String,
    /// The end of its range (exclusive).
    pub range_end: String,
    /// The file's URL.
    pub location: String,
    /// Rows in it.
    pub row_count: i64,
    /// Its lowest id.
    pub min_id: Option<i64>,
    /// Its highest id.
    pub max_id: Option<i64>,
    /// The file's size.
    pub bytes: i64,
    /// The digest of its rows (the seals' row digests, in the file's order).
    pub content_sha256: Vec<u8>,
    /// When it was archived.
    pub archived_at: String,
}

impl ArchivedFile {
    /// The store and path of the file, once its location is one the archive could have
    /// written for this partition (`<partition>.<the first 16 hex digits of its content
    /// digest>.parquet`): a catalogue row pointing elsewhere (`file:///etc/passwd`) is not
    /// read.
    pub fn open(&self) -> Result<(Archive, Path), Error> {
        let expected = format!(
            "{}.{}.parquet",
            self.partition_name,
            &hex::encode(&self.content_sha256)[..16.min(2 * self.content_sha256.len())]
        );
        let name = crate::store::split_url(&self.location).map(|(_, name)| name);
        if name.ok() != Some(crate::store::stored_name(&expected)) {
            return Err(Error::Mismatch(format!(
                "the catalogue says {} was archived to {}, which is not a file the archive writes for it (expected a file named {expected}): not read",
                self.partition_name, self.location
            )));
        }
        Archive::open_file(&self.location)
    }
}

/// The archived partitions, oldest first.
pub async fn archived_files(client: &Client, log: &AuditLog) -> Result<Vec<ArchivedFile>, Error> {
    let rows = client
        .query(&log.list_archives_sql(), &[])
        .await
        .map_err(db("cannot read the archive catalogue"))?;
    Ok(rows
        .iter()
        .map(|r| ArchivedFile {
            partition_name: r.get(0),
            range_start: r.get(1),
            range_end: r.get(2),
            location: r.get(3),
            row_count: r.get(4),
            min_id: r.get(5),
            max_id: r.get(6),
            bytes: r.get(7),
            content_sha256: r.get(8),
            archived_at: r.get(9),
        })
        .collect())
}

/// The archived entries of one record (`key` the key object, `{"id": 42}`; a table without a
/// schema is taken to be in `public`), newest first, reading from each file only the row groups
/// whose `record_key` range holds the record's.
pub async fn history(
    client: &Client,
    log: &AuditLog,
    table: &QualifiedName,
    key: &Value,
) -> Result<ArchivedHistory, Error> {
    let schema = table.schema.as_ref().map_or("public", |s| s.as_str());
    let record_key: i64 = client
        .query_one(
            &record_key_sql(),
            &[&schema, &table.name.as_str(), &key.to_string()],
        )
        .await
        .map_err(db("cannot compute the record's key"))?
        .get(0);
    let files = archived_files(client, log).await?;
    history_from(&files, record_key, table, key).await
}

/// The SQL of a record's key: `$1` schema, `$2` table (text), `$3` the key object (text).
pub fn record_key_sql() -> String {
    format!(
        "SELECT {}",
        record_key_expr("$1::text", "$2::text", "$3::text::jsonb")
    )
}

/// [`history`] over the catalogue `files`, for a caller that read the catalogue and computed
/// the record's key (`record_key_sql`) on its own connection.
pub async fn history_from(
    files: &[ArchivedFile],
    record_key: i64,
    table: &QualifiedName,
    key: &Value,
) -> Result<ArchivedHistory, Error> {
    let schema = table.schema.as_ref().map_or("public", |s| s.as_str());
    let name = table.name.as_str();
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    let mut unreadable = Vec::new();
    for file in files {
        match file_entries(file, record_key, schema, name, key).await {
            Ok(found) => entries.extend(found),
            Err(FileError::Missing) => missing.push(file.location.clone()),
            // An unreachable store is an error; a file that is not what the catalogue says
            // (not an archive file of the partition, not Parquet, not the log's columns) is
            // named, and the others are read.
            Err(FileError::Other(e @ Error::Store(..))) => return Err(e),
            Err(FileError::Other(e)) => {
                unreadable.push(format!("{}: {}", file.location, crate::chain(&e)));
            }
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.id));
    Ok(ArchivedHistory {
        entries,
        missing,
        unreadable,
    })
}

/// Why a file's entries could not be read.
enum FileError {
    /// The file is gone.
    Missing,
    Other(Error),
}

impl From<Error> for FileError {
    fn from(e: Error) -> Self {
        FileError::Other(e)
    }
}

/// The entries of one record in one archived file, reading only the row groups whose
/// statistics can hold its key.
async fn file_entries(
    file: &ArchivedFile,
    record_key: i64,
    schema: &str,
    name: &str,
    key: &Value,
) -> Result<Vec<AuditEntry>, FileError> {
    let (archive, path) = file.open()?;
    match archive.store.head(&path).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => return Err(FileError::Missing),
        Err(e) => {
            return Err(FileError::Other(Error::Store(
                format!("cannot reach the archived file {}", file.location),
                e,
            )));
        }
    }
    let builder = open(&archive, &path, &file.location).await?;
    let Some(column) = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.name() == "record_key")
    else {
        return Err(Error::Mismatch(format!("{} has no record_key column", file.location)).into());
    };
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, g)| match g.column(column).statistics() {
            Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(lo), Some(hi)) => *lo <= record_key && record_key <= *hi,
                _ => true,
            },
            _ => true,
        })
        .map(|(i, _)| i)
        .collect();
    let mut entries = Vec::new();
    if groups.is_empty() {
        return Ok(entries);
    }
    let stream = builder
        .with_row_groups(groups)
        .build()
        .map_err(pq(format!("cannot read {}", file.location)))?;
    pin_mut!(stream);
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(pq(format!("cannot read {}", file.location)))?
    {
        entries.extend(entries_of(
            &batch,
            record_key,
            schema,
            name,
            key,
            &file.location,
        )?);
    }
    Ok(entries)
}

/// A record's archived entries.
#[derive(Debug, Clone)]
pub struct ArchivedHistory {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// The catalogued files that are gone (their entries are not in `entries`).
    pub missing: Vec<String>,
    /// The catalogued files that could not be read, each with why (`location: why`): not an
    /// archive file of its partition, not Parquet, not the log's columns.
    pub unreadable: Vec<String>,
}

impl ArchivedHistory {
    /// The record's whole history, newest first: `live` (its entries in the log) and these.
    /// An entry both live and archived (a partition archived by hand and restored) is kept
    /// once, as the log holds it.
    pub fn merged_with(self, mut live: Vec<AuditEntry>) -> Vec<AuditEntry> {
        let ids: std::collections::HashSet<i64> = live.iter().map(|e| e.id).collect();
        live.extend(self.entries.into_iter().filter(|e| !ids.contains(&e.id)));
        live.sort_by_key(|e| std::cmp::Reverse(e.id));
        live
    }
}

/// The entries of `batch` for one record.
fn entries_of(
    batch: &RecordBatch,
    record_key: i64,
    schema: &str,
    table: &str,
    key: &Value,
    location: &str,
) -> Result<Vec<AuditEntry>, Error> {
    let bad = || Error::Mismatch(format!("{location} is not an archived pg-audit log file"));
    let int = |name| ints(batch, name).ok_or_else(bad);
    let text = |name| texts(batch, name).ok_or_else(bad);
    let (id, changed_at, tx_started_at, txid, keys) = (
        int("id")?,
        int("changed_at")?,
        int("tx_started_at")?,
        int("txid")?,
        int("record_key")?,
    );
    let (operation, schema_name, table_name, record_pk) = (
        text("operation")?,
        text("schema_name")?,
        text("table_name")?,
        text("record_pk")?,
    );
    let (old_values, new_values, db_user, context, old_record_pk) = (
        text("old_values")?,
        text("new_values")?,
        text("db_user")?,
        text("context")?,
        text("old_record_pk")?,
    );
    let json = |a: &arrow_array::StringArray, row: usize| -> Result<Option<Value>, Error> {
        if arrow_array::Array::is_null(a, row) {
            return Ok(None);
        }
        pg_audit_diesel::log::json::parse(a.value(row))
            .map(Some)
            .map_err(|e| Error::Mismatch(format!("{location}: a JSON value does not parse: {e}")))
    };
    let time = |micros: Option<i64>| -> SystemTime {
        let micros = micros.unwrap_or(0);
        if micros >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
        }
    };
    let mut out = Vec::new();
    for row in 0..batch.num_rows() {
        if keys.get(row) != Some(record_key)
            || schema_name.value(row) != schema
            || table_name.value(row) != table
            || json(record_pk, row)?.as_ref() != Some(key)
        {
            continue;
        }
        let op = Operation::from_logged(operation.value(row)).ok_or_else(bad)?;
        out.push(AuditEntry {
            id: id.get(row).ok_or_else(bad)?,
            changed_at: time(changed_at.get(row)),
            tx_started_at: time(tx_started_at.get(row)),
            txid: txid.get(row).ok_or_else(bad)?,
            operation: op,
            schema_name: schema_name.value(row).to_owned(),
            table_name: table_name.value(row).to_owned(),
            record_pk: json(record_pk, row)?,
            old_values: json(old_values, row)?,
            new_values: json(new_values, row)?,
            db_user: db_user.value(row).to_owned(),
            context: AuditContext::from(json(context, row)?),
            old_record_pk: json(old_record_pk, row)?,
        });
    }
    Ok(out)
}

pub(crate) async fn open(
    archive: &Archive,
    path: &Path,
    location: &str,
) -> Result<ParquetRecordBatchStreamBuilder<ObjectReader>, Error> {
    let reader = ObjectReader::new(archive.store.clone(), path.clone());
    // The columns are found by name and read as integers or text whatever their nullability,
    // so a file rewritten by another tool still reads, and verifies or not by its content.
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(pq(format!("cannot open the archived file {location}")))
}

/// Where [`file_digests`] sends each batch's rows' digests.
pub(crate) type DigestSink<'a> = &'a mut dyn FnMut(&[(i64, crate::digest::RowDigest)]);

/// The digest of every row of the archived file at `path`, read back from the store in the
/// file's order, an erased value's recorded digest (`erased`) standing in for the marker: each
/// batch's to `each`, and the file's content.
pub(crate) async fn file_digests(
    archive: &Archive,
    path: &Path,
    location: &str,
    erased: &crate::digest::Erased,
    each: DigestSink<'_>,
) -> Result<Content, Error> {
    let stream = open(archive, path, location)
        .await?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(pq(format!("cannot read {location}")))?;
    pin_mut!(stream);
    let mut content = ContentDigest::default();
    let mut digests = Vec::with_capacity(BATCH_ROWS);
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(pq(format!("cannot read {location}")))?
    {
        digests.clear();
        crate::digest::batch_digests(&batch, erased, &mut digests)?;
        for (id, digest) in &digests {
            content.push(*id, digest);
        }
        each(&digests);
    }
    Ok(content.finish())
}

/// The temporary tables rows are loaded back through.
const STAGE: &str = "pg_temp.pg_audit_archive_stage";

/// Loads every archived file into the session's temporary table `target` (made with the log's
/// columns if missing, emptied first), checking each file against the catalogue (row count and
/// content digest): the files, and what differs from the catalogue. `progress` hears each file
/// as it starts. For `verify`, whose seals cover archived rows.
pub async fn load_archived(
    client: &Client,
    log: &AuditLog,
    target: &str,
    progress: &dyn Fn(&ArchivedFile),
) -> Result<(Vec<ArchivedFile>, Vec<String>), Error> {
    let mut problems = Vec::new();
    let files = archived_files(client, log).await?;
    let single = "pg_temp.pg_audit_archive_one";
    fresh_table(client, log, target).await?;
    for file in &files {
        progress(file);
        let Some((archive, path)) = reach(file, &mut problems).await? else {
            continue;
        };
        fresh_table(client, log, single).await?;
        if let Err(e) = load_path(client, log, &archive, &path, single).await {
            unreadable(file, e, &mut problems)?;
            continue;
        }
        match check_against_catalogue(client, log, single, file).await {
            Ok(()) => {}
            Err(Error::Mismatch(problem)) => problems.push(problem),
            Err(e) => return Err(e),
        }
        client
            .batch_execute(&format!("INSERT INTO {target} SELECT * FROM {single};"))
            .await
            .map_err(db("cannot gather the archived rows"))?;
    }
    Ok((files, problems))
}

/// Every archived row's digest, read from the files themselves (no erased value recorded in
/// them: see [`load_archived`] otherwise), each file checked against its catalogue row; and
/// what differs from the catalogue. `progress` hears each file as it starts. For `verify`.
pub(crate) async fn digest_archived(
    files: &[ArchivedFile],
    progress: &dyn Fn(&ArchivedFile),
) -> Result<(Vec<(i64, crate::digest::RowDigest)>, Vec<String>), Error> {
    let mut problems = Vec::new();
    let mut all = Vec::new();
    let none = crate::digest::Erased::new();
    for file in files {
        progress(file);
        let Some((archive, path)) = reach(file, &mut problems).await? else {
            continue;
        };
        let before = all.len();
        let read = file_digests(&archive, &path, &file.location, &none, &mut |d| {
            all.extend_from_slice(d);
        })
        .await;
        let got = match read {
            Ok(got) => got,
            Err(e) => {
                all.truncate(before);
                unreadable(file, e, &mut problems)?;
                continue;
            }
        };
        if let Some(problem) = differs(file, &got) {
            problems.push(problem);
        }
    }
    all.sort_unstable();
    Ok((all, problems))
}

/// The archive and path of `file`, or `None` with a finding when the catalogue row points at
/// what the archive never wrote or the file is gone; an error when the store cannot be reached.
async fn reach(
    file: &ArchivedFile,
    problems: &mut Vec<String>,
) -> Result<Option<(Archive, Path)>, Error> {
    let (archive, path) = match file.open() {
        Ok(opened) => opened,
        Err(e @ Error::Mismatch(_)) => {
            problems.push(e.to_string());
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    match archive.store.head(&path).await {
        Ok(_) => Ok(Some((archive, path))),
        Err(object_store::Error::NotFound { .. }) => {
            problems.push(format!(
                "the archived file {} is missing ({} rows, ids {}..={})",
                file.location,
                file.row_count,
                file.min_id.unwrap_or(0),
                file.max_id.unwrap_or(0)
            ));
            Ok(None)
        }
        Err(e) => Err(Error::Store(
            format!("cannot reach the archived file {}", file.location),
            e,
        )),
    }
}

/// A file that cannot be read as the catalogue recorded it is a finding; anything else an
/// error.
fn unreadable(file: &ArchivedFile, e: Error, problems: &mut Vec<String>) -> Result<(), Error> {
    match e {
        e @ (Error::Parquet(..) | Error::Mismatch(_) | Error::Store(..)) => {
            problems.push(format!(
                "the archived file {} cannot be read as the catalogue recorded it: {}",
                file.location,
                crate::chain(&e)
            ));
            Ok(())
        }
        e => Err(e),
    }
}

/// Whether `relation` holds what the catalogue says `file` holds.
pub(crate) async fn check_against_catalogue(
    client: &Client,
    log: &AuditLog,
    relation: &str,
    file: &ArchivedFile,
) -> Result<(), Error> {
    let got = content(client, log, relation, false).await?;
    match differs(file, &got) {
        Some(problem) => Err(Error::Mismatch(problem)),
        None => Ok(()),
    }
}

/// What differs between `got` and what the catalogue says `file` holds.
fn differs(file: &ArchivedFile, got: &crate::catalogue::Content) -> Option<String> {
    (got.rows != file.row_count || got.digest != file.content_sha256).then(|| {
        format!(
            "the archived file {} differs from what the catalogue recorded at archive time: {} rows (recorded {}), content digest {} (recorded {}); a row in it was changed, removed or added",
            file.location,
            got.rows,
            file.row_count,
            hex::encode(&got.digest),
            hex::encode(&file.content_sha256)
        )
    })
}

/// Makes the session's temporary table `name` with the log's columns (and the staging table)
/// if missing, and empties it.
pub(crate) async fn fresh_table(client: &Client, log: &AuditLog, name: &str) -> Result<(), Error> {
    client
        .batch_execute(&format!(
            "{} TRUNCATE {name};",
            log.load_tables_sql(STAGE, name)
        ))
        .await
        .map_err(db("cannot make the temporary tables"))
}

/// Loads the rows of the file at `path` into the
/// temporary table `target` (made by [`fresh_table`]), through the staging table (`COPY`).
pub(crate) async fn load_path(
    client: &Client,
    log: &AuditLog,
    archive: &Archive,
    path: &Path,
    target: &str,
) -> Result<(), Error> {
    // The staging table exists: `target` was made by `fresh_table`.
    client
        .batch_execute(&format!("TRUNCATE {STAGE};"))
        .await
        .map_err(db("cannot make the temporary tables"))?;
    let location = path.to_string();
    let stream = open(archive, path, &location)
        .await?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(pq(format!("cannot read {location}")))?;
    pin_mut!(stream);
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {STAGE} FROM STDIN (FORMAT csv)"))
        .await
        .map_err(db("cannot load archived rows"))?;
    pin_mut!(sink);
    let mut csv = Vec::with_capacity(1 << 20);
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(pq(format!("cannot read {location}")))?
    {
        append_csv(&batch, &mut csv)?;
        if csv.len() > 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut csv)))
                .await
                .map_err(db("cannot load archived rows"))?;
        }
    }
    if !csv.is_empty() {
        sink.send(Bytes::from(csv))
            .await
            .map_err(db("cannot load archived rows"))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(db("cannot load archived rows"))?;
    client
        .batch_execute(&log.unstage_sql(STAGE, target))
        .await
        .map_err(db("cannot load archived rows"))?;
    Ok(())
}

/// Writes the rows `rows_sql` selects (in the archive's form) to `path`, replacing any file
/// there only once the new one is complete.
pub(crate) async fn write_file(
    client: &Client,
    rows_sql: &str,
    archive: &Archive,
    (path, location): (&Path, &str),
    metadata: Vec<(String, String)>,
    erased: &crate::digest::Erased,
    progress: &dyn Fn(u64),
) -> Result<(u64, Content), Error> {
    let writer = BufWriter::new(archive.store.clone(), path.clone());
    let mut writer = AsyncArrowWriter::try_new(writer, schema(), Some(properties(metadata)))
        .map_err(pq(format!("cannot start writing {location}")))?;
    let rows = client
        .query_raw(rows_sql, std::iter::empty::<i64>())
        .await
        .map_err(db(format!("cannot read the rows for {location}")))?;
    pin_mut!(rows);
    // The rows' digests are computed on a thread of their own while this one reads the next
    // rows and encodes them: each is a core's work.
    let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(4);
    let digester = {
        let erased = erased.clone();
        tokio::task::spawn_blocking(move || {
            let mut content = ContentDigest::default();
            let mut digests = Vec::with_capacity(BATCH_ROWS);
            for batch in rx {
                digests.clear();
                crate::digest::batch_digests(&batch, &erased, &mut digests)?;
                for (id, digest) in &digests {
                    content.push(*id, digest);
                }
            }
            Ok::<_, Error>(content.finish())
        })
    };
    let mut batch = BatchBuilder::new();
    let mut written = 0u64;
    let mut end = false;
    while !end {
        let row = rows.next().await;
        if let Some(row) = row {
            batch.push(&row.map_err(db(format!("cannot read the rows for {location}")))?);
        } else {
            end = true;
        }
        if batch.len() == BATCH_ROWS || (end && batch.len() > 0) {
            written += batch.len() as u64;
            let rows = batch.finish();
            // A digester that stopped has its error, taken below.
            if tx.send(rows.clone()).is_err() {
                break;
            }
            writer
                .write(&rows)
                .await
                .map_err(pq(format!("cannot write {location}")))?;
            progress(written);
        }
    }
    drop(tx);
    let content = digester.await.map_err(|e| {
        Error::Mismatch(format!("the digests of {location} were not computed: {e}"))
    })??;
    writer
        .close()
        .await
        .map_err(pq(format!("cannot finish {location}")))?;
    progress(written);
    let bytes = archive
        .store
        .head(path)
        .await
        .map_err(|e| Error::Store(format!("cannot find {location} after writing it"), e))?
        .size;
    Ok((bytes, content))
}
