//! The audit context: who, why and from where a change is made.

use pg_audit::context::{
    CHANGE_REASON, CLIENT_ADDR, METADATA, REQUEST_ID, SETTING, SOURCE, USER_ID,
};
use pg_audit::quote_literal;
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
/// ```
/// use pg_audit_diesel::AuditContext;
/// let ctx = AuditContext::new()
///     .user_id("42")
///     .change_reason("User requested password reset")
///     .metadata(serde_json::json!({"ticket": "SUP-1"}));
/// assert_eq!(ctx.get_user_id(), Some("42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditContext {
    user_id: Option<String>,
    request_id: Option<String>,
    change_reason: Option<String>,
    client_addr: Option<String>,
    source: Option<String>,
    metadata: Option<Value>,
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
    ($($field:ident, $getter:ident: $doc:literal;)*) => {
        $(
            #[doc = concat!("Sets ", $doc, ".")]
            #[must_use]
            pub fn $field(mut self, value: impl Into<String>) -> Self {
                self.$field = Some(value.into());
                self
            }

            #[doc = concat!("The ", $doc, ", if set.")]
            pub fn $getter(&self) -> Option<&str> {
                self.$field.as_deref()
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
        user_id, get_user_id: "the application user who makes the change";
        request_id, get_request_id: "the request (HTTP request, job, message) the change belongs to";
        change_reason, get_change_reason: "why the change is made";
        client_addr, get_client_addr: "the end user's client address";
        source, get_source: "what makes the change (`http POST /users`, `cron`, ...)";
    }

    /// Sets free-form JSON metadata.
    #[must_use]
    pub fn metadata(mut self, value: Value) -> Self {
        self.metadata = Some(value);
        self
    }

    /// The metadata, if set.
    pub fn get_metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
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

    fn text_fields(&self) -> [(&'static str, Option<&str>); 5] {
        [
            (USER_ID, self.user_id.as_deref()),
            (REQUEST_ID, self.request_id.as_deref()),
            (CHANGE_REASON, self.change_reason.as_deref()),
            (CLIENT_ADDR, self.client_addr.as_deref()),
            (SOURCE, self.source.as_deref()),
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

    /// `SET LOCAL pg_audit.context = '<json>'`, the value quoted by the one quoting function;
    /// with `all`, an empty context is set as an empty string (stored as NULL), otherwise
    /// `None`. Call [`AuditContext::validate`] first.
    pub(crate) fn set_sql(&self, all: bool) -> Option<String> {
        let json = self.to_json().map(|v| v.to_string());
        if json.is_none() && !all {
            return None;
        }
        Some(set_setting_sql(json.as_deref().unwrap_or("")))
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
            metadata: object.remove(METADATA),
        }
    }
}

/// `SET LOCAL pg_audit.context = value`: transaction-local like `set_config(..., true)`, and a
/// utility statement, so nothing is planned and no row goes back to the client (measured ~25%
/// cheaper per transaction than `SELECT set_config`, see docs/performance.md).
pub(crate) fn set_setting_sql(value: &str) -> String {
    format!(
        "SET LOCAL {SETTING} = {}",
        quote_literal(value).expect("validated: no NUL")
    )
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
        assert_eq!(merged.get_user_id(), Some("alice"));
        assert_eq!(merged.get_request_id(), Some("r1"));
        assert_eq!(
            merged.get_change_reason(),
            Some("Bulk update for compliance; User requested password reset")
        );
        assert_eq!(
            merged.get_metadata(),
            Some(&json!({"job": 1, "shard": "b"}))
        );
        // The same reason is not repeated.
        let again =
            merged.merged(&AuditContext::new().change_reason("User requested password reset"));
        assert_eq!(again.get_change_reason(), merged.get_change_reason());
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
    fn set_sql_sets_one_json_setting_quoted() {
        let ctx = AuditContext::new().change_reason("it's \\ $$");
        let json = ctx.to_json().unwrap().to_string();
        assert_eq!(json, r#"{"change_reason":"it's \\ $$"}"#);
        assert_eq!(
            ctx.set_sql(false).unwrap(),
            format!(
                "SET LOCAL pg_audit.context = {}",
                quote_literal(&json).unwrap()
            )
        );
        assert_eq!(AuditContext::new().set_sql(false), None);
        assert_eq!(
            AuditContext::new().set_sql(true).unwrap(),
            "SET LOCAL pg_audit.context = ''"
        );
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
