//! What happened across the log: the entries that pass a filter, one transaction's, one
//! request's, one user's.

use pg_audit::context::{REQUEST_ID, USER_ID};
use pg_audit::sql::counts::{BLOCK_IDS, Counted};
use pg_audit::sql::shape::{entry_select_list, record_key_expr};
use pg_audit::{AuditLog, Operation};
use serde_json::Value;

use super::Read;
use super::record::resolve_table;
use crate::log::driver::{Driver, first};
use crate::log::row::{Query, log_row};
use crate::log::{AuditEntry, Page, TimeRange};

/// What `AuditReader::activity` lists: every field that is set
/// narrows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// The changed table's schema.
    pub schema: Option<String>,
    /// The changed table.
    pub table: Option<String>,
    /// The operation.
    pub operation: Option<Operation>,
    /// The context's user id.
    pub user_id: Option<String>,
    /// The context's request id.
    pub request_id: Option<String>,
    /// The transaction.
    pub txid: Option<i64>,
    /// When.
    pub range: TimeRange,
    /// The record's key object (as it was before or after the change).
    pub key: Option<Value>,
}

/// The newest entries that pass `filter`, newest first, keyset-paged on the entry id.
///
/// No filter answers by walking the log's id index from the newest entry; each filter takes
/// the path that does not walk the whole log when it matches little or nothing:
/// - a record of a named table: the record-key hash indexes, as the history does;
/// - a transaction: the BRIN index on `(changed_at, txid)`, then the transaction's entries
///   sorted;
/// - a request, a user, a table, an operation or a time range: the entries the counts have
///   not reached yet (the tail, walked), then the id blocks the log's counts say hold
///   entries of the request, else the user, else the table and operation, else the days,
///   newest first, each walked between its lowest and highest id
///   ([`pg_audit::sql::counts`]).
pub async fn activity<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    filter: &Activity,
    page: Page,
) -> Read<Vec<AuditEntry>, D> {
    let record = filter.key.is_some() && filter.table.is_some();
    // The counts that narrow most: a request's entries, a user's, a table's or an
    // operation's, or (a time range alone) every entry of its days.
    let counted = if filter.request_id.is_some() {
        Counted::Context(REQUEST_ID)
    } else if filter.user_id.is_some() {
        Counted::Context(USER_ID)
    } else {
        Counted::Tables
    };
    let by_counts = filter.txid.is_none()
        && filter.key.is_none()
        && (filter.request_id.is_some()
            || filter.user_id.is_some()
            || filter.schema.is_some()
            || filter.table.is_some()
            || filter.operation.is_some()
            || filter.range.from.is_some()
            || filter.range.until.is_some());
    if !by_counts {
        let shape = if record {
            Shape::Record
        } else if filter.txid.is_some() {
            Shape::Transaction
        } else {
            Shape::Walk
        };
        return conn
            .load(bind_filter(
                Query::new(select_sql(log, shape)),
                filter,
                page.before,
                None,
                page.limit,
            ))
            .await;
    }
    let limit = page.limit as usize;
    let through = counted_through(log, conn).await?;
    // The tail: entries past the counts, walked.
    let mut entries: Vec<AuditEntry> = conn
        .load(bind_filter(
            Query::new(select_sql(log, Shape::Walk)),
            filter,
            page.before,
            Some(through),
            page.limit,
        ))
        .await?;
    // Then the counted blocks, newest first, a few at a time and more each round.
    let highest = page
        .before
        .map_or(through, |b| b.saturating_sub(1).min(through));
    let mut top_block = highest.div_euclid(BLOCK_IDS);
    let mut chunk: i64 = 4;
    while entries.len() < limit && highest > 0 && top_block >= 0 {
        let blocks: Vec<Block> = conn
            .load(
                Query::new(log.blocks_sql(counted))
                    .bind(filter.schema.as_deref())
                    .bind(filter.table.as_deref())
                    .bind(filter.operation.map(Operation::keyword))
                    .bind(match counted {
                        Counted::Context(REQUEST_ID) => filter.request_id.as_deref(),
                        Counted::Context(_) => filter.user_id.as_deref(),
                        Counted::Tables => None,
                    })
                    .bind(filter.range.from)
                    .bind(filter.range.until)
                    .bind(top_block)
                    .bind(chunk),
            )
            .await?;
        let Some(last) = blocks.last().map(|b| b.block) else {
            break;
        };
        let full = blocks.len() as i64 == chunk;
        if full && blocks.iter().all(|b| b.block == last) {
            // One block with more rows than asked for: ask for more.
            chunk *= 4;
            continue;
        }
        // A full answer may have cut its last block short: that block comes next round.
        let next_top = if full { last } else { last - 1 };
        let (lo, hi, exact) =
            block_ids(blocks.iter().filter(|b| !full || b.block != last), highest);
        let remaining = (limit - entries.len()) as u32;
        let found: Vec<AuditEntry> = conn
            .load(
                bind_filter(
                    Query::new(select_sql(log, Shape::Blocks)),
                    filter,
                    page.before,
                    None,
                    remaining,
                )
                .bind(lo)
                .bind(hi)
                .bind(exact),
            )
            .await?;
        entries.extend(found);
        if !full {
            break;
        }
        top_block = next_top;
        chunk = (chunk * 4).min(1024);
    }
    entries.truncate(limit);
    Ok(entries)
}

/// How [`activity`] finds entries.
#[derive(Clone, Copy)]
enum Shape {
    /// The id index, newest first (`$12`: only ids above it).
    Walk,
    /// One record of a named table, through the record-key hash indexes.
    Record,
    /// One transaction, through the BRIN index, sorted.
    Transaction,
    /// The id ranges `$13[i]..=$14[i]`, each walked newest first, and the ids `$15`.
    Blocks,
}

/// The listing's query for `shape`: every filter as a parameter (`$1`–`$11`, bound by
/// [`bind_filter`]).
fn select_sql(log: &AuditLog, shape: Shape) -> String {
    let filters = "($1::text IS NULL OR l.schema_name OPERATOR(pg_catalog.=) $1)
                AND ($2::text IS NULL OR l.table_name OPERATOR(pg_catalog.=) $2)
                AND ($3::text IS NULL OR l.operation OPERATOR(pg_catalog.=) $3)
                AND ($4::text IS NULL OR (l.context OPERATOR(pg_catalog.->>) 'user_id') OPERATOR(pg_catalog.=) $4)
                AND ($5::text IS NULL OR (l.context OPERATOR(pg_catalog.->>) 'request_id') OPERATOR(pg_catalog.=) $5)
                AND ($6::bigint IS NULL OR l.txid OPERATOR(pg_catalog.=) $6)
                AND ($7::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.>=) $7)
                AND ($8::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.<) $8)
                AND ($10::bigint IS NULL OR l.id OPERATOR(pg_catalog.<) $10)";
    let any_key = "($9::jsonb IS NULL OR l.record_pk OPERATOR(pg_catalog.=) $9 OR l.old_record_pk OPERATOR(pg_catalog.=) $9)";
    let columns = entry_select_list("l");
    let table = log.table();
    match shape {
        Shape::Walk => format!(
            "SELECT {columns} FROM {table} AS l
              WHERE {filters} AND {any_key}
                AND ($12::bigint IS NULL OR l.id OPERATOR(pg_catalog.>) $12)
              ORDER BY l.id DESC
              LIMIT $11"
        ),
        Shape::Record => {
            let key = record_key_expr("r.schema_name", "r.table_name", "$9::jsonb");
            format!(
                "SELECT {columns} FROM {table} AS l, ({resolve}) AS r
                  WHERE {filters}
                    AND l.schema_name OPERATOR(pg_catalog.=) r.schema_name
                    AND ((l.record_key OPERATOR(pg_catalog.=) {key} AND l.record_pk OPERATOR(pg_catalog.=) $9)
                      OR (l.old_record_key OPERATOR(pg_catalog.=) {key} AND l.old_record_pk OPERATOR(pg_catalog.=) $9))
                    AND $12::bigint IS NULL
                  ORDER BY l.id DESC
                  LIMIT $11",
                resolve = resolve_table(log),
            )
        }
        // OFFSET 0 keeps the planner from walking the id index for the LIMIT: the
        // transaction's entries are found first, then sorted.
        Shape::Transaction => format!(
            "SELECT t.* FROM (
                SELECT {columns} FROM {table} AS l
                 WHERE {filters} AND {any_key} AND $12::bigint IS NULL
                OFFSET 0) AS t
              ORDER BY t.id DESC
              LIMIT $11"
        ),
        Shape::Blocks => format!(
            "SELECT e.* FROM (
                SELECT {columns} FROM {table} AS l
                 WHERE l.id OPERATOR(pg_catalog.=) ANY ($15::bigint[])
                   AND {filters} AND {any_key} AND $12::bigint IS NULL
                UNION ALL
                SELECT w.* FROM ROWS FROM (pg_catalog.unnest($13::bigint[]), pg_catalog.unnest($14::bigint[])) AS r(lo, hi)
                 CROSS JOIN LATERAL (
                   SELECT {columns} FROM {table} AS l
                    WHERE l.id OPERATOR(pg_catalog.>=) r.lo AND l.id OPERATOR(pg_catalog.<=) r.hi
                      AND {filters} AND {any_key}
                    ORDER BY l.id DESC
                    LIMIT $11) AS w) AS e
              ORDER BY e.id DESC
              LIMIT $11"
        ),
    }
}

/// Binds `filter`, `before`, `limit` and `above` (`$12`: only ids above it, for the walk) as
/// [`select_sql`] numbers them.
fn bind_filter(
    query: Query,
    filter: &Activity,
    before: Option<i64>,
    above: Option<i64>,
    limit: u32,
) -> Query {
    let query = query
        .bind(filter.schema.as_deref())
        .bind(filter.table.as_deref())
        .bind(filter.operation.map(Operation::keyword))
        .bind(filter.user_id.as_deref())
        .bind(filter.request_id.as_deref())
        .bind(filter.txid)
        .bind(filter.range.from)
        .bind(filter.range.until)
        .bind(filter.key.as_ref())
        .bind(before)
        .bind(i64::from(limit));
    query.bind(above)
}

log_row! {
    /// A count row the counts say holds matching entries: its id block, its entries' lowest and
    /// highest id, and their ids when few.
    struct Block {
        block: i64,
        lo: i64,
        hi: i64,
        ids: Option<Vec<i64>>,
    }
}

/// What to read of `rows` (whole blocks), up to id `highest`: per block, the ids of its
/// entries when every row lists them, else one range from the lowest to the highest id of
/// its rows (which holds every row's entries). Returned as the ranges' lows and highs and the
/// exact ids; blocks are disjoint, so nothing is read twice.
fn block_ids<'a>(
    rows: impl Iterator<Item = &'a Block>,
    highest: i64,
) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let mut by_block: std::collections::BTreeMap<i64, Vec<&Block>> = Default::default();
    for row in rows {
        by_block.entry(row.block).or_default().push(row);
    }
    let (mut lo, mut hi, mut exact) = (Vec::new(), Vec::new(), Vec::new());
    for rows in by_block.values() {
        if rows.iter().all(|r| r.ids.is_some()) {
            let mut ids: Vec<i64> = rows
                .iter()
                .flat_map(|r| r.ids.iter().flatten().copied())
                .filter(|id| *id <= highest)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            exact.extend(ids);
        } else {
            let first = rows.iter().map(|r| r.lo).min().unwrap_or(i64::MAX);
            let last = rows
                .iter()
                .map(|r| r.hi)
                .max()
                .unwrap_or(i64::MIN)
                .min(highest);
            if first <= last {
                lo.push(first);
                hi.push(last);
            }
        }
    }
    (lo, hi, exact)
}

log_row! {
    /// How far the log's counts go: every entry up to the id returned is counted.
    struct Through {
        through_id: i64,
    }
}

/// The id up to which the counts hold every entry (0 before the first count).
pub(super) async fn counted_through<D: Driver>(log: &AuditLog, conn: &mut D) -> Read<i64, D> {
    let rows: Vec<Through> = conn.load(Query::new(log.counted_through_sql())).await?;
    Ok(first(rows).map_or(0, |t| t.through_id))
}

/// Everything transaction `txid` did, in order.
pub async fn transaction<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    txid: i64,
) -> Read<Vec<AuditEntry>, D> {
    conn.load(
        Query::new(format!(
            "SELECT {} FROM {} AS l WHERE l.txid OPERATOR(pg_catalog.=) $1 ORDER BY l.id",
            entry_select_list("l"),
            log.table()
        ))
        .bind(txid),
    )
    .await
}

/// The context field a listing of [`by_context`] matches.
#[derive(Debug, Clone, Copy)]
pub enum ContextField {
    /// The request id.
    Request,
    /// The user id.
    User,
}

/// Everything whose context has `value` in `field`, in a time range, in order: the activity
/// filtered by it (through the log's counts), whole.
pub async fn by_context<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    field: ContextField,
    value: &str,
    range: TimeRange,
) -> Read<Vec<AuditEntry>, D> {
    let value = Some(value.to_owned());
    let filter = match field {
        ContextField::Request => Activity {
            request_id: value,
            range,
            ..Activity::default()
        },
        ContextField::User => Activity {
            user_id: value,
            range,
            ..Activity::default()
        },
    };
    let mut entries = activity(log, conn, &filter, Page::first(u32::MAX)).await?;
    entries.reverse();
    Ok(entries)
}
