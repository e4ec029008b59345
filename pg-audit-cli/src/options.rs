//! The options several commands share, defined once: where the log lives, and where to connect.

use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use diesel::prelude::*;
use pg_audit::sql::log::{DEFAULT_SCHEMA, DEFAULT_TABLE};
use pg_audit::{AuditLog, Capture, Operation, PartitionPeriod, TriggerLevel};

/// Errors of the commands, printed by `main` with their causes.
pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Which audit log: its schema and name.
#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// Schema of the audit log.
    #[arg(long, value_name = "SCHEMA", default_value = DEFAULT_SCHEMA, alias = "schema")]
    log_schema: String,
    /// Name of the audit log table.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TABLE, alias = "name")]
    log_name: String,
}

impl LogArgs {
    /// The log these options name.
    pub(crate) fn log(&self) -> std::result::Result<AuditLog, pg_audit::Error> {
        AuditLog::named(&self.log_schema, &self.log_name)
    }
}

/// Where to connect, which log to read, and how to print.
#[derive(Debug, Args)]
pub(crate) struct Db {
    /// PostgreSQL URL, e.g. postgres://user@host/db.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    log: LogArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Db {
    /// The database URL, or an error naming how to give one.
    pub(crate) fn url(&self) -> Result<&str> {
        Ok(self
            .database_url
            .as_deref()
            .ok_or("no database to connect to: pass --database-url or set DATABASE_URL")?)
    }

    /// The log these options name.
    pub(crate) fn log(&self) -> Result<AuditLog> {
        Ok(self.log.log()?)
    }

    /// The database URL with pg-audit's pinned settings in its connection options
    /// ([`pg_audit::session`]): every session the program opens starts with them, so nothing
    /// on a role's `search_path` runs in its place and no role default changes what it reads.
    pub(crate) fn pinned_url(&self) -> Result<String> {
        Ok(pg_audit::session::pin_conninfo(self.url()?)?)
    }

    /// A connection to the database, and the log.
    pub(crate) fn connect(&self) -> Result<(PgConnection, AuditLog)> {
        let log = self.log.log()?;
        let mut conn = establish(&self.pinned_url()?)?;
        if !relation_exists(&mut conn, &log.table().to_string())? {
            return Err(no_log(&log));
        }
        Ok((conn, log))
    }

    /// Runs `work` with an asynchronous session (tokio-postgres, pg-audit's settings pinned)
    /// and the log, on a runtime of its own: what the commands over the archive and the seals
    /// share.
    pub(crate) fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&tokio_postgres::Client, &AuditLog) -> Result<T>,
    ) -> Result<T> {
        let log = self.log.log()?;
        let url = self.url()?;
        block_on(async {
            let client = pg_audit_archive::connect(url).await?;
            let exists: bool = client
                .query_one(
                    "SELECT pg_catalog.to_regclass($1::text) IS NOT NULL",
                    &[&log.table().to_string()],
                )
                .await?
                .get(0);
            if !exists {
                return Err(no_log(&log));
            }
            work(&client, &log).await
        })?
    }
}

/// How many sessions a long command spreads its work over.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct Jobs {
    /// Sessions to spread the work over, each recomputing one seal's rows at a time [default:
    /// this machine's cores, at most 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: Option<u16>,
}

impl Jobs {
    /// The sessions besides the command's own, opened on `url`: `--jobs` less one.
    pub(crate) async fn helpers(&self, url: &str) -> Result<Vec<tokio_postgres::Client>> {
        let jobs = self.jobs.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            usize::from,
        );
        helper_sessions(url, jobs).await
    }
}

/// `jobs - 1` sessions on `url`, to share a command's work with its own.
pub(crate) async fn helper_sessions(url: &str, jobs: usize) -> Result<Vec<tokio_postgres::Client>> {
    let mut helpers = Vec::with_capacity(jobs.saturating_sub(1));
    for _ in 1..jobs {
        helpers.push(pg_audit_archive::connect(url).await?);
    }
    Ok(helpers)
}

/// The error for a log that is not in the database.
fn no_log(log: &AuditLog) -> Box<dyn std::error::Error> {
    format!(
        "no audit log {} in this database: install it (pg-audit sql table), or name the right \
         one with --log-schema/--log-name",
        log.table()
    )
    .into()
}

/// The output of `future`, run to completion on a runtime of its own (the program's commands
/// are synchronous; those that need async I/O each run one).
pub(crate) fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    Ok(tokio::runtime::Runtime::new()?.block_on(future))
}

/// A Diesel connection to `pinned_url` (a URL [`Db::pinned_url`] made).
pub(crate) fn establish(pinned_url: &str) -> Result<PgConnection> {
    Ok(PgConnection::establish(pinned_url)
        .map_err(|e| format!("cannot connect to the database: {e}"))?)
}

/// `table` with its schema: as given, else the schema of the one audited table of that name
/// in `log`'s install records, else `public`. (The program's sessions resolve no name through
/// a search path: theirs holds only `pg_catalog`.)
pub(crate) fn qualify(
    conn: &mut PgConnection,
    log: &AuditLog,
    table: &pg_audit::QualifiedName,
) -> Result<pg_audit::QualifiedName> {
    if table.schema.is_some() {
        return Ok(table.clone());
    }
    #[derive(QueryableByName)]
    struct Schema {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        schema: Option<String>,
    }
    let recorded = diesel::sql_query(format!(
        "SELECT (SELECT pg_catalog.min(r.table_schema) FROM {} AS r
                  WHERE r.table_name OPERATOR(pg_catalog.=) $1 HAVING pg_catalog.count(*) OPERATOR(pg_catalog.=) 1) AS schema",
        log.config_table()
    ))
    .bind::<diesel::sql_types::Text, _>(table.name.as_str())
    .get_result::<Schema>(conn)?;
    Ok(pg_audit::QualifiedName::new(
        Some(pg_audit::Ident::with_kind(
            recorded.schema.as_deref().unwrap_or("public"),
            "schema",
        )?),
        table.name.clone(),
    ))
}

/// Whether `name` (`schema.table`, quoted as PostgreSQL prints it) names a relation.
pub(crate) fn relation_exists(conn: &mut PgConnection, name: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    Ok(
        diesel::sql_query("SELECT pg_catalog.to_regclass($1::text) IS NOT NULL AS exists")
            .bind::<diesel::sql_types::Text, _>(name)
            .get_result::<Exists>(conn)?
            .exists,
    )
}

/// A fixed choice of the engine's as clap's possible values: the engine lists and names them,
/// so help, completions and errors show exactly what it accepts.
fn choice<T, const N: usize>(
    all: [T; N],
    name: fn(T) -> &'static str,
) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = pg_audit::Error> + Copy + Send + Sync + 'static,
{
    PossibleValuesParser::new(all.map(|value| PossibleValue::new(name(value))))
        .map(|name| name.parse().expect("the engine parses the names it lists"))
}

/// `--period`: daily, weekly, monthly.
pub(crate) fn period() -> impl TypedValueParser<Value = PartitionPeriod> {
    choice(PartitionPeriod::ALL, PartitionPeriod::name)
}

/// `--level`: auto, row, statement.
pub(crate) fn level() -> impl TypedValueParser<Value = TriggerLevel> {
    choice(TriggerLevel::ALL, TriggerLevel::name)
}

/// `--operations`: insert, update, delete, truncate.
pub(crate) fn operation() -> impl TypedValueParser<Value = Operation> {
    choice(Operation::ALL, Operation::name)
}

/// `--capture`: trigger, wal.
pub(crate) fn capture() -> impl TypedValueParser<Value = Capture> {
    choice(Capture::ALL, Capture::name)
}
