//! The `pg-audit` program: SQL to install pg-audit without Diesel, and the administration of
//! an audit log (history, transactions, partitions, drift).

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

mod admin;
mod archive;
mod baseline;
mod capture;
mod export;
mod import;
mod inspect;
mod metrics;
mod options;
mod output;
mod seal;
mod sql;

/// pg-audit: an audit log of every INSERT, UPDATE, DELETE and TRUNCATE on chosen PostgreSQL
/// tables.
///
/// Commands that read a database take --database-url (or DATABASE_URL). Results go to standard
/// output; errors, diagnostics (-v, or RUST_LOG) and progress bars (on a terminal) to standard
/// error. Exit status: 0 on success, 1 when `check` finds drift, 2 on errors.
#[derive(Debug, Parser)]
#[command(name = "pg-audit", version, about, long_about)]
struct Cli {
    /// Say more on standard error: -v what is done, -vv the statements' details. RUST_LOG, when
    /// set, chooses instead (e.g. RUST_LOG=pg_audit=debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// How diagnostics are written: `text` lines, or `json`, one object a line (for a log
    /// collector).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print SQL that installs the audit log or a table's audit triggers; pipe it into
    /// `psql -v ON_ERROR_STOP=1`.
    #[command(subcommand)]
    Sql(sql::SqlCommand),
    /// Write each row an audited table holds now to the log as a SNAPSHOT entry, so rows
    /// never changed since auditing began have a history, a state at any time and a place in
    /// the table as of a time. Runs in short batches in key order (a writer waits for one
    /// batch at most) and resumes where an interrupted run stopped.
    Baseline(baseline::BaselineArgs),
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
        /// Include entries archived to Parquet (`pg-audit archive`), reading from each file only
        /// the row groups that can hold the record.
        #[arg(long)]
        archived: bool,
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
    Partitions(inspect::PartitionsCommand),
    /// Compare the installed triggers with what was recorded at install: a trigger missing,
    /// disabled or edited, an audited column dropped. Exits 1 on drift.
    Check(#[command(flatten)] options::Db),
    /// Serve the audit admin (activity, records with diffs and blame, revert and restore,
    /// tables, partitions) in a browser. On loopback without credentials it is read-only; with
    /// --token or --basic-auth every request must sign in and may revert and restore as that
    /// user; on any other address credentials are required.
    Admin {
        /// The address to listen on.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// A token (at least 16 characters) requests present as `Authorization: Bearer`, or as
        /// the basic-auth password.
        #[arg(long, env = "PG_AUDIT_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// USER:PASSWORD for HTTP basic auth (browsers ask for them).
        #[arg(
            long,
            value_name = "USER:PASSWORD",
            env = "PG_AUDIT_ADMIN_BASIC_AUTH",
            hide_env_values = true
        )]
        basic_auth: Option<String>,
        /// Also serve Prometheus metrics at http://ADDR/metrics (requests and their durations
        /// by page, the age of the newest seal, the ids past the seals) and a health check at
        /// /health (200 when the database answers), without credentials: keep ADDR private.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        db: options::Db,
    },
    /// Move partitions whose whole range ended more than --older-than ago to Parquet files
    /// (zstd, one per partition) in a directory or s3://bucket/prefix: each written, read back
    /// and compared row by row, recorded in the archive catalogue, then dropped. Resumable: run
    /// it again after an interruption. `archive list` shows the catalogue.
    #[command(args_conflicts_with_subcommands = true)]
    Archive {
        #[command(subcommand)]
        list: Option<ArchiveCommand>,
        /// A PostgreSQL interval: '6 months', '1 year', '90 days'.
        #[arg(
            long,
            value_name = "INTERVAL",
            allow_hyphen_values = true,
            required = true
        )]
        older_than: Option<String>,
        /// A directory (made if missing) or s3://bucket/prefix (S3 settings from the
        /// environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
        /// AWS_ALLOW_HTTP).
        #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX", required = true)]
        to: Option<String>,
        #[command(flatten)]
        db: options::Db,
    },
    /// Seal the log rows whose transactions have all ended: a hash chain in id order, stored
    /// append-only. Writers never wait on it. Run it from cron (or `SELECT * FROM
    /// audit.auditlog_seal()` from pg_cron); --export writes every seal to a file to keep
    /// outside the database.
    Seal {
        /// The most rows one seal covers.
        #[arg(long, value_name = "N", default_value_t = pg_audit::sql::seal::DEFAULT_SEAL_ROWS, value_parser = clap::value_parser!(u32).range(1..))]
        max_rows: u32,
        /// Write every seal, as JSON lines, to this file.
        #[arg(long, value_name = "FILE")]
        export: Option<std::path::PathBuf>,
        /// Keep sealing: seal, wait this many seconds, and again, on one connection, until
        /// Ctrl-C or SIGTERM (instead of a run from cron). Its commits do not wait for the disk:
        /// a crash can lose the last second's seals, which the next run makes again.
        #[arg(long, value_name = "SECONDS", conflicts_with = "export")]
        every: Option<u64>,
        /// Sessions that read and digest the seals' rows, one seal each at a time, beside the
        /// one recording them. More than one pays when a backlog is sealed (the first seal of
        /// a large log); a run sealing a minute's rows makes one seal, and a session more costs
        /// it a connection.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        #[command(flatten)]
        db: options::Db,
    },
    /// Recompute every seal from the log and the archived files, and report the first entry
    /// changed, deleted or inserted after its seal, and any seal altered or removed. Values
    /// erased by a recorded redaction still verify. Exits 1 when something was altered.
    Verify {
        /// The seals as exported by `pg-audit seal --export`, to compare with the database's.
        #[arg(long, value_name = "FILE")]
        seals: Option<std::path::PathBuf>,
        /// Continue from the last verification that found nothing altered, kept in FILE
        /// (written when nothing is altered; a missing file means a full verification): the
        /// seals it covered are checked by their chain only, the later ones recomputed. Run a
        /// full verification (without it) regularly too.
        #[arg(long, value_name = "FILE")]
        since_last: Option<std::path::PathBuf>,
        #[command(flatten)]
        jobs: options::Jobs,
        #[command(flatten)]
        db: options::Db,
    },
    /// Import the history another audit tool kept — audit-trigger's `audit.logged_actions` or
    /// supa_audit's `audit.record_version` — into the log: each row as the entry pg-audit's
    /// triggers would have written, with its time, user and transaction where the source has
    /// them. Resumable and idempotent: running it again imports only what was logged since.
    Import(import::ImportArgs),
    /// Write the entries changed between two times (of one table, of one user) to a file for
    /// auditors — JSON lines, CSV or Parquet, live and archived entries — with a proof beside it
    /// (FILE.proof.jsonl): the seals covering them and every row digest those seals cover.
    Export(export::ExportArgs),
    /// Check an export against its proof, without the database: the file is the one exported,
    /// each entry is exactly a row its seals cover, and the seals are intact and chained; with
    /// --seals, that they are the seals kept apart. Exits 1 when anything differs or an entry is
    /// not sealed.
    VerifyExport {
        /// The exported file.
        file: std::path::PathBuf,
        /// Its proof [default: FILE.proof.jsonl].
        #[arg(long, value_name = "FILE")]
        proof: Option<std::path::PathBuf>,
        /// The seals as exported by `pg-audit seal --export` and kept apart from the database.
        #[arg(long, value_name = "FILE")]
        seals: Option<std::path::PathBuf>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Erase a person's data from every log entry, live and archived: the named columns of one
    /// record (--table and --key), or a user id in contexts (--user). Each value becomes
    /// `"[redacted]"`; the redaction is recorded (who, when, why, which entries) and the seals
    /// still verify.
    Redact {
        /// The record's table, as `table` or `schema.table`.
        #[arg(long, requires = "key", conflicts_with = "user")]
        table: Option<String>,
        /// The record's key, as `pg-audit history` takes it.
        #[arg(long, requires = "table", allow_hyphen_values = true)]
        key: Option<String>,
        /// The columns to erase (default: every column but the key's).
        #[arg(long, value_delimiter = ',', requires = "table")]
        columns: Option<Vec<String>>,
        /// Erase this user id from the contexts of every entry.
        #[arg(long, value_name = "USER_ID", allow_hyphen_values = true)]
        user: Option<String>,
        /// Why (recorded with the redaction).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        db: options::Db,
    },
    /// Capture the tables installed with `--capture wal` from the write-ahead log into the
    /// log, until stopped (Ctrl-C or SIGTERM, which write what is held first); `capture status`
    /// shows how far behind it is, `capture drop-slot` removes its replication slot.
    Capture(capture::CaptureArgs),
    /// Print a shell completion script: `pg-audit completions bash > /etc/bash_completion.d/pg-audit`,
    /// `pg-audit completions zsh > "${fpath[1]}/_pg-audit"`, `pg-audit completions fish >
    /// ~/.config/fish/completions/pg-audit.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or with --out-dir write one page per command:
    /// `pg-audit man | man -l -`.
    Man {
        /// Write pg-audit.1 and a page per subcommand (pg-audit-history.1, ...) here.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// The archived partitions: range, rows, file size, location.
    List(#[command(flatten)] options::Db),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.log_format == "json");
    let result = match cli.command {
        Command::Sql(cmd) => sql::run(cmd),
        Command::History {
            table,
            key,
            limit,
            before,
            archived,
            db,
        } => inspect::history(&table, &key, limit, before, archived, &db),
        Command::Tx { txid, db } => inspect::tx(txid, &db),
        Command::Baseline(args) => baseline::baseline(&args),
        Command::Export(args) => export::export(&args),
        Command::Import(args) => import::import(&args),
        Command::VerifyExport {
            file,
            proof,
            seals,
            json,
        } => match export::verify_export(&file, proof.as_deref(), seals.as_deref(), json) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Partitions(cmd) => inspect::partitions(cmd),
        Command::Check(db) => match inspect::check(&db) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Archive {
            list: Some(ArchiveCommand::List(db)),
            ..
        } => archive::list(&db),
        Command::Archive {
            older_than: Some(older_than),
            to: Some(to),
            db,
            ..
        } => archive::archive(&older_than, &to, &db),
        Command::Archive { .. } => Err("pass --older-than and --to".into()),
        Command::Seal {
            max_rows,
            export,
            every: None,
            jobs,
            db,
        } => seal::seal(max_rows, export.as_deref(), jobs, &db),
        Command::Seal {
            max_rows,
            every: Some(every),
            jobs,
            db,
            ..
        } => seal::keep_sealing(max_rows, std::time::Duration::from_secs(every), jobs, &db),
        Command::Verify {
            seals,
            since_last,
            jobs,
            db,
        } => match seal::verify(seals.as_deref(), since_last.as_deref(), jobs, &db) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Redact {
            table,
            key,
            columns,
            user,
            reason,
            db,
        } => seal::redact(
            seal::RedactArgs {
                table: table.as_deref(),
                key: key.as_deref(),
                columns,
                user: user.as_deref(),
                reason: &reason,
            },
            &db,
        ),
        Command::Capture(args) => capture::run(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pg-audit", &mut script);
            output::print(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Man { out_dir } => man(out_dir.as_deref()),
        Command::Admin {
            listen,
            token,
            basic_auth,
            metrics_listen,
            db,
        } => admin::serve(listen, token, basic_auth, metrics_listen, &db),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes, each printed once (as `anyhow`'s `{:#}` does; a cause
            // whose text is already there, as some libraries repeat their sources, is skipped).
            output::diagnostic(output::Level::Error, &pg_audit::error_chain(&*e));
            ExitCode::from(2)
        }
    }
}

/// Diagnostics on standard error: RUST_LOG when set, else warnings, or more with -v; as JSON
/// objects, one a line, with `json`.
fn init_tracing(verbose: u8, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbose {
            0 => "warn",
            1 => "pg_audit=info,warn",
            _ => "pg_audit=debug,info",
        })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        output::json_diagnostics();
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// `pg-audit man`.
fn man(out_dir: Option<&std::path::Path>) -> options::Result<()> {
    let command = Cli::command();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .map_err(|e| format!("cannot write the pages to {}: {e}", dir.display()))?;
            output::line(&format!("wrote the manual pages to {}", dir.display()));
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            output::print(&String::from_utf8_lossy(&page));
        }
    }
    Ok(())
}
