//! Record keys: the log's key object `{"column": value}` made from a key as callers give it —
//! a value, a tuple for a composite key, a JSON object, or command-line text — and printed
//! back in the form the command line takes. The reader and the `pg-audit` program share it.

use serde_json::{Map, Value};

/// The values given for a key do not match its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMismatch {
    /// The key's columns, in key order.
    pub columns: Vec<String>,
    /// How many values were given.
    pub given: usize,
}

/// The key object of a record whose table is keyed by `columns` (in key order), from `key`:
/// an object (taken as it is), an array of values in key order (for a composite key), or one
/// value.
pub fn key_object(columns: &[String], key: Value) -> Result<Value, KeyMismatch> {
    let values = match key {
        Value::Object(object) => return Ok(Value::Object(object)),
        Value::Array(values) if columns.len() > 1 => values,
        value => vec![value],
    };
    if values.len() != columns.len() {
        return Err(KeyMismatch {
            columns: columns.to_vec(),
            given: values.len(),
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
        return Ok(Value::Object(object));
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
    let key = if columns.len() == 1 {
        scalar(text)
    } else {
        Value::Array(text.split(',').map(scalar).collect())
    };
    key_object(columns, key)
}

/// A key object as text the command line takes back: `id=1`, `order_id=7,line_no=1`.
pub fn key_text(key: &Value) -> String {
    match key {
        Value::Object(columns) => columns
            .iter()
            .map(|(column, value)| format!("{column}={}", value_text(value)))
            .collect::<Vec<_>>()
            .join(","),
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

/// A number, boolean or quoted string as JSON; anything else as a string.
fn scalar(text: &str) -> Value {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::String(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
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
            key_object(&two, json!({"org": "x"})),
            Ok(json!({"org": "x"}))
        );
        assert_eq!(
            key_object(&two, json!("acme")),
            Err(KeyMismatch {
                columns: two.clone(),
                given: 1
            })
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
        assert_eq!(parse_key(&two, "a").unwrap_err().given, 1);
    }
}
