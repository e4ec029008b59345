//! The commands that inspect a database's log: history, tx, partitions, check.

use clap::Subcommand;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use pg_audit::sql::shape::entry_columns;
use pg_audit::{QualifiedName, Retention};
use pg_audit_diesel::log::{
    AuditEntry, AuditReader, KeyMismatch, Page, key_text, parse_key, value_text,
};
use pg_audit_diesel::{rfc3339, utc_string};
use serde_json::{Value, json};

use crate::options::{Db, Result};
use crate::output::{Progress, Table};

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
    /// Count the entries not counted yet into the log's counts (entries per table, operation,
    /// user, UTC day and block of ids), which the admin's chart and filters read instead of
    /// walking the log. Run it every minute or so from cron; it stops at transactions still
    /// writing, and the next run counts their entries.
    Count(#[command(flatten)] Db),
    /// Detach (or with --drop, drop) the partitions whose whole range is older than the
    /// retention period; prints each as it goes.
    Prune {
        /// The retention period, a PostgreSQL interval: '90 days', '1 year'.
        #[arg(long, value_name = "INTERVAL", allow_hyphen_values = true)]
        older_than: String,
        /// Drop the partitions, and delete the DEFAULT partition's older rows, instead of
        /// detaching (detached partitions stay as tables to archive).
        #[arg(long)]
        drop: bool,
        #[command(flatten)]
        db: Db,
    },
}

/// `pg-audit partitions count`: counts in steps of
/// [`DEFAULT_COUNT_ROWS`](pg_audit::sql::counts::DEFAULT_COUNT_ROWS), each committed, until
/// nothing is left or what is left is held by transactions still running.
fn count(db: &Db) -> Result<()> {
    #[derive(QueryableByName)]
    struct Counted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        through_id: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        behind: i64,
    }
    let (mut conn, log) = db.connect()?;
    let sql = log.count_sql(pg_audit::sql::counts::DEFAULT_COUNT_ROWS);
    // No row: another count holds the counts' lock (an overlapping cron run, say).
    // Each call a transaction of its own, at READ COMMITTED whatever the database's default
    // (the count reads rows committed after it began, and refuses another level).
    let run = |conn: &mut PgConnection| -> Result<Option<Counted>> {
        let rows = conn
            .build_transaction()
            .read_committed()
            .run(|conn| diesel::sql_query(&sql).load::<Counted>(conn))?;
        Ok(rows.into_iter().next())
    };
    let Some(mut counted) = run(&mut conn)? else {
        Table::new(&["through_id", "behind"]).finish(
            db.json,
            "another count of this log is running (pg-audit partitions count, or its function); this run counted nothing",
            "",
        );
        return Ok(());
    };
    let progress = Progress::new(0, "counting");
    // A call that sees transactions running counts up to what the previous call saw: a few
    // more calls, a moment apart, let the ones running now end.
    let mut still = 0;
    while counted.behind > 0 && still < 10 {
        progress.at(
            "counting",
            0,
            0,
            &format!(
                "through id {}, {} behind",
                counted.through_id, counted.behind
            ),
        );
        let Some(next) = run(&mut conn)? else {
            break;
        };
        if next.through_id == counted.through_id {
            still += 1;
            std::thread::sleep(std::time::Duration::from_millis(200));
        } else {
            still = 0;
        }
        counted = next;
    }
    drop(progress);
    let mut table = Table::new(&["through_id", "behind"]);
    table.push(vec![json!(counted.through_id), json!(counted.behind)]);
    table.finish(
        db.json,
        "",
        &format!(
            "every entry up to id {} is counted{}",
            counted.through_id,
            if counted.behind > 0 {
                "; the ids past it belong to transactions still running (or rolled back): the next run counts them"
            } else {
                ""
            }
        ),
    );
    Ok(())
}

/// `pg-audit history TABLE KEY`.
pub(crate) fn history(
    table: &str,
    key: &str,
    limit: u32,
    before: Option<i64>,
    archived: bool,
    db: &Db,
) -> Result<()> {
    let (mut conn, log) = db.connect()?;
    let reader = AuditReader::with_log(log);
    let table = QualifiedName::parse(table)?;
    let key = key_object(&mut conn, &reader, &table, key)?;
    let table = crate::options::qualify(&mut conn, reader.log(), &table)?;
    let page = Page { limit, before };
    let mut entries = reader.history_of(&mut conn, &table, &key, page)?;
    if archived {
        let mut older = crate::archive::history(db, &table, &key)?;
        older.entries.retain(|e| before.is_none_or(|b| e.id < b));
        entries = older.merged_with(entries);
        entries.truncate(limit as usize);
    }
    let empty = format!("no audit entries for {table} {key}");
    print_entries(&entries, db.json, &crate::output::escape_controls(&empty));
    Ok(())
}

/// `pg-audit tx TXID`.
pub(crate) fn tx(txid: i64, db: &Db) -> Result<()> {
    let (mut conn, log) = db.connect()?;
    let entries = AuditReader::with_log(log).transaction(&mut conn, txid)?;
    print_entries(
        &entries,
        db.json,
        &format!("no audit entries for transaction {txid}"),
    );
    Ok(())
}

/// Entries as the program shows them (`empty` said when there are none): with `json` every
/// column of the log, else a row each with its changes.
fn print_entries(entries: &[AuditEntry], json: bool, empty: &str) {
    if json {
        let columns: Vec<&'static str> = entry_columns().map(|c| c.name).collect();
        let mut table = Table::new(&columns);
        for e in entries {
            table.push(columns.iter().map(|c| entry_field(e, c)).collect());
        }
        table.finish(true, empty, "");
        return;
    }
    let mut table = Table::new(&[
        "id",
        "changed_at",
        "operation",
        "table",
        "key",
        "user",
        "reason",
        "changes",
        "txid",
    ]);
    for e in entries {
        // Key by key inside JSON columns: `meta.score: 3 → 99`.
        let side = |v: &Option<Value>| v.as_ref().map_or_else(|| "(absent)".to_owned(), value_text);
        let changes: Vec<String> = e.schema_changes().unwrap_or_else(|| {
            e.changed_paths()
                .into_iter()
                .map(|c| {
                    if e.old_values.is_none() {
                        format!("{}={}", c.path, side(&c.after))
                    } else if e.new_values.is_none() {
                        format!("{}={}", c.path, side(&c.before))
                    } else {
                        format!("{}: {} → {}", c.path, side(&c.before), side(&c.after))
                    }
                })
                .collect()
        });
        table.push(vec![
            json!(e.id),
            json!(utc_string(e.changed_at)),
            json!(e.operation.keyword()),
            json!(format!("{}.{}", e.schema_name, e.table_name)),
            e.record_pk
                .as_ref()
                .map_or(Value::Null, |k| json!(key_text(k))),
            json!(e.context.user_id.as_deref()),
            json!(e.context.change_reason.as_deref()),
            json!(changes.join(", ")),
            json!(e.txid),
        ]);
    }
    table.finish(false, empty, "");
}

/// The value of one of the log's entry columns (`--json` prints every one, by its name): the
/// entry as it serializes, so the program and the library's serde agree.
fn entry_field(e: &AuditEntry, column: &str) -> Value {
    let Ok(Value::Object(mut object)) = serde_json::to_value(e) else {
        unreachable!("an AuditEntry serializes as a JSON object");
    };
    // The test below fails first when a column is added to the log's shape.
    object
        .remove(column)
        .unwrap_or_else(|| panic!("log column `{column}` has no field in AuditEntry"))
}

/// The record key object for `key` as given on the command line (see
/// [`pg_audit_diesel::log::parse_key`]), matched to the key columns recorded at install.
pub(crate) fn key_object(
    conn: &mut PgConnection,
    reader: &AuditReader,
    table: &QualifiedName,
    key: &str,
) -> Result<Value> {
    let recorded = reader.recorded_keys(conn, table)?;
    let columns: Vec<String> = match <[_; 1]>::try_from(recorded) {
        Ok([one]) => one,
        Err(recorded) if recorded.is_empty() => {
            let qualified = crate::options::qualify(conn, reader.log(), table)?;
            let exists = crate::options::relation_exists(conn, &qualified.to_string())?;
            if !exists {
                return Err(format!(
                    "no table {table}: it is neither audited in this log nor in the database; \
                     check the name (schema.table), or --log-schema/--log-name"
                )
                .into());
            }
            crate::output::diagnostic(
                crate::output::Level::Note,
                &format!("no pg-audit install is recorded for {table}; taking its key to be `id`"),
            );
            vec!["id".to_owned()]
        }
        Err(_) => {
            return Err(format!(
                "several audited tables are named {}; qualify it as schema.table",
                table.name.as_str()
            )
            .into());
        }
    };
    parse_key(&columns, key).map_err(|m| match m {
        KeyMismatch::Count { columns, .. } => format!(
            "{table} is keyed by ({}): give {} values separated by commas, name=value pairs, or a JSON object",
            columns.join(", "),
            columns.len()
        )
        .into(),
        other => format!("bad key for {table}: {other}").into(),
    })
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

/// A partition bound: RFC 3339 in JSON, readable in a table.
fn time(t: Option<pg_audit_diesel::log::LogTime>, json: bool) -> Value {
    t.map_or(Value::Null, |t| {
        json!(if json { rfc3339(t.0) } else { utc_string(t.0) })
    })
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
                    time(p.range_start, db.json),
                    time(p.range_end, db.json),
                    json!(p.is_default),
                    json!(p.total_bytes),
                ]);
            }
            table.finish(db.json, "no partitions", "");
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
            let progress = Progress::new(ahead as usize + 1, "ensuring partitions");
            // One period at a time, so each partition is reported as soon as it exists.
            for k in 0..=ahead {
                progress.step(&format!("period +{k}"));
                let created: Vec<Created> =
                    diesel::sql_query(log.ensure_partitions_sql(k)).load(&mut conn)?;
                for c in created {
                    tracing::info!(
                        target: "pg_audit",
                        partition = c.partition_name,
                        moved_rows = c.moved_rows,
                        "partition created"
                    );
                    if !db.json {
                        progress.line(&format!(
                            "created {} (moved {} rows from the DEFAULT partition)",
                            c.partition_name, c.moved_rows
                        ));
                    }
                    table.push(vec![json!(c.partition_name), json!(c.moved_rows)]);
                }
                progress.done();
            }
            drop(progress);
            table.finish_told(
                db.json,
                &format!("every partition up to {ahead} periods ahead exists"),
            );
        }
        PartitionsCommand::Count(db) => count(&db)?,
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
            let candidates: Vec<Candidate> = diesel::sql_query(log.partitions_older_than_sql())
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
            let progress = Progress::new(candidates.len(), "pruning partitions");
            let report = |pruned: Vec<Pruned>, table: &mut Table| {
                for p in pruned {
                    tracing::info!(
                        target: "pg_audit",
                        partition = p.partition_name,
                        action = p.action,
                        rows = p.rows,
                        "partition pruned"
                    );
                    if !db.json {
                        progress.line(&format!(
                            "{} {} ({} rows)",
                            p.action, p.partition_name, p.rows
                        ));
                    }
                    table.push(vec![
                        json!(p.partition_name),
                        json!(p.action),
                        json!(p.rows),
                    ]);
                }
            };
            for c in &candidates {
                progress.step(&c.partition_name);
                let pruned = diesel::sql_query(log.prune_partition_sql(
                    &older_than,
                    retention,
                    &c.partition_name,
                )?)
                .load(&mut conn)?;
                report(pruned, &mut table);
                progress.done();
            }
            if drop {
                // Old rows in the DEFAULT partition.
                let pruned = diesel::sql_query(log.prune_partitions_sql(&older_than, retention)?)
                    .load(&mut conn)?;
                report(pruned, &mut table);
            }
            std::mem::drop(progress);
            table.finish_told(db.json, &format!("nothing is older than {older_than}"));
        }
    }
    Ok(())
}

/// `pg-audit check`: `Ok(true)` when nothing drifted. The check's queries run here, in a
/// session with pg-audit's settings pinned, not through `<log>_check()`: the log's owner could
/// replace that function with one that finds nothing.
pub(crate) fn check(db: &Db) -> Result<bool> {
    let (mut conn, log) = db.connect()?;
    let problems = pg_audit_diesel::log::drift(&mut conn, &log)?;
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
    table.finish(
        db.json,
        &format!("ok: {} audited table(s), installed as recorded", audited.n),
        &format!(
            "\n{} problem(s); reinstall: AuditMigrations::reinstall from the application, or `pg-audit sql trigger ... | psql`",
            problems.len()
        ),
    );
    Ok(problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pg_audit_diesel::AuditContext;
    use std::time::SystemTime;

    #[test]
    fn json_output_has_every_entry_column() {
        let entry = AuditEntry {
            id: 1,
            changed_at: SystemTime::UNIX_EPOCH,
            tx_started_at: SystemTime::UNIX_EPOCH,
            txid: 2,
            operation: pg_audit::Operation::Insert,
            schema_name: "public".into(),
            table_name: "users".into(),
            record_pk: Some(json!({"id": 1})),
            old_values: None,
            new_values: Some(json!({"id": 1})),
            db_user: "app".into(),
            context: AuditContext::new(),
            old_record_pk: None,
        };
        let serialized = serde_json::to_value(&entry).unwrap();
        let fields: Vec<&String> = serialized.as_object().unwrap().keys().collect();
        let mut columns: Vec<&str> = entry_columns().map(|c| c.name).collect();
        columns.sort_unstable(); // serde_json's objects keep their keys sorted
        assert_eq!(
            fields, columns,
            "AuditEntry's fields are the log's entry columns"
        );
        assert_eq!(
            entry_field(&entry, "changed_at"),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(entry_field(&entry, "context"), Value::Null);
    }
}
