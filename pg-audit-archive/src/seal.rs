//! The seals as stored, and as exported: one JSON object per line, the form
//! `pg-audit seal --export` writes and `pg-audit verify --seals` compares with the database's.

use futures_util::StreamExt as _;
use pg_audit::AuditLog;
use pg_audit::sql::seal::SEAL_ROW_BYTES;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::{Error, db};

/// A seal: a hash over the rows of ids `first_id..=last_id`, chained to the seal before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// Its id; seals are made in id order.
    pub seal_id: i64,
    /// The first entry id it covers.
    pub first_id: i64,
    /// The last entry id it covers.
    pub last_id: i64,
    /// The rows it covers.
    pub row_count: i64,
    /// Each row's id (8 bytes, big-endian) and the first 8 bytes of its digest, in id order:
    /// what tells which row changed.
    pub rows: Vec<u8>,
    /// The hash of the seal before (none for the first).
    pub prev_hash: Option<Vec<u8>>,
    /// SHA-256 over `prev_hash`, the range and every row's digest in id order.
    pub hash: Vec<u8>,
}

impl Seal {
    /// The seal as one line of an export.
    pub fn to_json(&self) -> Value {
        json!({
            "seal_id": self.seal_id,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "row_count": self.row_count,
            "rows": hex::encode(&self.rows),
            "prev_hash": self.prev_hash.as_deref().map(hex::encode),
            "hash": hex::encode(&self.hash),
        })
    }

    /// A seal from one line of an export, `None` when it is not one.
    pub fn from_json(v: &Value) -> Option<Seal> {
        let bytes = |k: &str| hex::decode(v.get(k)?.as_str()?).ok();
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

    /// The (id, digest prefix) pairs of `rows` as a seal holds them.
    pub(crate) fn entries(rows: &[u8]) -> Vec<(i64, [u8; 8])> {
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

/// The log's seals, in order.
pub async fn seals(client: &Client, log: &AuditLog) -> Result<Vec<Seal>, Error> {
    Ok(client
        .query(&log.list_seals_sql(), &[])
        .await
        .map_err(db("cannot read the seals"))?
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

/// The seals of an export (`text`, one per line, blank lines skipped). An error names the
/// first line that is not a seal (numbered from 1), or says the export holds none; its text
/// follows the file's name (`seals.jsonl line 3: ...`, `seals.jsonl holds no seals: ...`).
pub fn read_export(text: &str) -> Result<Vec<Seal>, Error> {
    let mut seals = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let seal = serde_json::from_str::<Value>(line)
            .ok()
            .as_ref()
            .and_then(Seal::from_json)
            .ok_or_else(|| {
                Error::Refused(format!(
                    "line {}: not a seal as `pg-audit seal --export` writes it",
                    n + 1
                ))
            })?;
        seals.push(seal);
    }
    if seals.is_empty() {
        return Err(Error::Refused(
            "holds no seals: export them with `pg-audit seal --export FILE`".into(),
        ));
    }
    Ok(seals)
}

/// An export of `seals`: one line each.
pub fn write_export(seals: &[Seal]) -> String {
    seals.iter().map(|s| format!("{}\n", s.to_json())).collect()
}

/// A seal [`seal`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// Its id.
    pub seal_id: i64,
    /// The first entry id it covers.
    pub first_id: i64,
    /// The last entry id it covers.
    pub last_id: i64,
    /// The rows it covers.
    pub row_count: i64,
}

/// How a sealing run commits its seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// On disk when [`seal`] returns: for a run whose seals are then exported or reported.
    Synchronous,
    /// Without waiting for the write-ahead log to reach the disk (`synchronous_commit = off`),
    /// for a sealer that runs often: a crash can lose the last second's seals, which the next
    /// run makes again from the log, and the run's flushes never queue with the writers'.
    Asynchronous,
}

/// How [`seal`] seals.
#[derive(Debug, Clone, Copy)]
pub struct Sealing<'a> {
    /// The most rows one seal covers (`pg_audit::sql::seal::DEFAULT_SEAL_ROWS` by default).
    pub max_rows: u32,
    /// How the seals are committed.
    pub commit: Commit,
    /// More sessions (from [`crate::connect`]) that read and digest the rows of the seals, one
    /// seal each at a time, while the sealing session records them: `pg-audit seal --jobs N`
    /// opens N - 1. None: the sealing session reads them itself.
    pub helpers: &'a [Client],
}

/// Seals the log's final rows, at most `sealing.max_rows` per seal, as `<log>_seal()` does
/// (the same horizon, lock and seals) but with the digests computed by this program
/// ([`crate::digest`]), several times faster. Nothing when another sealer is running.
/// `progress` hears each seal made.
pub async fn seal(
    client: &Client,
    log: &AuditLog,
    sealing: &Sealing<'_>,
    progress: &dyn Fn(&Made),
) -> Result<Vec<Made>, Error> {
    let Sealing {
        max_rows,
        commit,
        helpers,
    } = *sealing;
    if max_rows == 0 {
        return Err(Error::Refused("--max-rows must be 1 or more".into()));
    }
    // READ COMMITTED whatever the session's default: the horizon reads rows committed after
    // the transaction began (and refuses any other level).
    let begin = match commit {
        Commit::Synchronous => "BEGIN ISOLATION LEVEL READ COMMITTED",
        Commit::Asynchronous => {
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = off"
        }
    };
    client
        .batch_execute(begin)
        .await
        .map_err(db("cannot seal"))?;
    let made = seal_in(client, helpers, log, max_rows, progress).await;
    let end = if made.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await.map_err(db("cannot seal"));
    let made = made?;
    ended?;
    Ok(made)
}

async fn seal_in(
    client: &Client,
    helpers: &[Client],
    log: &AuditLog,
    max_rows: u32,
    progress: &dyn Fn(&Made),
) -> Result<Vec<Made>, Error> {
    let sql = log.sealing_sql();
    let Some(plan) = client
        .query_opt(&sql.horizon, &[])
        .await
        .map_err(db("cannot seal"))?
    else {
        return Ok(Vec::new()); // another sealer holds the lock
    };
    let (mut lo, upto, mut prev): (i64, Option<i64>, Option<Vec<u8>>) =
        (plan.get(0), plan.get(1), plan.get(2));
    let Some(upto) = upto else {
        return Ok(Vec::new());
    };
    let mut ranges = Vec::new();
    while lo <= upto {
        // Ids are unique: a range no wider than `max_rows` holds no more rows, and needs no
        // query for its end (what a sealer running often seals each time).
        let hi = if upto - lo < i64::from(max_rows) {
            upto
        } else {
            client
                .query_opt(&sql.boundary, &[&lo, &upto, &(i64::from(max_rows) - 1)])
                .await
                .map_err(db("cannot seal"))?
                .map_or(upto, |r| r.get(0))
        };
        ranges.push((lo, hi));
        lo = hi + 1;
    }
    // The ranges' rows are read and digested on the helpers, as many at once as there are
    // helpers (a window of consecutive ranges: never two on one), or else one at a time on
    // this session; the seals are chained and recorded here, in order.
    let readers: Vec<&Client> = if helpers.is_empty() {
        vec![client]
    } else {
        helpers.iter().collect()
    };
    let mut digested = futures_util::stream::iter(ranges.iter().enumerate())
        .map(|(k, &(lo, hi))| {
            let reader = readers[k % readers.len()];
            async move {
                let mut digests = crate::digest::row_digests(reader, log, None, lo, hi).await?;
                digests.sort_unstable();
                Ok::<_, Error>(digests)
            }
        })
        .buffered(readers.len());
    let mut made = Vec::new();
    for &(lo, hi) in &ranges {
        let digests = digested.next().await.expect("one digest list per range")?;
        let sealed = crate::digest::seal_of(&digests, lo, hi, prev.as_deref());
        let row = client
            .query_one(
                &sql.insert,
                &[
                    &lo,
                    &hi,
                    &sealed.row_count,
                    &sealed.rows,
                    &prev,
                    &sealed.hash,
                ],
            )
            .await
            .map_err(db("cannot record a seal"))?;
        let one = Made {
            seal_id: row.get(0),
            first_id: lo,
            last_id: hi,
            row_count: sealed.row_count,
        };
        progress(&one);
        made.push(one);
        prev = Some(sealed.hash);
    }
    Ok(made)
}
