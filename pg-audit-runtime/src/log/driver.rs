//! How the reader's queries reach the database: a runtime's [`Driver`] runs a [`Query`] and
//! hands back rows by column. The reader's logic — following a record across key changes,
//! rebuilding a state, reverting — is written once against it; Diesel's sync driver (whose
//! futures are ready when made, completed by [`block_ready`]), diesel-async's and sqlx's
//! implement it.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::error::ReadError;
use super::row::{FromLogRow, Query};

/// Runs the reader's queries.
pub trait Driver: Send {
    /// The runtime's database error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The rows of `query`, in binary.
    fn load<U>(
        &mut self,
        query: Query,
    ) -> impl Future<Output = Result<Vec<U>, ReadError<Self::Error>>> + Send
    where
        U: FromLogRow + Send + 'static;

    /// Runs `query`; the number of rows it affected (or returned).
    fn execute(
        &mut self,
        query: Query,
    ) -> impl Future<Output = Result<usize, ReadError<Self::Error>>> + Send;

    /// Whether `error` is PostgreSQL's refusal for want of a privilege (SQLSTATE 42501).
    fn permission_denied(error: &Self::Error) -> bool;
}

/// The output of a future that completes when first polled, as every future of the reader's
/// logic does over a driver whose futures are ready when made.
///
/// # Panics
///
/// When the future is not ready at once.
pub fn block_ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a future of a ready driver was pending"),
    }
}

/// The first row, if any.
pub(crate) fn first<T>(rows: Vec<T>) -> Option<T> {
    rows.into_iter().next()
}
