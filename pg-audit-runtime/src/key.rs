//! Record keys: the log's key object `{"column": value}` made from a key as callers give it —
//! a value, a tuple for a composite key, a JSON object, or command-line text — and printed
//! back in the form the command line takes. The reader and the `pg-audit` program share it.

use serde_json::{Map, Value};

/// A key given that does not fit the table's key columns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyMismatch {
    /// Another number of values than the key has columns.
    Count {
        /// The key's columns, in key order.
        columns: Vec<String>,
        /// How many values were given.
        given: usize,
    },
    /// Columns named that are not the key's.
    Columns {
        /// The key's columns, in key order.
        columns: Vec<String>,
        /// The columns named that are not among them.
        unknown: Vec<String>,
    },
    /// A value no key column holds: an array, an object or null.
    Value {
        /// The value.
        value: Value,
    },
}

impl KeyMismatch {
    /// The key's columns, when the mismatch is about them.
    pub fn columns(&self) -> &[String] {
        match self {
            KeyMismatch::Count { columns, .. } | KeyMismatch::Columns { columns, .. } => columns,
            KeyMismatch::Value { .. } => &[],
        }
    }
}

impl std::fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyMismatch::Count { columns, given } => write!(
                f,
                "the key has {} columns ({}), {given} values were given",
                columns.len(),
                columns.join(", ")
            ),
            KeyMismatch::Columns { columns, unknown } => write!(
                f,
                "{} {} not a key column; the key is ({})",
                unknown.join(", "),
                if unknown.len() == 1 { "is" } else { "are" },
                columns.join(", ")
            ),
            KeyMismatch::Value { value } => write!(
                f,
                "{value} cannot be a key value: give a number, a string or a boolean"
            ),
        }
    }
}

impl std::error::Error for KeyMismatch {}

/// Checks that an object names the key's columns (when they are known).
fn check_object(columns: &[String], object: Map<String, Value>) -> Result<Value, KeyMismatch> {
    let unknown: Vec<String> = object
        .keys()
        .filter(|k| !columns.is_empty() && !columns.contains(k))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(KeyMismatch::Columns {
            columns: columns.to_vec(),
            unknown,
        });
    }
    if !columns.is_empty() && object.len() != columns.len() {
        return Err(KeyMismatch::Count {
            columns: columns.to_vec(),
            given: object.len(),
        });
    }
    Ok(Value::Object(object))
}

/// The key object of a record whose table is keyed by `columns` (in key order), from `key`:
/// an object (taken as it is), an array of values in key order (for a composite key), or one
/// value.
pub fn key_object(columns: &[String], key: Value) -> Result<Value, KeyMismatch> {
    let values = match key {
        Value::Object(object) => return check_object(columns, object),
        Value::Array(values) if columns.len() > 1 => values,
        value => vec![value],
    };
    if values.len() != columns.len() {
        return Err(KeyMismatch::Count {
            columns: columns.to_vec(),
            given: values.len(),
        });
    }
    if let Some(value) = values
        .iter()
        .find(|v| matches!(v, Value::Array(_) | Value::Object(_) | Value::Null))
    {
        return Err(KeyMismatch::Value {
            value: value.clone(),
        });
    }
    Ok(Value::Object(columns.iter().cloned().zip(values).collect()))
}

/// [`key_object`] from command-line text: a JSON object; `name=value` pairs separated by
/// commas, in any order (`order_id=7,line_no=1`, as [`key_text`] prints keys); or values in key
/// order separated by commas (a single-column key takes the whole text, commas included).
/// Each value is a JSON number, boolean or quoted string, or else the text itself.
pub fn parse_key(columns: &[String], text: &str) -> Result<Value, KeyMismatch> {
    if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) {
        return check_object(columns, object);
    }
    let named: Option<Map<String, Value>> = text
        .split(',')
        .map(|part| {
            let (name, value) = part.split_once('=')?;
            columns
                .iter()
                .any(|c| c == name.trim())
                .then(|| (name.trim().to_owned(), scalar(value)))
        })
        .collect();
    if let Some(named) = named.filter(|n| n.len() == columns.len()) {
        return Ok(Value::Object(named));
    }
    // `name=value` pairs naming something else than the key's columns.
    let pairs: Vec<&str> = text.split(',').collect();
    if !columns.is_empty()
        && pairs
            .iter()
            .all(|p| p.split_once('=').is_some_and(|(n, _)| is_name(n.trim())))
    {
        let unknown: Vec<String> = pairs
            .iter()
            .filter_map(|p| p.split_once('=').map(|(n, _)| n.trim().to_owned()))
            .filter(|n| !columns.contains(n))
            .collect();
        if !unknown.is_empty() {
            return Err(KeyMismatch::Columns {
                columns: columns.to_vec(),
                unknown,
            });
        }
    }
    let key = if columns.len() == 1 {
        scalar(text)
    } else {
        Value::Array(text.split(',').map(scalar).collect())
    };
    key_object(columns, key)
}

/// A key object as text the command line takes back ([`parse_key`]): `id=1`,
/// `order_id=7,line_no=1`; as the JSON object when pairs would not read back as they were (a
/// value holding a comma or `=`, a string that reads as a number, an odd column name).
pub fn key_text(key: &Value) -> String {
    match key {
        Value::Object(columns) => {
            let plain = columns.iter().all(|(column, value)| {
                let text = value_text(value);
                is_name(column)
                    && !text.contains([',', '='])
                    && text.trim() == text
                    && scalar(&text) == *value
            });
            if !plain {
                return key.to_string();
            }
            columns
                .iter()
                .map(|(column, value)| format!("{column}={}", value_text(value)))
                .collect::<Vec<_>>()
                .join(",")
        }
        other => other.to_string(),
    }
}

/// A value as text: a string bare, anything else as JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `text` looks like a column name (so `a=b` reads as a pair, not as a value).
fn is_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// A number, boolean or quoted string as JSON; anything else as a string.
fn scalar(text: &str) -> Value {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::String(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn printed_keys_read_back_whatever_they_hold() {
        use serde_json::json;
        let columns =
            |k: &Value| -> Vec<String> { k.as_object().unwrap().keys().cloned().collect() };
        for key in [
            json!({"id": 1}),
            json!({"order_id": 7, "line_no": 1}),
            json!({"org": "a,b", "n": 1}),
            json!({"org": "x=y", "n": 2}),
            json!({"code": "007", "n": 3}),
            json!({"name": " padded "}),
            json!({"name": "plain,comma"}),
            json!({"odd col": 1}),
            json!({"flag": true, "s": "true"}),
        ] {
            let text = super::key_text(&key);
            assert_eq!(
                super::parse_key(&columns(&key), &text).unwrap(),
                key,
                "{text}"
            );
        }
        assert_eq!(
            super::key_text(&json!({"order_id": 7, "line_no": 1})),
            "line_no=1,order_id=7"
        );
    }

    use super::*;
    use serde_json::json;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn keys_from_values_tuples_and_objects() {
        let one = cols(&["id"]);
        let two = cols(&["org", "line_no"]);
        assert_eq!(key_object(&one, json!(42)), Ok(json!({"id": 42})));
        assert_eq!(
            key_object(&two, json!(["acme", 1])),
            Ok(json!({"org": "acme", "line_no": 1}))
        );
        assert_eq!(
            key_object(&two, json!({"org": "x", "line_no": 2})),
            Ok(json!({"org": "x", "line_no": 2}))
        );
        assert_eq!(
            key_object(&two, json!("acme")),
            Err(KeyMismatch::Count {
                columns: two.clone(),
                given: 1
            })
        );
        assert_eq!(
            key_object(&one, json!([3, 4])).unwrap_err().to_string(),
            "[3,4] cannot be a key value: give a number, a string or a boolean"
        );
        assert_eq!(
            key_object(&one, json!({"nope": 3}))
                .unwrap_err()
                .to_string(),
            "nope is not a key column; the key is (id)"
        );
    }

    #[test]
    fn keys_from_text_round_trip_through_key_text() {
        let two = cols(&["org", "line_no"]);
        let key = parse_key(&two, "acme,1").unwrap();
        assert_eq!(key, json!({"org": "acme", "line_no": 1}));
        assert_eq!(key_text(&key), "line_no=1,org=acme");
        assert_eq!(parse_key(&two, &key_text(&key)), Ok(key));
        assert_eq!(
            parse_key(&two, "line_no=1, org=\"7\""),
            Ok(json!({"org": "7", "line_no": 1}))
        );
        assert_eq!(
            parse_key(&cols(&["name"]), "a,b"),
            Ok(json!({"name": "a,b"}))
        );
        assert!(matches!(
            parse_key(&two, "a"),
            Err(KeyMismatch::Count { given: 1, .. })
        ));
        assert_eq!(
            parse_key(&cols(&["id"]), "id=1,foo=2")
                .unwrap_err()
                .to_string(),
            "foo is not a key column; the key is (id)"
        );
        assert_eq!(
            parse_key(&cols(&["id"]), "user_id=1")
                .unwrap_err()
                .to_string(),
            "user_id is not a key column; the key is (id)"
        );
    }
}
