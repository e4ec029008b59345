//! Objects another role plants on a search path, for the sweeps that show none of them ever
//! runs in pg-audit's sessions (`pg-audit-cli/tests/planted.rs`, every command of the
//! program; `tests/tests/planted_admin.rs`, every page of the admin mounted in an
//! application); and a crawler of the admin's pages. Shared by path, so both sweeps plant the
//! same objects.
//!
//! What is planted, in `public` (where every role may create objects on PostgreSQL 13 and 14):
//! - for **every operator name** PostgreSQL has, an operator for **every pair of types** of
//!   [`OPERATOR_TYPES`] (and a prefix operator for each type) that `pg_catalog` has no exact
//!   operator for: PostgreSQL prefers an exact match on any schema of the path to a built-in
//!   that needs a cast (`public.=(oid, regclass)` over `pg_catalog.=(oid, oid)`);
//! - for **every name of a built-in function the program's sources call** (read from the
//!   sources, so a new call is covered without a list to keep), functions of every arity the
//!   built-ins have, over [`FUNCTION_TYPES`], and aggregates for aggregates
//!   (`public.array_agg(bigint)` over `pg_catalog.array_agg(anynonarray)`).
//!
//! Every one of them counts its calls in the sequence `public.trap_calls`, which is not
//! transactional: a call in a statement that then fails still counts.

#![allow(dead_code)] // Each sweep uses its part.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

/// The types the planted operators take, in every pair: those of the log's columns, its
/// side tables and the catalogs pg-audit reads, and arrays of them.
pub(crate) const OPERATOR_TYPES: &[&str] = &[
    "text",
    "character varying",
    "\"char\"",
    "name",
    "character",
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "real",
    "double precision",
    "oid",
    "regclass",
    "regproc",
    "regprocedure",
    "regnamespace",
    "regrole",
    "regtype",
    "boolean",
    "json",
    "jsonb",
    "bytea",
    "timestamp with time zone",
    "timestamp without time zone",
    "date",
    "interval",
    "xid",
    "xid8",
    "pg_lsn",
    "int2vector",
    "oidvector",
    "text[]",
    "name[]",
    "\"char\"[]",
    "oid[]",
    "smallint[]",
    "integer[]",
    "bigint[]",
    "jsonb[]",
    "aclitem[]",
    "pg_node_tree",
];

/// The types the planted functions take: every arity 1 and 2 combination of them.
pub(crate) const FUNCTION_TYPES: &[&str] = &[
    "text",
    "character varying",
    "\"char\"",
    "name",
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "oid",
    "regclass",
    "regproc",
    "boolean",
    "json",
    "jsonb",
    "bytea",
    "timestamp with time zone",
    "interval",
    "text[]",
    "name[]",
    "oid[]",
    "bigint[]",
];

/// The crates whose code runs SQL.
const CRATES: &[&str] = &[
    "pg-audit",
    "pg-audit-diesel",
    "pg-audit-admin",
    "pg-audit-archive",
    "pg-audit-capture",
    "pg-audit-cli",
];

/// Every name written as a call (`name(`) in the sources of the crates that run SQL, found
/// from `manifest_dir` (a crate of the workspace); the server keeps those that name a built-in
/// function.
pub(crate) fn called_names(manifest_dir: &Path) -> BTreeSet<String> {
    let root = manifest_dir.parent().expect("the workspace");
    let mut names = BTreeSet::new();
    for krate in CRATES {
        let src = root.join(krate).join("src");
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("a source file");
                    collect_calls(&text, &mut names);
                }
            }
        }
    }
    assert!(
        names.len() > 100,
        "the sources of {CRATES:?} were not found from {}",
        root.display()
    );
    names
}

fn collect_calls(text: &str, names: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let mut j = i;
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            if bytes.get(j) == Some(&b'(') {
                names.insert(text[start..i].to_ascii_lowercase());
            }
        } else {
            i += 1;
        }
    }
}

fn array(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let quoted: Vec<String> = items
        .into_iter()
        .map(|s| format!("'{}'", s.as_ref().replace('\'', "''")))
        .collect();
    format!("ARRAY[{}]::text[]", quoted.join(", "))
}

/// The SQL that plants the objects, run as the planting role. It resolves names in
/// `pg_catalog` only while it runs, so it never calls what it has planted.
pub(crate) fn traps_sql(names: &BTreeSet<String>) -> String {
    format!(
        r#"
SET search_path = pg_catalog;
CREATE SEQUENCE public.trap_calls;
GRANT USAGE, SELECT ON SEQUENCE public.trap_calls TO PUBLIC;
DO $traps$
DECLARE
    optypes text[] := {optypes};
    fntypes text[] := {fntypes};
    names text[] := {names};
    counted text := 'PERFORM pg_catalog.nextval(''public.trap_calls'');';
    l text; r text; o name; n text; f record; k int; j int; t text; u text;
    args text[]; ret text; setof boolean; body text;
BEGIN
    -- Operators: every name, for every pair of types pg_catalog has no exact operator for.
    FOREACH l IN ARRAY optypes LOOP
        EXECUTE format('CREATE FUNCTION public.trap_op(%s) RETURNS boolean LANGUAGE plpgsql AS %L',
                       l, 'BEGIN ' || counted || ' RETURN true; END');
        FOR o IN SELECT DISTINCT p.oprname FROM pg_operator AS p WHERE p.oprkind = 'l'
                 EXCEPT SELECT p.oprname FROM pg_operator AS p WHERE p.oprkind = 'l' AND p.oprright = l::regtype LOOP
            EXECUTE format('CREATE OPERATOR public.%s (RIGHTARG = %s, FUNCTION = public.trap_op)', o, l);
        END LOOP;
        FOREACH r IN ARRAY optypes LOOP
            EXECUTE format('CREATE FUNCTION public.trap_op(%s, %s) RETURNS boolean LANGUAGE plpgsql AS %L',
                           l, r, 'BEGIN ' || counted || ' RETURN true; END');
            FOR o IN SELECT DISTINCT p.oprname FROM pg_operator AS p WHERE p.oprkind = 'b'
                     EXCEPT SELECT p.oprname FROM pg_operator AS p
                             WHERE p.oprleft = l::regtype AND p.oprright = r::regtype LOOP
                EXECUTE format('CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = public.trap_op)', o, l, r);
            END LOOP;
        END LOOP;
    END LOOP;
    -- Aggregates' state functions.
    FOREACH t IN ARRAY fntypes LOOP
        EXECUTE format('CREATE FUNCTION public.trap_state(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
                       t, t, t, 'BEGIN ' || counted || ' RETURN $1; END');
        FOREACH u IN ARRAY fntypes LOOP
            EXECUTE format('CREATE FUNCTION public.trap_state(%s, %s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
                           t, t, u, t, 'BEGIN ' || counted || ' RETURN $1; END');
        END LOOP;
    END LOOP;
    -- Functions named like each built-in the sources call.
    FOREACH n IN ARRAY names LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_proc AS p WHERE p.proname = n AND p.pronamespace = 'pg_catalog'::regnamespace);
        IF EXISTS (SELECT FROM pg_proc AS p WHERE p.proname = n AND p.prokind = 'a' AND p.pronamespace = 'pg_catalog'::regnamespace) THEN
            FOREACH t IN ARRAY fntypes LOOP
                EXECUTE format('CREATE AGGREGATE public.%I(%s) (SFUNC = public.trap_state, STYPE = %s)', n, t, t);
                FOREACH u IN ARRAY fntypes LOOP
                    EXECUTE format('CREATE AGGREGATE public.%I(%s, %s) (SFUNC = public.trap_state, STYPE = %s)', n, t, u, t);
                END LOOP;
            END LOOP;
            CONTINUE;
        END IF;
        SELECT p.proretset, CASE WHEN t2.typtype = 'p' OR t2.typcategory = 'P' THEN 'text' ELSE format_type(p.prorettype, NULL) END
          INTO setof, ret
          FROM pg_proc AS p JOIN pg_type AS t2 ON t2.oid = p.prorettype
         WHERE p.proname = n AND p.pronamespace = 'pg_catalog'::regnamespace
         ORDER BY p.oid LIMIT 1;
        body := CASE WHEN setof THEN 'BEGIN ' || counted || ' RETURN; END' ELSE 'BEGIN ' || counted || ' RETURN NULL; END' END;
        ret := CASE WHEN setof THEN 'SETOF ' || ret ELSE ret END;
        FOR k IN SELECT DISTINCT a.k FROM pg_proc AS p
                   CROSS JOIN LATERAL (SELECT p.pronargs::int AS k
                                       UNION SELECT p.pronargs + g FROM generate_series(1, 2) AS g WHERE p.provariadic <> 0) AS a
                  WHERE p.proname = n AND p.pronamespace = 'pg_catalog'::regnamespace AND a.k > 0 LOOP
            IF k = 1 THEN
                FOREACH t IN ARRAY fntypes LOOP
                    EXECUTE format('CREATE FUNCTION public.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', n, t, ret, body);
                END LOOP;
            ELSIF k = 2 THEN
                FOREACH t IN ARRAY fntypes LOOP
                    FOREACH u IN ARRAY fntypes LOOP
                        EXECUTE format('CREATE FUNCTION public.%I(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L', n, t, u, ret, body);
                    END LOOP;
                END LOOP;
            ELSE
                -- Three or more arguments: each type in every position, the others text; and
                -- the built-ins' own signatures with each polymorphic argument made each type.
                FOREACH t IN ARRAY fntypes LOOP
                    FOR j IN 1 .. k LOOP
                        args := array_fill('text'::text, ARRAY[k]);
                        args[j] := t;
                        BEGIN
                            EXECUTE format('CREATE FUNCTION public.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', n, array_to_string(args, ', '), ret, body);
                        EXCEPTION WHEN duplicate_function THEN NULL;
                        END;
                    END LOOP;
                    FOR f IN SELECT p.proargtypes FROM pg_proc AS p
                              WHERE p.proname = n AND p.pronamespace = 'pg_catalog'::regnamespace AND p.pronargs = k LOOP
                        SELECT array_agg(CASE WHEN ty.typtype = 'p' THEN t ELSE format_type(a.oid, NULL) END ORDER BY a.n)
                          INTO args
                          FROM unnest(f.proargtypes::oid[]) WITH ORDINALITY AS a(oid, n) JOIN pg_type AS ty ON ty.oid = a.oid;
                        BEGIN
                            EXECUTE format('CREATE FUNCTION public.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', n, array_to_string(args, ', '), ret, body);
                        EXCEPTION WHEN duplicate_function THEN NULL;
                        END;
                    END LOOP;
                END LOOP;
            END IF;
        END LOOP;
    END LOOP;
END
$traps$;
RESET search_path;
"#,
        optypes = array(OPERATOR_TYPES),
        fntypes = array(FUNCTION_TYPES),
        names = array(names),
    )
}

/// How many times a planted object has run, read from a session whose names resolve in
/// `pg_catalog` alone.
pub(crate) fn calls(server: &pg_audit_tempdb::Server, url: &str) -> i64 {
    server
        .psql(
            url,
            "SET search_path = pg_catalog; SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.trap_calls",
        )
        .expect("the trap counter")
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("a count")
}

/// The planted functions that ran, as far as the statistics have heard (`track_functions =
/// pl`), for the message of a failed sweep.
pub(crate) fn fired(server: &pg_audit_tempdb::Server, url: &str) -> String {
    std::thread::sleep(std::time::Duration::from_millis(1200));
    server
        .psql(
            url,
            "SET search_path = pg_catalog;
             SELECT string_agg(f.funcid::regprocedure::text, ', ') FROM pg_stat_user_functions AS f
              WHERE f.schemaname = 'public' AND f.calls > 0",
        )
        .unwrap_or_default()
}

/// An HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The headers, names in lowercase.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: String,
}

/// One HTTP/1.1 request to `addr` (`Connection: close`), with `Host: host`.
pub(crate) fn http(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("the admin listens");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("receive");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    Response {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
        headers,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of each attribute `name="..."` in `html`, unescaped.
fn attributes(html: &str, name: &str) -> Vec<String> {
    let needle = format!(" {name}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| unescape(&rest[..end]))
        })
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A form on a page: its method, action and fields (name, value), the value of a `<select>`
/// being each of its options in turn.
#[derive(Debug, Clone)]
struct Form {
    method: String,
    action: String,
    fields: Vec<(String, Vec<String>)>,
}

fn forms(html: &str) -> Vec<Form> {
    let mut out = Vec::new();
    for chunk in html.split("<form").skip(1) {
        let end = chunk.find("</form>").unwrap_or(chunk.len());
        let (tag, inner) = chunk.split_once('>').unwrap_or((chunk, ""));
        let inner = &inner[..end.saturating_sub(tag.len() + 1).min(inner.len())];
        let attr = |name: &str| attributes(tag, name).into_iter().next().unwrap_or_default();
        let mut fields = Vec::new();
        for input in inner.split("<input").skip(1) {
            let input = input.split('>').next().unwrap_or("");
            let Some(name) = attributes(input, "name").into_iter().next() else {
                continue;
            };
            let value = attributes(input, "value")
                .into_iter()
                .next()
                .unwrap_or_default();
            fields.push((name, vec![value]));
        }
        for select in inner.split("<select").skip(1) {
            let (tag, options) = select.split_once('>').unwrap_or((select, ""));
            let options = options.split("</select>").next().unwrap_or("");
            let Some(name) = attributes(tag, "name").into_iter().next() else {
                continue;
            };
            fields.push((name, attributes(options, "value")));
        }
        for area in inner.split("<textarea").skip(1) {
            let tag = area.split('>').next().unwrap_or("");
            if let Some(name) = attributes(tag, "name").into_iter().next() {
                fields.push((name, vec![String::new()]));
            }
        }
        out.push(Form {
            method: attr("method").to_ascii_uppercase(),
            action: attr("action"),
            fields,
        });
    }
    out
}

/// What a crawl of the admin saw: each request made, and its status.
#[derive(Debug, Default)]
pub(crate) struct Crawl {
    /// `METHOD path?query` and the status, in order.
    pub(crate) requests: Vec<(String, u16)>,
}

impl Crawl {
    /// Whether a request was made to `route` (`{name}` segments match any segment), under
    /// `base`.
    pub(crate) fn reached(&self, base: &str, route: &str) -> bool {
        let want: Vec<&str> = route.split('/').collect();
        self.paths().iter().any(|p| {
            let Some(p) = p.strip_prefix(base) else {
                return false;
            };
            let p = if p.is_empty() { "/" } else { p };
            let got: Vec<&str> = p.split('/').collect();
            got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g == w || (w.starts_with('{') && !g.is_empty()))
        })
    }

    /// The paths (no query) requested.
    pub(crate) fn paths(&self) -> BTreeSet<String> {
        self.requests
            .iter()
            .map(|(r, _)| {
                let target = r.split_once(' ').map_or(r.as_str(), |(_, t)| t);
                target.split('?').next().unwrap_or("").to_owned()
            })
            .collect()
    }
}

/// Crawls the admin at `addr` from `start`: every link, every GET form submitted with its fields
/// as given and each empty one filled from `samples` (by field name), and — with `post` —
/// every POST form (revert, restore) with its CSRF cookie and a reason. `check` hears every
/// request made (to count planted calls, say); every answer must be below 500, and links 200.
pub(crate) fn crawl(
    addr: SocketAddr,
    start: &str,
    headers: &[(&str, &str)],
    samples: &[(&str, &str)],
    post: bool,
    check: &mut dyn FnMut(&str),
) -> Crawl {
    let host = addr.to_string();
    let mut seen = BTreeSet::new();
    // (target, from a link: must answer 200)
    let mut queue = vec![(start.to_owned(), true)];
    let mut crawl = Crawl::default();
    let mut posted = BTreeSet::new();
    // Each GET form's variants are requested once, from the first page that shows it.
    let mut submitted = BTreeSet::new();
    while let Some((target, link)) = queue.pop() {
        if !seen.insert(target.clone()) || seen.len() > 400 {
            continue;
        }
        let response = http(addr, &host, "GET", &target, headers, "");
        let what = format!("GET {target}");
        check(&what);
        crawl.requests.push((what.clone(), response.status));
        assert!(
            response.status < 500 && (!link || response.status == 200),
            "{what}: {} {}",
            response.status,
            response.body
        );
        if response.status != 200 {
            continue;
        }
        for href in attributes(&response.body, "href") {
            if href.starts_with('/') && !href.starts_with("//") {
                queue.push((href, true));
            }
        }
        let cookie = response
            .headers
            .iter()
            .find(|(n, _)| n == "set-cookie")
            .and_then(|(_, v)| v.split(';').next())
            .map(str::to_owned);
        for form in forms(&response.body) {
            if form.method == "POST" {
                if !post || !posted.insert(form.action.clone()) {
                    continue;
                }
                let body = form
                    .fields
                    .iter()
                    .map(|(n, v)| {
                        let value = match v.first().map(String::as_str) {
                            Some("") | None => "Sweep".to_owned(),
                            Some(value) => value.to_owned(),
                        };
                        format!("{}={}", encode(n), encode(&value))
                    })
                    .collect::<Vec<_>>()
                    .join("&");
                let origin = format!("http://{host}");
                let mut with = headers.to_vec();
                with.push(("Origin", &origin));
                with.push(("Sec-Fetch-Site", "same-origin"));
                if let Some(c) = &cookie {
                    with.push(("Cookie", c));
                }
                let response = http(addr, &host, "POST", &form.action, &with, &body);
                let what = format!("POST {}", form.action);
                check(&what);
                crawl.requests.push((what.clone(), response.status));
                assert!(
                    response.status < 500,
                    "{what} ({body}): {} {}",
                    response.status,
                    response.body
                );
                continue;
            }
            // A GET form: as given, then with each empty field filled, and each option.
            let shape = (
                form.action.clone(),
                form.fields
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>(),
            );
            if !submitted.insert(shape) {
                continue;
            }
            let base: Vec<(String, String)> = form
                .fields
                .iter()
                .map(|(n, v)| (n.clone(), v.first().cloned().unwrap_or_default()))
                .collect();
            let mut variants = vec![base.clone()];
            for (i, (name, values)) in form.fields.iter().enumerate() {
                let mut choices: Vec<String> = values.iter().skip(1).cloned().collect();
                if values.first().is_none_or(String::is_empty)
                    && let Some((_, sample)) = samples.iter().find(|(n, _)| n == name)
                {
                    choices.push((*sample).to_owned());
                }
                for choice in choices {
                    let mut variant = base.clone();
                    variant[i].1 = choice;
                    variants.push(variant);
                }
            }
            for variant in variants {
                let query = variant
                    .iter()
                    .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                queue.push((format!("{}?{query}", form.action), false));
            }
        }
    }
    crawl
}
