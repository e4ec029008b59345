//! The horizon: the highest log id below which no row can still appear, which the sealer and
//! the counts both stop at.
//!
//! Every writer holds a transaction id before it takes a log id (the triggers run after the
//! audited write; the capture worker asks for one first), and holds the lock on its own
//! transaction id until it ends. So once every transaction holding such a lock when the
//! sequence was read has ended, no row with an id up to that value can still appear. (Not
//! `pg_snapshot_xip`: a snapshot leaves out the transactions newer than its `xmax`, which may
//! still be running — the newest writer, exactly.) A caller that sees other transactions
//! running gets the value it read on its previous call, if every transaction running then
//! has ended; otherwise no horizon (NULL) this time.
//!
//! What follows reads rows committed after the caller's transaction began, so the caller must
//! run at READ COMMITTED (each statement sees what committed before it): at REPEATABLE READ a
//! row committed between the transaction's snapshot and the sequence's read would be passed
//! over for good. The steps refuse any other isolation level.

use crate::QualifiedName;
use crate::sql::names::LogNames;

/// The PL/pgSQL variables [`steps`] uses (`horizon` is the result).
pub(crate) const DECLARE: &str = "    handed_out bigint;
    called boolean;
    running xid[];
    pending record;
    horizon bigint;
";

/// The state table's columns: what the previous call read.
pub(crate) const STATE_COLUMNS: &str = "pending_id bigint,
    pending_xids xid[]";

/// The statements setting `horizon`, and recording what this call read in `state` (a table
/// with [`STATE_COLUMNS`], at most one row) for the next.
pub(crate) fn steps(names: &LogNames, state: &QualifiedName) -> String {
    let running = "SELECT l.transactionid FROM pg_catalog.pg_locks AS l
                      WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted";
    format!(
        "    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pg-audit: sealing and counting run at READ COMMITTED, not %', current_setting('transaction_isolation')
            USING HINT = 'Begin its transaction with BEGIN ISOLATION LEVEL READ COMMITTED (the session''s default is another level): at another level, rows committed while it starts would be passed over.';
    END IF;
    EXECUTE pg_catalog.format('SELECT last_value, is_called FROM %s', pg_get_serial_sequence({table_lit}, 'id'))
       INTO handed_out, called;
    IF NOT called THEN
        handed_out := handed_out - 1;
    END IF;
    -- Read after the sequence: a transaction that took an id up to handed_out and has not
    -- ended holds the lock on its transaction id now.
    running := ARRAY({running} AND l.pid IS DISTINCT FROM pg_backend_pid());
    SELECT s.pending_id, s.pending_xids INTO pending FROM {state} AS s;
    IF cardinality(running) = 0 THEN
        horizon := handed_out;
    ELSIF pending.pending_id IS NOT NULL
          AND NOT EXISTS ({running} AND l.transactionid = ANY (pending.pending_xids)) THEN
        horizon := pending.pending_id;
    END IF;
    UPDATE {state} SET pending_id = handed_out, pending_xids = running;
    IF NOT FOUND THEN
        INSERT INTO {state} (pending_id, pending_xids) VALUES (handed_out, running);
    END IF;
",
        table_lit = names.table().literal(),
    )
}
