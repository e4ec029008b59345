//! The administration commands, run against a database: history, tx, partitions, check.

use std::io::Write as _;

use clap::{Args, Subcommand};
use diesel::prelude::*;
use diesel::sql_types::{Jsonb, Nullable, Text};
use pg_audit::{AuditLog, QualifiedName, Retention};
use pg_audit_diesel::log::{AuditEntry, AuditReader, Page};
use pg_audit_diesel::utc_string;
use serde_json::{Map, Value, json};

use crate::output::Table;

pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Where to connect and which log to read.
#[derive(Debug, Args)]
pub(crate) struct Db {
    /// PostgreSQL URL, e.g. postgres://user@host/db.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema of the audit log.
    #[arg(long, value_name = "SCHEMA", default_value = pg_audit::sql::log::DEFAULT_SCHEMA)]
    log_schema: String,
    /// Name of the audit log.
    #[arg(long, value_name = "NAME", default_value = pg_audit::sql::log::DEFAULT_TABLE)]
    log_name: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Db {
    fn connect(&self) -> Result<(PgConnection, AuditLog)> {
        let url = self
            .database_url
            .as_deref()
            .ok_or("no database to connect to: pass --database-url or set DATABASE_URL")?;
        let conn = PgConnection::establish(url)
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        Ok((conn, AuditLog::named(&self.log_schema, &self.log_name)?))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum PartitionsCommand {
    /// List the log's partitions, oldest first: name, range, size.
    List(#[command(flatten)] Db),
    /// Create the current period's partition and the next N, moving rows the DEFAULT partition
    /// holds for their ranges; prints each partition as it is made.
    Ensure {
        /// How many periods after the current one.
        #[arg(long, value_name = "N", default_value_t = pg_audit::sql::log::DEFAULT_PREMAKE)]
        ahead: u32,
        #[command(flatten)]
        db: Db,
    },
    /// Detach (or with --drop, drop) the partitions whose whole range is older than the
    /// retention period; prints each as it goes.
    Prune {
        /// The retention period, a PostgreSQL interval: '90 days', '1 year'.
        #[arg(long, value_name = "INTERVAL")]
        older_than: String,
        /// Drop the partitions, and delete the DEFAULT partition's older rows, instead of
        /// detaching (detached partitions stay as tables to archive).
        #[arg(long)]
        drop: bool,
        #[command(flatten)]
        db: Db,
    },
}

/// `pg-audit history TABLE KEY`.
pub(crate) fn history(
    table: &str,
    key: &str,
    limit: i64,
    before: Option<i64>,
    db: &Db,
) -> Result<()> {
    let (mut conn, log) = db.connect()?;
    let table = QualifiedName::parse(table)?;
    let key = key_object(&mut conn, &log, &table, key)?;
    let page = Page { limit, before };
    let entries = AuditReader::with_log(log).history_of(&mut conn, &table, &key, page)?;
    print_entries(&entries, db.json);
    if entries.is_empty() && !db.json {
        eprintln!("no audit entries for {table} {key}");
    }
    Ok(())
}

/// `pg-audit tx TXID`.
pub(crate) fn tx(txid: i64, db: &Db) -> Result<()> {
    let (mut conn, log) = db.connect()?;
    let entries = AuditReader::with_log(log).transaction(&mut conn, txid)?;
    print_entries(&entries, db.json);
    if entries.is_empty() && !db.json {
        eprintln!("no audit entries for transaction {txid}");
    }
    Ok(())
}

fn print_entries(entries: &[AuditEntry], json: bool) {
    let mut table = if json {
        Table::new(&[
            "id",
            "changed_at",
            "tx_started_at",
            "txid",
            "operation",
            "schema_name",
            "table_name",
            "record_pk",
            "old_values",
            "new_values",
            "db_user",
            "context",
        ])
    } else {
        Table::new(&[
            "id",
            "changed_at",
            "operation",
            "table",
            "key",
            "user",
            "reason",
            "changes",
            "txid",
        ])
    };
    for e in entries {
        let context = e.context.to_json().unwrap_or(Value::Null);
        if json {
            table.push(vec![
                json!(e.id),
                json!(utc_string(e.changed_at)),
                json!(utc_string(e.tx_started_at)),
                json!(e.txid),
                json!(e.operation.keyword()),
                json!(e.schema_name),
                json!(e.table_name),
                e.record_pk.clone().unwrap_or(Value::Null),
                e.old_values.clone().unwrap_or(Value::Null),
                e.new_values.clone().unwrap_or(Value::Null),
                json!(e.db_user),
                context,
            ]);
        } else {
            let changes: Vec<String> = e
                .changes()
                .into_iter()
                .map(|(column, (old, new))| match (old, new) {
                    (Value::Null, new) if e.old_values.is_none() => {
                        format!("{column}={}", scalar(&new))
                    }
                    (old, Value::Null) if e.new_values.is_none() => {
                        format!("{column}={}", scalar(&old))
                    }
                    (old, new) => format!("{column}: {} → {}", scalar(&old), scalar(&new)),
                })
                .collect();
            table.push(vec![
                json!(e.id),
                json!(utc_string(e.changed_at)),
                json!(e.operation.keyword()),
                json!(format!("{}.{}", e.schema_name, e.table_name)),
                e.record_pk
                    .as_ref()
                    .map_or(Value::Null, |k| json!(key_text(k))),
                json!(e.context.get_user_id()),
                json!(e.context.get_change_reason()),
                json!(changes.join(", ")),
                json!(e.txid),
            ]);
        }
    }
    table.print(json);
}

/// `id=1`, `order_id=7,line_no=1`: the form `pg-audit history` takes back.
fn key_text(key: &Value) -> String {
    match key {
        Value::Object(columns) => columns
            .iter()
            .map(|(column, value)| format!("{column}={}", scalar(value)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The record key object for `key` as given on the command line: a JSON object, `name=value`
/// pairs separated by commas, or values in key order separated by commas, matched to the key
/// columns recorded at install.
fn key_object(
    conn: &mut PgConnection,
    log: &AuditLog,
    table: &QualifiedName,
    key: &str,
) -> Result<Value> {
    if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(key) {
        return Ok(Value::Object(object));
    }
    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = Jsonb)]
        primary_key: Value,
    }
    let recorded: Vec<Key> = diesel::sql_query(format!(
        "SELECT config -> 'primary_key' AS primary_key FROM {} WHERE table_name = $1 AND ($2::text IS NULL OR table_schema = $2)",
        log.config_table()
    ))
    .bind::<Text, _>(table.name.as_str())
    .bind::<Nullable<Text>, _>(table.schema.as_ref().map(|s| s.as_str()))
    .load(conn)?;
    let columns: Vec<String> = match recorded.as_slice() {
        [one] => serde_json::from_value(one.primary_key.clone())?,
        [] => {
            eprintln!(
                "note: no pg-audit install is recorded for {table}; taking its key to be `id`"
            );
            vec!["id".to_owned()]
        }
        _ => {
            return Err(format!(
                "several audited tables are named {}; qualify it as schema.table",
                table.name.as_str()
            )
            .into());
        }
    };
    // A number, boolean or quoted string as JSON; anything else as a string.
    let scalar = |v: &str| match serde_json::from_str::<Value>(v.trim()) {
        Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::String(_))) => value,
        _ => Value::String(v.to_owned()),
    };
    // `id=1` or `order_id=7,line_no=1`, as the history table prints keys, in any order.
    let named: Option<Map<String, Value>> = key
        .split(',')
        .map(|part| {
            let (name, value) = part.split_once('=')?;
            columns
                .iter()
                .any(|c| c == name.trim())
                .then(|| (name.trim().to_owned(), scalar(value)))
        })
        .collect();
    if let Some(named) = named.filter(|n| n.len() == columns.len()) {
        return Ok(Value::Object(named));
    }
    let values: Vec<&str> = if columns.len() == 1 {
        vec![key]
    } else {
        key.split(',').collect()
    };
    if values.len() != columns.len() {
        return Err(format!(
            "{table} is keyed by ({}): give {} values separated by commas, name=value pairs, or a JSON object",
            columns.join(", "),
            columns.len()
        )
        .into());
    }
    let object = columns
        .into_iter()
        .zip(values)
        .map(|(c, v)| (c, scalar(v)))
        .collect();
    Ok(Value::Object(object))
}

#[derive(QueryableByName)]
struct Partition {
    #[diesel(sql_type = Text)]
    partition_name: String,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>, deserialize_as = Option<pg_audit_diesel::log::LogTime>)]
    range_start: Option<pg_audit_diesel::log::LogTime>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>, deserialize_as = Option<pg_audit_diesel::log::LogTime>)]
    range_end: Option<pg_audit_diesel::log::LogTime>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    is_default: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total_bytes: i64,
}

fn time(t: Option<pg_audit_diesel::log::LogTime>) -> Value {
    t.map_or(Value::Null, |t| json!(utc_string(t.0)))
}

/// `pg-audit partitions ...`.
pub(crate) fn partitions(cmd: PartitionsCommand) -> Result<()> {
    match cmd {
        PartitionsCommand::List(db) => {
            let (mut conn, log) = db.connect()?;
            let parts: Vec<Partition> =
                diesel::sql_query(log.list_partitions_sql()).load(&mut conn)?;
            let mut table = Table::new(&["partition", "from", "until", "default", "bytes"]);
            for p in parts {
                table.push(vec![
                    json!(p.partition_name),
                    time(p.range_start),
                    time(p.range_end),
                    json!(p.is_default),
                    json!(p.total_bytes),
                ]);
            }
            table.print(db.json);
        }
        PartitionsCommand::Ensure { ahead, db } => {
            let (mut conn, log) = db.connect()?;
            #[derive(QueryableByName)]
            struct Created {
                #[diesel(sql_type = Text)]
                partition_name: String,
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                moved_rows: i64,
            }
            let mut table = Table::new(&["partition", "moved_rows"]);
            // One period at a time, so each partition is reported as soon as it exists.
            for k in 0..=ahead {
                let created: Vec<Created> =
                    diesel::sql_query(log.ensure_partitions_sql(k)).load(&mut conn)?;
                for c in created {
                    if !db.json {
                        println!(
                            "created {} (moved {} rows from the DEFAULT partition)",
                            c.partition_name, c.moved_rows
                        );
                        let _ = std::io::stdout().flush();
                    }
                    table.push(vec![json!(c.partition_name), json!(c.moved_rows)]);
                }
            }
            if db.json {
                table.print(true);
            } else if table.is_empty() {
                println!("every partition up to {ahead} periods ahead exists");
            }
        }
        PartitionsCommand::Prune {
            older_than,
            drop,
            db,
        } => {
            let (mut conn, log) = db.connect()?;
            let retention = if drop {
                Retention::Drop
            } else {
                Retention::Detach
            };
            #[derive(QueryableByName)]
            struct Candidate {
                #[diesel(sql_type = Text)]
                partition_name: String,
            }
            let candidates: Vec<Candidate> = diesel::sql_query(format!(
                "SELECT partition_name FROM ({}) AS p
                  WHERE NOT is_default AND range_end <= pg_catalog.clock_timestamp() - $1::interval
                  ORDER BY range_start",
                log.list_partitions_sql()
            ))
            .bind::<Text, _>(&older_than)
            .load(&mut conn)?;
            #[derive(QueryableByName)]
            struct Pruned {
                #[diesel(sql_type = Text)]
                partition_name: String,
                #[diesel(sql_type = Text)]
                action: String,
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                rows: i64,
            }
            let mut table = Table::new(&["partition", "action", "rows"]);
            let report = |pruned: Vec<Pruned>, table: &mut Table| {
                for p in pruned {
                    if !db.json {
                        println!("{} {} ({} rows)", p.action, p.partition_name, p.rows);
                        let _ = std::io::stdout().flush();
                    }
                    table.push(vec![
                        json!(p.partition_name),
                        json!(p.action),
                        json!(p.rows),
                    ]);
                }
            };
            for (i, c) in candidates.iter().enumerate() {
                if !db.json {
                    println!("[{}/{}] {} ...", i + 1, candidates.len(), c.partition_name);
                }
                let pruned = diesel::sql_query(log.prune_partition_sql(
                    &older_than,
                    retention,
                    &c.partition_name,
                )?)
                .load(&mut conn)?;
                report(pruned, &mut table);
            }
            if drop {
                // Old rows in the DEFAULT partition.
                let pruned = diesel::sql_query(log.prune_partitions_sql(&older_than, retention)?)
                    .load(&mut conn)?;
                report(pruned, &mut table);
            }
            if db.json {
                table.print(true);
            } else if table.is_empty() {
                println!("nothing is older than {older_than}");
            }
        }
    }
    Ok(())
}

/// `pg-audit check`: `Ok(true)` when nothing drifted.
pub(crate) fn check(db: &Db) -> Result<bool> {
    let (mut conn, log) = db.connect()?;
    #[derive(QueryableByName)]
    struct Problem {
        #[diesel(sql_type = Text)]
        table_schema: String,
        #[diesel(sql_type = Text)]
        table_name: String,
        #[diesel(sql_type = Text)]
        problem: String,
    }
    let problems: Vec<Problem> = diesel::sql_query(log.check_sql()).load(&mut conn)?;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let audited: Count =
        diesel::sql_query(format!("SELECT count(*) AS n FROM {}", log.config_table()))
            .get_result(&mut conn)?;
    let mut table = Table::new(&["table", "problem"]);
    for p in &problems {
        table.push(vec![
            json!(format!("{}.{}", p.table_schema, p.table_name)),
            json!(p.problem),
        ]);
    }
    if db.json {
        table.print(true);
    } else if problems.is_empty() {
        println!("ok: {} audited table(s), installed as recorded", audited.n);
    } else {
        table.print(false);
        println!(
            "\n{} problem(s); re-run the pg-audit migrations (or `pg-audit sql trigger`) to reinstall",
            problems.len()
        );
    }
    Ok(problems.is_empty())
}
