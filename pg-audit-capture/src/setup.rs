//! Before the stream: the server's and the role's fitness, the slot (created on first run and
//! recognised after), the progress table; and the operator's commands: status and drop.

use std::time::SystemTime;

use pg_audit::ident::quote_literal;

use crate::{Error, Worker, connect, db};

/// What the worker starts from.
pub(crate) struct Start {
    pub(crate) source: tokio_postgres::Client,
    pub(crate) target: tokio_postgres::Client,
    /// The end of the last transaction written (`0/0` before the first).
    pub(crate) progress: u64,
}

/// Checks the server and the role, creates the progress table where the log lives, and the
/// slot on first run; refuses a slot the worker did not create.
pub(crate) async fn prepare(worker: &Worker) -> Result<Start, Error> {
    let source = connect(&worker.source, "connecting to the source database").await?;
    let target = connect(&worker.target, "connecting to the log's database").await?;
    let row = source
        .query_one(
            "SELECT pg_catalog.current_setting('wal_level') AS wal_level, current_user::text AS role,
                    (SELECT r.rolreplication OR r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) AS replication,
                    EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = $1) AS publication",
            &[&worker.log.publication().as_str()],
        )
        .await
        .map_err(db("reading the source's settings"))?;
    let wal_level: String = row.get("wal_level");
    if wal_level != "logical" {
        return Err(Error::WalLevel { current: wal_level });
    }
    if !row.get::<_, Option<bool>>("replication").unwrap_or(false) {
        return Err(Error::NoReplication {
            role: row.get("role"),
        });
    }
    if !row.get::<_, bool>("publication") {
        return Err(Error::NoPublication {
            publication: worker.log.publication().as_str().to_owned(),
        });
    }
    target
        .batch_execute(&worker.log.capture_setup_sql())
        .await
        .map_err(db(
            "creating the capture progress table beside the log (does the log exist there? `pg-audit sql table` installs it)",
        ))?;
    let progress = read_progress(worker, &target).await?;
    let slot = source
        .query_opt(
            "SELECT plugin::text, database::text, slot_type FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&worker.slot],
        )
        .await
        .map_err(db("reading the replication slot"))?;
    let progress = match (slot, progress) {
        (Some(slot), Some(lsn)) => {
            let plugin: Option<String> = slot.get(0);
            let database: Option<String> = slot.get(1);
            let current: String = source
                .query_one("SELECT current_database()::text", &[])
                .await
                .map_err(db("reading the database's name"))?
                .get(0);
            if database.as_deref() != Some(current.as_str()) {
                return Err(Error::ForeignSlot {
                    slot: worker.slot.clone(),
                    reason: format!(
                        "it belongs to database {}",
                        database.as_deref().unwrap_or("none")
                    ),
                });
            }
            if plugin.as_deref() != Some("pgoutput") {
                return Err(Error::ForeignSlot {
                    slot: worker.slot.clone(),
                    reason: format!("its plugin is {}", plugin.as_deref().unwrap_or("none")),
                });
            }
            lsn
        }
        (Some(_), None) => {
            return Err(Error::ForeignSlot {
                slot: worker.slot.clone(),
                reason: format!(
                    "{} has no progress for it, so the worker did not create it",
                    worker.log.capture_progress_table()
                ),
            });
        }
        (None, Some(lsn)) if lsn != 0 => {
            return Err(Error::SlotMissing {
                slot: worker.slot.clone(),
            });
        }
        (None, _) => {
            // First run (or one interrupted between the two steps): the progress row first,
            // so a slot that exists is always ours.
            write_progress(worker, &target, 0, None).await?;
            let row = source
                .query_one(
                    "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&worker.slot],
                )
                .await
                .map_err(db("creating the replication slot"))?;
            let lsn = parse_lsn(row.get(0))?;
            write_progress(worker, &target, lsn, None).await?;
            tracing::info!(slot = %worker.slot, "pg-audit capture: created the replication slot");
            lsn
        }
    };
    Ok(Start {
        source,
        target,
        progress,
    })
}

async fn read_progress(
    worker: &Worker,
    target: &tokio_postgres::Client,
) -> Result<Option<u64>, Error> {
    let row = target
        .query_opt(&worker.log.capture_progress_read_sql(), &[&worker.slot])
        .await
        .map_err(db("reading the capture progress"))?;
    row.map(|r| parse_lsn(r.get(0))).transpose()
}

async fn write_progress(
    worker: &Worker,
    target: &tokio_postgres::Client,
    lsn: u64,
    last_commit: Option<SystemTime>,
) -> Result<(), Error> {
    target
        .execute(
            &worker.log.capture_progress_write_sql(),
            &[&worker.slot, &format_lsn(lsn), &last_commit],
        )
        .await
        .map_err(db("recording the capture progress"))?;
    Ok(())
}

/// `16/B374D848` as a number.
pub(crate) fn parse_lsn(text: &str) -> Result<u64, Error> {
    let (hi, lo) = text
        .split_once('/')
        .ok_or_else(|| Error::Protocol(format!("not an LSN: {text}")))?;
    let part = |s: &str| {
        u64::from_str_radix(s, 16).map_err(|_| Error::Protocol(format!("not an LSN: {text}")))
    };
    Ok((part(hi)? << 32) | part(lo)?)
}

/// A number as `16/B374D848`.
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The capture's state: how far the log is behind the source.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Status {
    /// The slot's name.
    pub slot: String,
    /// Whether the slot exists.
    pub slot_exists: bool,
    /// Whether a worker is connected to it now.
    pub active: bool,
    /// Bytes of WAL written since the slot's confirmed position.
    pub lag_bytes: Option<i64>,
    /// Seconds since the last commit captured, when WAL was written after it (0 when the
    /// worker has written everything).
    pub lag_seconds: Option<f64>,
    /// The commit time of the last transaction written to the log.
    pub last_commit: Option<SystemTime>,
    /// The end of the last transaction written, as `16/B374D848`.
    pub progress_lsn: Option<String>,
    /// WAL the slot holds back on the server, in bytes.
    pub retained_bytes: Option<i64>,
    /// How many values were logged as the JSON string of their text, or changes set aside
    /// whole, because the log could not hold them as they came.
    pub issues: i64,
    /// The newest of them (at most ten), as a JSON array of objects with `noted_at`, `txid`,
    /// `table`, `record_pk`, `column_name` (null for a change set aside), `issue`.
    pub latest_issues: String,
}

/// The slot's lag and the last commit captured.
pub async fn status(worker: &Worker) -> Result<Status, Error> {
    let source = connect(&worker.source, "connecting to the source database").await?;
    let target = connect(&worker.target, "connecting to the log's database").await?;
    let slot = source
        .query_opt(
            "SELECT s.active,
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint
               FROM pg_catalog.pg_replication_slots AS s
              WHERE s.slot_name = $1 AND s.database = pg_catalog.current_database()",
            &[&worker.slot],
        )
        .await
        .map_err(db("reading the replication slot"))?;
    let exists = target
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&worker.log.capture_progress_table().to_string()],
        )
        .await
        .map_err(db("looking for the capture progress table"))?
        .get::<_, bool>(0);
    let progress = if exists {
        target
            .query_opt(&worker.log.capture_progress_read_sql(), &[&worker.slot])
            .await
            .map_err(db("reading the capture progress"))?
    } else {
        None
    };
    let issues_exist = target
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&worker.log.capture_issues_table().to_string()],
        )
        .await
        .map_err(db("looking for the capture issues table"))?
        .get::<_, bool>(0);
    let (issues, latest_issues) = if issues_exist {
        let row = target
            .query_one(&worker.log.capture_issues_summary_sql(), &[&worker.slot])
            .await
            .map_err(db("reading the capture issues"))?;
        (row.get(0), row.get(1))
    } else {
        (0, "[]".to_owned())
    };
    let last_commit: Option<SystemTime> = progress.as_ref().and_then(|r| r.get(1));
    let lag_bytes: Option<i64> = slot.as_ref().and_then(|r| r.get(1));
    let lag_seconds = match (lag_bytes, last_commit) {
        (Some(0), _) => Some(0.0),
        (Some(_), Some(at)) => Some(
            SystemTime::now()
                .duration_since(at)
                .map_or(0.0, |d| d.as_secs_f64()),
        ),
        _ => None,
    };
    Ok(Status {
        slot: worker.slot.clone(),
        slot_exists: slot.is_some(),
        active: slot.as_ref().is_some_and(|r| r.get(0)),
        lag_bytes,
        lag_seconds,
        last_commit,
        progress_lsn: progress.map(|r| r.get(0)),
        retained_bytes: slot.as_ref().and_then(|r| r.get(2)),
        issues,
        latest_issues,
    })
}

/// Drops the slot (so the server stops keeping WAL for it) and forgets its progress. The
/// publication stays while tables are installed for capture; uninstall them (or drop the
/// publication) to remove it. Refuses while a worker is connected.
pub async fn drop_slot(worker: &Worker) -> Result<bool, Error> {
    let source = connect(&worker.source, "connecting to the source database").await?;
    let target = connect(&worker.target, "connecting to the log's database").await?;
    let elsewhere = source
        .query_opt(
            "SELECT database::text FROM pg_catalog.pg_replication_slots
              WHERE slot_name = $1 AND database IS DISTINCT FROM pg_catalog.current_database()",
            &[&worker.slot],
        )
        .await
        .map_err(db("reading the replication slot"))?;
    if let Some(row) = elsewhere {
        return Err(Error::ForeignSlot {
            slot: worker.slot.clone(),
            reason: format!(
                "it belongs to database {}; drop it from there",
                row.get::<_, Option<String>>(0).unwrap_or_default()
            ),
        });
    }
    let dropped = source
        .query_opt(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
              WHERE slot_name = $1 AND database = pg_catalog.current_database()",
            &[&worker.slot],
        )
        .await
        .map_err(db("dropping the replication slot (is a worker still running?)"))?
        .is_some();
    let table = worker.log.capture_progress_table();
    target
        .batch_execute(&format!(
            "DO $$ BEGIN IF pg_catalog.to_regclass({}) IS NOT NULL THEN DELETE FROM {table} WHERE slot = {}; END IF; END $$",
            quote_literal(&table.to_string()).expect("names hold no NUL"),
            quote_literal(&worker.slot).map_err(|e| Error::Protocol(e.to_string()))?,
        ))
        .await
        .map_err(db("forgetting the slot's progress"))?;
    Ok(dropped)
}
