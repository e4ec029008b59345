//! The pages: activity, record (timeline, diffs, state, blame, revert and restore), a
//! transaction, a request, a user, the audited tables, one table (configuration, drift,
//! changes per day, the table as of a time), and the partitions.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Double, Integer, Jsonb, Nullable, Text, Timestamptz};
use maud::{Markup, html};
use pg_audit::{Operation, QualifiedName};
use pg_audit_diesel::log::{Activity, AuditEntry, AuditReader, Drift, LogTime, Page, TimeRange};
use pg_audit_diesel::{AuditContext, parse_rfc3339};
use serde::Deserialize;
use serde_json::Value;

use crate::html::{href, key as key_text, page, text, time, value};
use crate::{Access, Mount, PageError, Path, Query, Shared, csrf, with_conn};

const PAGE_SIZE: u32 = 50;

/// A query parameter: absent and empty are the same.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A time from a form: RFC 3339, or a `datetime-local` value (`2026-11-30T13:05`, UTC).
fn parse_time(s: &str) -> Result<SystemTime, PageError> {
    let s = s.trim();
    let full = match s.len() {
        16 => format!("{s}:00Z"),
        19 => format!("{s}Z"),
        _ => s.to_owned(),
    };
    parse_rfc3339(&full).ok_or_else(|| {
        PageError::bad_request(format!(
            "`{s}` is not a time: use 2026-11-30T13:05 (UTC) or RFC 3339"
        ))
    })
}

/// A record key from a link or form: a JSON object.
fn parse_key(s: &str) -> Result<Value, PageError> {
    fn holds_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(holds_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
            _ => false,
        }
    }
    match serde_json::from_str::<Value>(s) {
        Ok(v) if holds_nul(&v) => Err(PageError::bad_request(
            "the record key holds a NUL character (\\u0000), which no key in the log can hold",
        )),
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(PageError::bad_request(format!(
            "`{s}` is not a record key: give a JSON object such as {{\"id\": 42}}"
        ))),
    }
}

/// A table from a link or form: `schema.table`, either part in double quotes when it holds a
/// dot or a quote (`"s.p".q`), as [`plain`] writes it.
fn table_name(s: &str) -> Result<QualifiedName, PageError> {
    let bad = || PageError::bad_request(format!("`{s}` is not a table name: write schema.table"));
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        parts.push(part);
        match chars.next() {
            Some('.') => continue,
            None => break,
            Some(_) => return Err(bad()),
        }
    }
    let ident = |name: &str, kind| pg_audit::Ident::with_kind(name, kind);
    Ok(match parts.as_slice() {
        [name] => QualifiedName::new(None, ident(name, "table")?),
        [schema, name] => QualifiedName::new(Some(ident(schema, "schema")?), ident(name, "table")?),
        _ => return Err(bad()),
    })
}

/// `schema.table` as links carry it: a part holding a dot or a quote is double-quoted, so
/// `"s.p".q` and `s."p.q"` stay two tables.
fn plain(name: &QualifiedName) -> String {
    let part = |p: &str| {
        if p.contains(['.', '"']) {
            format!("\"{}\"", p.replace('"', "\"\""))
        } else {
            p.to_owned()
        }
    };
    match &name.schema {
        Some(schema) => format!("{}.{}", part(schema.as_str()), part(name.name.as_str())),
        None => part(name.name.as_str()),
    }
}

/// An entry's table as links carry it.
fn qualified(e: &AuditEntry) -> String {
    match (
        pg_audit::Ident::new(e.schema_name.as_str()),
        pg_audit::Ident::new(e.table_name.as_str()),
    ) {
        (Ok(schema), Ok(name)) => plain(&QualifiedName::new(Some(schema), name)),
        _ => format!("{}.{}", e.schema_name, e.table_name),
    }
}

/// Links to an entry's record, transaction, request and user.
fn record_href(base: &str, table: &str, key: &Value) -> String {
    href(
        base,
        "/record",
        &[("table", table), ("key", &key.to_string())],
    )
}

/// One side of a changed path: its value, or a note that the key was absent.
fn side(v: Option<&Value>) -> Markup {
    match v {
        Some(v) => value(v),
        None => html! { span.muted { "(absent)" } },
    }
}

/// What an entry changed, key by key inside JSON columns (`meta.score: 3 → 99`).
fn changes_summary(e: &AuditEntry) -> Markup {
    if let Some(schema) = e.schema_changes() {
        return html! { span.mono { (text(&schema.join("; "))) } };
    }
    let changes = e.changed_paths();
    html! {
        @for (i, c) in changes.iter().enumerate() {
            @if i > 0 { ", " }
            span.mono { (text(&c.path)) }
            @match e.operation {
                Operation::Update => { ": " span.old { (side(c.before.as_ref())) } " → " span.new { (side(c.after.as_ref())) } }
                Operation::Delete => { "=" span.old { (side(c.before.as_ref())) } }
                _ => { "=" span.new { (side(c.after.as_ref())) } }
            }
        }
    }
}

fn entries_table(base: &str, entries: &[AuditEntry]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "id" } th { "when" } th { "table" } th { "record" } th { "op" }
                         th { "user" } th { "reason" } th { "request" } th { "tx" } th { "changes" } } }
            tbody {
                @for e in entries {
                    tr {
                        td.mono { (e.id) }
                        td { (time(e.changed_at)) }
                        td { a href=(href(base, "/table", &[("name", qualified(e))])) { (text(&qualified(e))) } }
                        td { @if let Some(k) = &e.record_pk {
                            a href=(record_href(base, &qualified(e), k)) { (key_text(k)) } } }
                        td { (e.operation.keyword()) }
                        td { @if let Some(u) = &e.context.user_id {
                            a href=(href(base, "/user", &[("id", u)])) { (text(u)) } } }
                        td { @if let Some(r) = &e.context.change_reason { (text(r)) } }
                        td { @if let Some(r) = &e.context.request_id {
                            a href=(href(base, "/request", &[("id", r)])) { (text(r)) } } }
                        td.mono { a href={ (base) "/tx/" (e.txid) } { (e.txid) } }
                        td { (changes_summary(e)) }
                    }
                }
            }
        } }
    }
}

#[derive(Debug, Default, Deserialize, serde::Serialize)]
pub(crate) struct ActivityQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tx: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<i64>,
}

/// `/`: the newest changes, filtered, paged by id.
pub(crate) async fn activity(
    State(state): State<Shared>,
    Mount(base): Mount,
    Query(q): Query<ActivityQuery>,
) -> Result<Markup, PageError> {
    let mut filter = Activity::default();
    if let Some(t) = given(&q.table) {
        let name = table_name(t)?;
        filter.schema = name.schema.as_ref().map(|s| s.as_str().to_owned());
        filter.table = Some(name.name.as_str().to_owned());
    }
    if let Some(op) = given(&q.op) {
        filter.operation =
            Some(
                Operation::from_logged(op).ok_or_else(|| pg_audit::Error::UnknownOperation {
                    name: op.to_owned(),
                })?,
            );
    }
    filter.user_id = given(&q.user).map(str::to_owned);
    filter.request_id = given(&q.request).map(str::to_owned);
    if let Some(tx) = given(&q.tx) {
        filter.txid = Some(
            tx.parse()
                .map_err(|_| PageError::bad_request(format!("`{tx}` is not a transaction id")))?,
        );
    }
    filter.range = TimeRange {
        from: given(&q.from).map(parse_time).transpose()?,
        until: given(&q.until).map(parse_time).transpose()?,
    };
    filter.key = given(&q.key).map(parse_key).transpose()?;
    let page_spec = Page {
        limit: PAGE_SIZE,
        before: q.before,
    };
    let reader = AuditReader::with_log(state.log.clone());
    let entries = with_conn(&state, move |conn| {
        Ok(reader.activity(conn, &filter, page_spec)?)
    })
    .await?;
    let next = page_spec.after(&entries).map(|p| ActivityQuery {
        before: p.before,
        ..ActivityQuery {
            table: q.table.clone(),
            op: q.op.clone(),
            user: q.user.clone(),
            request: q.request.clone(),
            tx: q.tx.clone(),
            from: q.from.clone(),
            until: q.until.clone(),
            key: q.key.clone(),
            before: None,
        }
    });
    let field = |name: &str, label: &str, v: &Option<String>, placeholder: &str| {
        html! { label { (label) input type="text" name=(name) value=[v.as_deref()] placeholder=(placeholder); } }
    };
    Ok(page(
        &base,
        "Activity",
        html! {
            form.filters method="get" action=(crate::html::home(&base)) {
                (field("table", "table", &q.table, "schema.table"))
                label { "operation" select name="op" {
                    option value="" { "any" }
                    @for op in Operation::LOGGED {
                        option value=(op.keyword()) selected[given(&q.op) == Some(op.keyword())] { (op.keyword()) }
                    }
                } }
                (field("user", "user", &q.user, "user id"))
                (field("request", "request", &q.request, "request id"))
                (field("tx", "transaction", &q.tx, "txid"))
                (field("key", "record key", &q.key, "{\"id\": 42}"))
                label { "from (UTC)" input type="datetime-local" name="from" value=[q.from.as_deref()]; }
                label { "until (UTC)" input type="datetime-local" name="until" value=[q.until.as_deref()]; }
                button type="submit" { "Filter" }
            }
            @if entries.is_empty() { p.muted { "No changes match." } }
            @else { (entries_table(&base, &entries)) }
            @if let Some(next) = next {
                p { a rel="next" href=(href(&base, "/", &next)) { "Older changes →" } }
            }
        },
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RecordQuery {
    table: String,
    key: String,
    #[serde(default)]
    at: Option<i64>,
    /// Include entries archived to Parquet (feature `archive`).
    #[serde(default)]
    archived: Option<String>,
}

/// `/record`: one record's timeline, with diffs, its state at an entry, blame, and the
/// revert and restore forms.
pub(crate) async fn record(
    State(state): State<Shared>,
    Extension(access): Extension<Access>,
    Mount(base): Mount,
    headers: HeaderMap,
    Query(q): Query<RecordQuery>,
) -> Result<Response, PageError> {
    let table = table_name(&q.table)?;
    let key = parse_key(&q.key)?;
    let reader = AuditReader::with_log(state.log.clone());
    let archives = state.log.archives_table();
    #[allow(unused_mut)]
    let (mut history, blame, any_archived) = {
        let (table, key) = (table.clone(), key.clone());
        with_conn(&state, move |conn| {
            let history = reader.history_of(conn, &table, &key, Page::first(500))?;
            let blame = reader.blame_of(conn, &table, &key)?;
            // Archived entries are offered only where something was ever archived.
            let any_archived =
                diesel::sql_query(format!("SELECT EXISTS (SELECT FROM {archives}) AS any"))
                    .get_result::<Any>(conn)?
                    .any;
            Ok((history, blame, any_archived))
        })
        .await?
    };
    let archived = q.archived.as_deref() == Some("1");
    // Revert reads the live log: an archived entry is shown, not offered to revert to.
    let live: std::collections::HashSet<i64> = history.iter().map(|e| e.id).collect();
    #[cfg(feature = "archive")]
    let archive_note = if archived {
        let (older, files) = crate::archive::entries(&state, &table, &key).await?;
        let n = older.entries.len();
        let not_read: Vec<String> = (older.missing.iter())
            .map(|location| format!("{location} (missing)"))
            .chain(older.unreadable.iter().cloned())
            .collect();
        history = older.merged_with(history);
        let gone = if not_read.is_empty() {
            String::new()
        } else {
            format!("; not read, so not shown: {}", not_read.join("; "))
        };
        Some(format!(
            "{n} archived entries, read from {files} archived file(s){gone}"
        ))
    } else {
        None
    };
    #[cfg(not(feature = "archive"))]
    let archive_note: Option<String> =
        archived.then(|| "this admin is built without archive support".to_owned());
    let (token, cookie) = csrf::token(&headers, &base);
    let write = matches!(access, Access::Write { .. });
    let table_text = plain(&table);
    let selected = q.at.and_then(|at| history.iter().find(|e| e.id == at));
    let deleted = history
        .first()
        .is_some_and(|e| e.operation == Operation::Delete);
    let hidden = |name: &str, v: &str| html! { input type="hidden" name=(name) value=(v); };
    let body = page(
        &base,
        &format!("{} {}", table_text, pg_audit_diesel::log::key_text(&key)),
        html! {
            p { a href=(href(&base, "/table", &[("name", &table_text)])) { "The table" } " · "
                a href=(href(&base, "/", &[("key", key.to_string()), ("table", table_text.clone())])) { "in the activity" } }
            @if let Some(note) = &archive_note { p.muted { "Including entries archived to Parquet: " (note) "." } }
            @else if cfg!(feature = "archive") {
                @if any_archived {
                    p { a href=(href(&base, "/record", &[("table", table_text.clone()), ("key", key.to_string()), ("archived", "1".to_owned())])) { "Include entries archived to Parquet" } }
                }
            }
            @if history.is_empty() { p.muted { "The log holds no entry of this record." } }
            @if deleted && write {
                form method="post" action={ (base) "/record/restore" } {
                    (hidden("table", &table_text)) (hidden("key", &key.to_string())) (hidden("csrf", &token))
                    label { "Reason for restoring this deleted record" textarea name="reason" required rows="2" cols="50" {} }
                    button type="submit" { "Restore" }
                }
            }
            @if let Some(entry) = selected {
                h2 { "State right after entry " (entry.id) }
                (state_table(entry.new_values.as_ref()))
            }
            @if !blame.is_empty() {
                h2 { "Blame" }
                div.scroll { table {
                    thead { tr { th { "column" } th { "value" } th { "set by entry" } th { "when" } th { "user" } th { "reason" } } }
                    tbody { @for b in &blame { tr {
                        td.mono { (text(&b.column)) } td { (value(&b.value)) }
                        td { a href={ "#e" (b.entry.id) } { (b.entry.id) } }
                        td { (time(b.entry.changed_at)) }
                        td { @if let Some(u) = &b.entry.context.user_id { (text(u)) } }
                        td { @if let Some(r) = &b.entry.context.change_reason { (text(r)) } }
                    } } }
                } }
            }
            h2 { "Timeline, newest first" }
            @for e in &history {
                div.entry id={ "e" (e.id) } {
                    h3 { (e.operation.keyword()) " · " (time(e.changed_at)) " · entry " (e.id) }
                    @if e.operation == Operation::Snapshot {
                        p.muted { "Baseline: the row as it stood when pg-audit baseline read it; no change was made." }
                    }
                    p {
                        "by " @match &e.context.user_id { Some(u) => { a href=(href(&base, "/user", &[("id", u)])) { (text(u)) } }, None => { span.muted { "unknown" } } }
                        @if let Some(r) = &e.context.change_reason { " — why: " (text(r)) }
                        @if let Some(a) = &e.context.client_addr { " — from " (text(a)) }
                        @if let Some(r) = &e.context.request_id { " — request " a href=(href(&base, "/request", &[("id", r)])) { (text(r)) } }
                        @if let Some(s) = &e.context.source { " — " (text(s)) }
                        " — " a href={ (base) "/tx/" (e.txid) } { "transaction " (e.txid) }
                        " — db role " (text(&e.db_user))
                    }
                    @if let Some(old) = &e.old_record_pk { p { "Key changed from " (key_text(old)) } }
                    (diff(e))
                    p { a href=(href(&base, "/record", &[("table", table_text.clone()), ("key", key.to_string()), ("at", e.id.to_string())])) { "State after this entry" } }
                    @if write && e.operation != Operation::Delete && e.new_values.is_some() && live.contains(&e.id) {
                        details { summary { "Revert to this entry" }
                            form method="post" action={ (base) "/record/revert" } {
                                (hidden("table", &table_text)) (hidden("key", &key.to_string()))
                                (hidden("entry", &e.id.to_string())) (hidden("csrf", &token))
                                label { "Reason" textarea name="reason" required rows="2" cols="50" {} }
                                button type="submit" { "Revert" }
                            }
                        }
                    }
                }
            }
        },
    );
    Ok((csrf::set_cookie(cookie), body).into_response())
}

/// Changed columns before → after (key by key inside JSON), highlighted; unchanged ones
/// folded away.
fn diff(e: &AuditEntry) -> Markup {
    let changes = e.changes();
    let unchanged: BTreeMap<&String, &Value> = e
        .new_values
        .as_ref()
        .and_then(Value::as_object)
        .map(|row| {
            row.iter()
                .filter(|(k, _)| !changes.contains_key(*k))
                .collect()
        })
        .unwrap_or_default();
    let paths = pg_audit_diesel::log::changed_paths(&changes);
    html! {
        div.scroll { table.diff {
            thead { tr { th { "column" } th { "before" } th { "after" } } }
            tbody { @for c in &paths { tr {
                td.mono { (text(&c.path)) }
                td.old { @if e.old_values.is_some() { (side(c.before.as_ref())) } }
                td.new { @if e.new_values.is_some() { (side(c.after.as_ref())) } }
            } } }
        } }
        @if !unchanged.is_empty() {
            details { summary { (unchanged.len()) " unchanged column(s)" }
                table { tbody { @for (column, v) in &unchanged { tr { td.mono { (text(column)) } td { (value(v)) } } } } }
            }
        }
    }
}

fn state_table(values: Option<&Value>) -> Markup {
    match values.and_then(Value::as_object) {
        None => html! { p.muted { "No row." } },
        Some(row) => html! {
            table { tbody { @for (column, v) in row { tr { td.mono { (text(column)) } td { (value(v)) } } } } }
        },
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RevertForm {
    table: String,
    key: String,
    #[serde(default)]
    entry: Option<i64>,
    reason: String,
    csrf: String,
}

/// `POST /record/revert`.
pub(crate) async fn revert(
    state: State<Shared>,
    access: Extension<Access>,
    Mount(base): Mount,
    headers: HeaderMap,
    Form(form): Form<RevertForm>,
) -> Result<Response, PageError> {
    change(state, access, Mount(base), headers, form, true).await
}

/// `POST /record/restore`.
pub(crate) async fn restore(
    state: State<Shared>,
    access: Extension<Access>,
    Mount(base): Mount,
    headers: HeaderMap,
    Form(form): Form<RevertForm>,
) -> Result<Response, PageError> {
    change(state, access, Mount(base), headers, form, false).await
}

async fn change(
    State(state): State<Shared>,
    Extension(access): Extension<Access>,
    Mount(base): Mount,
    headers: HeaderMap,
    form: RevertForm,
    revert: bool,
) -> Result<Response, PageError> {
    let Access::Write { user } = access else {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            "this account may not change records".into(),
        ));
    };
    if !csrf::same_origin(&headers) {
        return Err(PageError::bad_request(
            "this form was sent from another site: changes are accepted only from the admin's own pages",
        ));
    }
    if !csrf::valid(&headers, &form.csrf) {
        return Err(PageError::bad_request(
            "the form's CSRF token does not match this browser's: reload the page and try again",
        ));
    }
    if [&form.reason, &form.table, &form.key]
        .iter()
        .any(|f| f.contains('\0'))
    {
        return Err(PageError::bad_request(
            "the form holds a NUL character, which PostgreSQL text cannot hold",
        ));
    }
    let reason = form.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(PageError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a reason is required: say why the record is changed".into(),
        ));
    }
    let table = table_name(&form.table)?;
    let key = parse_key(&form.key)?;
    let entry = form.entry;
    let reader = AuditReader::with_log(state.log.clone());
    {
        let (table, key) = (table.clone(), key.clone());
        let who = AuditContext::new().user_id(user).source("pg-audit admin");
        who.scope(with_conn(&state, move |conn| {
            match (revert, entry) {
                (true, Some(entry)) => reader.revert_of(conn, &table, &key, entry, &reason)?,
                (true, None) => return Err(PageError::bad_request("which entry to revert to?")),
                (false, _) => reader.restore_of(conn, &table, &key, &reason)?,
            }
            Ok(())
        }))
        .await?;
    }
    let to = record_href(&base, &plain(&table), &key);
    Ok(Redirect::to(&to).into_response())
}

/// The most entries a transaction, request or user page shows; the rest are paged in the
/// activity.
const GROUP_LIMIT: u32 = 500;

/// The newest [`GROUP_LIMIT`] entries passing `filter`, oldest first, and whether there are
/// more.
async fn limited(state: &Shared, filter: Activity) -> Result<(Vec<AuditEntry>, bool), PageError> {
    let reader = AuditReader::with_log(state.log.clone());
    let mut entries = with_conn(state, move |conn| {
        Ok(reader.activity(conn, &filter, Page::first(GROUP_LIMIT + 1))?)
    })
    .await?;
    let more = entries.len() > GROUP_LIMIT as usize;
    entries.truncate(GROUP_LIMIT as usize);
    entries.reverse();
    Ok((entries, more))
}

fn more_link(more: bool, rest: &str) -> Markup {
    html! {
        @if more {
            p.warn { "Only the newest " (GROUP_LIMIT) " changes are shown here. "
                a href=(rest) { "All of them, paged, in the activity" } }
        }
    }
}

/// Entries grouped by table, for the transaction, request and user pages.
fn grouped(base: &str, entries: &[AuditEntry]) -> Markup {
    let mut by_table: BTreeMap<String, Vec<AuditEntry>> = BTreeMap::new();
    for e in entries {
        by_table.entry(qualified(e)).or_default().push(e.clone());
    }
    html! {
        @if entries.is_empty() { p.muted { "Nothing." } }
        @for (table, entries) in &by_table {
            h2 { a href=(href(base, "/table", &[("name", table)])) { (text(table)) } " (" (entries.len()) ")" }
            (entries_table(base, entries))
        }
    }
}

/// `/tx/{txid}`.
pub(crate) async fn transaction(
    State(state): State<Shared>,
    Mount(base): Mount,
    Path(txid): Path<i64>,
) -> Result<Markup, PageError> {
    let filter = Activity {
        txid: Some(txid),
        ..Activity::default()
    };
    let (entries, more) = limited(&state, filter).await?;
    let rest = href(&base, "/", &[("tx", txid.to_string())]);
    Ok(page(
        &base,
        &format!("Transaction {txid}"),
        html! { (grouped(&base, &entries)) (more_link(more, &rest)) },
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct IdQuery {
    id: String,
}

/// `/request?id=`.
pub(crate) async fn request(
    State(state): State<Shared>,
    Mount(base): Mount,
    Query(q): Query<IdQuery>,
) -> Result<Markup, PageError> {
    let filter = Activity {
        request_id: Some(q.id.clone()),
        ..Activity::default()
    };
    let (entries, more) = limited(&state, filter).await?;
    let rest = href(&base, "/", &[("request", &q.id)]);
    Ok(page(
        &base,
        &format!("Request {}", q.id),
        html! { (grouped(&base, &entries)) (more_link(more, &rest)) },
    ))
}

/// `/user?id=`: the last 90 days.
pub(crate) async fn user(
    State(state): State<Shared>,
    Mount(base): Mount,
    Query(q): Query<IdQuery>,
) -> Result<Markup, PageError> {
    let filter = Activity {
        user_id: Some(q.id.clone()),
        range: TimeRange {
            from: Some(SystemTime::now() - Duration::from_secs(90 * 86_400)),
            until: None,
        },
        ..Activity::default()
    };
    let (entries, more) = limited(&state, filter).await?;
    let rest = href(&base, "/", &[("user", &q.id)]);
    Ok(page(
        &base,
        &format!("User {}", q.id),
        html! { p.muted { "The last 90 days." } (grouped(&base, &entries)) (more_link(more, &rest)) },
    ))
}

/// An installed table's name as links carry it.
fn installed_name(t: &Installed) -> String {
    match (
        pg_audit::Ident::new(t.table_schema.as_str()),
        pg_audit::Ident::new(t.table_name.as_str()),
    ) {
        (Ok(schema), Ok(name)) => plain(&QualifiedName::new(Some(schema), name)),
        _ => format!("{}.{}", t.table_schema, t.table_name),
    }
}

#[derive(QueryableByName)]
struct Installed {
    #[diesel(sql_type = Text)]
    table_schema: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Jsonb)]
    config: Value,
}

/// `/tables`: every audited table.
pub(crate) async fn tables(
    State(state): State<Shared>,
    Mount(base): Mount,
) -> Result<Markup, PageError> {
    let log = state.log.clone();
    let (installed, elsewhere, changes) = with_conn(&state, move |conn| {
        let installed: Vec<Installed> = diesel::sql_query(format!(
            "SELECT table_schema, table_name, config FROM {} ORDER BY table_schema, table_name",
            log.config_table()
        ))
        .load(conn)?;
        // Each table's changes in 30 days, from the log's counts and the entries past them.
        let changes: Vec<TableChanges> = diesel::sql_query(log.tables_days_sql())
            .bind::<Integer, _>(29)
            .load(conn)?;
        let changes: BTreeMap<(String, String), i64> = changes
            .into_iter()
            .map(|c| ((c.schema_name, c.table_name), c.changes))
            .collect();
        // A table's own problems are on its page; the rest (the log's, the server's) here.
        let elsewhere: Vec<Drift> = pg_audit_diesel::log::drift(conn, &log)?
            .into_iter()
            .filter(|d| {
                !installed
                    .iter()
                    .any(|t| t.table_schema == d.table_schema && t.table_name == d.table_name)
            })
            .collect();
        Ok((installed, elsewhere, changes))
    })
    .await?;
    Ok(page(
        &base,
        "Audited tables",
        html! {
            @if !elsewhere.is_empty() {
                div.warn {
                    strong { "Drift: the log, or the server around it, differs from what pg-audit installed" }
                    ul { @for d in &elsewhere { li { (text(&format!("{}.{}", d.table_schema, d.table_name))) ": " (text(&d.problem)) } } }
                }
            }
            div.scroll { table {
                thead { tr { th { "table" } th { "changes, 30 days" } th { "key" } th { "audited columns" } th { "condition" } th { "operations" } } }
                tbody { @for t in &installed {
                    @let name = installed_name(t);
                    tr {
                        td { a href=(href(&base, "/table", &[("name", &name)])) { (text(&name)) } }
                        td { (changes.get(&(t.table_schema.clone(), t.table_name.clone())).copied().unwrap_or(0)) }
                        td.mono { (value(&t.config["primary_key"])) }
                        td.mono { (value(&t.config["audited"])) }
                        td.mono { (value(&t.config["condition"])) }
                        td.mono { (value(&t.config["operations"])) }
                    }
                } }
            } }
        },
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TableQuery {
    name: String,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    after: Option<String>,
}

/// Whether a query found anything.
#[derive(QueryableByName)]
struct Any {
    #[diesel(sql_type = Bool)]
    any: bool,
}

/// A table's changes in a period.
#[derive(QueryableByName)]
struct TableChanges {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = BigInt)]
    changes: i64,
}

#[derive(QueryableByName)]
struct Day {
    #[diesel(sql_type = Timestamptz, deserialize_as = LogTime)]
    day: SystemTime,
    #[diesel(sql_type = BigInt)]
    changes: i64,
}

/// `/table?name=`: configuration, drift, changes per day, the table as of a time.
pub(crate) async fn table(
    State(state): State<Shared>,
    Mount(base): Mount,
    Query(q): Query<TableQuery>,
) -> Result<Markup, PageError> {
    let name = table_name(&q.name)?;
    let at = given(&q.at).map(parse_time).transpose()?;
    let after = given(&q.after).map(parse_key).transpose()?;
    let log = state.log.clone();
    let reader = AuditReader::with_log(log.clone());
    let (installed, problems, days, rows) = {
        let name = name.clone();
        with_conn(&state, move |conn| {
            let installed: Option<Installed> = diesel::sql_query(format!(
                "SELECT c.table_schema, c.table_name, c.config FROM {} AS c
                  WHERE c.table_name OPERATOR(pg_catalog.=) $1 AND ($2::text IS NULL OR c.table_schema OPERATOR(pg_catalog.=) $2)
                  ORDER BY c.table_schema LIMIT 1",
                log.config_table()
            ))
            .bind::<Text, _>(name.name.as_str())
            .bind::<Nullable<Text>, _>(name.schema.as_ref().map(|s| s.as_str()))
            .get_result(conn)
            .optional()?;
            let Some(installed) = installed else {
                return Err(PageError::not_found(format!(
                    "{name} is not audited in this log"
                )));
            };
            let problems: Vec<String> = pg_audit_diesel::log::drift(conn, &log)?
                .into_iter()
                .filter(|d| d.table_schema == installed.table_schema && d.table_name == installed.table_name)
                .map(|d| d.problem)
                .collect();
            // From the log's counts, and the entries past them.
            let days: Vec<Day> = diesel::sql_query(log.days_sql())
                .bind::<Text, _>(&installed.table_schema)
                .bind::<Text, _>(&installed.table_name)
                .bind::<Integer, _>(29)
                .load(conn)?;
            let qualified = table_name(&installed_name(&installed)).ok();
            // Only when a time is chosen: the page reads the table itself for the rows the log
            // never saw.
            let rows = match (qualified, at) {
                (Some(q), Some(at)) => Some(reader.table_at(conn, &q, at, after.as_ref(), PAGE_SIZE)?),
                _ => None,
            };
            Ok((installed, problems, days, rows))
        })
        .await?
    };
    let full = installed_name(&installed);
    let at_text = q.at.clone().unwrap_or_default();
    Ok(page(
        &base,
        &full,
        html! {
            @if !problems.is_empty() {
                div.warn {
                    strong { "Drift: the installed triggers differ from what was installed" }
                    ul { @for p in &problems { li { (text(p)) } } }
                    "Reinstall (AuditMigrations::reinstall, or pg-audit sql trigger … | psql) to repair."
                }
            } @else {
                p.muted { "Installed as recorded: no drift." }
            }
            h2 { "Configuration" }
            table { tbody {
                tr { th { "key" } td.mono { (value(&installed.config["primary_key"])) } }
                tr { th { "audited columns" } td.mono { (value(&installed.config["audited"])) } }
                tr { th { "condition" } td.mono { (value(&installed.config["condition"])) } }
                tr { th { "operations" } td.mono { (value(&installed.config["operations"])) } }
                tr { th { "levels" } td.mono { (value(&installed.config["levels"])) } }
            } }
            p { a href=(href(&base, "/", &[("table", &full)])) { "Its changes in the activity" } }
            h2 { "Changes per day, last 30 days (UTC)" }
            (chart(&days))
            h2 { "The table as of a time" }
            p.muted { "Every row's audited columns at a chosen moment, rebuilt from the log (and from the table for rows the log never saw change)." }
            form.filters method="get" action={ (base) "/table" } {
                input type="hidden" name="name" value=(full);
                label { "at (UTC)" input type="datetime-local" name="at" value=(at_text); }
                button type="submit" { "Show" }
            }
            @if let Some(rows) = &rows {
                @if !rows.current_rows {
                    p.warn { "Rows the log never saw change are not listed: this role may not read the table itself." }
                }
                @if rows.rows.is_empty() { p.muted { "No rows." } }
                div.scroll { table {
                    thead { tr { th { "record" } th { "audited columns" } th { "from" } } }
                    tbody { @for r in &rows.rows { tr {
                        td { a href=(record_href(&base, &full, &r.key)) { (key_text(&r.key)) } }
                        td { @if let Some(row) = r.values.as_object() {
                            @for (i, (c, v)) in row.iter().enumerate() { @if i > 0 { ", " } span.mono { (text(c)) } "=" (value(v)) } } }
                        td.muted { @if r.from_log { "log" } @else { "table (unchanged since before auditing)" } }
                    } } }
                } }
                @if rows.rows.len() == PAGE_SIZE as usize {
                    @if let Some(last) = rows.rows.last() {
                        p { a rel="next" href=(href(&base, "/table", &[("name", full.clone()), ("at", at_text.clone()), ("after", last.key.to_string())])) { "More rows →" } }
                    }
                }
            }
        },
    ))
}

/// Changes per day as a bar chart, drawn on the server (no JavaScript).
fn chart(days: &[Day]) -> Markup {
    let today = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let counts: Vec<(u64, i64)> = (0..30)
        .map(|i| {
            let day = today - 29 + i;
            let n = days
                .iter()
                .find(|d| {
                    d.day
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .is_ok_and(|s| s.as_secs() / 86_400 == day)
                })
                .map_or(0, |d| d.changes);
            (day, n)
        })
        .collect();
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let (width, height, bar) = (600.0, 120.0, 20.0);
    html! {
        svg viewBox={ "0 0 " (width) " " (height + 20.0) } role="img" aria-label="changes per day" {
            @for (i, (day, n)) in counts.iter().enumerate() {
                @let h = (*n as f64 / max as f64) * height;
                rect x=(i as f64 * bar + 2.0) y=(height - h) width=(bar - 4.0) height=(h) {
                    title { (pg_audit_diesel::utc_string(SystemTime::UNIX_EPOCH + Duration::from_secs(day * 86_400)).get(..10).unwrap_or("")) ": " (n) " change(s)" }
                }
            }
            text x="0" y=(height + 14.0) { "30 days ago" }
            text x=(width - 30.0) y=(height + 14.0) { "today" }
            text x="0" y="10" { "max " (max) }
        }
    }
}

#[derive(QueryableByName)]
struct PartitionRow {
    #[diesel(sql_type = Text)]
    partition_name: String,
    #[diesel(sql_type = Nullable<Timestamptz>, deserialize_as = Option<LogTime>)]
    range_start: Option<LogTime>,
    #[diesel(sql_type = Nullable<Timestamptz>, deserialize_as = Option<LogTime>)]
    range_end: Option<LogTime>,
    #[diesel(sql_type = Bool)]
    is_default: bool,
    #[diesel(sql_type = BigInt)]
    total_bytes: i64,
    #[diesel(sql_type = Double)]
    estimated_rows: f64,
}

/// `/partitions`.
pub(crate) async fn partitions(
    State(state): State<Shared>,
    Mount(base): Mount,
) -> Result<Markup, PageError> {
    let sql = format!(
        "SELECT p.*, greatest(c.reltuples, 0)::float8 AS estimated_rows
           FROM ({}) AS p JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(p.partition_name)",
        state.log.list_partitions_sql()
    );
    let (parts, default_rows) = with_conn(&state, move |conn| {
        let parts: Vec<PartitionRow> = diesel::sql_query(sql).load(conn)?;
        #[derive(QueryableByName)]
        struct Held {
            #[diesel(sql_type = Bool)]
            held: bool,
        }
        let default = parts
            .iter()
            .find(|p| p.is_default)
            .map(|p| p.partition_name.clone());
        // A role with only `pg-audit sql grant`'s SELECT on the log may not read a partition
        // directly: then the statistics say whether the DEFAULT partition holds rows.
        let held = match &default {
            // In a savepoint: refused, it must not abort the page's transaction.
            Some(name) => conn
                .transaction(|conn| {
                    diesel::sql_query(format!(
                        "SELECT EXISTS (SELECT FROM {name} LIMIT 1) AS held"
                    ))
                    .get_result::<Held>(conn)
                })
                .map_or_else(
                    |_| parts.iter().any(|p| p.is_default && p.estimated_rows > 0.0),
                    |h| h.held,
                ),
            None => false,
        };
        Ok((parts, held))
    })
    .await?;
    let bound = |t: &Option<LogTime>| {
        t.map(|t| pg_audit_diesel::utc_string(t.0))
            .unwrap_or_default()
    };
    Ok(page(
        &base,
        "Partitions",
        html! {
            @if default_rows {
                div.warn { "The DEFAULT partition holds rows: a partition for their time was missing when they were written. Run "
                    code { "pg-audit partitions ensure" } " (it moves them into their partitions)." }
            }
            div.scroll { table {
                thead { tr { th { "partition" } th { "from" } th { "until" } th { "rows (estimate)" } th { "size" } } }
                tbody { @for p in &parts { tr {
                    td.mono { (text(&p.partition_name)) @if p.is_default { " (DEFAULT)" } }
                    td { (bound(&p.range_start)) } td { (bound(&p.range_end)) }
                    td { (format!("{:.0}", p.estimated_rows)) }
                    td { (format!("{:.1} MiB", p.total_bytes as f64 / 1_048_576.0)) }
                } } }
            } }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_with_dots_and_quotes_round_trip() {
        for (schema, name) in [
            ("public", "users"),
            ("s.p", "q"),
            ("s", "p.q"),
            ("a\"b", "c"),
            ("x", "<b>y</b>"),
        ] {
            let table = QualifiedName::new(
                Some(pg_audit::Ident::new(schema).unwrap()),
                pg_audit::Ident::new(name).unwrap(),
            );
            let text = plain(&table);
            assert_eq!(table_name(&text).unwrap(), table, "{text}");
        }
        assert_eq!(plain(&table_name("\"s.p\".q").unwrap()), "\"s.p\".q");
        assert_ne!(
            table_name("\"s.p\".q").unwrap(),
            table_name("s.\"p.q\"").unwrap()
        );
        for bad in ["a.b.c", "\"unterminated", "\"a\"b.c"] {
            assert!(table_name(bad).is_err(), "{bad}");
        }
    }
}
