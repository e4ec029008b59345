//! The log and each table's triggers as sqlx migrations: run at startup
//! ([`AuditMigrations::run`]) or written as files for `sqlx migrate` and `sqlx::migrate!`
//! ([`AuditMigrations::write_files`]).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use pg_audit::{AuditLog, Capture, TriggerSpec};
use pg_audit_runtime::migration::{self, FileError, Layout, SqlMigration};
use pg_audit_runtime::observe;
use sqlx::migrate::{Migrate as _, MigrateError, Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool, SqlSafeStr as _};

/// The table pg-audit's embedded migrations are recorded in: not sqlx's `_sqlx_migrations`, so
/// the application's own `sqlx::migrate!()` never meets versions it does not know.
pub const MIGRATIONS_TABLE: &str = "_pg_audit_migrations";

/// Whether a table declared to [`AuditMigrations`] is captured from the write-ahead log.
static ANY_WAL_TABLE: AtomicBool = AtomicBool::new(false);

/// Whether transactions emit their context to the write-ahead log: as the program said
/// ([`crate::emit_context_to_wal`]), else when a table given to [`AuditMigrations`] is
/// captured from the WAL.
pub(crate) fn emits_context_to_wal() -> bool {
    pg_audit_runtime::transaction::emit_context_to_wal_set()
        .unwrap_or_else(|| ANY_WAL_TABLE.load(Relaxed))
}

/// The audit log and the tables it audits, declared once: the migrations installing them.
///
/// Each table is the engine's [`TriggerSpec`], built with its builder (the same options as
/// `#[pg_audit(...)]` on a Diesel model and `pg-audit sql trigger`):
///
/// ```no_run
/// use pg_audit_sqlx::AuditMigrations;
/// use pg_audit_sqlx::sql::{QualifiedName, TriggerSpec};
/// # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let migrations = AuditMigrations::new()
///     .table(TriggerSpec::builder(QualifiedName::parse("users")?)
///         .exclude_fields(["password_hash"])
///         .build()?)
///     .table(TriggerSpec::builder(QualifiedName::parse("billing.invoices")?).build()?);
/// // After the application's own migrations (`sqlx::migrate!().run(&pool)`), which create
/// // the tables: the log and the triggers.
/// migrations.run(&pool).await?;
/// # Ok(()) }
/// ```
///
/// A configuration is checked when the spec is built; what only the database knows (the table
/// exists, its key, the condition compiles) when the migration runs, with a message naming the
/// table and the problem.
///
/// Each migration's version carries a hash of its SQL, so a changed configuration or a new
/// pg-audit release is a new, pending migration, and installing forgets the table's other
/// versions, so a deploy rolled back to an earlier configuration installs it again.
#[derive(Debug, Clone)]
pub struct AuditMigrations {
    log: AuditLog,
    tables: Vec<TriggerSpec>,
}

impl Default for AuditMigrations {
    fn default() -> Self {
        AuditMigrations::new()
    }
}

impl AuditMigrations {
    /// The log `audit.auditlog`, and no table yet.
    pub fn new() -> Self {
        AuditMigrations {
            log: AuditLog::new(),
            tables: Vec::new(),
        }
    }

    /// Uses `log` (its schema, name and partitioning) instead of `audit.auditlog`.
    #[must_use]
    pub fn log(mut self, log: AuditLog) -> Self {
        self.log = log;
        self
    }

    /// Audits a table as `spec` says. A table captured from the write-ahead log
    /// ([`Capture::Wal`]) makes this program's transactions emit their context for the
    /// capture worker ([`crate::emit_context_to_wal`] overrides).
    #[must_use]
    pub fn table(mut self, spec: TriggerSpec) -> Self {
        if spec.capture() == Capture::Wal {
            ANY_WAL_TABLE.store(true, Relaxed);
        }
        self.tables.retain(|t| t.table() != spec.table());
        self.tables.push(spec);
        self
    }

    /// The audit log the migrations install.
    pub fn audit_log(&self) -> &AuditLog {
        &self.log
    }

    /// The migrations, in the order they run: the log, then the tables by name.
    pub fn sql_migrations(&self) -> Vec<SqlMigration> {
        migration::plan(&self.log, self.tables.iter().map(|t| (None, t.clone())))
    }

    /// The migrations as sqlx's [`Migrator`] holds them, recorded in [`MIGRATIONS_TABLE`]:
    /// each version is [`SqlMigration::number`], and installing forgets the other versions of
    /// the same migration. Versions no longer declared are ignored (a configuration changed
    /// since). [`run`](Self::run) applies them; this is for inspecting them.
    pub fn migrator(&self) -> Migrator {
        let migrations = self
            .sql_migrations()
            .iter()
            .map(|m| {
                Migration::new(
                    m.number(),
                    Cow::Owned(m.description().to_owned()),
                    MigrationType::ReversibleUp,
                    AssertSqlSafe(m.up_forgetting_others(MIGRATIONS_TABLE, true)).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.set_ignore_missing(true);
        migrator
    }

    /// Runs the pending migrations, then reinstalls every table whose installed configuration
    /// is not the one declared (installed by hand or by the `pg-audit` program since): the
    /// triggers follow the running release. All of it holds pg-audit's migration lock
    /// ([`MIGRATION_LOCK_KEY`](pg_audit_runtime::migration::MIGRATION_LOCK_KEY), the Diesel runtime's too) on one connection, so instances
    /// starting together install once. Returns a line per migration applied and
    /// `reinstalled <table>` for each.
    pub async fn run(&self, pool: &PgPool) -> Result<Vec<String>, MigrateError> {
        let span = observe::migrations_span("run_migrations");
        let _entered = span.enter();
        let mut conn = pool.acquire().await?;
        sqlx::query(AssertSqlSafe(migration::session_lock_sql()))
            .execute(&mut *conn)
            .await?;
        let result = self.run_locked(&mut conn).await;
        let unlocked = sqlx::query(AssertSqlSafe(migration::session_unlock_sql()))
            .execute(&mut *conn)
            .await;
        let done = result?;
        unlocked?;
        Ok(done)
    }

    async fn run_locked(&self, conn: &mut PgConnection) -> Result<Vec<String>, MigrateError> {
        conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
        if let Some(version) = conn.dirty_version(MIGRATIONS_TABLE).await? {
            return Err(MigrateError::Dirty(version));
        }
        let applied: Vec<i64> = conn
            .list_applied_migrations(MIGRATIONS_TABLE)
            .await?
            .iter()
            .map(|m| m.version)
            .collect();
        let mut done = Vec::new();
        for m in self.migrator().iter() {
            if applied.contains(&m.version) {
                continue;
            }
            conn.apply(MIGRATIONS_TABLE, m).await?;
            observe::migration_ran(&m.description, &m.version.to_string(), true);
            done.push(format!("{} ({})", m.version, m.description));
        }
        done.extend(self.reinstall_differing(conn).await?);
        Ok(done)
    }

    /// Each declared table whose recorded configuration differs from the declared one,
    /// installed again under the migrations' advisory lock.
    async fn reinstall_differing(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Vec<String>, MigrateError> {
        let mut reinstalled = Vec::new();
        for spec in &self.tables {
            let table = spec.table().to_string();
            let declared: serde_json::Value =
                serde_json::from_str(&spec.config_json()).expect("the engine writes valid JSON");
            let same: Option<bool> =
                sqlx::query_scalar(AssertSqlSafe(self.log.recorded_config_same_sql()))
                    .bind(&declared)
                    .bind(&table)
                    .fetch_optional(&mut *conn)
                    .await?;
            if same == Some(false) {
                let mut tx = conn.begin().await?;
                // Under the session's migration lock, which `run` holds.
                sqlx::raw_sql(AssertSqlSafe(
                    migration::table_migration(spec, &self.log, None)
                        .up_sql()
                        .to_owned(),
                ))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                observe::model_reinstalled(&table);
                reinstalled.push(format!("reinstalled {table}"));
            }
        }
        Ok(reinstalled)
    }

    /// Writes each migration whose SQL is not already in `dir` as sqlx's reversible files
    /// (`20261207101500_pg_audit_<what>.up.sql` and `.down.sql`, versioned after every
    /// migration there), and returns the `up` files written. Then `sqlx migrate run` or
    /// `sqlx::migrate!()` runs them with the application's own, instead of [`run`](Self::run).
    /// Running it again without a change writes nothing.
    pub fn write_files(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, FileError> {
        migration::write_files(dir, Layout::Sqlx, &self.sql_migrations())
    }
}
