//! Diesel's drivers of the reader (`pg_audit_runtime::log::Driver`): a [`Query`] bound as a
//! raw SQL query, its rows read by column from the binary values Diesel receives. The sync
//! driver's futures are complete when made ([`block_ready`]); the async one (feature `async`)
//! runs on diesel-async's connection.

use std::future::Future;

use diesel::QueryResult;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::query_dsl::RunQueryDsl as _;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text, Timestamptz};
pub(crate) use pg_audit_runtime::log::block_ready;
use pg_audit_runtime::log::row::diesel_rows::Loaded;
use pg_audit_runtime::log::row::{FromLogRow, Param, Query};
use pg_audit_runtime::log::{Driver, ReadError};

use super::LogTime;

/// `query` as Diesel's raw query, each parameter bound as its SQL type.
fn diesel_query(query: Query) -> BoxedSqlQuery<'static, Pg, SqlQuery> {
    let mut q = diesel::sql_query(query.sql).into_boxed();
    for param in query.params {
        q = match param {
            Param::Text(v) => q.bind::<Nullable<Text>, _>(v),
            Param::BigInt(v) => q.bind::<Nullable<BigInt>, _>(v),
            Param::BigIntArray(v) => q.bind::<Array<BigInt>, _>(v),
            Param::Jsonb(v) => q.bind::<Nullable<Jsonb>, _>(v),
            Param::Timestamptz(v) => q.bind::<Nullable<Timestamptz>, _>(v.map(LogTime)),
        };
    }
    q
}

/// The reader's failure on a Diesel driver.
fn read_error(e: DieselError) -> ReadError<DieselError> {
    ReadError::Database(e)
}

/// A failure of the reader's queries as Diesel's error, for the reader's methods that return
/// `QueryResult` (only database and decoding failures reach them).
pub(crate) fn query_error(e: ReadError<DieselError>) -> DieselError {
    match e {
        ReadError::Database(e) => e,
        other => DieselError::DeserializationError(Box::new(other)),
    }
}

fn permission_denied(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
        if info.message().starts_with("permission denied"))
}

/// The sync driver: each query runs when its future is made.
pub(crate) struct SyncDriver<'c>(pub(crate) &'c mut PgConnection);

impl Driver for SyncDriver<'_> {
    type Error = DieselError;

    fn load<U>(
        &mut self,
        query: Query,
    ) -> impl Future<Output = Result<Vec<U>, ReadError<DieselError>>> + Send
    where
        U: FromLogRow + Send + 'static,
    {
        let rows: QueryResult<Vec<Loaded<U>>> = diesel_query(query).load(self.0);
        std::future::ready(
            rows.map(|rows| rows.into_iter().map(|r| r.0).collect())
                .map_err(read_error),
        )
    }

    fn execute(
        &mut self,
        query: Query,
    ) -> impl Future<Output = Result<usize, ReadError<DieselError>>> + Send {
        std::future::ready(diesel_query(query).execute(self.0).map_err(read_error))
    }

    fn permission_denied(error: &DieselError) -> bool {
        permission_denied(error)
    }
}

/// The async driver, on diesel-async's connection.
#[cfg(feature = "async")]
pub(crate) struct AsyncDriver<'c>(pub(crate) &'c mut diesel_async::AsyncPgConnection);

#[cfg(feature = "async")]
impl Driver for AsyncDriver<'_> {
    type Error = DieselError;

    fn load<U>(
        &mut self,
        query: Query,
    ) -> impl Future<Output = Result<Vec<U>, ReadError<DieselError>>> + Send
    where
        U: FromLogRow + Send + 'static,
    {
        let loading = diesel_async::RunQueryDsl::load::<Loaded<U>>(diesel_query(query), self.0);
        async move {
            let rows = loading.await.map_err(read_error)?;
            Ok(rows.into_iter().map(|r| r.0).collect())
        }
    }

    fn execute(
        &mut self,
        query: Query,
    ) -> impl Future<Output = Result<usize, ReadError<DieselError>>> + Send {
        let running = diesel_async::RunQueryDsl::execute(diesel_query(query), self.0);
        async move { running.await.map_err(read_error) }
    }

    fn permission_denied(error: &DieselError) -> bool {
        permission_denied(error)
    }
}
