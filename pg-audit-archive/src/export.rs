//! Export of the log's entries for auditors — JSON lines, CSV or Parquet — with a proof: the
//! seals covering the exported entries and the digest of every row they cover, from which
//! [`verify_export`] shows, without the database, that each exported entry is exactly a row
//! those seals cover (and, given the seals kept elsewhere, that the seals are the log's).
//!
//! The entries stream from the server and from archived files to the output one at a time;
//! nothing holds more than a batch. The proof holds every covered row's digest (40 bytes a
//! row): a seal covers every row of its id range, whatever the export's filters, since a seal
//! is a chain of all its rows' digests.
//!
//! Every value is written as the log holds it (masked columns as their digests, erased values
//! as `"[redacted]"`), so its digest can be computed again: JSON columns as the server prints
//! them, times as RFC 3339 with microseconds. In CSV, a text cell a spreadsheet would read as a
//! formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a `'` before it,
//! as does one starting with `'`; readers of the export (and [`verify_export`]) drop it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};

use futures_util::{StreamExt as _, TryStreamExt as _, pin_mut};
use pg_audit::AuditLog;
use pg_audit::sql::archive::ArchiveType;
use pg_audit::sql::shape::LOG_COLUMNS;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio_postgres::Client;

use crate::digest::{Erased, Field, RowDigest, each_row, row_digest_of};
use crate::file::{BATCH_ROWS, BatchBuilder};
use crate::seal::Seal;
use crate::{Error, db, pq};

/// The formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, the log's columns as keys.
    Jsonl,
    /// A header line of the log's columns, then a line per entry.
    Csv,
    /// The archive's Parquet schema (zstd).
    Parquet,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 3] = [Format::Jsonl, Format::Csv, Format::Parquet];

    /// `jsonl`, `csv` or `parquet`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    /// The format named `name`.
    pub fn named(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Which entries: `changed_at` from `from` (inclusive) to `until` (exclusive), both RFC 3339
/// or any time PostgreSQL reads; of one table and one context user when given.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// From this time.
    pub from: String,
    /// Before this time.
    pub until: String,
    /// The table's schema.
    pub schema: Option<String>,
    /// The table's name.
    pub table: Option<String>,
    /// The context's `user_id`.
    pub user: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Entries written.
    pub rows: u64,
    /// Of which read from archived files.
    pub archived_rows: u64,
    /// Seals in the proof.
    pub seals: usize,
    /// Entries no seal covers yet (newer than the last seal).
    pub unsealed: u64,
    /// SHA-256 of the export file, in hexadecimal.
    pub sha256: String,
}

/// What [`verify_export`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportReport {
    /// Entries in the export.
    pub rows: u64,
    /// Of which a seal of the proof covers, digest for digest.
    pub sealed: u64,
    /// Of which no seal of the proof covers (newer than its last seal).
    pub unsealed: u64,
    /// Seals in the proof, each recomputed from its rows' digests and chained.
    pub seals: usize,
    /// Everything that does not match, one line each.
    pub problems: Vec<String>,
}

impl ExportReport {
    /// Whether the export is proven: no problem, and every entry sealed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.unsealed == 0
    }
}

/// The proof's path next to an export: `<export>.proof.jsonl`.
pub fn proof_path(export: &Path) -> PathBuf {
    let mut name = export.as_os_str().to_owned();
    name.push(".proof.jsonl");
    PathBuf::from(name)
}

/// Ids per query when the proof's digests are read.
const DIGEST_WINDOW: i64 = 100_000;
/// Digests per line of the proof.
const DIGESTS_PER_LINE: usize = 10_000;

/// Exports the entries `selection` picks — archived ones read from their files first, then the
/// log's, by id — to `out` in `format` (written under a temporary name and renamed when
/// complete; an existing file is refused), and the proof to [`proof_path`]. `progress` hears
/// the entries written so far.
pub async fn export(
    client: &Client,
    log: &AuditLog,
    selection: &Selection,
    format: Format,
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Exported, Error> {
    let proof = proof_path(out);
    for path in [out, proof.as_path()] {
        // A symbolic link, dangling or not, counts as a file: it would be replaced.
        if path.symlink_metadata().is_ok() {
            return Err(Error::Mismatch(format!(
                "{} exists; choose another name or remove it (an export never overwrites a file)",
                path.display()
            )));
        }
    }
    // The time range, as the server reads it (refused here, before anything is written), and
    // recorded in the proof as the times it resolved to (`today` is no time to prove against).
    let bounds = client
        .query_one(
            "SELECT (extract(epoch FROM $1::text::timestamptz) * 1000000)::bigint,
                    (extract(epoch FROM $2::text::timestamptz) * 1000000)::bigint",
            &[&selection.from, &selection.until],
        )
        .await
        .map_err(db("cannot read --from and --until as times"))?;
    let (from_us, until_us): (i64, i64) = (bounds.get(0), bounds.get(1));
    if from_us >= until_us {
        return Err(Error::Mismatch(format!(
            "--from ({}) is not before --until ({}): nothing to export",
            selection.from, selection.until
        )));
    }
    // A table named must be one the log audits (a misspelt name would export nothing).
    if let (Some(schema), Some(table)) = (&selection.schema, &selection.table) {
        let audited: bool = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT FROM {} AS r WHERE r.table_schema OPERATOR(pg_catalog.=) $1 AND r.table_name OPERATOR(pg_catalog.=) $2)",
                    log.config_table()
                ),
                &[schema, table],
            )
            .await
            .map_err(db("cannot read the install records"))?
            .get(0);
        if !audited {
            return Err(Error::Refused(format!(
                "{schema}.{table} is not audited by {} (no install record): check the name",
                log.table()
            )));
        }
    }
    let partial = {
        let mut name = out.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    };
    // The seals as they stand before the entries are read: those made meanwhile are left to
    // the next export.
    let seals = crate::seal::seals(client, log).await?;
    let mut writer = Writer::create(&partial, format, log)?;
    let mut ids = IdSpan {
        last_sealed: seals.last().map_or(i64::MIN, |s| s.last_id),
        ..IdSpan::default()
    };

    // Archived entries, from the files whose range meets the selection.
    let files = crate::read::archived_files(client, log).await?;
    let mut archived_rows = 0u64;
    for file in &files {
        let meets: bool = client
            .query_one(
                "SELECT $1::text::timestamptz < $4::text::timestamptz AND $3::text::timestamptz < $2::text::timestamptz",
                &[&selection.from, &selection.until, &file.range_start, &file.range_end],
            )
            .await
            .map_err(db("cannot read the archive catalogue's ranges"))?
            .get(0);
        if !meets {
            continue;
        }
        let (archive, path) = file.open()?;
        let stream = crate::read::open(&archive, &path, &file.location)
            .await?
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(pq(format!("cannot read {}", file.location)))?;
        pin_mut!(stream);
        let picks = Picks {
            from_us,
            until_us,
            selection,
        };
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(pq(format!("cannot read {}", file.location)))?
        {
            each_row(&batch, |fields| {
                if picks.takes(fields) {
                    writer.write(fields)?;
                    ids.add(fields);
                    archived_rows += 1;
                    if archived_rows.is_multiple_of(10_000) {
                        progress(archived_rows);
                    }
                }
                Ok(())
            })?;
        }
    }

    // The log's entries, streamed by id.
    let params: [Option<&str>; 5] = [
        Some(&selection.from),
        Some(&selection.until),
        selection.schema.as_deref(),
        selection.table.as_deref(),
        selection.user.as_deref(),
    ];
    let rows = client
        .query_raw(&log.export_rows_sql(), params)
        .await
        .map_err(db("cannot read the log's entries"))?;
    pin_mut!(rows);
    let mut live_rows = 0u64;
    while let Some(row) = rows.next().await {
        let row = row.map_err(db("cannot read the log's entries"))?;
        let fields = server_fields(&row);
        writer.write(&fields)?;
        ids.add(&fields);
        live_rows += 1;
        if live_rows.is_multiple_of(10_000) {
            progress(archived_rows + live_rows);
        }
    }
    writer.finish()?;
    let sha256 = file_sha256(&partial)?;
    let total = archived_rows + live_rows;
    progress(total);

    // The proof: the seals covering the exported ids, and every row digest they cover.
    let covering: Vec<&Seal> = match ids.span() {
        Some((lo, hi)) => seals
            .iter()
            .filter(|s| s.last_id >= lo && s.first_id <= hi)
            .collect(),
        None => Vec::new(),
    };
    let unsealed = ids.unsealed;
    let proof_partial = {
        let mut name = proof.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    };
    let mut lines = BufWriter::new(
        File::create(&proof_partial)
            .map_err(|e| Error::Io(format!("cannot write {}", proof_partial.display()), e))?,
    );
    put(
        &mut lines,
        &proof_partial,
        &json!({
            "pg_audit_export": 1,
            "log": log.table().to_string(),
            "from": time_text(from_us),
            "until": time_text(until_us),
            "schema": selection.schema,
            "table": selection.table,
            "user": selection.user,
            "format": format.name(),
            "rows": total,
            "sha256": sha256,
        }),
    )?;
    // Archived rows a seal covers are digested as `verify` digests them: loaded back.
    let archived = if covering.iter().any(|s| {
        files.iter().any(|f| {
            f.min_id.is_some_and(|lo| lo <= s.last_id)
                && f.max_id.is_some_and(|hi| hi >= s.first_id)
        })
    }) {
        let table = "pg_temp.pg_audit_export_archived";
        crate::read::load_archived(client, log, table, &|_| {}).await?;
        Some(table)
    } else {
        None
    };
    if let Some((lo, hi)) = ids.span() {
        let erased = crate::digest::erased(client, log, archived, lo, hi).await?;
        for ((id, column, key), digest) in &erased {
            put(
                &mut lines,
                &proof_partial,
                &json!({"erased": [id, column, key, hex::encode(digest)]}),
            )?;
        }
    }
    for seal in &covering {
        put(&mut lines, &proof_partial, &json!({"seal": seal.to_json()}))?;
        let mut hash = Sha256::new();
        hash.update(seal.prev_hash.as_deref().unwrap_or_default());
        hash.update(seal.first_id.to_be_bytes());
        hash.update(seal.last_id.to_be_bytes());
        let mut first = seal.first_id;
        while first <= seal.last_id {
            let last = first.saturating_add(DIGEST_WINDOW - 1).min(seal.last_id);
            let mut digests =
                crate::digest::row_digests(client, log, archived, first, last).await?;
            digests.sort_unstable();
            for chunk in digests.chunks(DIGESTS_PER_LINE) {
                for (_, d) in chunk {
                    hash.update(d);
                }
                let pairs: Vec<Value> = chunk
                    .iter()
                    .map(|(id, d)| json!([id, hex::encode(d)]))
                    .collect();
                put(&mut lines, &proof_partial, &json!({ "digests": pairs }))?;
            }
            if last == i64::MAX {
                break;
            }
            first = last + 1;
        }
        if hash.finalize().as_slice() != seal.hash.as_slice() {
            return Err(Error::Mismatch(format!(
                "seal {} (ids {}..={}) does not match the log's rows now: run pg-audit verify; nothing was exported",
                seal.seal_id, seal.first_id, seal.last_id
            )));
        }
    }
    lines
        .flush()
        .map_err(|e| Error::Io(format!("cannot write {}", proof_partial.display()), e))?;
    drop(lines);
    for (from, to) in [(&partial, out), (&proof_partial, proof.as_path())] {
        std::fs::rename(from, to)
            .map_err(|e| Error::Io(format!("cannot name {}", to.display()), e))?;
    }
    Ok(Exported {
        rows: total,
        archived_rows,
        seals: covering.len(),
        unsealed,
        sha256,
    })
}

/// One line of the proof.
fn put(lines: &mut BufWriter<File>, path: &Path, value: &Value) -> Result<(), Error> {
    writeln!(lines, "{value}").map_err(|e| Error::Io(format!("cannot write {}", path.display()), e))
}

/// The ids written: their span, and how many no seal covers.
#[derive(Default)]
struct IdSpan {
    span: Option<(i64, i64)>,
    last_sealed: i64,
    unsealed: u64,
}

impl IdSpan {
    fn add(&mut self, fields: &[Field<'_>]) {
        if let Some(Field::Int(id)) = fields.first() {
            let id = *id;
            self.span = Some(
                self.span
                    .map_or((id, id), |(lo, hi)| (lo.min(id), hi.max(id))),
            );
            if id > self.last_sealed {
                self.unsealed += 1;
            }
        }
    }

    fn span(&self) -> Option<(i64, i64)> {
        self.span
    }
}

/// The selection applied to archived rows, its times as the server read them.
struct Picks<'a> {
    from_us: i64,
    until_us: i64,
    selection: &'a Selection,
}

impl Picks<'_> {
    fn takes(&self, fields: &[Field<'_>]) -> bool {
        let text = |name: &str| match field_of(fields, name) {
            Some(Field::Text(t)) => Some(t),
            _ => None,
        };
        let Some(Field::Int(at)) = field_of(fields, "changed_at") else {
            return false;
        };
        if at < self.from_us || at >= self.until_us {
            return false;
        }
        if let Some(schema) = &self.selection.schema
            && text("schema_name") != Some(schema.as_str())
        {
            return false;
        }
        if let Some(table) = &self.selection.table
            && text("table_name") != Some(table.as_str())
        {
            return false;
        }
        if let Some(user) = &self.selection.user {
            let context: Option<Value> = text("context").and_then(|t| serde_json::from_str(t).ok());
            if context
                .as_ref()
                .and_then(|c| c.get("user_id"))
                .and_then(Value::as_str)
                != Some(user.as_str())
            {
                return false;
            }
        }
        true
    }
}

fn field_of<'a>(fields: &[Field<'a>], name: &str) -> Option<Field<'a>> {
    LOG_COLUMNS
        .iter()
        .position(|c| c.name == name)
        .and_then(|i| fields.get(i).copied())
}

/// A row of `export_rows_sql` as fields.
fn server_fields(row: &tokio_postgres::Row) -> Vec<Field<'_>> {
    LOG_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| match ArchiveType::of(c) {
            ArchiveType::Int64 | ArchiveType::TimestampMicros => {
                row.get::<_, Option<i64>>(i).map_or(Field::Null, Field::Int)
            }
            ArchiveType::Text => row
                .get::<_, Option<&str>>(i)
                .map_or(Field::Null, Field::Text),
        })
        .collect()
}

/// Where the entries go.
enum Writer {
    Lines(BufWriter<File>, Format),
    Parquet(Box<parquet::arrow::ArrowWriter<File>>, BatchBuilder),
}

impl Writer {
    fn create(path: &Path, format: Format, log: &AuditLog) -> Result<Writer, Error> {
        let file = File::create(path)
            .map_err(|e| Error::Io(format!("cannot write {}", path.display()), e))?;
        let io = |e| Error::Io(format!("cannot write {}", path.display()), e);
        Ok(match format {
            Format::Parquet => {
                let metadata = vec![
                    ("pg_audit.log".to_owned(), log.table().to_string()),
                    ("pg_audit.export".to_owned(), "1".to_owned()),
                ];
                let writer = parquet::arrow::ArrowWriter::try_new(
                    file,
                    crate::file::schema(),
                    Some(crate::file::properties(metadata)),
                )
                .map_err(pq(format!("cannot write {}", path.display())))?;
                Writer::Parquet(Box::new(writer), BatchBuilder::new())
            }
            Format::Csv => {
                let mut out = BufWriter::new(file);
                let header: Vec<&str> = LOG_COLUMNS.iter().map(|c| c.name).collect();
                writeln!(out, "{}", header.join(",")).map_err(io)?;
                Writer::Lines(out, Format::Csv)
            }
            Format::Jsonl => Writer::Lines(BufWriter::new(file), Format::Jsonl),
        })
    }

    fn write(&mut self, fields: &[Field<'_>]) -> Result<(), Error> {
        match self {
            Writer::Lines(out, format) => {
                let line = match format {
                    Format::Csv => csv_line(fields),
                    _ => json_line(fields),
                };
                out.write_all(line.as_bytes())
                    .map_err(|e| Error::Io("cannot write the export".into(), e))
            }
            Writer::Parquet(writer, batch) => {
                batch.push_fields(fields);
                if batch.len() >= BATCH_ROWS {
                    writer
                        .write(&batch.finish())
                        .map_err(pq("cannot write the export"))?;
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<(), Error> {
        match self {
            Writer::Lines(mut out, _) => out
                .flush()
                .map_err(|e| Error::Io("cannot write the export".into(), e)),
            Writer::Parquet(mut writer, mut batch) => {
                if batch.len() > 0 {
                    writer
                        .write(&batch.finish())
                        .map_err(pq("cannot write the export"))?;
                }
                writer.close().map_err(pq("cannot write the export"))?;
                Ok(())
            }
        }
    }
}

/// A time in microseconds since 1970 as RFC 3339 with microseconds, in UTC.
fn time_text(micros: i64) -> String {
    let (days, rest) = (
        micros.div_euclid(86_400_000_000),
        micros.rem_euclid(86_400_000_000),
    );
    let (y, m, d) = pg_audit::calendar::civil_from_days(days);
    let secs = rest / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rest % 1_000_000
    )
}

/// [`time_text`] read back.
fn time_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 27
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[19] != b'.'
        || b[26] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let days = pg_audit::calendar::days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    Some((days * 86_400 + secs) * 1_000_000 + num(20..26)?)
}

fn json_line(fields: &[Field<'_>]) -> String {
    let mut out = String::from("{");
    for (i, (column, field)) in LOG_COLUMNS.iter().zip(fields).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(column.name);
        out.push_str("\":");
        match (ArchiveType::of(column), column.sql_type, field) {
            (_, _, Field::Null) => out.push_str("null"),
            (ArchiveType::TimestampMicros, _, Field::Int(v)) => {
                out.push('"');
                out.push_str(&time_text(*v));
                out.push('"');
            }
            (_, _, Field::Int(v)) => out.push_str(&v.to_string()),
            // JSON as the server printed it, so its digest can be computed again.
            (_, "json" | "jsonb", Field::Text(t)) => out.push_str(t),
            (_, _, Field::Text(t)) => {
                out.push_str(&serde_json::to_string(t).expect("a string serializes"))
            }
        }
    }
    out.push_str("}\n");
    out
}

/// The first characters that make a spreadsheet read a cell as a formula, and `'`, which
/// marks a cell given a `'` before it.
fn guarded(text: &str) -> bool {
    text.starts_with(['=', '+', '-', '@', '\t', '\r', '\''])
}

fn csv_line(fields: &[Field<'_>]) -> String {
    let mut out = String::new();
    for (i, (column, field)) in LOG_COLUMNS.iter().zip(fields).enumerate() {
        if i > 0 {
            out.push(',');
        }
        match (ArchiveType::of(column), field) {
            (_, Field::Null) => {}
            (ArchiveType::TimestampMicros, Field::Int(v)) => out.push_str(&time_text(*v)),
            (_, Field::Int(v)) => out.push_str(&v.to_string()),
            (_, Field::Text(t)) => {
                out.push('"');
                if guarded(t) {
                    out.push('\'');
                }
                out.push_str(&t.replace('"', "\"\""));
                out.push('"');
            }
        }
    }
    out.push('\n');
    out
}

/// SHA-256 of a file, in hexadecimal.
fn file_sha256(path: &Path) -> Result<String, Error> {
    let io = |e| Error::Io(format!("cannot read {}", path.display()), e);
    let mut file = File::open(path).map_err(io)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Shows that the export at `export` holds exactly rows its proof's seals cover: the file's
/// digest is the one the proof names, each seal's hash recomputed from its rows' digests and
/// chained to the one before, each entry's digest recomputed from its values (erased values'
/// recorded digests standing in) and found at its id; with `seals` (the text `pg-audit seal
/// --export` wrote, kept apart from the database), that the proof's seals are those. Reads no
/// database.
pub fn verify_export(
    export: &Path,
    proof: &Path,
    seals: Option<&str>,
) -> Result<ExportReport, Error> {
    let mut report = ExportReport::default();
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e| Error::Io(format!("cannot read {p}"), e)
    };
    let bad = |what: String| Error::Mismatch(format!("{}: {what}", proof.display()));
    let reader = BufReader::new(File::open(proof).map_err(io(proof))?);
    let mut header: Option<Value> = None;
    let mut erased = Erased::new();
    let mut covered: HashMap<i64, RowDigest> = HashMap::new();
    let mut proof_seals: Vec<(Seal, Vec<(i64, RowDigest)>)> = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(io(proof))?;
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| bad(format!("line {} is not JSON ({e})", n + 1)))?;
        if n == 0 {
            if value.get("pg_audit_export").is_none() {
                return Err(bad("it is not an export's proof".into()));
            }
            header = Some(value);
            continue;
        }
        if let Some(e) = value.get("erased").and_then(Value::as_array) {
            let parsed = (|| {
                Some((
                    (
                        e.first()?.as_i64()?,
                        e.get(1)?.as_str()?.to_owned(),
                        e.get(2)?.as_str()?.to_owned(),
                    ),
                    hex::decode(e.get(3)?.as_str()?).ok()?,
                ))
            })()
            .ok_or_else(|| bad(format!("line {} is a malformed erasure", n + 1)))?;
            erased.insert(parsed.0, parsed.1);
        } else if let Some(s) = value.get("seal") {
            let seal = Seal::from_json(s)
                .ok_or_else(|| bad(format!("line {} is a malformed seal", n + 1)))?;
            proof_seals.push((seal, Vec::new()));
        } else if let Some(pairs) = value.get("digests").and_then(Value::as_array) {
            let (_, digests) = proof_seals
                .last_mut()
                .ok_or_else(|| bad(format!("line {}: digests before any seal", n + 1)))?;
            for pair in pairs {
                let parsed = (|| {
                    let id = pair.get(0)?.as_i64()?;
                    let d: RowDigest = hex::decode(pair.get(1)?.as_str()?).ok()?.try_into().ok()?;
                    Some((id, d))
                })()
                .ok_or_else(|| bad(format!("line {} holds a malformed digest", n + 1)))?;
                digests.push(parsed);
            }
        } else {
            return Err(bad(format!("line {} is not part of a proof", n + 1)));
        }
    }
    let header = header.ok_or_else(|| bad("it is empty".into()))?;
    let format = header
        .get("format")
        .and_then(Value::as_str)
        .and_then(Format::named)
        .ok_or_else(|| bad("its format is not one pg-audit exports".into()))?;
    let sha256 = file_sha256(export)?;
    if header.get("sha256").and_then(Value::as_str) != Some(sha256.as_str()) {
        report.problems.push(format!(
            "{} is not the file the proof was made for (its SHA-256 is {sha256})",
            export.display()
        ));
    }

    // The seals: each recomputed from its rows' digests, and chained.
    let kept = seals.map(crate::seal::read_export).transpose()?;
    let mut previous: Option<&Seal> = None;
    for (seal, digests) in &proof_seals {
        let mut sorted = digests.clone();
        sorted.sort_unstable();
        let remade = crate::digest::seal_of(
            &sorted,
            seal.first_id,
            seal.last_id,
            seal.prev_hash.as_deref(),
        );
        if remade.hash != seal.hash
            || remade.row_count != seal.row_count
            || remade.rows != seal.rows
        {
            report.problems.push(format!(
                "seal {} (ids {}..={}) is not the hash of the digests the proof lists for it",
                seal.seal_id, seal.first_id, seal.last_id
            ));
        }
        if let Some(prev) = previous
            && prev.seal_id + 1 == seal.seal_id
            && seal.prev_hash.as_deref() != Some(prev.hash.as_slice())
        {
            report.problems.push(format!(
                "seal {} does not chain to seal {}",
                seal.seal_id, prev.seal_id
            ));
        }
        if let Some(kept) = &kept
            && !kept.iter().any(|k| k == seal)
        {
            report.problems.push(format!(
                "seal {} (ids {}..={}) is not among the seals given: the proof's seals are not those",
                seal.seal_id, seal.first_id, seal.last_id
            ));
        }
        for (id, d) in digests {
            covered.insert(*id, *d);
        }
        previous = Some(seal);
    }
    report.seals = proof_seals.len();
    let sealed_to = proof_seals.iter().map(|(s, _)| s.last_id).max();
    let sealed_from = proof_seals.iter().map(|(s, _)| s.first_id).min();

    // What the export says it holds: each entry is checked against it.
    let said = |k: &str| header.get(k).and_then(Value::as_str).map(str::to_owned);
    let range = (
        said("from").as_deref().and_then(time_micros),
        said("until").as_deref().and_then(time_micros),
    );
    let (Some(from_us), Some(until_us)) = range else {
        return Err(bad("its time range is not one pg-audit writes".into()));
    };
    let (schema, table, user) = (said("schema"), said("table"), said("user"));
    let mut seen = std::collections::HashSet::new();
    // Each entry, digested again.
    let mut check = |fields: &[Field<'_>]| -> Result<(), Error> {
        report.rows += 1;
        let (id, digest) = row_digest_of(fields, &erased)?;
        if !seen.insert(id) {
            report
                .problems
                .push(format!("entry {id} is in the export twice"));
        }
        let text = |name: &str| match field_of(fields, name) {
            Some(Field::Text(t)) => Some(t.to_owned()),
            _ => None,
        };
        let outside = match field_of(fields, "changed_at") {
            Some(Field::Int(at)) => at < from_us || at >= until_us,
            _ => true,
        } || schema
            .as_ref()
            .is_some_and(|s| text("schema_name").as_ref() != Some(s))
            || table
                .as_ref()
                .is_some_and(|t| text("table_name").as_ref() != Some(t))
            || user.as_ref().is_some_and(|u| {
                text("context")
                    .and_then(|c| serde_json::from_str::<Value>(&c).ok())
                    .and_then(|c| c.get("user_id").and_then(Value::as_str).map(str::to_owned))
                    .as_ref()
                    != Some(u)
            });
        if outside {
            report.problems.push(format!(
                "entry {id} is not one the export selects (its time, table or user)"
            ));
        }
        match covered.get(&id) {
            Some(d) if *d == digest => report.sealed += 1,
            Some(_) => report
                .problems
                .push(format!("entry {id} differs from the row its seal covers")),
            None if sealed_to.is_some_and(|t| id <= t) && sealed_from.is_some_and(|f| id >= f) => {
                report
                    .problems
                    .push(format!("entry {id} is not among the rows its seals cover"))
            }
            None => report.unsealed += 1,
        }
        Ok(())
    };
    let file = File::open(export).map_err(io(export))?;
    // An entry that cannot be read as the log's columns, exactly once each, is altered.
    let mut unreadable = Vec::new();
    match format {
        Format::Jsonl => {
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(io(export))?;
                match json_fields(&line).as_deref().and_then(fields_of) {
                    Some(fields) => check(&fields)?,
                    None => unreadable.push(n + 1),
                }
            }
        }
        Format::Csv => {
            let mut records = CsvRecords::new(BufReader::new(file));
            records.next(); // the header
            for (n, record) in records.enumerate() {
                match record.map_err(io(export))?.as_deref().and_then(fields_of) {
                    Some(fields) => check(&fields)?,
                    None => unreadable.push(n + 1),
                }
            }
        }
        Format::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(pq(format!("cannot read {}", export.display())))?
                    .build()
                    .map_err(pq(format!("cannot read {}", export.display())))?;
            for batch in reader {
                let batch = batch.map_err(|e| {
                    Error::Mismatch(format!("cannot read {}: {e}", export.display()))
                })?;
                each_row(&batch, &mut check)?;
            }
        }
    }
    for n in unreadable {
        report.rows += 1;
        report.problems.push(format!(
            "entry {n} of the file cannot be read as a log entry (a column missing, added or given twice, or a value of the wrong type)"
        ));
    }
    if header.get("rows").and_then(Value::as_u64) != Some(report.rows) {
        report.problems.push(format!(
            "the export holds {} entries; the proof says {}",
            report.rows,
            header
                .get("rows")
                .map_or_else(String::new, ToString::to_string)
        ));
    }
    Ok(report)
}

/// One value of an exported entry as read back: NULL, an integer or time as written, or text.
enum Cell {
    Null,
    Raw(String),
    Text(String),
}

/// A JSON object's members in order, each value as its exact text: duplicates kept, so that
/// a line naming a key twice is told from one naming it once.
struct Members(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    out.push(pair);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The cells of a JSON line, by the log's columns: JSON columns as their exact text. `None`
/// unless the line holds each of the log's columns exactly once, and nothing else.
fn json_fields(line: &str) -> Option<Vec<Cell>> {
    let Members(members) = serde_json::from_str(line).ok()?;
    if members.len() != LOG_COLUMNS.len() {
        return None;
    }
    let map: HashMap<String, Box<serde_json::value::RawValue>> = members.into_iter().collect();
    if map.len() != LOG_COLUMNS.len() {
        return None;
    }
    LOG_COLUMNS
        .iter()
        .map(|c| {
            let raw = map.get(c.name)?.get();
            Some(if raw == "null" {
                Cell::Null
            } else if matches!(c.sql_type, "json" | "jsonb") {
                Cell::Text(raw.to_owned())
            } else if raw.starts_with('"') {
                Cell::Raw(serde_json::from_str::<String>(raw).ok()?)
            } else {
                Cell::Raw(raw.to_owned())
            })
        })
        .collect()
}

/// Fields from cells, each read as its column's type.
fn fields_of(cells: &[Cell]) -> Option<Vec<Field<'_>>> {
    if cells.len() != LOG_COLUMNS.len() {
        return None;
    }
    LOG_COLUMNS
        .iter()
        .zip(cells)
        .map(|(c, cell)| {
            Some(match (ArchiveType::of(c), cell) {
                (_, Cell::Null) => Field::Null,
                (ArchiveType::TimestampMicros, Cell::Raw(t) | Cell::Text(t)) => {
                    Field::Int(time_micros(t)?)
                }
                (ArchiveType::Int64, Cell::Raw(t) | Cell::Text(t)) => Field::Int(t.parse().ok()?),
                (ArchiveType::Text, Cell::Raw(t) | Cell::Text(t)) => Field::Text(t),
            })
        })
        .collect()
}

/// The records of a CSV file as [`csv_line`] writes them, one at a time (a quoted cell may
/// hold line breaks): a quoted cell is text (a `'` before a guarded one dropped), an unquoted
/// empty one NULL, an unquoted one a number or time. `None` for a malformed record.
struct CsvRecords<R> {
    reader: R,
}

impl<R: std::io::BufRead> CsvRecords<R> {
    fn new(reader: R) -> Self {
        CsvRecords { reader }
    }
}

impl<R: std::io::BufRead> Iterator for CsvRecords<R> {
    type Item = std::io::Result<Option<Vec<Cell>>>;

    fn next(&mut self) -> Option<Self::Item> {
        // A record's lines, each with its line break (a `\r` before it is the value's): until
        // its quotes are balanced.
        let mut record = String::new();
        loop {
            match self.reader.read_line(&mut record) {
                Ok(0) if record.is_empty() => return None,
                Ok(0) => return Some(Ok(None)),
                Ok(_) if record.matches('"').count().is_multiple_of(2) => break,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        if record.ends_with('\n') {
            record.pop();
        }
        Some(Ok(csv_cells(&record)))
    }
}

/// The cells of one CSV record (its line breaks inside quotes kept).
fn csv_cells(record: &str) -> Option<Vec<Cell>> {
    let mut cells = Vec::new();
    let mut chars = record.chars().peekable();
    loop {
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        text.push('"');
                    }
                    '"' => break,
                    c => text.push(c),
                }
            }
            if text.starts_with('\'') && guarded(&text[1..]) {
                text.remove(0);
            }
            cells.push(Cell::Text(text));
        } else {
            let mut text = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                text.push(c);
                chars.next();
            }
            cells.push(if text.is_empty() {
                Cell::Null
            } else {
                Cell::Raw(text)
            });
        }
        match chars.next() {
            Some(',') => continue,
            None => return Some(cells),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_back_exactly() {
        for micros in [0, 1, 1_764_892_800_123_456, 4_102_444_799_999_999] {
            assert_eq!(time_micros(&time_text(micros)), Some(micros), "{micros}");
        }
        assert_eq!(
            time_text(1_764_892_800_123_456),
            "2025-12-05T00:00:00.123456Z"
        );
    }

    #[test]
    fn csv_cells_read_back_exactly() {
        let hostile = [
            "=cmd|' /C calc'!A0",
            "'=already",
            "'plain",
            "a,\"b\"\nc",
            "",
            "+1",
            "-2",
            "@x",
            "\tx",
            "\r\n",
            "a\r\nb\r",
        ];
        let fields: Vec<Field<'_>> = LOG_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| match ArchiveType::of(c) {
                ArchiveType::Text => Field::Text(hostile[i % hostile.len()]),
                _ => Field::Int(-(i as i64)),
            })
            .collect();
        let line = csv_line(&fields);
        assert!(!line.contains("\"=cmd"), "{line}");
        let cells = CsvRecords::new(line.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .unwrap();
        let back = fields_of(&cells).unwrap();
        for (a, b) in fields.iter().zip(&back) {
            match (a, b) {
                (Field::Text(x), Field::Text(y)) => assert_eq!(x, y),
                (Field::Int(x), Field::Int(y)) => assert_eq!(x, y),
                _ => panic!("{a:?} read back as {b:?}"),
            }
        }
    }
}
