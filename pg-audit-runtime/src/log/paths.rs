//! Changes key by key: a changed JSON column shown as the keys inside it that changed
//! (`meta.score: 3 → 99`), not as two whole documents.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{AuditEntry, Diff};

/// One changed value of a record: where it is and what it was before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathChange {
    /// The column, then each key or index inside it: `price`, `meta.score`, `tags[2]`,
    /// `meta["odd key"]` (a key that is not a plain name is written as a JSON string).
    pub path: String,
    /// The value before (`None`: the key was absent).
    pub before: Option<Value>,
    /// The value after (`None`: the key is absent).
    pub after: Option<Value>,
}

/// `changes` (column → before and after, as [`AuditEntry::changes`] and [`Diff`] hold them)
/// key by key: where both sides of a column are JSON objects, each key that differs, and
/// so on inside; arrays of the same length index by index; anything else whole.
pub fn changed_paths(changes: &BTreeMap<String, (Value, Value)>) -> Vec<PathChange> {
    let mut out = Vec::new();
    for (column, (before, after)) in changes {
        descend(column.clone(), Some(before), Some(after), &mut out);
    }
    out
}

fn descend(path: String, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<PathChange>) {
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) if b != a => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                if b.get(key) != a.get(key) {
                    descend(
                        format!("{path}{}", segment(key)),
                        b.get(key),
                        a.get(key),
                        out,
                    );
                }
            }
        }
        (Some(Value::Array(b)), Some(Value::Array(a))) if b.len() == a.len() && b != a => {
            for (i, (b, a)) in b.iter().zip(a).enumerate() {
                if b != a {
                    descend(format!("{path}[{i}]"), Some(b), Some(a), out);
                }
            }
        }
        _ => out.push(PathChange {
            path,
            before: before.cloned(),
            after: after.cloned(),
        }),
    }
}

/// `.key`, or `["key"]` for a key that is not a plain name (so a path reads back unambiguously).
fn segment(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!(".{key}")
    } else {
        format!("[{}]", Value::String(key.to_owned()))
    }
}

impl AuditEntry {
    /// [`AuditEntry::changes`] key by key ([`changed_paths`]).
    pub fn changed_paths(&self) -> Vec<PathChange> {
        changed_paths(&self.changes())
    }
}

impl Diff {
    /// [`Diff::changed`] key by key ([`changed_paths`]).
    pub fn changed_paths(&self) -> Vec<PathChange> {
        changed_paths(&self.changed)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(before: Value, after: Value) -> Vec<(String, Option<Value>, Option<Value>)> {
        let mut changes = BTreeMap::new();
        changes.insert("meta".to_owned(), (before, after));
        changed_paths(&changes)
            .into_iter()
            .map(|c| (c.path, c.before, c.after))
            .collect()
    }

    #[test]
    fn objects_are_compared_key_by_key() {
        assert_eq!(
            paths(
                json!({"score": 3, "tags": ["a", "b"], "deep": {"x": 1, "y": 2}, "gone": true}),
                json!({"score": 99, "tags": ["a", "c"], "deep": {"x": 1, "y": 3}, "new": null})
            ),
            [
                ("meta.deep.y".into(), Some(json!(2)), Some(json!(3))),
                ("meta.gone".into(), Some(json!(true)), None),
                ("meta.new".into(), None, Some(json!(null))),
                ("meta.score".into(), Some(json!(3)), Some(json!(99))),
                ("meta.tags[1]".into(), Some(json!("b")), Some(json!("c"))),
            ]
        );
    }

    #[test]
    fn other_values_and_odd_keys() {
        // Arrays of different lengths, scalars and a type change are whole.
        assert_eq!(
            paths(json!([1]), json!([1, 2])),
            [("meta".into(), Some(json!([1])), Some(json!([1, 2])))]
        );
        assert_eq!(
            paths(json!({"a": 1}), json!("text")),
            [("meta".into(), Some(json!({"a": 1})), Some(json!("text")))]
        );
        // A key that is not a plain name is quoted, dots and all.
        assert_eq!(
            paths(json!({"a.b": 1, "9": 1}), json!({"a.b": 2, "9": 2})),
            [
                (r#"meta["9"]"#.into(), Some(json!(1)), Some(json!(2))),
                (r#"meta["a.b"]"#.into(), Some(json!(1)), Some(json!(2))),
            ]
        );
    }
}
