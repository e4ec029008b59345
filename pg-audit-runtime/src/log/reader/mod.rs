//! The reader: the queries over the log, one module per question, each written once as async
//! functions over a [`Driver`](super::Driver) and the log's name. Each runtime's reader type
//! (Diesel's `AuditReader` and `AsyncAuditReader`, sqlx's `AuditReader`) runs them on its
//! connections and turns [`ReadError`](super::ReadError) into its own error; all are thin.
//!
//! Every query names its record the same way (`record.rs`): the table resolved as the
//! triggers resolve it, else by its install record, and a key as a JSON object. Every entry a
//! record's question returns has its columns under the names they have now (`renames.rs`: the
//! table's recorded schema changes).
//!
//! | module | the question |
//! |---|---|
//! | `history.rs` | what happened to this record (across the UPDATEs that changed its key), and the key columns recorded at install |
//! | `state.rs` | what did it look like at a time, and what differs between two times |
//! | `revert.rs` | put it back as it was after an entry, or as it was when deleted |
//! | `activity.rs` | what happened in the log: filtered, in one transaction, one request, by one user |
//! | `blame.rs` | which entry set each column's value |
//! | `table_at.rs` | what did the whole table look like at a time |

/// What a question over driver `D` returns.
pub type Read<T, D> = Result<T, super::ReadError<<D as super::Driver>::Error>>;

mod activity;
mod blame;
mod history;
mod record;
mod renames;
mod revert;
mod state;
mod table_at;

pub use activity::{Activity, ContextField, activity, by_context, transaction};
pub use blame::{Blame, blame};
pub use history::{entry_of, history, history_sql};
pub use record::recorded_keys;
pub use revert::{apply, deleted, reverted};
pub use state::{diff, state_at};
pub use table_at::{RowAt, TableAt, table_at};
