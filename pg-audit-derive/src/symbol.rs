//! The keywords of `#[pg_audit(...)]`, in one place.

pub(crate) const TRACK_ONLY: &str = "track_only";
pub(crate) const EXCLUDE_FIELDS: &str = "exclude_fields";
pub(crate) const MASK: &str = "mask";
pub(crate) const CONDITION: &str = "condition";
pub(crate) const OPERATIONS: &str = "operations";
pub(crate) const CAPTURE: &str = "capture";

/// Every key, in the order error messages list them.
pub(crate) const KEYS: [&str; 6] = [
    TRACK_ONLY,
    EXCLUDE_FIELDS,
    MASK,
    CONDITION,
    OPERATIONS,
    CAPTURE,
];
