//! `pg-audit export` (entries for auditors, with the seals that prove them) and
//! `pg-audit verify-export` (the proof checked without the database).

use std::path::{Path, PathBuf};

use pg_audit::QualifiedName;
use pg_audit_archive::export::{Format, Selection, proof_path};
use serde_json::json;

use crate::options::{Db, Result};
use crate::output::{Progress, Table};

/// The options of `pg-audit export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Entries changed from this time on (RFC 3339, or any time PostgreSQL reads:
    /// `2026-01-01`, `2026-01-01 00:00+02`).
    #[arg(long, value_name = "TIME")]
    from: String,
    /// Entries changed before this time.
    #[arg(long, value_name = "TIME")]
    until: String,
    /// Only this table's entries (`table` or `schema.table`).
    #[arg(long)]
    table: Option<String>,
    /// Only entries whose context names this user.
    #[arg(long, value_name = "USER_ID", allow_hyphen_values = true)]
    user: Option<String>,
    /// The file's format: JSON lines, CSV, or Parquet (the archive's schema).
    #[arg(long, value_parser = format(), default_value = "jsonl")]
    format: Format,
    /// The file to write (never overwritten); the proof goes to FILE.proof.jsonl.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    db: Db,
}

/// The formats, as clap's possible values.
fn format() -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Format::ALL.map(Format::name))
        .map(|name| Format::named(&name).expect("a listed format"))
}

/// `pg-audit export`.
pub(crate) fn export(args: &ExportArgs) -> Result<()> {
    let selection = args.db.with_client(async |client, log| {
        let (schema, table) = match &args.table {
            Some(t) => {
                let name = QualifiedName::parse(t)?;
                let schema = match &name.schema {
                    Some(s) => s.as_str().to_owned(),
                    None => {
                        // The one audited table of that name, else `public` (as every command).
                        let row = client
                            .query_one(
                                &format!(
                                    "SELECT coalesce((SELECT pg_catalog.min(r.table_schema) FROM {} AS r
                                      WHERE r.table_name OPERATOR(pg_catalog.=) $1
                                     HAVING pg_catalog.count(*) OPERATOR(pg_catalog.=) 1), 'public')",
                                    log.config_table()
                                ),
                                &[&name.name.as_str()],
                            )
                            .await?;
                        row.get(0)
                    }
                };
                (Some(schema), Some(name.name.as_str().to_owned()))
            }
            None => (None, None),
        };
        let selection = Selection {
            from: args.from.clone(),
            until: args.until.clone(),
            schema,
            table,
            user: args.user.clone(),
        };
        let bar = Progress::new(0, "export");
        let done = pg_audit_archive::export::export(
            client,
            log,
            &selection,
            args.format,
            &args.output,
            &|rows| bar.at("export", 0, 0, &format!("{rows} entries")),
        )
        .await?;
        drop(bar);
        Ok((selection, done))
    })?;
    let (_, done) = selection;
    let proof = proof_path(&args.output);
    let mut table = Table::new(&[
        "file", "entries", "archived", "seals", "unsealed", "sha256", "proof",
    ]);
    table.push(vec![
        json!(args.output.display().to_string()),
        json!(done.rows),
        json!(done.archived_rows),
        json!(done.seals),
        json!(done.unsealed),
        json!(done.sha256),
        json!(proof.display().to_string()),
    ]);
    let unsealed = if done.unsealed > 0 {
        format!(
            "; {} entries are newer than the last seal, so the proof cannot cover them: run pg-audit seal, then export again",
            done.unsealed
        )
    } else {
        String::new()
    };
    table.finish(
        args.db.json,
        "",
        &format!(
            "{} entries written to {} ({} from the archive); check it with: pg-audit verify-export {} --seals <the seals kept by pg-audit seal --export>{unsealed}",
            done.rows,
            args.output.display(),
            done.archived_rows,
            args.output.display()
        ),
    );
    Ok(())
}

/// `pg-audit verify-export`: whether the export is proven (exit 0) or not (exit 1).
pub(crate) fn verify_export(
    export: &Path,
    proof: Option<&Path>,
    seals: Option<&Path>,
    json_out: bool,
) -> Result<bool> {
    let proof = proof.map_or_else(|| proof_path(export), Path::to_path_buf);
    let seals_text = seals
        .map(|p| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        })
        .transpose()?;
    let report = pg_audit_archive::export::verify_export(export, &proof, seals_text.as_deref())?;
    if json_out {
        crate::output::print(
            &json!({
                "ok": report.ok(),
                "entries": report.rows,
                "sealed": report.sealed,
                "unsealed": report.unsealed,
                "seals": report.seals,
                "problems": report.problems,
            })
            .to_string(),
        );
    } else {
        for problem in &report.problems {
            crate::output::line(&format!("ALTERED: {problem}"));
        }
        let against = if seals.is_some() {
            " and the seals given"
        } else {
            " (give --seals to check them against the seals kept apart)"
        };
        crate::output::line(&if report.ok() {
            format!(
                "ok: {} entries, each a row of the {} seals of the proof{against}",
                report.rows, report.seals
            )
        } else if report.problems.is_empty() {
            format!(
                "not proven: {} of {} entries are newer than the proof's seals",
                report.unsealed, report.rows
            )
        } else {
            format!(
                "ALTERED: {} problems in {} entries",
                report.problems.len(),
                report.rows
            )
        });
    }
    Ok(report.ok())
}
