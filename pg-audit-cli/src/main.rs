//! The `pg-audit` program.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod sql;

/// pg-audit: an audit log of every INSERT, UPDATE and DELETE on chosen PostgreSQL tables.
#[derive(Debug, Parser)]
#[command(name = "pg-audit", version, about, long_about = None)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sql(cmd) => sql::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
