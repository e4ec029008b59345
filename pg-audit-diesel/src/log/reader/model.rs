//! A model's record as the reader's questions name it: its table, and its key as a JSON object.

use pg_audit::QualifiedName;
use pg_audit_runtime::log::key_object;
use serde_json::Value;

use crate::{Audited, Error};

/// The model's table and the key object for `key`.
pub(super) fn model_key<T: Audited>(
    key: impl serde::Serialize,
) -> Result<(QualifiedName, Value), Error> {
    let spec = T::trigger_spec()?;
    let columns: Vec<String> = spec
        .primary_key()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    let bad_key = |problem: String| Error::BadKey {
        model: T::MODEL,
        problem,
    };
    let value = serde_json::to_value(key).map_err(|e| bad_key(e.to_string()))?;
    let key = key_object(&columns, value).map_err(|m| bad_key(m.to_string()))?;
    Ok((spec.table().clone(), key))
}
