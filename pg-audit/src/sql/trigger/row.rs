//! SQL expressions over one row of the audited table: its audited values and its key as JSON,
//! the condition as it applies to an operation, and whether tracked columns changed. Both the
//! trigger function ([`super::body`]) and the trigger definitions ([`super::create`]) use them.

use super::{Columns, TriggerSpec};
use crate::ident::{Ident, QualifiedName};
use crate::sql::condition::RowRef;
use crate::sql::shape::{Operation, record_key_from_seed};

/// The variable holding the seed of the table's record keys, computed once per call.
pub(super) const SEED: &str = "v_seed";

/// The JSON object of the audited columns of `row` (an expression of the table's row type),
/// its masked columns as digests by the log's `masked` function.
pub(crate) fn values_json(spec: &TriggerSpec, row: &str, masked: &QualifiedName) -> String {
    let values = plain_values_json(spec, row);
    if spec.mask().is_empty() {
        return values;
    }
    let columns: Vec<String> = spec.mask().iter().map(Ident::literal).collect();
    format!("{masked}({values}, ARRAY[{}]::text[])", columns.join(", "))
}

/// The JSON object of the audited columns of `row`, in clear.
fn plain_values_json(spec: &TriggerSpec, row: &str) -> String {
    match spec.columns() {
        Columns::All => format!("pg_catalog.to_jsonb({row})"),
        Columns::TrackOnly(cols) => json_object(row, cols),
        Columns::Exclude(cols) => format!(
            "(pg_catalog.to_jsonb({row}) OPERATOR(pg_catalog.-) ARRAY[{}]::text[])",
            cols.iter()
                .map(Ident::literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The key object of `row`: `{"id": row.id}`.
pub(crate) fn key_json(spec: &TriggerSpec, row: &str) -> String {
    json_object(row, spec.primary_key())
}

/// The log's `record_key` of the key object `record_pk`, for the table the trigger fires on.
pub(super) fn record_key(record_pk: &str) -> String {
    record_key_from_seed(SEED, record_pk)
}

/// The condition for `op`, with `NEW` and `OLD` written as `new` and `old` (see
/// [`crate::Condition`] for INSERT and DELETE); `None` without a condition, and for TRUNCATE.
pub(crate) fn condition_for(
    spec: &TriggerSpec,
    op: Operation,
    new: &str,
    old: &str,
) -> Option<String> {
    let condition = spec.condition()?;
    let (new, old) = match op {
        // A snapshot's row is kept as an insert of it would be.
        Operation::Insert | Operation::Snapshot => (new, new),
        Operation::Delete => (old, old),
        Operation::Update => (new, old),
        Operation::Truncate | Operation::Ddl => return None,
    };
    Some(condition.render(|row| match row {
        RowRef::New => new.to_owned(),
        RowRef::Old => old.to_owned(),
    }))
}

/// The tracked columns' byte images differ between `OLD` and `NEW`: a filter that works for
/// every type, including those without `=` (json, point, ...).
pub(super) fn tracked_changed(cols: &[Ident]) -> String {
    let list = |row: &str| {
        cols.iter()
            .map(|c| format!("{row}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "pg_catalog.record_image_ne(ROW({}), ROW({}))",
        list("OLD"),
        list("NEW")
    )
}

fn json_object(row: &str, columns: &[Ident]) -> String {
    let args: Vec<String> = columns
        .iter()
        .map(|c| format!("{}, {row}.{c}", c.literal()))
        .collect();
    format!("pg_catalog.jsonb_build_object({})", args.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QualifiedName;

    #[test]
    fn excluded_columns_are_removed_before_anything_is_stored() {
        let spec = TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
            .exclude_fields(["password_hash"])
            .build()
            .unwrap();
        assert_eq!(
            values_json(
                &spec,
                "NEW",
                &QualifiedName::parse("audit.auditlog_masked").unwrap()
            ),
            "(pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) ARRAY['password_hash']::text[])"
        );
    }
}
