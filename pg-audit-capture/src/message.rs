//! The context messages the helpers emit, read as hostile: any writer can emit one, and one
//! the log could not store must never stop the worker (the writing transaction has committed;
//! nothing can refuse it any more). What the triggers would refuse is dropped with a warning
//! naming the transaction, and the change is logged without it.

use pg_audit::context::MAX_LEN;

/// What a context message carries, each part checked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ContextMessage {
    /// The context: a JSON object of at most [`MAX_LEN`] bytes holding no NUL.
    pub(crate) context: Option<String>,
    /// The writer's `session_user`: up to 63 bytes, no NUL.
    pub(crate) db_user: Option<String>,
    /// The transaction's start, as `json_build_object` writes a `timestamptz`, checked field by
    /// field so PostgreSQL accepts it.
    pub(crate) tx_started_at: Option<String>,
}

/// Reads a message; `xid` names the transaction in warnings.
pub(crate) fn parse(content: &[u8], xid: u32) -> ContextMessage {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(content) else {
        tracing::warn!(
            xid,
            "pg-audit capture: a context message is not a JSON object; the transaction's changes are logged without it"
        );
        return ContextMessage::default();
    };
    let context = match map.get("context") {
        None | Some(serde_json::Value::Null) => None,
        Some(value @ serde_json::Value::Object(_)) => {
            let text = value.to_string();
            if text.len() > MAX_LEN {
                tracing::warn!(
                    xid,
                    bytes = text.len(),
                    "pg-audit capture: a context over {MAX_LEN} bytes (the triggers refuse it); logged without it"
                );
                None
            } else if has_nul(value) {
                tracing::warn!(
                    xid,
                    "pg-audit capture: a context holding \\u0000 (the triggers refuse it); logged without it"
                );
                None
            } else {
                Some(text)
            }
        }
        Some(other) => {
            tracing::warn!(
                xid,
                kind = json_kind(other),
                "pg-audit capture: a context that is not a JSON object (the triggers refuse it); logged without it"
            );
            None
        }
    };
    let db_user = map
        .get("db_user")
        .and_then(|v| v.as_str())
        .filter(|u| !u.is_empty() && u.len() <= 63 && !u.contains('\0'))
        .map(str::to_owned);
    let tx_started_at = map
        .get("tx_started_at")
        .and_then(|v| v.as_str())
        .filter(|t| is_timestamptz(t))
        .map(str::to_owned);
    ContextMessage {
        context,
        db_user,
        tx_started_at,
    }
}

/// Whether a string or key anywhere in `value` holds NUL, which PostgreSQL's text cannot.
fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// `2026-11-30T16:13:03.604790+00:00` (fraction optional, offset seconds optional), every
/// field in range, the day in its month.
fn is_timestamptz(text: &str) -> bool {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    ) else {
        return false;
    };
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if year == 0 || day == 0 || day > days || hour > 23 || minute > 59 || second > 59 {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=6).contains(&digits) {
            return false;
        }
        i += 1 + digits;
    }
    if !(at(i, b'+') || at(i, b'-')) {
        return false;
    }
    let (Some(oh), Some(om)) = (num(i + 1..i + 3), num(i + 4..i + 6)) else {
        return false;
    };
    if !at(i + 3, b':') || oh > 15 || om > 59 {
        return false;
    }
    match b.len() - (i + 6) {
        0 => true,
        3 => at(i + 6, b':') && num(i + 7..i + 9).is_some_and(|s| s <= 59),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_s_timestamps_pass_and_hostile_ones_do_not() {
        for ok in [
            "2026-11-30T16:13:03.604790+00:00",
            "2024-02-29T00:00:00+05:30",
            "1850-06-01T10:00:00.5+05:53:28",
            "2026-01-01T23:59:59-03:00",
        ] {
            assert!(is_timestamptz(ok), "{ok}");
        }
        for bad in [
            "garbage",
            "",
            "2026-02-29T00:00:00+00:00",
            "2026-13-01T00:00:00+00:00",
            "2026-11-30T24:00:00+00:00",
            "2026-11-30T16:13:03.1234567+00:00",
            "2026-11-30T16:13:03+00:00 ",
            "2026-11-30 16:13:03+00:00",
            "2026-11-30T16:13:03+00",
            "0000-01-01T00:00:00+00:00",
            "2026-11-30T16:13:03+99:00",
        ] {
            assert!(!is_timestamptz(bad), "{bad}");
        }
    }

    #[test]
    fn hostile_messages_keep_only_what_the_log_can_hold() {
        let m = parse(
            br#"{"context": {"user_id": "a\u0000b"}, "db_user": "x\u0000", "tx_started_at": "garbage"}"#,
            1,
        );
        assert_eq!(m, ContextMessage::default());
        let m = parse(br#"{"context": "a string", "db_user": "alice"}"#, 1);
        assert_eq!(m.context, None);
        assert_eq!(m.db_user.as_deref(), Some("alice"));
        let big = format!(
            r#"{{"context": {{"metadata": "{}"}}}}"#,
            "x".repeat(MAX_LEN)
        );
        assert_eq!(parse(big.as_bytes(), 1).context, None);
        assert_eq!(parse(b"not json", 1), ContextMessage::default());
        // Text that merely spells the escape is fine.
        let m = parse(br#"{"context": {"change_reason": "\\u0000"}}"#, 1);
        assert!(m.context.is_some());
        let m = parse(
            br#"{"context": {"user_id": "u"}, "db_user": "app", "tx_started_at": "2026-11-30T16:13:03.604790+00:00"}"#,
            1,
        );
        assert_eq!(m.context.as_deref(), Some(r#"{"user_id":"u"}"#));
    }
}
