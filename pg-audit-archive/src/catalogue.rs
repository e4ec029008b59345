//! What the archive catalogue records of a relation (rows, ids, content digest), computed by
//! the server, and the lock that archiving and redaction share.

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

pub(crate) async fn content(
    client: &Client,
    log: &AuditLog,
    relation: &str,
) -> Result<Content, Error> {
    let row = client
        .query_one(&log.content_digest_sql(relation), &[])
        .await
        .map_err(db(format!("cannot compute the digest of {relation}")))?;
    Ok(Content {
        rows: row.get(0),
        min_id: row.get(1),
        max_id: row.get(2),
        digest: row.get(3),
    })
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
