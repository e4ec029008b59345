//! Embedded migrations; documented on [`AuditMigrations`].

use std::fmt;

use diesel::migration::{
    Migration, MigrationMetadata, MigrationName, MigrationSource, MigrationVersion,
};
use diesel::pg::Pg;
use pg_audit::{AuditLog, dollar_quote, quote_literal};
use pg_audit_runtime::migration::{self, SqlMigration};

use crate::{Error, ModelSet};

/// The migrations of the audit log and of every registered `#[pg_audit]` model, into
/// `audit.auditlog`. See [`AuditMigrations`] to choose the log or list the models.
pub fn migrations() -> AuditMigrations {
    AuditMigrations::registered()
}

/// Runs `source`'s pending migrations holding a session-level advisory lock, so that even
/// Diesel's own bookkeeping table is created by one process at a time. Use this instead of
/// `conn.run_pending_migrations(source)` when several instances may start against a brand-new
/// database: Diesel creates `__diesel_schema_migrations` with `CREATE TABLE IF NOT EXISTS`,
/// which PostgreSQL does not make safe against concurrent creation. Then, under the same lock,
/// it reinstalls every model whose installed configuration is not the one it declares (a
/// configuration installed by hand or by the `pg-audit` program since): the triggers follow
/// the running release. Returns the versions applied, and `reinstalled <table>` for each.
pub fn run_migrations<C>(
    conn: &mut C,
    source: AuditMigrations,
) -> diesel::migration::Result<Vec<String>>
where
    C: diesel_migrations::MigrationHarness<Pg>
        + diesel::Connection<Backend = Pg>
        + diesel::connection::LoadConnection,
{
    let span = crate::observe::migrations_span("run_migrations");
    let _entered = span.enter();
    conn.batch_execute(&migration::session_lock_sql())?;
    let reconcile = source.clone();
    let result = conn
        .run_pending_migrations(source)
        .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
        .and_then(|mut versions| {
            versions.extend(reconcile.reinstall_differing(conn)?);
            versions.extend(reconcile.take_baselines(conn)?);
            Ok(versions)
        });
    let unlock = conn.batch_execute(&migration::session_unlock_sql());
    let versions = result?;
    unlock?;
    Ok(versions)
}

/// A Diesel [`MigrationSource`]: the log's migration, then one per model.
///
/// # How they run
///
/// Embedded migrations: the audit log, then one migration per audited model, run at startup
/// with Diesel's migration harness.
///
/// ```no_run
/// # use diesel::migration::MigrationSource;
/// # use diesel::pg::Pg;
/// use diesel_migrations::MigrationHarness as _;
/// # fn f(conn: &mut diesel::PgConnection, MIGRATIONS: impl MigrationSource<Pg>)
/// #     -> diesel::migration::Result<()> {
/// conn.run_pending_migrations(MIGRATIONS)?;                    // the application's tables
/// conn.run_pending_migrations(pg_audit_diesel::migrations())?; // the log and the triggers
/// # Ok(()) }
/// ```
///
/// Each migration's version carries a hash of its SQL, so a changed configuration (a column
/// added to `track_only`, a new condition) or a new pg-audit release is a new, pending
/// migration on the next start, and installing replaces what the previous one installed —
/// and forgets the previous version, so that going back to an earlier configuration (a
/// deploy rolled back) is pending again and reinstalls it: the installed triggers always
/// follow the configuration the running release declares.
/// Versions begin with `00000000000001` (the log) and `00000000000002` (models): they sort
/// after Diesel's initial setup and before dated application migrations, so Diesel's
/// `revert_last_migration` on the application's migrations still finds the application's.
///
/// **Several instances starting at once.** Every migration first takes a transaction-level
/// advisory lock, so installs are serialised. An instance that waited while another applied
/// the same migration finds it recorded, skips the install, and lets Diesel's harness record
/// it again in the same transaction (it deletes the row the other instance wrote first), so
/// it neither fails on the duplicate version nor installs twice.
#[derive(Debug, Clone)]
pub struct AuditMigrations {
    log: AuditLog,
    models: Option<ModelSet>,
    baseline: Option<crate::Baseline>,
}

impl AuditMigrations {
    /// Every model in the registry (checked when the migrations are listed: an empty
    /// registry is an error explaining why).
    pub fn registered() -> Self {
        AuditMigrations {
            log: AuditLog::new(),
            models: None,
            baseline: None,
        }
    }

    /// These models.
    pub fn models(models: ModelSet) -> Self {
        AuditMigrations {
            log: AuditLog::new(),
            models: Some(models),
            baseline: None,
        }
    }

    /// Uses `log` (its schema, name and partitioning) instead of `audit.auditlog`.
    #[must_use]
    pub fn log(mut self, log: AuditLog) -> Self {
        self.log = log;
        self
    }

    /// After the migrations, [`run_migrations`] takes each model's baseline
    /// ([`take_baseline`](crate::take_baseline): every row the table holds written to the log as
    /// a `SNAPSHOT` entry, in short batches), resuming one a stopped start left unfinished and
    /// skipping those finished. The first start after it is set takes as long as the batches
    /// (about 1M rows in 12 s, measured); other instances wait for it on the migrations' lock.
    #[must_use]
    pub fn baseline(mut self, baseline: crate::Baseline) -> Self {
        self.baseline = Some(baseline);
        self
    }

    /// The audit log the migrations install.
    pub fn audit_log(&self) -> &AuditLog {
        &self.log
    }

    /// Installs the log and every model's triggers again, whatever Diesel has recorded, in one
    /// transaction under the migrations' advisory lock: the repair for what `pg-audit check`
    /// reports (a trigger disabled, dropped or edited, a function changed), since migrations
    /// Diesel has recorded do not run again. Returns how many migrations' SQL ran.
    pub fn reinstall<C>(&self, conn: &mut C) -> diesel::migration::Result<usize>
    where
        C: diesel::Connection<Backend = Pg>,
    {
        let migrations = self.sql_migrations()?;
        let span = crate::observe::migrations_span("reinstall");
        let _entered = span.enter();
        conn.transaction(|conn| {
            conn.batch_execute(&migration::xact_locked(""))?;
            for m in &migrations {
                conn.batch_execute(m.up_sql())?;
                crate::observe::migration_ran(m.description(), m.version(), true);
            }
            Ok::<_, diesel::result::Error>(migrations.len())
        })
        .map_err(Into::into)
    }

    /// Reinstalls each model whose recorded configuration differs from the one it declares;
    /// returns `reinstalled <table>` for each.
    /// Each model's baseline, when [`baseline`](Self::baseline) asked for them: `baseline
    /// <table> (<rows> rows)` for each taken now.
    fn take_baselines<C>(&self, conn: &mut C) -> diesel::migration::Result<Vec<String>>
    where
        C: diesel::Connection<Backend = Pg> + diesel::connection::LoadConnection,
    {
        let Some(options) = &self.baseline else {
            return Ok(Vec::new());
        };
        let models = match &self.models {
            Some(models) => models.clone(),
            None => ModelSet::registered()?,
        };
        let mut taken = Vec::new();
        for (_, spec) in models.specs()? {
            let outcome = crate::take_baseline(conn, &self.log, spec.table(), options, |_| {})?;
            if !outcome.already {
                taken.push(format!("baseline {} ({} rows)", spec.table(), outcome.rows));
            }
        }
        Ok(taken)
    }

    fn reinstall_differing<C>(&self, conn: &mut C) -> diesel::migration::Result<Vec<String>>
    where
        C: diesel::Connection<Backend = Pg> + diesel::connection::LoadConnection,
    {
        use diesel::prelude::*;
        use diesel::sql_types::{Bool, Jsonb, Text};
        #[derive(QueryableByName)]
        struct Same {
            #[diesel(sql_type = Bool)]
            same: bool,
        }
        let models = match &self.models {
            Some(models) => models.clone(),
            None => ModelSet::registered()?,
        };
        let mut reinstalled = Vec::new();
        for (model, spec) in models.specs()? {
            let declared: serde_json::Value =
                serde_json::from_str(&spec.config_json()).expect("the engine writes valid JSON");
            let recorded: Option<Same> = diesel::sql_query(self.log.recorded_config_same_sql())
                .bind::<Jsonb, _>(&declared)
                .bind::<Text, _>(spec.table().to_string())
                .get_result(conn)
                .optional()?;
            if recorded.is_some_and(|r| !r.same) {
                conn.batch_execute(
                    migration::table_migration(&spec, &self.log, Some(model)).up_sql(),
                )?;
                crate::observe::model_reinstalled(&spec.table().to_string());
                reinstalled.push(format!("reinstalled {}", spec.table()));
            }
        }
        Ok(reinstalled)
    }

    /// The migrations, in the order they run: the log, then the models by table.
    pub fn sql_migrations(&self) -> Result<Vec<SqlMigration>, Error> {
        let models = match &self.models {
            Some(models) => models.clone(),
            None => ModelSet::registered()?,
        };
        Ok(migration::plan(
            &self.log,
            models
                .specs()?
                .into_iter()
                .map(|(model, spec)| (Some(model), spec)),
        ))
    }
}

/// `up_sql` guarded for concurrent runs (see [`AuditMigrations`]): an instance that waited
/// for the lock while another applied the same version skips the install, and Diesel's harness
/// records the version again in this transaction; installing forgets the other versions.
fn guarded_up(m: &SqlMigration) -> String {
    let version = quote_literal(m.version()).expect("no NUL");
    let body = format!(
        "
BEGIN
    IF EXISTS (SELECT FROM __diesel_schema_migrations WHERE version = {version}) THEN
        -- Applied by another instance while this one waited for the lock: do not install
        -- again; Diesel's harness records the version again in this transaction.
        DELETE FROM __diesel_schema_migrations WHERE version = {version};
    ELSE
        EXECUTE {};
    END IF;
END
",
        dollar_quote(&m.up_forgetting_others("__diesel_schema_migrations", false))
    );
    migration::xact_locked(&format!("DO {};", dollar_quote(&body)))
}

/// A migration as Diesel runs it: the shared [`SqlMigration`], installed forgetting the other
/// versions Diesel recorded of it.
struct DieselMigration(SqlMigration);

struct Metadata;

impl MigrationMetadata for Metadata {}

impl Migration<Pg> for DieselMigration {
    fn run(
        &self,
        conn: &mut dyn diesel::connection::BoxableConnection<Pg>,
    ) -> diesel::migration::Result<()> {
        conn.batch_execute(&guarded_up(&self.0))?;
        crate::observe::migration_ran(self.0.description(), self.0.version(), true);
        Ok(())
    }

    fn revert(
        &self,
        conn: &mut dyn diesel::connection::BoxableConnection<Pg>,
    ) -> diesel::migration::Result<()> {
        conn.batch_execute(&migration::xact_locked(self.0.down_sql()))?;
        crate::observe::migration_ran(self.0.description(), self.0.version(), false);
        Ok(())
    }

    fn metadata(&self) -> &dyn MigrationMetadata {
        &Metadata
    }

    fn name(&self) -> &dyn MigrationName {
        self
    }
}

impl fmt::Display for DieselMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl MigrationName for DieselMigration {
    fn version(&self) -> MigrationVersion<'_> {
        MigrationVersion::from(self.0.version())
    }
}

impl MigrationSource<Pg> for AuditMigrations {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        Ok(self
            .sql_migrations()?
            .into_iter()
            .map(|m| Box::new(DieselMigration(m)) as Box<dyn Migration<Pg>>)
            .collect())
    }
}
