//! pg-audit quickstart: two audited Diesel models, migrations at startup, changes with and
//! without context, the audit trail they leave, and a deleted record's history and restore.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! With `DATABASE_URL` set it creates a scratch database on that server (the role needs
//! `CREATEDB`); otherwise it starts a throwaway PostgreSQL from the local binaries. With
//! `-- --keep` the database (`pg_audit_quickstart`) is kept, to browse its trail with
//! `pg-audit admin`.

use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use pg_audit_diesel::log::{AuditEntry, AuditReader, Page};
use pg_audit_diesel::{AuditConnectionExt, AuditContext, pg_audit};
use serde_json::Value;

mod schema {
    diesel::table! {
        users (id) {
            id -> Int4,
            name -> Text,
            email -> Text,
            password_hash -> Text,
        }
    }

    diesel::table! {
        products (id) {
            id -> Int4,
            title -> Text,
            price_cents -> Int4,
            updated_at -> Timestamp,
        }
    }
}

use schema::{products, users};

/// Every column is audited but the password hash, which never reaches the log.
#[pg_audit(exclude_fields = [password_hash])]
#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i32,
    pub name: String,
    pub email: String,
    pub password_hash: String,
}

/// Only the title and price are audited: touching `updated_at` alone logs nothing.
#[pg_audit(track_only = [title, price_cents])]
#[derive(Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct Product {
    pub id: i32,
    pub title: String,
    pub price_cents: i32,
}

/// The application's own migrations.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("examples/quickstart_migrations");

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let server = pg_audit_tempdb::shared()?;
    let keep = std::env::args().any(|a| a == "--keep");
    // A database of its own, dropped at the end; or, with --keep, one that stays.
    let (scratch, url) = if keep {
        server.batch_execute(
            server.admin_url(),
            "DROP DATABASE IF EXISTS pg_audit_quickstart WITH (FORCE)",
        )?;
        server.batch_execute(server.admin_url(), "CREATE DATABASE pg_audit_quickstart")?;
        (
            None,
            pg_audit_tempdb::url_with_database(server.admin_url(), "pg_audit_quickstart")?,
        )
    } else {
        let db = server.create_database("quickstart")?;
        let url = db.url().to_owned();
        (Some(db), url)
    };
    let mut conn = PgConnection::establish(&url)?;

    // At startup: the application's tables, then the audit log and the triggers.
    conn.run_pending_migrations(MIGRATIONS)?;
    conn.run_pending_migrations(pg_audit_diesel::migrations())?;

    // A change with no context: still logged, by whatever made it.
    diesel::insert_into(users::table)
        .values((
            users::name.eq("Ann"),
            users::email.eq("ann@example.com"),
            users::password_hash.eq("$argon2id$1"),
        ))
        .execute(&mut conn)?;
    diesel::sql_query(
        "INSERT INTO products (title, price_cents) VALUES ('Lamp', 2500), ('Desk', 12000)",
    )
    .execute(&mut conn)?;

    // Changes made on behalf of a user, in a request, for a reason.
    let admin = AuditContext::new()
        .user_id("admin-7")
        .request_id("req-4f2a")
        .client_addr("203.0.113.9")
        .source("http PATCH /products");
    conn.with_audit_context(
        &admin.clone().change_reason("Spring price update"),
        |conn| {
            diesel::update(products::table.filter(products::title.eq("Lamp")))
                .set(products::price_cents.eq(2200))
                .execute(conn)?;
            // Only updated_at changes here: not an audited column, so nothing is logged.
            diesel::update(products::table)
                .set(products::updated_at.eq(diesel::dsl::now))
                .execute(conn)
        },
    )?;

    // A change reason alone.
    conn.with_change_reason("User requested password reset", |conn| {
        diesel::update(users::table)
            .set((
                users::password_hash.eq("$argon2id$2"),
                users::email.eq("ann@example.org"),
            ))
            .execute(conn)
    })?;

    conn.with_audit_context(&admin.change_reason("Discontinued"), |conn| {
        diesel::delete(products::table.filter(products::title.eq("Desk"))).execute(conn)
    })?;

    print_audit_trail(&mut conn)?;

    // What happened to the desk, who did it and why; then put it back.
    let reader = AuditReader::new();
    let desk = 2;
    println!("\nThe history of product {desk}, newest first:\n");
    for e in reader.history::<Product>(&mut conn, desk, Page::first(10))? {
        println!(
            "  {:<6}  by {:<7}  {:<14}  {}",
            e.operation.keyword(),
            e.context.user_id.as_deref().unwrap_or("-"),
            e.context.change_reason.as_deref().unwrap_or("-"),
            changes(&e)
        );
    }
    reader.restore::<Product>(&mut conn, desk, "Back in the catalogue")?;
    let restored = reader.history::<Product>(&mut conn, desk, Page::first(1))?;
    let title: String = products::table
        .find(desk)
        .select(products::title)
        .first(&mut conn)?;
    println!(
        "\nRestored {title}, and logged it: {} \"{}\"",
        restored[0].operation.keyword(),
        restored[0]
            .context
            .change_reason
            .as_deref()
            .unwrap_or_default()
    );
    drop(conn);
    match scratch {
        // Dropped with its handle.
        Some(db) => drop(db),
        None => println!(
            "\nKept the database. Browse its trail:\n\n  cargo run -p pg-audit-cli -- admin --database-url '{url}'\n"
        ),
    }
    Ok(())
}

fn print_audit_trail(conn: &mut PgConnection) -> QueryResult<()> {
    let entries: Vec<AuditEntry> =
        diesel::sql_query("SELECT * FROM audit.auditlog ORDER BY id").load(conn)?;
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                e.id.to_string(),
                e.operation.keyword().to_owned(),
                e.table_name.clone(),
                e.record_pk.as_ref().map_or_else(String::new, compact),
                e.context.user_id.as_deref().unwrap_or("-").to_owned(),
                e.context.change_reason.as_deref().unwrap_or("-").to_owned(),
                changes(e),
            ]
        })
        .collect();
    let header = [
        "id",
        "operation",
        "table",
        "key",
        "user",
        "reason",
        "changes",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    println!("\nThe audit trail ({} changes):\n", rows.len());
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", cells.join("  ").trim_end());
    }
    println!("\nThe password hash appears nowhere, and the updated_at-only update left no row.");
    Ok(())
}

/// `{"id": 1}` as `id=1`.
fn compact(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => scalar(other),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What changed, in one line: `email: a → b` for updates, the values for inserts and deletes.
fn changes(e: &AuditEntry) -> String {
    e.changes()
        .into_iter()
        .map(
            |(column, (old, new))| match (&e.old_values, &e.new_values) {
                (Some(_), Some(_)) => format!("{column}: {} → {}", scalar(&old), scalar(&new)),
                (None, _) => format!("{column}={}", scalar(&new)),
                (_, None) => format!("{column}={}", scalar(&old)),
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}
