//! A log row's digest computed here, byte for byte as the server's `row_digest_expr` computes
//! it (the form `docs/digest.md` writes out for anyone who would compute it too), from a
//! binary `COPY` of the rows: what `verify` recomputes the seals with, in this program rather
//! than in SQL, several times faster and without calling anything the log's owner could
//! replace (the session calls `COPY` and built-ins only).

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::{StreamExt as _, pin_mut};
use pg_audit::AuditLog;
use pg_audit::calendar::PG_EPOCH_UNIX_SECS;
use pg_audit::sql::shape::{LOG_COLUMNS, REDACTED};
use sha2::{Digest as _, Sha256};
use tokio_postgres::Client;

use crate::{Error, db};

/// A row's digest: SHA-256.
pub type RowDigest = [u8; 32];

/// What a seal over a range holds, recomputed: as `<log>_seal_of` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resealed {
    /// The rows in the range.
    pub row_count: i64,
    /// Each row's id (8 bytes, big-endian) and the first 8 bytes of its digest, by id.
    pub rows: Vec<u8>,
    /// SHA-256 over the previous hash, the range and every digest by id.
    pub hash: Vec<u8>,
}

/// The seal over ids `first..=last` of the log (and, with `archived`, the archived rows loaded
/// back into that table), chained to `prev_hash`, with the digests computed here.
pub async fn reseal(
    client: &Client,
    log: &AuditLog,
    archived: Option<&str>,
    (first, last): (i64, i64),
    prev_hash: Option<&[u8]>,
) -> Result<Resealed, Error> {
    reseal_with(client, log, archived, &[], (first, last), prev_hash).await
}

/// [`reseal`], with the digests of rows read elsewhere (`more`, sorted: archived files read
/// directly) taken in where their ids fall in the range.
pub(crate) async fn reseal_with(
    client: &Client,
    log: &AuditLog,
    archived: Option<&str>,
    more: &[(i64, RowDigest)],
    (first, last): (i64, i64),
    prev_hash: Option<&[u8]>,
) -> Result<Resealed, Error> {
    let mut digests = row_digests(client, log, archived, first, last).await?;
    let from = more.partition_point(|d| d.0 < first);
    let to = more.partition_point(|d| d.0 <= last);
    digests.extend_from_slice(&more[from..to]);
    digests.sort_unstable();
    Ok(seal_of(&digests, first, last, prev_hash))
}

/// The seal over `digests` (sorted by id, then digest) for the range `first..=last`.
pub fn seal_of(
    digests: &[(i64, RowDigest)],
    first: i64,
    last: i64,
    prev_hash: Option<&[u8]>,
) -> Resealed {
    let mut rows = Vec::with_capacity(digests.len() * 16);
    let mut hash = Sha256::new();
    hash.update(prev_hash.unwrap_or_default());
    hash.update(first.to_be_bytes());
    hash.update(last.to_be_bytes());
    for (id, digest) in digests {
        rows.extend_from_slice(&id.to_be_bytes());
        rows.extend_from_slice(&digest[..8]);
        hash.update(digest);
    }
    Resealed {
        row_count: digests.len() as i64,
        rows,
        hash: hash.finalize().to_vec(),
    }
}

/// The digest of every row of ids `first..=last`, in the order the server sends them.
pub async fn row_digests(
    client: &Client,
    log: &AuditLog,
    archived: Option<&str>,
    first: i64,
    last: i64,
) -> Result<Vec<(i64, RowDigest)>, Error> {
    let erased = erased(client, log, archived, first, last).await?;
    let filter = format!(" WHERE id >= {first} AND id <= {last}");
    let mut source = format!("SELECT {} FROM {}{filter}", columns(), log.table());
    if let Some(t) = archived {
        source.push_str(&format!(" UNION ALL SELECT {} FROM {t}{filter}", columns()));
    }
    digests_of(client, &source, &erased).await
}

/// The digest of every row of `relation` (a table with the log's columns: a partition, or
/// archived rows loaded back), an erased value's recorded digest standing in where the log,
/// or `relation` when it is not part of the log, holds the record it erased.
/// In the archived files' order (`pg_audit::sql::archive::file_order`).
pub async fn relation_digests(
    client: &Client,
    log: &AuditLog,
    relation: &str,
    in_log: bool,
) -> Result<Vec<(i64, RowDigest)>, Error> {
    let archived = (!in_log).then_some(relation);
    let erased = erased(client, log, archived, i64::MIN, i64::MAX).await?;
    let source = format!(
        "SELECT {} FROM {relation} AS l ORDER BY {}",
        columns(),
        pg_audit::sql::archive::file_order("l")
    );
    digests_of(client, &source, &erased).await
}

/// The log's columns, in table order.
fn columns() -> String {
    LOG_COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The digests of the rows of `source`, a query of the log's columns, by binary `COPY`.
async fn digests_of(
    client: &Client,
    source: &str,
    erased: &Erased,
) -> Result<Vec<(i64, RowDigest)>, Error> {
    let stream = client
        .copy_out(&format!("COPY ({source}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(db("cannot read the log's rows"))?;
    pin_mut!(stream);
    // The rows are parsed and digested on a thread of their own while this task receives the
    // next ones: each is a core's work. The server sends a row a message: they cross to the
    // thread by the hundred kilobytes, not one by one.
    const HANDOFF_BYTES: usize = 256 * 1024;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(8);
    let digester = {
        let erased = erased.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = CopyReader::default();
            let mut out = Vec::new();
            for chunk in rx.into_iter().flatten() {
                reader.push(chunk, |fields| {
                    out.push(row_digest(fields, &erased)?);
                    Ok(())
                })?;
            }
            reader.finish()?;
            Ok::<_, Error>(out)
        })
    };
    let mut failed = None;
    let mut pending = Vec::new();
    let mut pending_bytes = 0;
    loop {
        let chunk = stream.next().await;
        let end = match chunk {
            Some(Ok(chunk)) => {
                pending_bytes += chunk.len();
                pending.push(chunk);
                false
            }
            Some(Err(e)) => {
                failed = Some(e);
                true
            }
            None => true,
        };
        if (end || pending_bytes >= HANDOFF_BYTES) && !pending.is_empty() {
            pending_bytes = 0;
            // A digester that stopped has its error, taken below.
            if tx.send(std::mem::take(&mut pending)).is_err() {
                break;
            }
        }
        if end {
            break;
        }
    }
    drop(tx);
    let digested = digester.await;
    if let Some(e) = failed {
        return Err(db("cannot read the log's rows")(e));
    }
    digested.map_err(|e| Error::Mismatch(format!("the rows' digests were not computed: {e}")))?
}

/// The recorded digests of erased values that stand in for the marker: by entry, column and
/// key.
pub(crate) type Erased = HashMap<(i64, String, String), Vec<u8>>;

pub(crate) async fn erased(
    client: &Client,
    log: &AuditLog,
    archived: Option<&str>,
    first: i64,
    last: i64,
) -> Result<Erased, Error> {
    let any: bool = client
        .query_one(&log.erasures_in_sql(), &[&first, &last])
        .await
        .map_err(db("cannot read the redactions"))?
        .get(0);
    if !any {
        return Ok(Erased::new());
    }
    let rows = client
        .query(&log.applied_redactions_sql(archived), &[&first, &last])
        .await
        .map_err(db("cannot read the redactions"))?;
    let mut erased = Erased::new();
    for r in rows {
        erased
            .entry((r.get(0), r.get(1), r.get(2)))
            .or_insert_with(|| r.get(3));
    }
    Ok(erased)
}

/// One field of a row, in the terms the digest reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field<'a> {
    /// NULL.
    Null,
    /// An integer; a timestamp as microseconds since 1970-01-01 UTC.
    Int(i64),
    /// Text; a JSON column as the server prints it.
    Text(&'a str),
}

/// The digest of one row from the binary `COPY` form of its fields, in the log's column order.
fn row_digest(fields: &[Option<&[u8]>], erased: &Erased) -> Result<(i64, RowDigest), Error> {
    let bad = |what: &str| Error::Mismatch(format!("the log's rows came back malformed: {what}"));
    let mut typed = Vec::with_capacity(fields.len());
    for (column, field) in LOG_COLUMNS.iter().zip(fields) {
        typed.push(match (field, column.sql_type) {
            (None, _) => Field::Null,
            (Some(v), "bigint") => Field::Int(int8(Some(v)).ok_or_else(|| bad(column.name))?),
            (Some(v), "timestamptz") => Field::Int(
                int8(Some(v)).ok_or_else(|| bad(column.name))? + PG_EPOCH_UNIX_SECS * 1_000_000,
            ),
            // jsonb's binary form is a version byte and its text.
            (Some(v), "jsonb") => Field::Text(
                std::str::from_utf8(v.get(1..).unwrap_or(&[])).map_err(|_| bad(column.name))?,
            ),
            (Some(v), _) => Field::Text(std::str::from_utf8(v).map_err(|_| bad(column.name))?),
        });
    }
    row_digest_of(&typed, erased)
}

/// The digest of one row, its fields in the log's column order: the form docs/digest.md
/// writes out.
pub(crate) fn row_digest_of(
    fields: &[Field<'_>],
    erased: &Erased,
) -> Result<(i64, RowDigest), Error> {
    let bad = |what: &str| Error::Mismatch(format!("a log row is malformed: {what}"));
    let Some(Field::Int(id)) = fields.first().copied() else {
        return Err(bad("id"));
    };
    let mut scalars: Vec<(&str, String)> = Vec::new();
    let mut json: Vec<(&str, &str)> = Vec::new();
    for (column, field) in LOG_COLUMNS.iter().zip(fields) {
        match (column.sql_type, *field) {
            (_, Field::Null) => {}
            ("bigint" | "timestamptz", Field::Int(v)) => scalars.push((column.name, v.to_string())),
            ("text", Field::Text(t)) => scalars.push((column.name, json_string(t))),
            ("json" | "jsonb", Field::Text(t)) => json.push((column.name, t)),
            _ => return Err(bad(column.name)),
        }
    }
    // The scalars as jsonb prints an object: keys by length, then bytes.
    scalars.sort_by(|a, b| (a.0.len(), a.0).cmp(&(b.0.len(), b.0)));
    let mut text = String::from("{");
    for (i, (name, value)) in scalars.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push('"');
        text.push_str(name);
        text.push_str("\": ");
        text.push_str(value);
    }
    text.push('}');
    let mut row = Sha256::new();
    row.update(text.as_bytes());
    for (name, value) in json {
        row.update(json_digest(id, name, value, erased).ok_or_else(|| bad(name))?);
    }
    Ok((id, row.finalize().into()))
}

/// The digest of JSON column `name` holding `text` (as the server prints it): its whole text
/// when it is not an object, else one digest per top-level key in order, an erased value's the
/// recorded one. `None` when the text is not JSON.
fn json_digest(id: i64, name: &str, text: &str, erased: &Erased) -> Option<[u8; 32]> {
    let mut column = Sha256::new();
    column.update(name.as_bytes());
    let Some(pairs) = object_pairs(text) else {
        column.update([0u8]);
        column.update(text.as_bytes());
        return Some(column.finalize().into());
    };
    column.update([2u8]);
    let marker = format!("\"{REDACTED}\"");
    for pair in pairs {
        let (key, value) = pair?;
        let recorded = (value == marker)
            .then(|| erased.get(&(id, name.to_owned(), key.clone())))
            .flatten();
        match recorded {
            Some(digest) => column.update(digest),
            None => column.update(value_digest(&key, value)),
        }
    }
    Some(column.finalize().into())
}

/// The digest of one value: its key and its text.
fn value_digest(key: &str, value: &str) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update(key.as_bytes());
    d.update([0u8]);
    d.update(value.as_bytes());
    d.finalize().into()
}

/// A JSON string as PostgreSQL's `escape_json` writes it.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn int8(field: Option<&[u8]>) -> Option<i64> {
    Some(i64::from_be_bytes(field?.try_into().ok()?))
}

/// The top-level pairs of `text` when it is a JSON object (`None` when it is not one): each
/// key unescaped and its value's text as written, whitespace around it left out, as
/// `json_each` and `jsonb_each` give them. An item is `None` where the text is not JSON.
fn object_pairs(text: &str) -> Option<impl Iterator<Item = Option<(String, &str)>>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut done = b.get(i) == Some(&b'}');
    Some(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let pair = (|| {
            let key_end = token_end(b, i)?;
            let key: String = serde_json::from_str(&text[i..key_end]).ok()?;
            let colon = skip_ws(b, key_end);
            (b.get(colon) == Some(&b':')).then_some(())?;
            let start = skip_ws(b, colon + 1);
            let end = token_end(b, start)?;
            let value = &text[start..end];
            let next = skip_ws(b, end);
            match b.get(next) {
                Some(b',') => i = skip_ws(b, next + 1),
                Some(b'}') => done = true,
                _ => return None,
            }
            Some((key, value))
        })();
        if pair.is_none() {
            done = true;
        }
        Some(pair)
    }))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the JSON value starting at `i`: a string, an object or array (brackets matched,
/// strings skipped), or a number or literal.
fn token_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The end (past the closing quote) of the string starting at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Reads PostgreSQL's binary `COPY` format from chunks: the header, then each row's fields.
#[derive(Default)]
struct CopyReader {
    buffer: Vec<u8>,
    header_read: bool,
    ended: bool,
}

impl CopyReader {
    /// Takes `chunk` and hands each complete row's fields to `row`.
    fn push(
        &mut self,
        chunk: Bytes,
        mut row: impl FnMut(&[Option<&[u8]>]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.buffer.extend_from_slice(&chunk);
        let malformed = || Error::Mismatch("the server's COPY stream is malformed".into());
        let mut at = 0;
        if !self.header_read {
            const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
            if self.buffer.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buffer[..SIGNATURE.len()] != SIGNATURE {
                return Err(malformed());
            }
            let extension = u32::from_be_bytes(self.buffer[15..19].try_into().expect("4 bytes"));
            at = 19 + extension as usize;
            if self.buffer.len() < at {
                return Ok(());
            }
            self.header_read = true;
        }
        let mut fields: Vec<Option<&[u8]>> = Vec::with_capacity(LOG_COLUMNS.len());
        while let Some(count) = self.buffer.get(at..at + 2) {
            let count = i16::from_be_bytes(count.try_into().expect("2 bytes"));
            if count == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            // Find the row's end before handing it out.
            let mut end = at + 2;
            let mut complete = true;
            for _ in 0..count {
                let Some(len) = self.buffer.get(end..end + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
                end += 4 + usize::try_from(len).unwrap_or(0);
                if end > self.buffer.len() {
                    complete = false;
                    break;
                }
            }
            if !complete {
                break;
            }
            fields.clear();
            let mut p = at + 2;
            for _ in 0..count {
                let len = i32::from_be_bytes(self.buffer[p..p + 4].try_into().expect("4 bytes"));
                p += 4;
                if len < 0 {
                    fields.push(None);
                } else {
                    let len = len as usize;
                    fields.push(Some(&self.buffer[p..p + len]));
                    p += len;
                }
            }
            if fields.len() != LOG_COLUMNS.len() {
                return Err(malformed());
            }
            row(&fields)?;
            at = end;
        }
        self.buffer.drain(..at);
        Ok(())
    }

    fn finish(self) -> Result<(), Error> {
        if self.ended && self.buffer.is_empty() {
            Ok(())
        } else {
            Err(Error::Mismatch(
                "the server's COPY stream ended early".into(),
            ))
        }
    }
}

/// The digests of the rows of `batch`, an archived file's (the log's columns by name, as the
/// archive writes them), appended to `out`.
pub(crate) fn batch_digests(
    batch: &arrow_array::RecordBatch,
    erased: &Erased,
    out: &mut Vec<(i64, RowDigest)>,
) -> Result<(), Error> {
    each_row(batch, |fields| {
        out.push(row_digest_of(fields, erased)?);
        Ok(())
    })
}

/// Each row of `batch` (the log's columns by name, as the archive writes them) as its
/// fields, in the log's column order, to `each`.
pub(crate) fn each_row(
    batch: &arrow_array::RecordBatch,
    mut each: impl FnMut(&[Field<'_>]) -> Result<(), Error>,
) -> Result<(), Error> {
    use crate::file::{Column, log_columns};
    let columns = log_columns(batch)?;
    let mut fields = Vec::with_capacity(columns.len());
    for row in 0..batch.num_rows() {
        use arrow_array::Array as _;
        fields.clear();
        for column in &columns {
            fields.push(match column {
                Column::Int(c) => c.get(row).map_or(Field::Null, Field::Int),
                Column::Text(c) if c.is_null(row) => Field::Null,
                Column::Text(c) => Field::Text(c.value(row)),
            });
        }
        each(&fields)?;
    }
    Ok(())
}
