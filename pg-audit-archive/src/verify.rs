//! `verify`: whether the log, its archive and its seals are as sealed, and what differs.
//!
//! Every digest is recomputed by queries sent from here, calling built-in functions only, in a
//! session with pg-audit's settings pinned ([`crate::connect`] opens one): never by a function
//! of the log's, which its owner — whom seals guard against — could replace.

use futures_util::StreamExt as _;
use pg_audit::AuditLog;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::digest::RowDigest;
use crate::seal::{Seal, seals};
use crate::{Error, archived_files, db, load_archived};

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What was altered, one sentence each; empty when nothing was.
    pub problems: Vec<String>,
    /// The seals verified.
    pub seals: usize,
    /// The rows they cover.
    pub sealed_rows: i64,
    /// Rows above the last seal: not yet sealed.
    pub unsealed_rows: i64,
    /// Rows below the first seal (written or archived before sealing began), which no seal
    /// covers.
    pub rows_before_first_seal: i64,
    /// The archived files read back.
    pub archived_files: usize,
    /// The redactions recorded.
    pub redactions: i64,
    /// The values they erased.
    pub redacted_values: i64,
    /// The seals taken as verified before (up to [`Options::since`]): their chain checked,
    /// their rows not recomputed.
    pub chained_only: usize,
    /// The last seal, when nothing was altered: what a later `since` verification starts from.
    pub checkpoint: Option<Checkpoint>,
    /// What `partitions prune` removed, as recorded.
    pub prunes: Vec<Prune>,
    /// Sealed rows gone because a recorded prune removed them: not reported as deleted, the
    /// rest of their seals compared by the digest prefixes the seals hold (a seal's hash needs
    /// every one of its rows).
    pub pruned_rows: i64,
}

/// A removal `partitions prune` (`<log>_prune_partitions`) recorded: what, when, by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    /// Its id, in order of pruning.
    pub prune_id: i64,
    /// The partition, or the DEFAULT partition for its old rows.
    pub relation: String,
    /// `detached`, `dropped` or `deleted old rows`.
    pub action: String,
    /// The partition's range (no start for the DEFAULT partition's rows), as text.
    pub range: (Option<String>, String),
    /// The rows removed.
    pub row_count: i64,
    /// Their ids, as runs of consecutive ids (ascending, inclusive).
    pub runs: Vec<(i64, i64)>,
    /// When, as text.
    pub pruned_at: String,
    /// The session user who pruned.
    pub pruned_by: String,
}

impl Prune {
    /// Whether the prune removed the row of id `id`.
    pub fn holds(&self, id: i64) -> bool {
        let i = self.runs.partition_point(|r| r.1 < id);
        self.runs.get(i).is_some_and(|r| r.0 <= id)
    }

    /// As `verify` prints it: `audit.auditlog_p20250101 (ids 1..=5000, 5000 row(s)) dropped at
    /// ... by ...`.
    pub fn describe(&self) -> String {
        let ids = match (self.runs.first(), self.runs.last()) {
            (Some(first), Some(last)) if self.runs.len() == 1 => {
                format!("ids {}..={}", first.0, last.1)
            }
            (Some(first), Some(last)) => {
                format!("ids {}..={} in {} runs", first.0, last.1, self.runs.len())
            }
            _ => "no ids".to_owned(),
        };
        format!(
            "{} ({ids}, {} row(s)) {} at {} by {}",
            self.relation, self.row_count, self.action, self.pruned_at, self.pruned_by
        )
    }

    /// As `verify --json` lists it.
    pub fn to_json(&self) -> Value {
        json!({
            "prune_id": self.prune_id,
            "relation": self.relation,
            "action": self.action,
            "range_start": self.range.0,
            "range_end": self.range.1,
            "rows": self.row_count,
            "id_runs": self.runs.iter().map(|r| [r.0, r.1]).collect::<Vec<_>>(),
            "pruned_at": self.pruned_at,
            "pruned_by": self.pruned_by,
        })
    }
}

/// The prunes recorded, in order; none where the log predates the record.
pub async fn prunes(client: &Client, log: &AuditLog) -> Result<Vec<Prune>, Error> {
    let rows = match client.query(&log.prunes_sql(), &[]).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(db("cannot read the prune record")(e)),
    };
    Ok(rows
        .iter()
        .map(|r| {
            let starts: Vec<i64> = r.get("run_starts");
            let ends: Vec<i64> = r.get("run_ends");
            Prune {
                prune_id: r.get("prune_id"),
                relation: r.get("relation"),
                action: r.get("action"),
                range: (r.get("range_start"), r.get("range_end")),
                row_count: r.get("row_count"),
                runs: starts.into_iter().zip(ends).collect(),
                pruned_at: r.get("pruned_at"),
                pruned_by: r.get("pruned_by"),
            }
        })
        .collect())
}

/// What [`verify`] checks besides the log and its archive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// Seals kept outside the database (`pg-audit seal --export`), compared with the
    /// database's.
    pub exported: Option<&'a [Seal]>,
    /// The last seal an earlier verification found intact: seals up to it are checked by their
    /// chain only (and it must be unchanged), the rows of the later ones recomputed, archived
    /// files read only when a later seal covers them. A full verification (`None`) remains the
    /// one that rereads everything.
    pub since: Option<&'a Checkpoint>,
    /// More sessions (from [`crate::connect`]) to recompute seals on, one seal each at a time,
    /// beside the one `verify` is given: `pg-audit verify --jobs N` opens N - 1.
    pub helpers: &'a [Client],
}

/// The last seal a verification found intact, kept by whoever verifies, outside the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The seal.
    pub seal_id: i64,
    /// Its hash.
    pub hash: Vec<u8>,
}

impl Checkpoint {
    /// As a file holds it: `{"seal_id": N, "hash": "<hex>"}`.
    pub fn to_json(&self) -> Value {
        json!({"seal_id": self.seal_id, "hash": hex::encode(&self.hash)})
    }

    /// A checkpoint from its JSON, `None` when it is not one.
    pub fn from_json(v: &Value) -> Option<Checkpoint> {
        Some(Checkpoint {
            seal_id: v.get("seal_id")?.as_i64()?,
            hash: hex::decode(v.get("hash")?.as_str()?).ok()?,
        })
    }
}

impl Report {
    /// Whether nothing was altered.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as `pg-audit verify --json` prints it: `ok`, the counts, `problems`.
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok(),
            "seals": self.seals,
            "sealed_rows": self.sealed_rows,
            "unsealed_rows": self.unsealed_rows,
            "rows_before_first_seal": self.rows_before_first_seal,
            "archived_files": self.archived_files,
            "redactions": self.redactions,
            "redacted_values": self.redacted_values,
            "chained_only": self.chained_only,
            "pruned_rows": self.pruned_rows,
            "prunes": self.prunes.iter().map(Prune::to_json).collect::<Vec<_>>(),
            "problems": self.problems,
        })
    }

    /// One line: `ok` or `ALTERED`, and what was verified.
    pub fn summary(&self) -> String {
        let not_covered = if self.rows_before_first_seal > 0 && self.seals > 0 {
            format!(
                "; {} row(s) older than the first seal, not covered",
                self.rows_before_first_seal
            )
        } else {
            String::new()
        };
        let chained = if self.chained_only > 0 {
            format!(
                " ({} verified before, their chain checked)",
                self.chained_only
            )
        } else {
            String::new()
        };
        let pruned = if self.pruned_rows > 0 {
            format!(
                "; {} sealed row(s) removed by {} recorded prune(s)",
                self.pruned_rows,
                self.prunes.len()
            )
        } else {
            String::new()
        };
        format!(
            "{}: {} seal(s){chained} over {} row(s) ({} archived file(s)); {} value(s) erased by {} recorded redaction(s); {} row(s) not yet sealed{not_covered}{pruned}",
            if self.ok() { "ok" } else { "ALTERED" },
            self.seals,
            self.sealed_rows,
            self.archived_files,
            self.redacted_values,
            self.redactions,
            self.unsealed_rows,
        )
    }
}

/// Where a long [`verify`] is: `step` of `steps` of `phase` (reading the archive, verifying
/// seals), on `item`.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// What is being done: `"reading the archive"` or `"verifying seals"`.
    pub phase: &'static str,
    /// The step, from 0.
    pub step: usize,
    /// Steps in the phase.
    pub steps: usize,
    /// What the step is on (a partition, a seal).
    pub item: &'a str,
}

/// The temporary table the archived rows are loaded into.
const ARCHIVED: &str = "pg_temp.pg_audit_verify";

/// Verifies the log `log`: every seal recomputed over the live and the archived rows and
/// chained to the one before, the archived files against their catalogue, no row outside the
/// seals where none belongs, every recorded redaction one `redact` made and its values still
/// erased, and, with `exported` (seals kept outside the database), the seals against that
/// copy. `progress` hears each step.
pub async fn verify(
    client: &Client,
    log: &AuditLog,
    options: &Options<'_>,
    progress: &dyn Fn(Step<'_>),
) -> Result<Report, Error> {
    let mut problems = unexpected_relations(client, log).await?;
    let seals = seals(client, log).await?;
    let since = options.since.map_or(i64::MIN, |c| c.seal_id);
    if let Some(c) = options.since {
        match seals.iter().find(|s| s.seal_id == c.seal_id) {
            None => problems.push(format!(
                "seal {}, found intact by the verification this one continues, is missing from the database",
                c.seal_id
            )),
            Some(s) if s.hash != c.hash => problems.push(format!(
                "seal {} differs from the one the verification this one continues found intact: it was rewritten since",
                c.seal_id
            )),
            Some(_) => {}
        }
    }
    // Archived files are read when a seal to recompute may cover their rows.
    let recheck_from = seals
        .iter()
        .find(|s| s.seal_id > since)
        .map_or(i64::MAX, |s| s.first_id);
    let mut files = archived_files(client, log).await?;
    let listed = files.len();
    if options.since.is_some() {
        files.retain(|f| f.max_id.is_none_or(|max| max >= recheck_from));
    }
    let steps = files.len();
    let step = std::cell::Cell::new(0);
    let heard = |f: &crate::ArchivedFile| {
        let item = &f.partition_name;
        let phase = "reading the archive";
        progress(Step {
            phase,
            step: step.replace(step.get() + 1),
            steps,
            item,
        });
    };
    // Archived rows are read from the files here, unless a recorded erasure concerns one: then
    // they are loaded back into the server, whose checks of erasures read them.
    let (archived, in_files) = if files.is_empty() {
        (None, Vec::new())
    } else {
        let overlaps = client
            .query_one(&log.archive_overlaps_sql(), &[])
            .await
            .map_err(db("cannot read the archive catalogue"))?;
        if overlaps.get::<_, bool>(0) {
            let (_, mismatches) = load_archived(client, log, ARCHIVED, &heard).await?;
            problems.extend(mismatches);
            (Some(ARCHIVED), Vec::new())
        } else {
            let (digests, mismatches) = crate::read::digest_archived(&files, &heard).await?;
            problems.extend(mismatches);
            let live: Vec<i64> = overlaps.get(1);
            let both = live
                .iter()
                .find(|id| digests.binary_search_by_key(*id, |d| d.0).is_ok());
            if let Some(id) = both {
                problems.push(format!(
                    "entry {id} is both in the log and in an archived file: a row was inserted with an archived id"
                ));
            }
            (None, digests)
        }
    };
    let prunes = prunes(client, log).await?;
    // Archived rows loaded back are in this session's temporary table: then only this session
    // reads them.
    let clients: Vec<&Client> = std::iter::once(client)
        .chain(options.helpers.iter().filter(|_| archived.is_none()))
        .collect();
    let (sealed_rows, pruned_rows) = reseal_all(
        &clients,
        log,
        (&seals, since),
        (archived, &in_files),
        (&prunes, &mut problems),
        progress,
    )
    .await?;
    if let Some(exported) = options.exported {
        problems.extend(against_export(&seals, exported));
    }
    let coverage = coverage(client, log, &seals, (archived, &in_files), &mut problems).await?;
    redactions(client, log, archived, &mut problems).await?;
    problems.extend(coverage.impossible);
    let counts = client
        .query_one(&log.redaction_counts_sql(), &[])
        .await
        .map_err(db("cannot count the redactions"))?;
    let checkpoint = seals
        .last()
        .filter(|_| problems.is_empty())
        .map(|s| Checkpoint {
            seal_id: s.seal_id,
            hash: s.hash.clone(),
        });
    Ok(Report {
        problems,
        seals: seals.len(),
        sealed_rows,
        unsealed_rows: coverage.unsealed,
        rows_before_first_seal: coverage.before_first,
        archived_files: listed,
        redactions: counts.get(0),
        redacted_values: counts.get(1),
        chained_only: seals.iter().filter(|s| s.seal_id <= since).count(),
        checkpoint,
        prunes,
        pruned_rows,
    })
}

/// The relations verify reads that are not what pg-audit made.
async fn unexpected_relations(client: &Client, log: &AuditLog) -> Result<Vec<String>, Error> {
    let rows = client
        .query(&log.unexpected_relations_sql(), &[])
        .await
        .map_err(db("cannot read the log's relations"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (relation, kind): (String, String) = (r.get(0), r.get(1));
            format!(
                "{relation} is not the table pg-audit made (relkind {kind}, or a rule on it): what verify reads from it may not be what readers see"
            )
        })
        .collect())
}

/// Recomputes every seal and checks the chain; the rows the seals cover, and those of them a
/// recorded prune removed.
async fn reseal_all(
    clients: &[&Client],
    log: &AuditLog,
    (seals, since): (&[Seal], i64),
    (archived, in_files): (Option<&str>, &[(i64, RowDigest)]),
    (prunes, problems): (&[Prune], &mut Vec<String>),
    progress: &dyn Fn(Step<'_>),
) -> Result<(i64, i64), Error> {
    let pruned = |id: i64| prunes.iter().any(|p| p.holds(id));
    // Each seal's rows are recomputed on one of the connections, as many at once as there
    // are connections (a window of consecutive seals: never two on one), and taken in order.
    let mut recomputed = futures_util::stream::iter(seals.iter().enumerate())
        .map(|(k, seal)| async move {
            if seal.seal_id <= since {
                return Ok(None);
            }
            crate::digest::reseal_with(
                clients[k % clients.len()],
                log,
                archived,
                in_files,
                (seal.first_id, seal.last_id),
                seal.prev_hash.as_deref(),
            )
            .await
            .map(Some)
        })
        .buffered(clients.len());
    let mut previous: Option<&Seal> = None;
    let mut rows = 0i64;
    let mut pruned_rows = 0i64;
    for (step, seal) in seals.iter().enumerate() {
        let now = recomputed
            .next()
            .await
            .expect("one recomputation per seal")?;
        progress(Step {
            phase: "verifying seals",
            step,
            steps: seals.len(),
            item: &format!("seal {}", seal.seal_id),
        });
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
        let Some(now) = now else {
            // Verified before: its chain is checked above, its rows are not read again.
            rows += seal.row_count;
            previous = Some(seal);
            continue;
        };
        let (count, now_rows, now_hash) = (now.row_count, now.rows, now.hash);
        rows += count;
        if now_rows != seal.rows {
            match compare(seal, &now_rows, &pruned) {
                Ok(gone) => {
                    rows += gone;
                    pruned_rows += gone;
                }
                Err(problem) => problems.push(problem),
            }
        } else if now_hash != seal.hash || count != seal.row_count {
            problems.push(format!(
                "seal {} (ids {}..={}) was altered: its hash no longer matches the rows it covers",
                seal.seal_id, seal.first_id, seal.last_id
            ));
        }
        previous = Some(seal);
    }
    Ok((rows, pruned_rows))
}

/// The database's seals against an exported copy.
fn against_export(seals: &[Seal], exported: &[Seal]) -> Vec<String> {
    exported
        .iter()
        .filter_map(|copy| match seals.iter().find(|s| s.seal_id == copy.seal_id) {
            None => Some(format!(
                "seal {} of the exported copy is missing from the database",
                copy.seal_id
            )),
            Some(s) if s != copy => Some(format!(
                "seal {} in the database differs from the exported copy: one of them was altered",
                copy.seal_id
            )),
            Some(_) => None,
        })
        .collect()
}

/// The rows below and above the seals.
struct Coverage {
    before_first: i64,
    unsealed: i64,
    /// The problem of ids below 1, reported after the redactions'.
    impossible: Option<String>,
}

/// Rows no seal covers: below the first seal (archived or written before sealing began; an
/// id below 1 the log never hands out), and above the last (not yet sealed). Below the first
/// seal only archived rows belong: a live one there, or an id both live and archived, was put
/// in by hand.
async fn coverage(
    client: &Client,
    log: &AuditLog,
    seals: &[Seal],
    (archived, in_files): (Option<&str>, &[(i64, RowDigest)]),
    problems: &mut Vec<String>,
) -> Result<Coverage, Error> {
    let first = seals.first().map_or(i64::MAX, |s| s.first_id);
    let last = seals.last().map_or(0, |s| s.last_id);
    let row = client
        .query_one(&log.seal_coverage_sql(archived), &[&first, &last])
        .await
        .map_err(db("cannot count the rows outside the seals"))?;
    // The rows read from the archived files count as the server counts the live ones.
    let count = |keep: &dyn Fn(i64) -> bool| in_files.iter().filter(|d| keep(d.0)).count() as i64;
    let impossible: i64 = row.get::<_, i64>("impossible") + count(&|id| id < 1);
    let first_impossible: Option<i64> = row
        .get::<_, Option<i64>>("first_impossible")
        .into_iter()
        .chain(in_files.first().map(|d| d.0).filter(|id| *id < 1))
        .min();
    let live_below: Option<i64> = row.get("live_below_first");
    let both: Option<i64> = row.get("live_and_archived");
    if let (Some(id), false) = (live_below, seals.is_empty()) {
        problems.push(format!(
            "entry {id} is in the log below the first seal (ids from {first}), where only rows archived before sealing began belong: inserted by hand"
        ));
    }
    if let Some(id) = both {
        problems.push(format!(
            "entry {id} is both in the log and in an archived file: a row was inserted with an archived id"
        ));
    }
    Ok(Coverage {
        before_first: row.get::<_, i64>("before_first") + count(&|id| id < first),
        unsealed: row.get::<_, i64>("unsealed") + count(&|id| id > last),
        impossible: first_impossible.map(|id| {
            format!(
                "entry {id} has an id the log never hands out ({impossible} such entries): inserted by hand"
            )
        }),
    })
}

/// Recorded redactions no `redact` made, and erased values that are back.
async fn redactions(
    client: &Client,
    log: &AuditLog,
    archived: Option<&str>,
    problems: &mut Vec<String>,
) -> Result<(), Error> {
    let unjustified = client
        .query(&log.unjustified_redactions_sql(archived), &[])
        .await
        .map_err(db("cannot check the recorded redactions"))?;
    for r in unjustified {
        let (redaction, entry, column, key): (i64, i64, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        problems.push(format!(
            "redaction {redaction} records an erasure of {column} {key:?} of entry {entry} that redact never makes (a key, another record's entry, or a column it did not name): recorded by hand"
        ));
    }
    let unerased = client
        .query(&log.unerased_sql(archived), &[])
        .await
        .map_err(db("cannot check the erased values"))?;
    for r in unerased {
        let (entry, column, key, redaction): (i64, String, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        problems.push(format!(
            "entry {entry}: the value of {column} {key:?} that redaction {redaction} erased is present again"
        ));
    }
    Ok(())
}

/// A seal's rows against the rows now: `Ok` with how many are gone because a recorded prune
/// removed them (`pruned`) when every other row is as sealed, else what differs first.
fn compare(seal: &Seal, now: &[u8], pruned: &dyn Fn(i64) -> bool) -> Result<i64, String> {
    let then = Seal::entries(&seal.rows);
    let now = Seal::entries(now);
    let mut gone = 0;
    if let Some(pair) = now.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "entry {} appears twice in the range of seal {}: a row was inserted with an existing id",
            pair[0].0, seal.seal_id
        ));
    }
    let inserted = |id: i64| {
        format!(
            "entry {id} was inserted after seal {} (which covers ids {}..={})",
            seal.seal_id, seal.first_id, seal.last_id
        )
    };
    let (mut i, mut j) = (0, 0);
    while i < then.len() || j < now.len() {
        match (then.get(i), now.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    return Err(format!(
                        "entry {} was changed after seal {} (not by a recorded redaction)",
                        a.0, seal.seal_id
                    ));
                }
                i += 1;
                j += 1;
            }
            (None, Some(b)) => return Err(inserted(b.0)),
            (Some(a), Some(b)) if b.0 < a.0 => return Err(inserted(b.0)),
            (Some(a), _) => {
                if !pruned(a.0) {
                    return Err(format!(
                        "entry {} was deleted after seal {}",
                        a.0, seal.seal_id
                    ));
                }
                gone += 1;
                i += 1;
            }
            (None, None) => unreachable!("the loop runs while either has rows"),
        }
    }
    if gone > 0 && i64::try_from(then.len()) == Ok(seal.row_count) {
        Ok(gone)
    } else {
        Err(format!("seal {} differs from its rows", seal.seal_id))
    }
}
