//! The drift check, run on a connection of the caller's with pg-audit's own queries: never
//! through `<log>_check()`, which the log's owner could replace with one that finds nothing.
//!
//! ```no_run
//! # fn f(conn: &mut diesel::PgConnection) -> diesel::QueryResult<()> {
//! for p in pg_audit_diesel::log::drift(conn, &pg_audit::AuditLog::new())? {
//!     println!("{}.{}: {}", p.table_schema, p.table_name, p.problem);
//! }
//! # Ok(()) }
//! ```

use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use pg_audit::AuditLog;

/// A difference between what is installed and what pg-audit installed, filed under the
/// audited table it concerns, or under the log for the log's own objects and the server's.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Drift {
    /// The schema of the table (or of the log).
    #[diesel(sql_type = Text)]
    pub table_schema: String,
    /// The table (or the log).
    #[diesel(sql_type = Text)]
    pub table_name: String,
    /// What is wrong and how to repair it, as one sentence.
    #[diesel(sql_type = Text)]
    pub problem: String,
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Integer)]
    n: i32,
}

/// Every problem the drift check finds for `log`, sorted by table: the check of this server's
/// version ([`AuditLog::check_sql_for`]), run in a transaction (a savepoint inside the
/// caller's) with pg-audit's settings pinned and without JIT, rolled back after, so the
/// caller's session keeps its own settings.
pub fn drift(conn: &mut PgConnection, log: &AuditLog) -> QueryResult<Vec<Drift>> {
    let mut found = None;
    let ended = conn.transaction::<(), _, _>(|conn| {
        conn.batch_execute(&pg_audit::session::set_local_sql())?;
        conn.batch_execute(log.check_prelude_sql())?;
        let version: Version =
            diesel::sql_query("SELECT pg_catalog.current_setting('server_version_num')::int4 AS n")
                .get_result(conn)?;
        found = Some(diesel::sql_query(log.check_sql_for(version.n)).load(conn)?);
        Err(diesel::result::Error::RollbackTransaction)
    });
    match (ended, found) {
        (Err(diesel::result::Error::RollbackTransaction), Some(found)) => Ok(found),
        (Err(e), _) => Err(e),
        (Ok(()), _) => unreachable!("the check's transaction is always rolled back"),
    }
}
