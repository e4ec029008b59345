//! The log's JSON read whatever a writer stored in it.
//!
//! PostgreSQL's `jsonb` holds numbers of any size and documents nested thousands of levels
//! deep; `serde_json` refuses a number out of `f64`'s range (`1e400`, a `numeric` column's
//! value of 400 digits) and stops at 128 levels. A writer could otherwise store a row no reader
//! can read — and hide its own changes from history, the program and the admin. So a value
//! `serde_json` refuses is read again after a pass that writes each number out of range as
//! the string of its digits, and each subtree nested deeper than [`MAX_DEPTH`] as the string of
//! its text: shown, never an error. (Enabling `serde_json`'s `arbitrary_precision` instead
//! would change `serde_json::Value` for the whole application linking pg-audit.)

use serde_json::Value;

/// Subtrees nested deeper are read as the string of their text (`serde_json` stops at 128).
pub const MAX_DEPTH: usize = 100;

/// Reads JSON text as a [`Value`], whatever it holds (see the module's docs); an error only
/// for text that is not JSON.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text).or_else(|first| serde_json::from_str(&tame(text)).map_err(|_| first))
}

/// `text` with each number `f64` cannot hold, and each subtree deeper than [`MAX_DEPTH`],
/// written as a JSON string of its text.
fn tame(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                out.push_str(&text[i..end]);
                i = end;
            }
            b'[' | b'{' if depth >= MAX_DEPTH => {
                let end = subtree_end(bytes, i);
                out.push_str(&serde_json::to_string(&text[i..end]).expect("a string serializes"));
                i = end;
            }
            b'[' | b'{' => {
                depth += 1;
                out.push(char::from(bytes[i]));
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                out.push(char::from(bytes[i]));
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = i + bytes[i..]
                    .iter()
                    .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .count();
                let number = &text[i..end];
                if number.parse::<f64>().is_ok_and(f64::is_finite) {
                    out.push_str(number);
                } else {
                    out.push('"');
                    out.push_str(number);
                    out.push('"');
                }
                i = end;
            }
            _ => {
                // Whitespace, punctuation and literals, copied by character.
                let c = text[i..].chars().next().expect("a character");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The end (exclusive) of the string starting at `start` (a `"`).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The end (exclusive) of the array or object starting at `start`.
fn subtree_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = string_end(bytes, i);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// The text of a `json` or `jsonb` value as PostgreSQL sends it in binary (`jsonb` prefixed by
/// its format version, 1).
pub fn text_of(bytes: &[u8], jsonb: bool) -> Result<&str, String> {
    let bytes = if jsonb {
        match bytes.split_first() {
            Some((1, rest)) => rest,
            _ => return Err("unsupported jsonb format version".to_owned()),
        }
    } else {
        bytes
    };
    std::str::from_utf8(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_serde_json_refuses_is_read_as_strings() {
        assert_eq!(
            parse(r#"{"a": 1e400, "b": [-1e400, 1.5]}"#).unwrap(),
            json!({"a": "1e400", "b": ["-1e400", 1.5]})
        );
        let big = format!(r#"{{"n": 1{}}}"#, "0".repeat(400));
        assert_eq!(
            parse(&big).unwrap()["n"],
            json!(format!("1{}", "0".repeat(400)))
        );
        // Strings holding what looks like numbers or brackets stay as they are.
        assert_eq!(
            parse(r#"{"s": "1e400 [\"{", "x": 1e400}"#).unwrap(),
            json!({"s": "1e400 [\"{", "x": "1e400"})
        );
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let read = parse(&format!(r#"{{"deep": {deep}}}"#)).unwrap();
        let mut v = &read["deep"];
        for _ in 0..MAX_DEPTH - 1 {
            v = &v[0];
        }
        assert_eq!(
            v,
            &json!(format!("{}1{}", "[".repeat(201), "]".repeat(201)))
        );
        assert_eq!(
            parse(r#"{"ok": [1, "é😀", null, true]}"#).unwrap(),
            json!({"ok": [1, "é😀", null, true]})
        );
        assert!(parse("not json").is_err());
    }
}
