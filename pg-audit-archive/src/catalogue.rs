//! What the archive catalogue records of a relation (rows, ids, content digest), computed by
//! this program from the server's rows, and the lock that archiving and redaction share.

use pg_audit::AuditLog;
use tokio_postgres::Client;

use crate::{Error, db};

/// What a relation holds, in the terms the catalogue records.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Content {
    pub(crate) rows: i64,
    pub(crate) min_id: Option<i64>,
    pub(crate) max_id: Option<i64>,
    pub(crate) digest: Vec<u8>,
}

/// The content of `relation` (a partition of the log when `in_log`, else rows loaded back):
/// its rows' digests computed by this program ([`crate::digest`]), the digest over them in id
/// order, as the server's `<log>_content_of` computes it.
pub(crate) async fn content(
    client: &Client,
    log: &AuditLog,
    relation: &str,
    in_log: bool,
) -> Result<Content, Error> {
    let digests = crate::digest::relation_digests(client, log, relation, in_log).await?;
    Ok(Content::of(digests))
}

impl Content {
    /// The content of rows with `digests`: their number, lowest and highest id, and the
    /// digest over their digests in id order.
    pub(crate) fn of(digests: Vec<(i64, crate::digest::RowDigest)>) -> Content {
        Content::keeping(digests).0
    }

    /// [`Content::of`], giving the digests back sorted.
    pub(crate) fn keeping(
        mut digests: Vec<(i64, crate::digest::RowDigest)>,
    ) -> (Content, Vec<(i64, crate::digest::RowDigest)>) {
        use sha2::{Digest as _, Sha256};
        digests.sort_unstable();
        let mut all = Sha256::new();
        for (_, d) in &digests {
            all.update(d);
        }
        let content = Content {
            rows: digests.len() as i64,
            min_id: digests.first().map(|d| d.0),
            max_id: digests.last().map(|d| d.0),
            digest: all.finalize().to_vec(),
        };
        (content, digests)
    }
}

/// Takes (or with `take` false, releases) the session lock that archiving and redaction share:
/// a redaction between an archive's read and its drop would be lost.
pub(crate) async fn lock_archive(client: &Client, log: &AuditLog, take: bool) -> Result<(), Error> {
    let key = pg_audit::quote_literal(&log.archives_table().to_string())
        .expect("a relation name holds no NUL");
    let function = if take {
        "pg_advisory_lock"
    } else {
        "pg_advisory_unlock"
    };
    client
        .execute(
            &format!("SELECT pg_catalog.{function}(pg_catalog.hashtext({key}))"),
            &[],
        )
        .await
        .map_err(db("cannot take the archive lock"))?;
    Ok(())
}
