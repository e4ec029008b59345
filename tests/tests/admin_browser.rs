//! The audit admin in a real headless Chromium: activity → record → diff → revert with a
//! reason → the new entry with that reason; hostile values never execute; the authorization
//! function's "none" and "read" are enforced; screenshots of the main pages.

use std::net::SocketAddr;

use axum::http::request::Parts;
use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use fantoccini::{Client, Locator};
use pg_audit_admin::Access;
use pg_audit_tests::browser::Browser;
use pg_audit_tests::{TestDb, exec, http, rows};
use serde_json::json;

/// The role from a `role` cookie the test sets: none, read or write (as "admin-ann").
fn by_cookie(request: &Parts) -> Access {
    let cookie = request
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == "role")
        .map(|(_, v)| v.to_owned());
    match cookie.as_deref() {
        Some("write") => Access::Write {
            user: "admin-ann".into(),
        },
        Some("read") => Access::Read,
        _ => Access::None,
    }
}

const HOSTILE_TITLE: &str =
    "<script>window.__pwned='script'</script>\"><img src=x onerror=\"window.__pwned='img'\">";
const HOSTILE_USER: &str = "<svg onload=\"window.__pwned='svg'\">";
const HOSTILE_REASON: &str = "javascript:window.__pwned='js' \u{202e}gnp.exe";

fn setup(hint: &str) -> (TestDb, SocketAddr, tokio::runtime::Runtime) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = pg_audit::AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(
        &mut conn,
        "CREATE TABLE products (id int PRIMARY KEY, title text NOT NULL, price_cents int NOT NULL);
         CREATE TABLE \"<b>weird</b>\" (\"k\"\"'<i>\" text PRIMARY KEY, v text);",
    );
    for table in ["public.products", "public.<b>weird</b>"] {
        let mut spec =
            pg_audit::TriggerSpec::builder(pg_audit::QualifiedName::parse(table).unwrap());
        if table.contains("weird") {
            spec = spec.primary_key(["k\"'<i>"]);
        }
        exec(&mut conn, &spec.build().unwrap().install_sql(&log));
    }
    exec(
        &mut conn,
        &format!(
            "BEGIN;
             SET LOCAL pg_audit.context = '{}';
             INSERT INTO products VALUES (1, 'Lamp', 2500), (2, {}, 100);
             INSERT INTO \"<b>weird</b>\" VALUES ('<script>window.__pwned=1</script>', 'x');
             COMMIT;
             BEGIN;
             SET LOCAL pg_audit.context = '{}';
             UPDATE products SET price_cents = 2200, title = 'Lamp!' WHERE id = 1;
             COMMIT;",
            json!({"user_id": HOSTILE_USER, "change_reason": HOSTILE_REASON})
                .to_string()
                .replace('\'', "''"),
            pg_audit::quote_literal(HOSTILE_TITLE).unwrap(),
            json!({"user_id": "bob", "change_reason": "Spring sale"}),
        ),
    );
    let pool = Pool::builder()
        .max_size(4)
        .build(ConnectionManager::<PgConnection>::new(db.url()))
        .unwrap();
    let admin = pg_audit_admin::router(pool).authorize(by_cookie);
    let app = axum::Router::new().nest("/audit", admin);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = http::serve(&runtime, app);
    (db, addr, runtime)
}

async fn set_role(client: &Client, base: &str, role: &str) {
    // Cookies are set for the current origin: visit it first.
    client
        .goto(&format!("{base}/audit/assets/style.css"))
        .await
        .unwrap();
    client.delete_all_cookies().await.unwrap();
    // WebDriver's add-cookie refuses a domain that is an IP address; the page's script does not.
    client
        .execute(&format!("document.cookie = 'role={role}; path=/';"), vec![])
        .await
        .unwrap();
}

/// Nothing hostile ran: no flag set, no element made from a value.
async fn assert_inert(client: &Client) {
    let pwned = client
        .execute(
            "return window.__pwned === undefined ? null : String(window.__pwned);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::Value::Null, "a hostile value ran");
    let made = client
        .execute(
            "return document.querySelectorAll('script, img, svg:not([aria-label]), b, i').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(made, json!(0), "a hostile value became markup");
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let dir = if std::env::var_os("PG_AUDIT_SCREENSHOTS").is_some() {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        std::env::temp_dir().join("pg-audit-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[test]
fn click_through_activity_record_diff_and_revert_with_a_reason() {
    let (db, addr, runtime) = setup("admin_browser");
    let base = format!("http://{addr}");
    runtime.block_on(async {
        let browser = Browser::start().await;
        let c = &browser.client;
        set_role(c, &base, "write").await;

        // Activity: every change, newest first, hostile values shown as text.
        c.goto(&format!("{base}/audit")).await.unwrap();
        assert_eq!(c.title().await.unwrap(), "Activity · pg-audit");
        let body = c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("<script>window.__pwned='script'</script>"),
            "{body}"
        );
        assert!(
            body.contains("\\u{202e}"),
            "the bidi override is shown as an escape: {body}"
        );
        assert!(body.contains(HOSTILE_USER), "{body}");
        assert_inert(c).await;
        screenshot(c, "activity").await;

        // Record: the UPDATE's diff, before → after.
        c.find(Locator::LinkText("id=1"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert!(c.title().await.unwrap().starts_with("public.products id=1"));
        let diff = c
            .find(Locator::Css(".entry table.diff"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(diff.contains("price_cents 2500 2200"), "{diff}");
        assert!(diff.contains("title Lamp Lamp!"), "{diff}");
        let blame = c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(blame.contains("Blame"), "{blame}");
        assert_inert(c).await;
        screenshot(c, "record").await;

        // Revert to the INSERT (the older entry), with a reason.
        let entries = c.find_all(Locator::Css(".entry")).await.unwrap();
        assert_eq!(entries.len(), 2);
        let insert = &entries[1];
        insert
            .find(Locator::Css("summary"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        insert
            .find(Locator::Css("textarea[name=reason]"))
            .await
            .unwrap()
            .send_keys("Price change was a mistake")
            .await
            .unwrap();
        insert
            .find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // Back on the record (same URL, so wait for the third entry): the new entry, on top,
        // carries the reason and the admin's user.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let top = loop {
            if let Ok(entries) = c.find_all(Locator::Css(".entry")).await
                && entries.len() == 3
                && let Ok(text) = entries[0].text().await
            {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no third entry after the revert"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert!(top.starts_with("UPDATE"), "{top}");
        assert!(top.contains("by admin-ann"), "{top}");
        assert!(top.contains("why: Price change was a mistake"), "{top}");
        assert!(top.contains("pg-audit admin"), "{top}");

        // The table page: configuration, chart, the table as of now.
        c.goto(&format!("{base}/audit/table?name=public.products"))
            .await
            .unwrap();
        let page = c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("no drift"), "{page}");
        c.find(Locator::Css("svg rect")).await.unwrap();
        // The table as of a time: choose one (a minute ahead, so every change is in).
        let at = pg_audit_diesel::rfc3339(
            std::time::SystemTime::now() + std::time::Duration::from_secs(60),
        );
        c.goto(&format!(
            "{base}/audit/table?name=public.products&at={}",
            &at[..16]
        ))
        .await
        .unwrap();
        let page = c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("id=1") && page.contains("id=2"), "{page}");
        screenshot(c, "table").await;

        // A table and key made of markup: shown as text.
        c.goto(&format!("{base}/audit?table=public.%3Cb%3Eweird%3C%2Fb%3E"))
            .await
            .unwrap();
        let page = c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("public.<b>weird</b>"), "{page}");
        assert!(page.contains("<script>window.__pwned=1</script>"), "{page}");
        assert_inert(c).await;
        c.goto(&format!("{base}/audit/partitions")).await.unwrap();
        screenshot(c, "partitions").await;
        browser.close().await;
    });
    let mut conn = db.conn();
    assert_eq!(
        rows(
            &mut conn,
            "SELECT title, price_cents FROM products WHERE id = 1"
        ),
        [json!({"title": "Lamp", "price_cents": 2500})]
    );
    assert_eq!(
        rows(
            &mut conn,
            "SELECT context->>'user_id' AS user, context->>'change_reason' AS reason
               FROM audit.auditlog ORDER BY id DESC LIMIT 1"
        ),
        [json!({"user": "admin-ann", "reason": "Price change was a mistake"})]
    );
}

#[test]
fn none_and_read_are_enforced() {
    let (db, addr, runtime) = setup("admin_roles");
    let base = format!("http://{addr}");
    let record = format!("{base}/audit/record?table=public.products&key=%7B%22id%22%3A1%7D");
    runtime.block_on(async {
        let browser = Browser::start().await;
        let c = &browser.client;
        set_role(c, &base, "none").await;
        c.goto(&format!("{base}/audit")).await.unwrap();
        let text = c
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.starts_with("403 Forbidden"), "{text}");

        set_role(c, &base, "read").await;
        c.goto(&record).await.unwrap();
        assert!(c.title().await.unwrap().starts_with("public.products id=1"));
        // No form to change anything.
        assert!(
            c.find_all(Locator::Css("form[method=post]"))
                .await
                .unwrap()
                .is_empty()
        );
        browser.close().await;
    });
    // And a hand-made POST with the read role is refused, with or without a token.
    let response = http::request(
        addr,
        "POST",
        "/audit/record/revert",
        &[
            (
                "Cookie",
                b"role=read; pg_audit_csrf=0123456789abcdef0123456789abcdef",
            ),
            ("Content-Type", b"application/x-www-form-urlencoded"),
        ],
        None,
    );
    assert_eq!(response.status, 403);
    // The write role without the form's CSRF token: refused too.
    let response = http::request_body(
        addr,
        "POST",
        "/audit/record/revert",
        &[
            ("Cookie", b"role=write"),
            ("Content-Type", b"application/x-www-form-urlencoded"),
        ],
        b"table=public.products&key=%7B%22id%22%3A1%7D&entry=1&reason=x&csrf=0123456789abcdef0123456789abcdef",
    );
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("CSRF"), "{}", response.body);
    // With a matching token, but sent from another site (another port counts): refused.
    let token = b"role=write; pg_audit_csrf=0123456789abcdef0123456789abcdef";
    let form = b"table=public.products&key=%7B%22id%22%3A1%7D&entry=1&reason=x&csrf=0123456789abcdef0123456789abcdef";
    for (name, value) in [
        ("Sec-Fetch-Site", &b"cross-site"[..]),
        ("Sec-Fetch-Site", b"same-site"),
        ("Origin", b"http://127.0.0.1:1"),
    ] {
        let response = http::request_body(
            addr,
            "POST",
            "/audit/record/revert",
            &[
                ("Cookie", token),
                ("Content-Type", b"application/x-www-form-urlencoded"),
                (name, value),
            ],
            form,
        );
        assert_eq!(response.status, 400, "{name}: {}", response.body);
        assert!(response.body.contains("another site"), "{}", response.body);
    }
    // Every page says no script may run and no other site may frame it.
    let page = http::request(addr, "GET", "/audit", &[("Cookie", b"role=read")], None);
    let header = |name: &str| {
        page.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(header("content-security-policy").starts_with("default-src 'none';"));
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(
        rows(
            &mut db.conn(),
            "SELECT price_cents FROM products WHERE id = 1"
        ),
        [json!({"price_cents": 2200})]
    );
}
