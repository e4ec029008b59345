//! `pg-audit import --from audit-trigger|supa-audit`: another audit tool's history into the
//! log, table by table, in batches that resume where a run stopped.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use pg_audit::sql::catalog::PRIMARY_KEY_SQL;
use pg_audit::sql::import::ImportSource;
use pg_audit::{Ident, QualifiedName};
use serde_json::json;

use crate::options::{Db, Result};
use crate::output::{Progress, Table};
use crate::sql::KeyColumn;

/// The options of `pg-audit import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The tool whose history to import: `audit-trigger` (`audit.logged_actions`) or
    /// `supa-audit` (`audit.record_version`).
    #[arg(long, value_parser = source())]
    from: ImportSource,
    /// Source rows per batch (each batch one transaction, with its progress).
    #[arg(long, value_name = "ROWS", default_value_t = 5_000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    batch_size: i64,
    /// Import the history of tables pg-audit does not audit yet as the source logged it (by
    /// default they are left for later: a table's exclusions and masks must be installed
    /// first, or the import would put into the log what they keep out).
    #[arg(long)]
    as_logged: bool,
    #[command(flatten)]
    db: Db,
}

fn source() -> impl clap::builder::TypedValueParser<Value = ImportSource> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(ImportSource::ALL.map(ImportSource::name))
        .map(|name| ImportSource::named(&name).expect("a listed source"))
}

#[derive(QueryableByName)]
struct SourceTable {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Nullable<Text>)]
    found: Option<String>,
}

#[derive(QueryableByName)]
struct LastId {
    #[diesel(sql_type = Nullable<BigInt>)]
    last_id: Option<i64>,
}

#[derive(QueryableByName)]
struct Batch {
    #[diesel(sql_type = Nullable<BigInt>)]
    last_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = BigInt)]
    written: i64,
}

fn found(conn: &mut PgConnection, sql: &str, bind: &str) -> Result<Option<String>> {
    Ok(diesel::sql_query(sql)
        .bind::<Text, _>(bind)
        .get_result::<Found>(conn)?
        .found)
}

/// `pg-audit import`.
pub(crate) fn import(args: &ImportArgs) -> Result<()> {
    let (mut conn, log) = args.db.connect()?;
    let source = args.from;
    if !crate::options::relation_exists(&mut conn, source.table())? {
        return Err(format!(
            "no {} history in this database: {} does not exist (or this role may not see it)",
            source.name(),
            source.table()
        )
        .into());
    }
    let hstore = match source {
        ImportSource::AuditTrigger => Some(Ident::with_kind(
            found(
                &mut conn,
                "SELECT (SELECT n.nspname::text FROM pg_catalog.pg_extension AS e
                           JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
                          WHERE e.extname OPERATOR(pg_catalog.=) $1) AS found",
                "hstore",
            )?
            .ok_or("audit-trigger's rows are hstore, and the hstore extension is not installed")?,
            "schema",
        )?),
        ImportSource::SupaAudit => None,
    };
    let auth = source == ImportSource::SupaAudit
        && found(
            &mut conn,
            "SELECT (SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                      WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::text)
                        AND a.attname OPERATOR(pg_catalog.=) 'auth_uid' AND NOT a.attisdropped) AS found",
            source.table(),
        )?
        .is_some();
    let tables: Vec<SourceTable> = diesel::sql_query(source.tables_sql()).load(&mut conn)?;
    let mut out = Table::new(&["table", "source_rows", "imported", "unmapped", "note"]);
    let bar = Progress::new(tables.len(), "import");
    let mut total = (0i64, 0i64);
    // Rows a value of which the table's type refused, each named.
    let mut failed: Vec<String> = Vec::new();
    for (n, t) in tables.iter().enumerate() {
        let table = QualifiedName::new(
            Some(Ident::with_kind(t.schema_name.as_str(), "schema")?),
            Ident::with_kind(t.table_name.as_str(), "table")?,
        );
        bar.at("import", n, tables.len(), &table.to_string());
        // The key pg-audit's own entries of the table use (its install record), else the
        // table's primary key.
        let installed =
            pg_audit_diesel::installed_spec(&mut conn, &log, &t.schema_name, &t.table_name)?;
        let columns: Vec<KeyColumn> = diesel::sql_query(PRIMARY_KEY_SQL)
            .bind::<Text, _>(table.to_string())
            .load(&mut conn)?;
        let exists = columns.iter().all(|c| c.table_exists);
        let key: Vec<String> = match &installed {
            Some(spec) => spec
                .primary_key()
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            None => columns.into_iter().filter_map(|c| c.column_name).collect(),
        };
        let unmappable = if installed.is_none() && !args.as_logged {
            Some(
                "not audited by pg-audit yet: install its audit first (pg-audit sql trigger), so that its exclusions and masks apply, then import again; or pass --as-logged",
            )
        } else if !exists {
            Some("the table no longer exists: its rows cannot be typed or keyed")
        } else if key.is_empty() {
            Some("the table has no primary key (install its audit with --primary-key, then import)")
        } else {
            None
        };
        if let Some(note) = unmappable {
            out.push(vec![
                json!(table.to_string()),
                json!(t.rows),
                json!(0),
                json!(t.rows),
                json!(note),
            ]);
            total.1 += t.rows;
            continue;
        }
        let key: Vec<Ident> = key
            .iter()
            .map(|c| Ident::with_kind(c.as_str(), "column"))
            .collect::<std::result::Result<_, _>>()?;
        if let Some(spec) = &installed {
            pg_audit_diesel::refuse_renamed_kept_out(&mut conn, spec)?;
        }
        let sql = log.import_batch_sql(
            source,
            &table,
            &key,
            hstore.as_ref(),
            auth,
            installed.as_ref(),
        );
        let (mut imported, mut unmapped) = (0i64, 0i64);
        let step = |conn: &mut PgConnection, last: i64, written: i64, skipped: i64| {
            diesel::sql_query(log.import_step_sql())
                .bind::<Text, _>(source.name())
                .bind::<Text, _>(&t.schema_name)
                .bind::<Text, _>(&t.table_name)
                .bind::<BigInt, _>(last)
                .bind::<BigInt, _>(written)
                .bind::<BigInt, _>(skipped)
                .execute(conn)
        };
        let after = |conn: &mut PgConnection| -> QueryResult<i64> {
            Ok(diesel::sql_query(log.import_progress_sql())
                .bind::<Text, _>(source.name())
                .bind::<Text, _>(&t.schema_name)
                .bind::<Text, _>(&t.table_name)
                .get_result::<LastId>(conn)?
                .last_id
                .unwrap_or(i64::MIN))
        };
        // Rows taken one by one after a batch failed on a value (until this many are past).
        let mut one_by_one = 0;
        loop {
            let size = if one_by_one > 0 { 1 } else { args.batch_size };
            let result = conn.build_transaction().read_committed().run(|conn| {
                let batch = diesel::sql_query(&sql)
                    .bind::<BigInt, _>(after(conn)?)
                    .bind::<BigInt, _>(size)
                    .get_result::<Batch>(conn)?;
                if let Some(last) = batch.last_id {
                    step(conn, last, batch.written, batch.rows - batch.written)?;
                }
                Ok::<_, diesel::result::Error>(batch)
            });
            let batch = match result {
                Ok(batch) => batch,
                // A value the table's type refuses: the batch again row by row, and the row
                // that fails alone set aside, named.
                Err(diesel::result::Error::DatabaseError(_, info)) if size > 1 => {
                    bar.line(&format!(
                        "{table}: a batch failed ({}); taking its rows one by one",
                        info.message()
                    ));
                    one_by_one = args.batch_size;
                    continue;
                }
                Err(diesel::result::Error::DatabaseError(_, info)) => {
                    let message = info.message().to_owned();
                    let skipped = conn.build_transaction().read_committed().run(|conn| {
                        let from = after(conn)?;
                        let next = diesel::sql_query(source.next_id_sql(&table))
                            .bind::<BigInt, _>(from)
                            .get_result::<LastId>(conn)?
                            .last_id;
                        if let Some(id) = next {
                            step(conn, id, 0, 1)?;
                        }
                        Ok::<_, diesel::result::Error>(next)
                    })?;
                    if let Some(id) = skipped {
                        failed.push(format!("{table}: source row {id} not imported: {message}"));
                    }
                    unmapped += 1;
                    one_by_one -= 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            imported += batch.written;
            unmapped += batch.rows - batch.written;
            one_by_one = (one_by_one - 1).max(0);
            if batch.rows < size {
                break;
            }
        }
        total.0 += imported;
        total.1 += unmapped;
        let note = match (source, unmapped) {
            (_, 0) => String::new(),
            (ImportSource::AuditTrigger, _) => {
                "rows without row values (statement-level INSERT/UPDATE/DELETE), or without the key's columns".to_owned()
            }
            (ImportSource::SupaAudit, _) => "rows without the key's columns".to_owned(),
        };
        out.push(vec![
            json!(table.to_string()),
            json!(t.rows),
            json!(imported),
            json!(unmapped),
            json!(note),
        ]);
    }
    drop(bar);
    for line in &failed {
        crate::output::diagnostic(crate::output::Level::Warn, line);
    }
    out.finish(
        args.db.json,
        &format!("{} holds no history", source.table()),
        &format!(
            "{} entries imported from {} into {}, {} rows not mapped; running it again imports only what was logged since",
            total.0,
            source.table(),
            log.table(),
            total.1
        ),
    );
    Ok(())
}
