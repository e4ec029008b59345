//! Taking a table's baseline (see [`pg_audit::sql::baseline`]): the loop of short batches
//! that the `pg-audit baseline` program and [`AuditMigrations::baseline`] both run.
//!
//! [`AuditMigrations::baseline`]: crate::AuditMigrations::baseline

use diesel::connection::LoadConnection;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use pg_audit::sql::capture::InstalledTable;
use pg_audit::{AuditLog, QualifiedName, TriggerSpec};

use crate::Error;

/// How a baseline runs.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Rows per batch (each its own transaction, holding its rows `FOR SHARE`).
    pub batch_size: i64,
    /// Begin again from the first row even if a baseline of the table finished.
    pub again: bool,
    /// The entries' context, a JSON object (`{"source": "pg-audit baseline", ...}`).
    pub context: serde_json::Value,
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline {
            batch_size: 1_000,
            again: false,
            context: serde_json::json!({
                "source": "pg-audit baseline",
                "change_reason": "baseline",
            }),
        }
    }
}

/// What a baseline did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineOutcome {
    /// Rows written by every run of the table's baseline so far.
    pub rows: i64,
    /// It had finished before this run (nothing was written).
    pub already: bool,
    /// This run resumed an interrupted one.
    pub resumed: bool,
}

/// How many times a batch waits out a writer holding one of its rows before giving up.
const LOCK_RETRIES: u32 = 30;

#[derive(QueryableByName)]
struct Progressed {
    #[diesel(sql_type = Nullable<Text>)]
    last_key: Option<String>,
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = Bool)]
    finished: bool,
}

#[derive(QueryableByName)]
struct Batch {
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = BigInt)]
    written: i64,
    #[diesel(sql_type = Nullable<Text>)]
    last_key: Option<String>,
}

/// An install record, as [`AuditLog::installed_table_sql`] reads it.
#[derive(QueryableByName)]
struct Installed {
    #[diesel(sql_type = Text)]
    table_schema: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Nullable<diesel::sql_types::Array<Text>>)]
    primary_key: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Array<Text>>)]
    track_only: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Array<Text>>)]
    exclude_fields: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Array<Text>>)]
    mask: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<Text>)]
    condition: Option<String>,
}

#[derive(QueryableByName)]
struct Resolved {
    #[diesel(sql_type = Text)]
    schema: String,
    #[diesel(sql_type = Text)]
    name: String,
}

/// Takes (or resumes, or with [`Baseline::again`] retakes) the baseline of `table` (resolved
/// through the connection's `search_path` when it has no schema) into `log`, logging each row
/// as its install record says (key, columns, condition) — [`Error::NotAudited`] without one.
/// Run as the log's owner: batches in key order, each a transaction of its own at
/// READ COMMITTED with a 2-second lock timeout (a batch meeting a long writer waits it out, up
/// to 30 times). `progress` is told the rows written so far after each batch.
pub fn take_baseline<C>(
    conn: &mut C,
    log: &AuditLog,
    table: &QualifiedName,
    options: &Baseline,
    progress: impl FnMut(i64),
) -> Result<BaselineOutcome, Error>
where
    C: Connection<Backend = Pg> + LoadConnection,
{
    let not_audited = || Error::NotAudited {
        table: table.to_string(),
    };
    let resolved = diesel::sql_query(
        "SELECT n.nspname::text AS schema, c.relname::text AS name
           FROM pg_catalog.pg_class AS c
           JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
          WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::text)",
    )
    .bind::<Text, _>(table.to_string())
    .get_result::<Resolved>(conn)
    .optional()?
    .ok_or_else(not_audited)?;
    let spec =
        installed_spec(conn, log, &resolved.schema, &resolved.name)?.ok_or_else(not_audited)?;
    refuse_renamed_kept_out(conn, &spec)?;
    Ok(batches(conn, log, &spec, options, progress)?)
}

/// [`Error::KeptOutRenamed`] when `spec`'s table no longer has a column `spec` keeps out of
/// the log by name (renamed since its install: its values would be logged in clear).
pub fn refuse_renamed_kept_out<C>(conn: &mut C, spec: &TriggerSpec) -> Result<(), Error>
where
    C: Connection<Backend = Pg> + LoadConnection,
{
    #[derive(QueryableByName)]
    struct Missing {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let Some(sql) = spec.missing_kept_out_sql() else {
        return Ok(());
    };
    let missing: Vec<Missing> = diesel::sql_query(sql).load(conn)?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::KeptOutRenamed {
        table: spec.table().to_string(),
        columns: missing.into_iter().map(|m| m.name).collect(),
    })
}

/// The spec `schema`.`table` was installed with, as its install record in `log` says (key,
/// columns, masks, condition); `None` when it has none.
pub fn installed_spec<C>(
    conn: &mut C,
    log: &AuditLog,
    schema: &str,
    table: &str,
) -> Result<Option<TriggerSpec>, Error>
where
    C: Connection<Backend = Pg> + LoadConnection,
{
    let Some(installed) = diesel::sql_query(log.installed_table_sql())
        .bind::<Text, _>(schema)
        .bind::<Text, _>(table)
        .get_result::<Installed>(conn)
        .optional()?
    else {
        return Ok(None);
    };
    InstalledTable {
        schema: installed.table_schema,
        name: installed.table_name,
        primary_key: installed.primary_key.unwrap_or_default(),
        track_only: installed.track_only,
        exclude_fields: installed.exclude_fields,
        mask: installed.mask.unwrap_or_default(),
        condition: installed.condition,
    }
    .spec()
    .map(Some)
    .map_err(|source| Error::Config {
        model: "install record",
        source,
    })
}

/// The batches of `spec`'s (schema-qualified) table.
fn batches<C>(
    conn: &mut C,
    log: &AuditLog,
    spec: &TriggerSpec,
    options: &Baseline,
    mut progress: impl FnMut(i64),
) -> Result<BaselineOutcome, DieselError>
where
    C: Connection<Backend = Pg> + LoadConnection,
{
    let table = spec.table();
    let schema = table
        .schema
        .as_ref()
        .expect("an install record's table is schema-qualified")
        .as_str()
        .to_owned();
    let name = table.name.as_str().to_owned();
    let context = options.context.to_string();
    diesel::sql_query(log.baseline_begin_sql(options.again))
        .bind::<Text, _>(&schema)
        .bind::<Text, _>(&name)
        .execute(conn)?;
    let start = diesel::sql_query(log.baseline_progress_sql())
        .bind::<Text, _>(&schema)
        .bind::<Text, _>(&name)
        .get_result::<Progressed>(conn)?;
    if start.finished {
        return Ok(BaselineOutcome {
            rows: start.rows,
            already: true,
            resumed: false,
        });
    }
    let resumed = start.last_key.is_some();
    let (first_sql, next_sql) = (
        log.baseline_batch_sql(spec, true),
        log.baseline_batch_sql(spec, false),
    );
    let step_sql = log.baseline_step_sql();
    let (mut last_key, mut total) = (start.last_key, start.rows);
    loop {
        let mut tries = 0;
        let batch = loop {
            let result = conn.transaction(|conn| {
                conn.batch_execute(
                    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '2s'",
                )?;
                let sql = if last_key.is_none() {
                    &first_sql
                } else {
                    &next_sql
                };
                let batch = diesel::sql_query(sql)
                    .bind::<Nullable<Text>, _>(last_key.as_deref())
                    .bind::<BigInt, _>(options.batch_size)
                    .bind::<Text, _>(&context)
                    .get_result::<Batch>(conn)?;
                diesel::sql_query(&step_sql)
                    .bind::<Text, _>(&schema)
                    .bind::<Text, _>(&name)
                    .bind::<Nullable<Text>, _>(batch.last_key.as_deref())
                    .bind::<BigInt, _>(batch.written)
                    .bind::<Bool, _>(batch.rows < options.batch_size)
                    .execute(conn)?;
                Ok::<_, DieselError>(batch)
            });
            match result {
                Err(DieselError::DatabaseError(_, info))
                    if tries < LOCK_RETRIES && info.message().contains("lock timeout") =>
                {
                    tries += 1;
                }
                other => break other?,
            }
        };
        total += batch.written;
        if batch.last_key.is_some() {
            last_key = batch.last_key;
        }
        progress(total);
        if batch.rows < options.batch_size {
            return Ok(BaselineOutcome {
                rows: total,
                already: false,
                resumed,
            });
        }
    }
}
