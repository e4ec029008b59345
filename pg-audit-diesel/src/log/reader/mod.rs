//! The reader: the queries over the log, one module per question, each written once as async
//! functions over a [`Driver`](super::driver::Driver) and the log's name. [`AuditReader`]
//! (`sync_api.rs`) runs them on a `PgConnection`, whose futures are ready at once, and
//! [`AsyncAuditReader`] (`async_api.rs`, feature `async`) on diesel-async's
//! `AsyncPgConnection`; both are thin.
//!
//! Every query names its record the same way (`record.rs`): the table resolved as the
//! triggers resolve it, else by its install record, and a model's key as a JSON object. Every
//! entry a record's question returns has its columns under the names they have now
//! (`renames.rs`: the table's recorded schema changes).
//!
//! | module | the question |
//! |---|---|
//! | `history.rs` | what happened to this record (across the UPDATEs that changed its key), and the key columns recorded at install |
//! | `state.rs` | what did it look like at a time, and what differs between two times |
//! | `revert.rs` | put it back as it was after an entry, or as it was when deleted |
//! | `activity.rs` | what happened in the log: filtered, in one transaction, one request, by one user |
//! | `blame.rs` | which entry set each column's value |
//! | `table_at.rs` | what did the whole table look like at a time |

mod activity;
#[cfg(feature = "async")]
mod async_api;
mod blame;
mod history;
mod record;
mod renames;
mod revert;
mod state;
mod sync_api;
mod table_at;

pub use activity::Activity;
#[cfg(feature = "async")]
pub use async_api::AsyncAuditReader;
pub use blame::Blame;
pub use sync_api::AuditReader;
pub use table_at::{RowAt, TableAt};
