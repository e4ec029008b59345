//! `AuditedConnection`: a `PgConnection` whose transactions, and writes outside any
//! transaction, carry the ambient audit context without calling a helper.
//!
//! Diesel lets crates implement connections only behind its
//! `i-implement-a-third-party-backend-and-opt-into-breaking-changes` feature, whose API its
//! minor releases may change. This module is compiled with the `connection-wrapper` feature,
//! which turns that on; it is built and tested against **Diesel 2.3.14**, and pg-audit-diesel
//! accepts only Diesel 2.3 (`>=2.3.14, <2.4`). Applications enabling it should pin Diesel to
//! the same version (`diesel = "=2.3.14"`). Everything else in pg-audit-diesel — the helpers of
//! [`crate::AuditConnectionExt`], the guards and scopes of [`crate::ambient`], the
//! migrations — works on plain `PgConnection` without this feature.
//!
//! What it does:
//! - a transaction it opens (`conn.transaction(...)`, `build_transaction()`, and any helper
//!   that opens one) sends the ambient context ([`crate::ambient::current`]) with
//!   `BEGIN`, in the same round trip;
//! - a savepoint opened while the ambient context differs from the one in force sets the new
//!   context, and restores the outer one when it is released (a rollback restores it anyway);
//!   this is the same protocol as the helpers';
//! - a statement run outside any transaction while an ambient context is set runs in a
//!   transaction of its own carrying it: `BEGIN` + context, the statement, `COMMIT` — two
//!   round trips more than the bare statement. With no ambient context, statements run as on a
//!   plain `PgConnection`, at no extra cost.

use diesel::connection::{
    AnsiTransactionManager, CacheSize, Connection, ConnectionSealed, DefaultLoadingMode,
    Instrumentation, LoadConnection, SimpleConnection, TransactionManager,
    TransactionManagerStatus,
};
use diesel::expression::QueryMetadata;
use diesel::migration::MigrationConnection;
use diesel::pg::{GetPgMetadataCache, Pg, PgConnection, PgMetadataCache};
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::result::{ConnectionResult, QueryResult};

use crate::AuditContext;
use crate::ambient;
use crate::observe;
use crate::transaction::{Savepoint, begin_sql, enter_savepoint, finish, top_context};

/// A `PgConnection` that carries the ambient audit context (see the module documentation).
/// Usable wherever Diesel takes a connection, including an r2d2
/// `Pool<ConnectionManager<AuditedConnection>>` (with the `r2d2` feature).
pub struct AuditedConnection {
    inner: PgConnection,
    /// Each open transaction level, outermost first.
    levels: Vec<Level>,
}

/// One open transaction level: the context in force in it, and for a savepoint what to put
/// back when it is released.
#[derive(Debug)]
struct Level {
    ctx: AuditContext,
    savepoint: Option<Savepoint>,
}

impl std::fmt::Debug for AuditedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditedConnection")
            .field("levels", &self.levels)
            .finish_non_exhaustive()
    }
}

impl AuditedConnection {
    /// Wraps an established connection.
    pub fn new(inner: PgConnection) -> Self {
        AuditedConnection {
            inner,
            levels: Vec::new(),
        }
    }

    /// The wrapped connection.
    pub fn into_inner(self) -> PgConnection {
        self.inner
    }

    /// The wrapped connection, for what needs a `PgConnection` itself.
    pub fn inner_mut(&mut self) -> &mut PgConnection {
        &mut self.inner
    }

    fn in_transaction(&mut self) -> QueryResult<bool> {
        Ok(
            AnsiTransactionManager::transaction_manager_status_mut(&mut self.inner)
                .transaction_depth()?
                .is_some(),
        )
    }

    /// Runs `op` on the inner connection, in a transaction carrying the ambient context when
    /// there is one and no transaction is open.
    fn write<T>(&mut self, op: impl FnOnce(&mut PgConnection) -> QueryResult<T>) -> QueryResult<T> {
        let ctx = top_context(&AuditContext::new());
        if ctx.is_empty() || self.in_transaction()? {
            return op(&mut self.inner);
        }
        AnsiTransactionManager::begin_transaction_sql(&mut self.inner, &begin_sql(&ctx)?)?;
        observe::transaction_begun(&ctx);
        let result = op(&mut self.inner);
        finish(&mut self.inner, result)
    }
}

impl SimpleConnection for AuditedConnection {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        self.write(|inner| inner.batch_execute(query))
    }
}

impl ConnectionSealed for AuditedConnection {}

impl Connection for AuditedConnection {
    type Backend = Pg;
    type TransactionManager = AuditedTransactionManager;

    fn establish(database_url: &str) -> ConnectionResult<Self> {
        PgConnection::establish(database_url).map(AuditedConnection::new)
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Pg> + QueryId,
    {
        self.write(|inner| inner.execute_returning_count(source))
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        self.inner.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.inner.instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.inner.set_instrumentation(instrumentation);
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.inner.set_prepared_statement_cache_size(size);
    }
}

impl LoadConnection<DefaultLoadingMode> for AuditedConnection {
    type Cursor<'conn, 'query> =
        <PgConnection as LoadConnection<DefaultLoadingMode>>::Cursor<'conn, 'query>;
    type Row<'conn, 'query> =
        <PgConnection as LoadConnection<DefaultLoadingMode>>::Row<'conn, 'query>;

    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<Pg> + QueryId + 'query,
        Pg: QueryMetadata<T::SqlType>,
    {
        // `INSERT ... RETURNING` loads too, so loads are treated as writes.
        self.write(|inner| {
            <PgConnection as LoadConnection<DefaultLoadingMode>>::load(inner, source)
        })
    }
}

impl GetPgMetadataCache for AuditedConnection {
    fn get_metadata_cache(&mut self) -> &mut PgMetadataCache {
        self.inner.get_metadata_cache()
    }
}

impl MigrationConnection for AuditedConnection {
    fn setup(&mut self) -> QueryResult<usize> {
        self.inner.setup()
    }
}

#[cfg(feature = "r2d2")]
impl diesel::r2d2::R2D2Connection for AuditedConnection {
    fn ping(&mut self) -> QueryResult<()> {
        self.inner.ping()
    }

    fn is_broken(&mut self) -> bool {
        self.inner.is_broken()
    }
}

impl crate::AuditConnectionExt for AuditedConnection {
    fn with_audit_context<T, E, F>(&mut self, ctx: &AuditContext, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        let _guard = ambient::use_context(ctx);
        self.transaction(f)
    }
}

/// The transaction manager of [`AuditedConnection`]: Diesel's ANSI manager, with the ambient
/// context sent at `BEGIN` and at savepoints where it changed.
#[derive(Debug, Default)]
pub struct AuditedTransactionManager;

impl TransactionManager<AuditedConnection> for AuditedTransactionManager {
    type TransactionStateData = AnsiTransactionManager;

    fn begin_transaction(conn: &mut AuditedConnection) -> QueryResult<()> {
        let ctx = top_context(&AuditContext::new());
        let savepoint = if !conn.in_transaction()? {
            AnsiTransactionManager::begin_transaction_sql(&mut conn.inner, &begin_sql(&ctx)?)?;
            observe::transaction_begun(&ctx);
            conn.levels.clear();
            None
        } else {
            AnsiTransactionManager::begin_transaction(&mut conn.inner)?;
            // The context in force is known: the one this connection set at the level below.
            let outer = conn
                .levels
                .last()
                .and_then(|level| level.ctx.to_json())
                .map(|json| json.to_string());
            let (savepoint, set) = enter_savepoint(outer, &ctx)?;
            if let Some(set) = set {
                conn.inner.batch_execute(&set)?;
            }
            Some(savepoint)
        };
        conn.levels.push(Level { ctx, savepoint });
        Ok(())
    }

    fn rollback_transaction(conn: &mut AuditedConnection) -> QueryResult<()> {
        // Rolling back a savepoint also rolls back the settings made inside it.
        conn.levels.pop();
        AnsiTransactionManager::rollback_transaction(&mut conn.inner)
    }

    fn commit_transaction(conn: &mut AuditedConnection) -> QueryResult<()> {
        if let Some(restore) = conn
            .levels
            .pop()
            .and_then(|level| level.savepoint)
            .and_then(Savepoint::leave)
        {
            conn.inner.batch_execute(&restore)?;
        }
        AnsiTransactionManager::commit_transaction(&mut conn.inner)
    }

    fn transaction_manager_status_mut(
        conn: &mut AuditedConnection,
    ) -> &mut TransactionManagerStatus {
        AnsiTransactionManager::transaction_manager_status_mut(&mut conn.inner)
    }
}
