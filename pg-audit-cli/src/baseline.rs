//! `pg-audit baseline`: the rows a table held before auditing began, written to the log as
//! `SNAPSHOT` entries in short batches that resume where an interrupted run stopped
//! (`pg_audit_diesel::take_baseline`).

use pg_audit::QualifiedName;
use pg_audit_diesel::{Baseline, take_baseline};
use serde_json::json;

use crate::options::{Db, Result};
use crate::output::{Progress, Table};

/// The options of `pg-audit baseline`.
#[derive(Debug, clap::Args)]
pub(crate) struct BaselineArgs {
    /// The audited table, as `table` or `schema.table`.
    #[arg(long)]
    table: String,
    /// Rows per batch: each batch is a transaction of its own, holding its rows `FOR SHARE`
    /// (a writer of one of them waits for that batch only).
    #[arg(long, value_name = "ROWS", default_value_t = 1_000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    batch_size: i64,
    /// Begin again from the first row, even if a baseline of the table finished.
    #[arg(long)]
    again: bool,
    /// The reason recorded in the entries' context (default: "baseline").
    #[arg(long)]
    reason: Option<String>,
    /// The user recorded in the entries' context.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    db: Db,
}

/// `pg-audit baseline --table T`.
pub(crate) fn baseline(args: &BaselineArgs) -> Result<()> {
    let (mut conn, log) = args.db.connect()?;
    let table = crate::options::qualify(&mut conn, &log, &QualifiedName::parse(&args.table)?)?;
    let mut context = json!({
        "source": "pg-audit baseline",
        "change_reason": args.reason.as_deref().unwrap_or("baseline"),
    });
    if let Some(user) = &args.user {
        context["user_id"] = json!(user);
    }
    let options = Baseline {
        batch_size: args.batch_size,
        again: args.again,
        context,
    };
    let bar = Progress::new(0, "baseline");
    let outcome = take_baseline(&mut conn, &log, &table, &options, |rows| {
        bar.at("baseline", 0, 0, &format!("{rows} rows"));
    })
    .map_err(|e| match e {
        pg_audit_diesel::Error::NotAudited { .. } => format!(
            "{table} is not audited by {}: install its audit first (pg-audit sql trigger --table {table}), then take its baseline",
            log.table()
        )
        .into(),
        other => Box::<dyn std::error::Error>::from(other),
    })?;
    drop(bar);
    let mut out = Table::new(&["table", "rows", "finished"]);
    out.push(vec![
        json!(table.to_string()),
        json!(outcome.rows),
        json!(true),
    ]);
    let summary = if outcome.already {
        format!(
            "the baseline of {table} finished earlier ({} rows); --again takes it anew",
            outcome.rows
        )
    } else {
        format!(
            "{} rows of {table} written to {} as SNAPSHOT entries{}",
            outcome.rows,
            log.table(),
            if outcome.resumed {
                " (resuming an interrupted run)"
            } else {
                ""
            }
        )
    };
    out.finish(args.db.json, "", &summary);
    Ok(())
}
