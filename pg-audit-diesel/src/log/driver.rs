//! How the reader's queries reach the database: a [`Driver`] runs a query, on a sync
//! `PgConnection` ([`SyncDriver`], whose futures are complete when made) or on diesel-async's
//! `AsyncPgConnection` ([`AsyncDriver`], feature `async`). The reader's logic — following a
//! record across key changes, rebuilding a state, reverting — is written once against it.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use diesel::QueryResult;
use diesel::deserialize::QueryableByName;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::query_dsl::RunQueryDsl as _;

/// A raw SQL query with its parameters bound.
pub(crate) type Query<'q> = BoxedSqlQuery<'q, Pg, SqlQuery>;

/// Runs the reader's queries.
pub(crate) trait Driver: Send {
    /// The rows of `query`.
    fn load<U>(&mut self, query: Query<'_>) -> impl Future<Output = QueryResult<Vec<U>>> + Send
    where
        U: QueryableByName<Pg> + Send + 'static;

    /// Runs `query`; the number of rows it affected (or returned).
    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = QueryResult<usize>> + Send;
}

/// The sync driver: each query runs when its future is made.
pub(crate) struct SyncDriver<'c>(pub(crate) &'c mut PgConnection);

impl Driver for SyncDriver<'_> {
    fn load<U>(&mut self, query: Query<'_>) -> impl Future<Output = QueryResult<Vec<U>>> + Send
    where
        U: QueryableByName<Pg> + Send + 'static,
    {
        std::future::ready(query.load(self.0))
    }

    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = QueryResult<usize>> + Send {
        std::future::ready(query.execute(self.0))
    }
}

/// The async driver, on diesel-async's connection.
#[cfg(feature = "async")]
pub(crate) struct AsyncDriver<'c>(pub(crate) &'c mut diesel_async::AsyncPgConnection);

#[cfg(feature = "async")]
impl Driver for AsyncDriver<'_> {
    fn load<U>(&mut self, query: Query<'_>) -> impl Future<Output = QueryResult<Vec<U>>> + Send
    where
        U: QueryableByName<Pg> + Send + 'static,
    {
        diesel_async::RunQueryDsl::load(query, self.0)
    }

    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = QueryResult<usize>> + Send {
        diesel_async::RunQueryDsl::execute(query, self.0)
    }
}

/// The output of a future that completes when first polled, as every future of the reader's
/// logic does over [`SyncDriver`].
pub(crate) fn block_ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the sync driver's futures complete when first polled"),
    }
}

/// The first row, if any.
pub(crate) fn first<T>(rows: Vec<T>) -> Option<T> {
    rows.into_iter().next()
}
