//! The `pg-audit` program: SQL to install pg-audit without Diesel, and the administration of
//! an audit log (history, transactions, partitions, drift).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod options;
mod output;
mod sql;

/// pg-audit: an audit log of every INSERT, UPDATE and DELETE on chosen PostgreSQL tables.
///
/// Commands that read a database take --database-url (or DATABASE_URL). Exit status: 0 on
/// success, 1 when `check` finds drift, 2 on errors.
#[derive(Debug, Parser)]
#[command(name = "pg-audit", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print SQL that installs the audit log or a table's audit triggers; pipe it into
    /// `psql -v ON_ERROR_STOP=1`.
    #[command(subcommand)]
    Sql(sql::SqlCommand),
    /// The history of one record, newest first: `pg-audit history users 42`, or for a
    /// composite key `pg-audit history order_lines acme,1` (values in key order) or
    /// `'{"org": "acme", "line_no": 1}'`.
    History {
        /// The table, as `table` or `schema.table`.
        table: String,
        /// The record's key: a value, comma-separated values in key order, `name=value` pairs
        /// (`order_id=7,line_no=1`, as the output prints keys), or a JSON object.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Only entries older than this entry id (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        #[command(flatten)]
        db: options::Db,
    },
    /// Everything one transaction changed, in order.
    Tx {
        /// The transaction id (the log's `txid`).
        txid: i64,
        #[command(flatten)]
        db: options::Db,
    },
    /// List, create ahead, and prune the log's partitions.
    #[command(subcommand)]
    Partitions(admin::PartitionsCommand),
    /// Compare the installed triggers with what was recorded at install: a trigger missing,
    /// disabled or edited, an audited column dropped. Exits 1 on drift.
    Check(#[command(flatten)] options::Db),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sql(cmd) => sql::run(cmd),
        Command::History {
            table,
            key,
            limit,
            before,
            db,
        } => admin::history(&table, &key, limit, before, &db),
        Command::Tx { txid, db } => admin::tx(txid, &db),
        Command::Partitions(cmd) => admin::partitions(cmd),
        Command::Check(db) => match admin::check(&db) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes, each printed once (as `anyhow`'s `{:#}` does).
            let mut message = format!("error: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
