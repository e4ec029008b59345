//! The audit context: who, why and from where a change is made.

use pg_audit::context::{
    CHANGE_REASON, CLIENT_ADDR, METADATA, REQUEST_ID, SOURCE, TRACE_ID, USER_ID,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest context value accepted, in bytes (the metadata counts as its JSON text).
/// Longer values are refused before anything is sent, so a change never runs without its
/// context.
pub const MAX_VALUE_LEN: usize = 60 * 1024;

/// The longest context accepted as a whole, in bytes of its JSON text: the triggers refuse a
/// longer one ([`pg_audit::context::MAX_LEN`]), so it is refused here before anything is sent.
pub const MAX_CONTEXT_LEN: usize = pg_audit::context::MAX_LEN;

/// Separates change reasons when contexts nest: the outer reason comes first.
pub const REASON_SEPARATOR: &str = "; ";

/// Who, why and from where: the values a transaction's audit rows carry.
///
/// Every field is optional. When contexts nest, each field of the inner context overrides the
/// outer one, except the change reason, where the inner reason is appended to the outer one
/// (`"Bulk update for compliance; User requested password reset"`), and the metadata, where
/// two JSON objects are merged key by key (inner keys win).
///
/// Built with the methods named after the fields and read from the fields; it serializes as the
/// JSON object the log stores (absent fields left out):
///
/// ```
/// use pg_audit_runtime::AuditContext;
/// let ctx = AuditContext::new()
///     .user_id("42")
///     .change_reason("User requested password reset")
///     .metadata(serde_json::json!({"ticket": "SUP-1"}));
/// assert_eq!(ctx.user_id.as_deref(), Some("42"));
/// assert_eq!(
///     serde_json::to_string(&ctx)?,
///     r#"{"user_id":"42","change_reason":"User requested password reset","metadata":{"ticket":"SUP-1"}}"#
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// `#[non_exhaustive]`: later versions may add fields, so build it with [`AuditContext::new`]
/// and the methods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditContext {
    /// The application user who makes the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The request (HTTP request, job, message) the change belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Why the change is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_reason: Option<String>,
    /// The end user's client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// What makes the change (`http POST /users`, `cron`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The W3C trace id (32 lowercase hex digits) of the distributed trace the change belongs
    /// to, so the log joins to the tracing backend. See [`AuditContext::trace_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Free-form JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A context value that cannot be carried: it names the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidContext {
    /// The field, e.g. `change_reason`.
    pub field: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

impl std::fmt::Display for InvalidContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit context `{}` {}", self.field, self.problem)
    }
}

impl std::error::Error for InvalidContext {}

macro_rules! setters {
    ($($field:ident: $doc:literal;)*) => {
        $(
            #[doc = concat!("Sets ", $doc, ".")]
            #[must_use]
            pub fn $field(mut self, value: impl Into<String>) -> Self {
                self.$field = Some(value.into());
                self
            }
        )*
    };
}

impl AuditContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        user_id: "the application user who makes the change";
        request_id: "the request (HTTP request, job, message) the change belongs to";
        change_reason: "why the change is made";
        client_addr: "the end user's client address";
        source: "what makes the change (`http POST /users`, `cron`, ...)";
    }

    /// Sets the W3C trace id: 32 lowercase hexadecimal digits, not all zero, as in the second
    /// field of a `traceparent` header. [`AuditContext::validate`] refuses anything else, so a
    /// stored trace id always joins. [`AuditContext::trace_id_from_traceparent`] reads one from
    /// the header; with the feature `opentelemetry`, transactions take it from the current
    /// span when none is set.
    #[must_use]
    pub fn trace_id(mut self, value: impl Into<String>) -> Self {
        self.trace_id = Some(value.into());
        self
    }

    /// Sets free-form JSON metadata.
    #[must_use]
    pub fn metadata(mut self, value: Value) -> Self {
        self.metadata = Some(value);
        self
    }

    /// The trace id of a W3C `traceparent` header value (`00-<trace id>-<parent id>-<flags>`),
    /// or `None` when it is malformed or its trace id is all zeros (invalid by the
    /// specification). Versions other than `00` are read as the specification asks: the first
    /// three fields the same way, later fields ignored.
    pub fn trace_id_from_traceparent(header: &str) -> Option<String> {
        let mut fields = header.trim().split('-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let parent_id = fields.next()?;
        let flags = fields.next()?;
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let valid = hex(version, 2)
            && version != "ff"
            && (version != "00" || fields.next().is_none())
            && is_trace_id(trace_id)
            && hex(parent_id, 16)
            && parent_id != "0000000000000000"
            && hex(flags, 2);
        valid.then(|| trace_id.to_owned())
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// This context with `inner` nested inside it (see the type's documentation).
    #[must_use]
    pub fn merged(&self, inner: &AuditContext) -> AuditContext {
        let pick = |outer: &Option<String>, inner: &Option<String>| {
            inner.clone().or_else(|| outer.clone())
        };
        AuditContext {
            user_id: pick(&self.user_id, &inner.user_id),
            request_id: pick(&self.request_id, &inner.request_id),
            change_reason: match (&self.change_reason, &inner.change_reason) {
                (Some(outer), Some(inner)) => {
                    // A reason already last in the chain is not repeated.
                    if outer == inner || outer.ends_with(&format!("{REASON_SEPARATOR}{inner}")) {
                        Some(outer.clone())
                    } else {
                        Some(format!("{outer}{REASON_SEPARATOR}{inner}"))
                    }
                }
                (outer, inner) => pick(outer, inner),
            },
            client_addr: pick(&self.client_addr, &inner.client_addr),
            source: pick(&self.source, &inner.source),
            trace_id: pick(&self.trace_id, &inner.trace_id),
            metadata: match (&self.metadata, &inner.metadata) {
                (Some(Value::Object(outer)), Some(Value::Object(inner))) => {
                    let mut merged = outer.clone();
                    merged.extend(inner.clone());
                    Some(Value::Object(merged))
                }
                (outer, inner) => inner.clone().or_else(|| outer.clone()),
            },
        }
    }

    /// Checks every value: no NUL byte (PostgreSQL text cannot hold one) and at most
    /// [`MAX_VALUE_LEN`] bytes; and the whole context: at most [`MAX_CONTEXT_LEN`] bytes of JSON.
    pub fn validate(&self) -> Result<(), InvalidContext> {
        for (field, value) in self.text_fields() {
            if let Some(value) = value {
                check_text(field, value)?;
            }
        }
        if let Some(trace_id) = &self.trace_id
            && !is_trace_id(trace_id)
        {
            return Err(InvalidContext {
                field: TRACE_ID,
                problem: "is not a W3C trace id (32 lowercase hexadecimal digits, not all zero)"
                    .to_owned(),
            });
        }
        if let Some(metadata) = &self.metadata {
            check_json(metadata)?;
            let text = metadata.to_string();
            if text.len() > MAX_VALUE_LEN {
                return Err(too_long("metadata", text.len()));
            }
        }
        if let Some(json) = self.to_json() {
            let len = json.to_string().len();
            if len > MAX_CONTEXT_LEN {
                return Err(InvalidContext {
                    field: "context",
                    problem: format!(
                        "is {len} bytes long as JSON; the limit is {MAX_CONTEXT_LEN} bytes"
                    ),
                });
            }
        }
        Ok(())
    }

    fn text_fields(&self) -> [(&'static str, Option<&str>); 6] {
        [
            (USER_ID, self.user_id.as_deref()),
            (REQUEST_ID, self.request_id.as_deref()),
            (CHANGE_REASON, self.change_reason.as_deref()),
            (CLIENT_ADDR, self.client_addr.as_deref()),
            (SOURCE, self.source.as_deref()),
            (TRACE_ID, self.trace_id.as_deref()),
        ]
    }

    /// The context as the JSON object the triggers store (`None` when empty).
    pub fn to_json(&self) -> Option<Value> {
        let mut object = Map::new();
        for (key, value) in self.text_fields() {
            if let Some(value) = value {
                object.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        if let Some(metadata) = &self.metadata {
            object.insert(METADATA.to_owned(), metadata.clone());
        }
        (!object.is_empty()).then_some(Value::Object(object))
    }

    /// Builds a context from the raw setting (empty or unset: no context). A value that is not
    /// a JSON object (set by hand) is kept whole as metadata rather than dropped.
    pub(crate) fn from_setting(raw: Option<&str>) -> AuditContext {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return AuditContext::default();
        };
        let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(raw) else {
            return AuditContext::default().metadata(Value::String(raw.to_owned()));
        };
        let mut text = |key: &str| match object.remove(key) {
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        AuditContext {
            user_id: text(USER_ID),
            request_id: text(REQUEST_ID),
            change_reason: text(CHANGE_REASON),
            client_addr: text(CLIENT_ADDR),
            source: text(SOURCE),
            trace_id: text(TRACE_ID),
            metadata: object.remove(METADATA),
        }
    }
}

/// 32 lowercase hexadecimal digits, not all zero: a W3C trace id.
fn is_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

fn too_long(field: &'static str, len: usize) -> InvalidContext {
    InvalidContext {
        field,
        problem: format!("is {len} bytes long; the limit is {MAX_VALUE_LEN} bytes"),
    }
}

fn check_text(field: &'static str, value: &str) -> Result<(), InvalidContext> {
    if value.contains('\0') {
        return Err(InvalidContext {
            field,
            problem: "contains a NUL byte, which PostgreSQL text cannot hold".to_owned(),
        });
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(too_long(field, value.len()));
    }
    Ok(())
}

/// PostgreSQL's `jsonb` refuses `\u0000` in strings and keys.
fn check_json(value: &Value) -> Result<(), InvalidContext> {
    let nul = || InvalidContext {
        field: "metadata",
        problem: "contains a NUL character, which PostgreSQL jsonb cannot hold".to_owned(),
    };
    match value {
        Value::String(s) if s.contains('\0') => Err(nul()),
        Value::Array(items) => items.iter().try_for_each(check_json),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return Err(nul());
            }
            check_json(v)
        }),
        _ => Ok(()),
    }
}

/// The context a log entry stores (its `context` column, `None` for none).
impl From<Option<Value>> for AuditContext {
    fn from(value: Option<Value>) -> AuditContext {
        AuditContext::from_setting(value.map(|v| v.to_string()).as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nesting_overrides_fields_chains_reasons_and_merges_metadata() {
        let outer = AuditContext::new()
            .user_id("ops")
            .request_id("r1")
            .change_reason("Bulk update for compliance")
            .metadata(json!({"job": 1, "shard": "a"}));
        let inner = AuditContext::new()
            .user_id("alice")
            .change_reason("User requested password reset")
            .metadata(json!({"shard": "b"}));
        let merged = outer.merged(&inner);
        assert_eq!(merged.user_id.as_deref(), Some("alice"));
        assert_eq!(merged.request_id.as_deref(), Some("r1"));
        assert_eq!(
            merged.change_reason.as_deref(),
            Some("Bulk update for compliance; User requested password reset")
        );
        assert_eq!(
            merged.metadata.as_ref(),
            Some(&json!({"job": 1, "shard": "b"}))
        );
        // The same reason is not repeated.
        let again =
            merged.merged(&AuditContext::new().change_reason("User requested password reset"));
        assert_eq!(again.change_reason, merged.change_reason);
    }

    #[test]
    fn values_postgres_cannot_hold_are_refused() {
        let e = AuditContext::new()
            .change_reason("a\0b")
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "audit context `change_reason` contains a NUL byte, which PostgreSQL text cannot hold"
        );
        let e = AuditContext::new()
            .user_id("x".repeat(MAX_VALUE_LEN + 1))
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "user_id");
        let e = AuditContext::new()
            .metadata(json!({"a": ["\u{0}"]}))
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "metadata");
        assert!(
            AuditContext::new()
                .user_id("x".repeat(MAX_VALUE_LEN))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn trace_ids_come_from_traceparent_headers_and_are_checked() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let header = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(
            AuditContext::trace_id_from_traceparent(&header).as_deref(),
            Some(id)
        );
        // A later version may add fields; version 00 may not.
        let later = format!("01-{id}-00f067aa0ba902b7-01-extra");
        assert!(AuditContext::trace_id_from_traceparent(&later).is_some());
        for bad in [
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{id}-00f067aa0ba902b7"),
            format!("00-{id}<script>-00f067aa0ba902b7-01"),
            String::new(),
        ] {
            assert_eq!(AuditContext::trace_id_from_traceparent(&bad), None, "{bad}");
        }
        assert!(AuditContext::new().trace_id(id).validate().is_ok());
        let e = AuditContext::new().trace_id("abc").validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "audit context `trace_id` is not a W3C trace id (32 lowercase hexadecimal digits, not all zero)"
        );
    }

    #[test]
    fn contexts_serialize_as_the_stored_object() {
        let ctx = AuditContext::new()
            .user_id("u")
            .trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
            .metadata(json!({"a": [1]}));
        let value = serde_json::to_value(&ctx).unwrap();
        assert_eq!(Some(&value), ctx.to_json().as_ref());
        assert_eq!(serde_json::from_value::<AuditContext>(value).unwrap(), ctx);
        assert_eq!(serde_json::to_string(&AuditContext::new()).unwrap(), "{}");
    }

    #[test]
    fn contexts_read_back_from_the_setting() {
        let ctx = AuditContext::new().user_id("u").metadata(json!({"a": [1]}));
        let raw = ctx.to_json().unwrap().to_string();
        assert_eq!(AuditContext::from_setting(Some(&raw)), ctx);
        assert_eq!(AuditContext::from_setting(Some("")), AuditContext::new());
        assert_eq!(
            AuditContext::from_setting(Some("not json")),
            AuditContext::new().metadata(json!("not json"))
        );
    }
}
