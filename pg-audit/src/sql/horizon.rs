//! The horizon: the highest log id below which no row can still appear, which the sealer and
//! the counts both stop at.
//!
//! Every writer holds a transaction id before it takes a log id (the triggers run after the
//! audited write; the capture worker asks for one first). So once every transaction running
//! when the sequence was read has ended, no row with an id up to that value can still appear.
//! A caller that sees other transactions running gets the value it read on its previous call,
//! if every transaction running then has ended; otherwise no horizon (NULL) this time.

use crate::QualifiedName;
use crate::sql::names::LogNames;

/// The PL/pgSQL variables [`steps`] uses (`horizon` is the result).
pub(crate) const DECLARE: &str = "    handed_out bigint;
    called boolean;
    snap pg_snapshot;
    pending record;
    horizon bigint;
";

/// The statements setting `horizon`, and recording what this call read in `state` (a table
/// with `pending_id bigint` and `pending_snapshot pg_snapshot`, at most one row) for the next.
pub(crate) fn steps(names: &LogNames, state: &QualifiedName) -> String {
    format!(
        "    EXECUTE pg_catalog.format('SELECT last_value, is_called FROM %s', pg_get_serial_sequence({table_lit}, 'id'))
       INTO handed_out, called;
    IF NOT called THEN
        handed_out := handed_out - 1;
    END IF;
    snap := pg_current_snapshot();
    SELECT s.pending_id, s.pending_snapshot INTO pending FROM {state} AS s;
    IF NOT EXISTS (SELECT FROM pg_snapshot_xip(snap) AS x
                    WHERE x IS DISTINCT FROM pg_current_xact_id_if_assigned()
                      AND pg_xact_status(x) = 'in progress') THEN
        horizon := handed_out;
    ELSIF pending.pending_id IS NOT NULL
          AND NOT EXISTS (SELECT FROM pg_snapshot_xip(pending.pending_snapshot) AS x
                           WHERE pg_xact_status(x) = 'in progress') THEN
        horizon := pending.pending_id;
    END IF;
    UPDATE {state} SET pending_id = handed_out, pending_snapshot = snap;
    IF NOT FOUND THEN
        INSERT INTO {state} (pending_id, pending_snapshot) VALUES (handed_out, snap);
    END IF;
",
        table_lit = names.table().literal(),
    )
}
