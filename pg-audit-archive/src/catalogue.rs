//! What the archive catalogue records of a relation (rows, ids, content digest), computed by
//! this program from the server's rows, and the lock that archiving and redaction share.

use pg_audit::AuditLog;
use sha2::{Digest as _, Sha256};
use tokio_postgres::Client;

use crate::digest::RowDigest;
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
/// its rows' digests computed by this program ([`crate::digest`]), the digest over them in the
/// archived files' order, as the server's `<log>_content_of` computes it.
pub(crate) async fn content(
    client: &Client,
    log: &AuditLog,
    relation: &str,
    in_log: bool,
) -> Result<Content, Error> {
    let digests = crate::digest::relation_digests(client, log, relation, in_log).await?;
    let mut content = ContentDigest::default();
    for (id, digest) in &digests {
        content.push(*id, digest);
    }
    Ok(content.finish())
}

/// A [`Content`] computed as rows go by, in the archived files' order
/// (`pg_audit::sql::archive::file_order`): what a file is written and read back in, so neither
/// holds its rows' digests.
#[derive(Default)]
pub(crate) struct ContentDigest {
    rows: i64,
    min_id: Option<i64>,
    max_id: Option<i64>,
    hash: Sha256,
}

impl ContentDigest {
    /// The next row.
    pub(crate) fn push(&mut self, id: i64, digest: &RowDigest) {
        self.rows += 1;
        self.min_id = Some(self.min_id.map_or(id, |m| m.min(id)));
        self.max_id = Some(self.max_id.map_or(id, |m| m.max(id)));
        self.hash.update(digest);
    }

    /// The content of the rows pushed.
    pub(crate) fn finish(self) -> Content {
        Content {
            rows: self.rows,
            min_id: self.min_id,
            max_id: self.max_id,
            digest: self.hash.finalize().to_vec(),
        }
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
