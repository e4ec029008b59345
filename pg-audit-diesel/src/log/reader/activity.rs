//! What happened across the log: the entries that pass a filter, one transaction's, one
//! request's, one user's.

use diesel::QueryResult;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
use pg_audit::context::{REQUEST_ID, USER_ID};
use pg_audit::sql::shape::{entry_select_list, record_key_expr};
use pg_audit::{AuditLog, Operation};
use serde_json::Value;

use super::record::resolve_table;
use crate::log::driver::Driver;
use crate::log::{AuditEntry, LogTime, Page, TimeRange};

/// What [`AuditReader::activity`](super::AuditReader::activity) lists: every field that is set
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
pub(super) async fn activity<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    filter: &Activity,
    page: Page,
) -> QueryResult<Vec<AuditEntry>> {
    // A record of a named table goes through the record-key hash indexes; a key alone (any
    // table) is filtered while walking the id index.
    let (from, key_clause) = if filter.key.is_some() && filter.table.is_some() {
        let key = record_key_expr("r.schema_name", "r.table_name", "$9::jsonb");
        let resolve = resolve_table(log);
        (
            format!(", ({resolve}) AS r"),
            format!(
                "l.schema_name OPERATOR(pg_catalog.=) r.schema_name
                     AND ((l.record_key OPERATOR(pg_catalog.=) {key} AND l.record_pk OPERATOR(pg_catalog.=) $9)
                       OR (l.old_record_key OPERATOR(pg_catalog.=) {key} AND l.old_record_pk OPERATOR(pg_catalog.=) $9))"
            ),
        )
    } else {
        (
            String::new(),
            "($9::jsonb IS NULL OR l.record_pk OPERATOR(pg_catalog.=) $9 OR l.old_record_pk OPERATOR(pg_catalog.=) $9)"
                .to_owned(),
        )
    };
    let query = diesel::sql_query(format!(
        "SELECT {} FROM {} AS l{from}
              WHERE ($1::text IS NULL OR l.schema_name OPERATOR(pg_catalog.=) $1)
                AND ($2::text IS NULL OR l.table_name OPERATOR(pg_catalog.=) $2)
                AND ($3::text IS NULL OR l.operation OPERATOR(pg_catalog.=) $3)
                AND ($4::text IS NULL OR (l.context OPERATOR(pg_catalog.->>) 'user_id') OPERATOR(pg_catalog.=) $4)
                AND ($5::text IS NULL OR (l.context OPERATOR(pg_catalog.->>) 'request_id') OPERATOR(pg_catalog.=) $5)
                AND ($6::bigint IS NULL OR l.txid OPERATOR(pg_catalog.=) $6)
                AND ($7::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.>=) $7)
                AND ($8::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.<) $8)
                AND {key_clause}
                AND ($10::bigint IS NULL OR l.id OPERATOR(pg_catalog.<) $10)
              ORDER BY l.id DESC
              LIMIT $11",
        entry_select_list("l"),
        log.table()
    ))
    .into_boxed()
    .bind::<Nullable<Text>, _>(filter.schema.as_deref())
    .bind::<Nullable<Text>, _>(filter.table.as_deref())
    .bind::<Nullable<Text>, _>(filter.operation.map(Operation::keyword))
    .bind::<Nullable<Text>, _>(filter.user_id.as_deref())
    .bind::<Nullable<Text>, _>(filter.request_id.as_deref())
    .bind::<Nullable<BigInt>, _>(filter.txid)
    .bind::<Nullable<Timestamptz>, _>(filter.range.from.map(LogTime))
    .bind::<Nullable<Timestamptz>, _>(filter.range.until.map(LogTime))
    .bind::<Nullable<Jsonb>, _>(filter.key.as_ref())
    .bind::<Nullable<BigInt>, _>(page.before)
    .bind::<BigInt, _>(i64::from(page.limit));
    conn.load(query).await
}

/// Everything transaction `txid` did, in order.
pub(super) async fn transaction<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    txid: i64,
) -> QueryResult<Vec<AuditEntry>> {
    conn.load(
        diesel::sql_query(format!(
            "SELECT {} FROM {} AS l WHERE l.txid OPERATOR(pg_catalog.=) $1 ORDER BY l.id",
            entry_select_list("l"),
            log.table()
        ))
        .into_boxed()
        .bind::<BigInt, _>(txid),
    )
    .await
}

/// The context field a listing of [`by_context`] matches.
#[derive(Debug, Clone, Copy)]
pub(super) enum ContextField {
    /// The request id.
    Request,
    /// The user id.
    User,
}

/// Everything whose context has `value` in `field`, in a time range, in order.
pub(super) async fn by_context<D: Driver>(
    log: &AuditLog,
    conn: &mut D,
    field: ContextField,
    value: &str,
    range: TimeRange,
) -> QueryResult<Vec<AuditEntry>> {
    let field = match field {
        ContextField::Request => REQUEST_ID,
        ContextField::User => USER_ID,
    };
    // The time range prunes partitions and uses the BRIN index; give one on large logs.
    let query = diesel::sql_query(format!(
        "SELECT {} FROM {} AS l
              WHERE (l.context OPERATOR(pg_catalog.->>) $1) OPERATOR(pg_catalog.=) $2
                AND ($3::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.>=) $3)
                AND ($4::timestamptz IS NULL OR l.changed_at OPERATOR(pg_catalog.<) $4)
              ORDER BY l.id",
        entry_select_list("l"),
        log.table()
    ))
    .into_boxed()
    .bind::<Text, _>(field)
    .bind::<Text, _>(value)
    .bind::<Nullable<Timestamptz>, _>(range.from.map(LogTime))
    .bind::<Nullable<Timestamptz>, _>(range.until.map(LogTime));
    conn.load(query).await
}
