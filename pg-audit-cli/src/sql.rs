//! `pg-audit sql ...`: print installation SQL.

use clap::{Args, Subcommand};
use pg_audit::{
    AuditLog, Capture, Ident, Operation, PartitionPeriod, QualifiedName, TriggerLevel, TriggerSpec,
};

use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable, Text};
use pg_audit::sql::catalog::PRIMARY_KEY_SQL;

use std::path::PathBuf;

use pg_audit_runtime::migration::{self, Layout, SqlMigration};

use crate::options::{LogArgs, Result};

/// A row of [`PRIMARY_KEY_SQL`]: a key column, or a table that does not exist.
#[derive(QueryableByName)]
pub(crate) struct KeyColumn {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) column_name: Option<String>,
    #[diesel(sql_type = Bool)]
    pub(crate) table_exists: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SqlCommand {
    /// SQL that creates the audit log: its schema, the partitioned table with its DEFAULT
    /// partition and indexes, the partition-maintenance functions, and the first partitions.
    /// Safe to run again: it creates only what is missing and replaces the functions.
    Table(TableArgs),
    /// SQL that installs (or with --uninstall removes) the audit triggers of one table. It
    /// first checks the table, its key and every named column, and fails with a message naming
    /// the problem. Installing again replaces the previous configuration.
    Trigger(Box<TriggerArgs>),
    /// SQL that lets an application role read the audit log (to show history) and nothing
    /// more: it cannot change audit rows or run maintenance. Writing audited tables needs no
    /// privilege on the log.
    Grant(GrantArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    #[command(flatten)]
    log: LogArgs,
    /// The role to grant read access to, exactly as named in PostgreSQL.
    #[arg(long, value_name = "ROLE")]
    role: String,
}

/// Where the SQL goes instead of stdout: a migration file of the application's.
#[derive(Debug, Args)]
pub(crate) struct MigrationOut {
    /// Instead of printing, write the SQL as a sqlx migration in DIR
    /// (`<version>_pg_audit_<what>.up.sql` and `.down.sql`, numbered after every migration
    /// there), for `sqlx migrate run` or `sqlx::migrate!()`. Nothing is written when DIR
    /// already holds the same SQL.
    #[arg(long, value_name = "DIR", conflicts_with = "diesel_migrations")]
    sqlx_migrations: Option<PathBuf>,
    /// Instead of printing, write the SQL as a Diesel migration in DIR
    /// (`<date>_pg_audit_<what>/up.sql` and `down.sql`, dated after every migration there).
    /// Nothing is written when DIR already holds the same SQL.
    #[arg(long, value_name = "DIR")]
    diesel_migrations: Option<PathBuf>,
}

impl MigrationOut {
    /// Writes `migration` where asked; `false` when it is to be printed instead. A table's
    /// migration (`after` the log it writes to) needs that log's migration in the folder first,
    /// or it would run before the log exists.
    fn write(&self, migration: SqlMigration, after: Option<&AuditLog>) -> Result<bool> {
        let (dir, layout, flag) = match (&self.sqlx_migrations, &self.diesel_migrations) {
            (Some(dir), _) => (dir, Layout::Sqlx, "--sqlx-migrations"),
            (None, Some(dir)) => (dir, Layout::Diesel, "--diesel-migrations"),
            (None, None) => return Ok(false),
        };
        if let Some(log) = after {
            let log = migration::log_migration(log);
            let written =
                migration::written(dir, layout).map_err(|e| format!("{e}: {}", e.source))?;
            if !written.iter().any(|w| w.description == log.description()) {
                return Err(format!(
                    "{} holds no migration creating the audit log {}, which this table's \
                     triggers write to; write it first: pg-audit sql table {flag} {}",
                    dir.display(),
                    log.description()
                        .trim_start_matches("pg-audit: the audit log "),
                    dir.display()
                )
                .into());
            }
        }
        let written = pg_audit_runtime::migration::write_files(dir, layout, &[migration])
            .map_err(|e| format!("{e}: {}", e.source))?;
        match written.first() {
            Some(path) => crate::output::print(&format!("wrote {}\n", path.display())),
            None => crate::output::print(&format!(
                "{} already holds this SQL: nothing written\n",
                dir.display()
            )),
        }
        Ok(true)
    }
}

#[derive(Debug, Args)]
pub(crate) struct TableArgs {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    out: MigrationOut,
    /// Time covered by one partition.
    #[arg(long, value_name = "PERIOD", default_value = "monthly", value_parser = crate::options::period())]
    period: PartitionPeriod,
    /// How many partitions after the current one to create now. Run
    /// `SELECT * FROM <schema>.<name>_ensure_partitions(N)` regularly (cron, pg_cron) to keep
    /// creating them ahead; writes never fail for want of one (a DEFAULT partition takes them).
    #[arg(long, value_name = "N", default_value_t = pg_audit::sql::log::DEFAULT_PREMAKE)]
    premake: u32,
}

#[derive(Debug, Args)]
pub(crate) struct TriggerArgs {
    /// The audited table, as `table` or `schema.table`. Names are taken exactly as written
    /// (case-sensitive, no quotes). A table name containing a dot needs --table-schema.
    #[arg(long, value_name = "TABLE")]
    table: String,
    /// The audited table's schema, when --table must be taken whole.
    #[arg(long, value_name = "SCHEMA")]
    table_schema: Option<String>,
    /// Columns identifying a row: the primary key, or the columns of a unique index. Without
    /// it, the table's primary key is read from the database (--database-url or DATABASE_URL).
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    primary_key: Option<Vec<String>>,
    /// The database to read the table's primary key from, when --primary-key is not given.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Log only these columns; an UPDATE changing none of them logs nothing.
    #[arg(
        long,
        value_name = "COLUMNS",
        value_delimiter = ',',
        conflicts_with = "exclude_fields"
    )]
    track_only: Option<Vec<String>>,
    /// Log every column but these; their values never reach the log in any form.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    exclude_fields: Option<Vec<String>>,
    /// Log these columns as keyed digests (HMAC-SHA-256 with a key only the log's owner can
    /// read): entries show that the value changed and equal values compare equal, but the
    /// values cannot be read or guessed from the log.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    mask_fields: Option<Vec<String>>,
    /// Log only rows for which this SQL boolean is true. `NEW` is the row after the change and
    /// `OLD` the row before; on INSERT both are the inserted row, on DELETE both the deleted
    /// row. Example: "NEW.is_active".
    #[arg(long, value_name = "EXPR")]
    condition: Option<String>,
    /// Operations to log, comma-separated.
    #[arg(
        long,
        value_name = "OPS",
        value_delimiter = ',',
        default_value = "insert,update,delete,truncate",
        value_parser = crate::options::operation()
    )]
    operations: Vec<Operation>,
    /// `auto`: per operation, the level measured fastest (docs/performance.md); `row`: one
    /// trigger call per logged row, rows not logged filtered before any call; `statement`: one
    /// call per statement over transition tables.
    #[arg(long, value_name = "LEVEL", default_value = "auto", value_parser = crate::options::level())]
    level: TriggerLevel,
    /// `trigger`: inside the writing transaction; `wal`: from the write-ahead log by the
    /// capture worker (`pg-audit capture`), after commit — sets REPLICA IDENTITY FULL and adds
    /// the table to the log's publication.
    #[arg(long, value_name = "PATH", default_value = "trigger", value_parser = crate::options::capture())]
    capture: Capture,
    #[command(flatten)]
    log: LogArgs,
    /// Print SQL that removes the triggers instead (the log keeps its rows).
    #[arg(long, conflicts_with_all = ["sqlx_migrations", "diesel_migrations"])]
    uninstall: bool,
    #[command(flatten)]
    out: MigrationOut,
}

pub(crate) fn run(cmd: SqlCommand) -> Result<()> {
    let sql = match cmd {
        SqlCommand::Table(args) => {
            let log = args.log.log()?.period(args.period).premake(args.premake);
            if args.out.write(migration::log_migration(&log), None)? {
                return Ok(());
            }
            log.create_sql()
        }
        SqlCommand::Grant(args) => args
            .log
            .log()?
            .grant_read_sql(&Ident::with_kind(args.role.as_str(), "role")?),
        SqlCommand::Trigger(args) => {
            let log = args.log.log()?;
            let table = match &args.table_schema {
                Some(schema) => QualifiedName::new(
                    Some(Ident::with_kind(schema.as_str(), "schema")?),
                    Ident::with_kind(args.table.as_str(), "table")?,
                ),
                None => QualifiedName::parse(&args.table)?,
            };
            let spec = |primary_key: Vec<String>| {
                let mut spec = TriggerSpec::builder(table.clone())
                    .primary_key(primary_key)
                    .operations(args.operations.clone())
                    .level(args.level)
                    .capture(args.capture);
                if let Some(cols) = &args.track_only {
                    spec = spec.track_only(cols.clone());
                }
                if let Some(cols) = &args.exclude_fields {
                    spec = spec.exclude_fields(cols.clone());
                }
                if let Some(cols) = &args.mask_fields {
                    spec = spec.mask(cols.clone());
                }
                if let Some(condition) = &args.condition {
                    spec = spec.condition(condition.clone());
                }
                spec.build()
            };
            let spec = match &args.primary_key {
                Some(columns) => spec(columns.clone())?,
                // Removing triggers needs no key.
                None if args.uninstall => spec(vec!["id".to_owned()])?,
                None => {
                    // Mistakes in the other options first, before asking the database; the
                    // key itself is checked against the real one below.
                    match spec(vec!["id".to_owned()]) {
                        Ok(_) | Err(pg_audit::Error::ExcludedPrimaryKey { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    spec(table_primary_key(&table, args.database_url.as_deref())?)?
                }
            };
            if args.uninstall {
                spec.uninstall_sql(&log)
            } else if args
                .out
                .write(migration::table_migration(&spec, &log, None), Some(&log))?
            {
                return Ok(());
            } else {
                spec.install_sql(&log)
            }
        }
    };
    // One transaction: a failed check leaves nothing half-installed.
    crate::output::print(&format!("BEGIN;\n\n{sql}\nCOMMIT;\n"));
    Ok(())
}

/// The primary-key columns of `table`, read from the database at `url`.
fn table_primary_key(table: &QualifiedName, url: Option<&str>) -> Result<Vec<String>> {
    let url = url.ok_or_else(|| {
        format!(
            "no key for {table}: pass --primary-key, or --database-url (or DATABASE_URL) to read \
             the table's primary key"
        )
    })?;
    let mut conn =
        PgConnection::establish(&pg_audit::session::pin_conninfo(url)?).map_err(|e| {
            format!("cannot connect to the database to read {table}'s primary key: {e}")
        })?;
    // The program's session resolves no name through a search path (its path holds only
    // pg_catalog): an unqualified table is read from `public`.
    let qualified = match &table.schema {
        Some(_) => table.clone(),
        None => QualifiedName::new(
            Some(pg_audit::Ident::with_kind("public", "schema")?),
            table.name.clone(),
        ),
    };
    let columns: Vec<KeyColumn> = diesel::sql_query(PRIMARY_KEY_SQL)
        .bind::<Text, _>(qualified.to_string())
        .load(&mut conn)?;
    if columns.iter().any(|c| !c.table_exists) {
        return Err(format!(
            "table {qualified} does not exist; create it (run the application's own migrations) \
             before installing its audit triggers{}",
            if table.schema.is_none() {
                ", or name its schema (--table schema.table) or pass --primary-key"
            } else {
                ""
            }
        )
        .into());
    }
    if columns.is_empty() {
        return Err(format!(
            "table {table} has no primary key: add one, or pass --primary-key with the columns of \
             a unique index"
        )
        .into());
    }
    Ok(columns.into_iter().filter_map(|c| c.column_name).collect())
}
