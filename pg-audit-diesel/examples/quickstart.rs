//! pg-audit quickstart: two audited Diesel models, migrations at startup, changes with and
//! without context, and the audit trail they leave.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! With `DATABASE_URL` set it creates a scratch database on that server (the role needs
//! `CREATEDB`); otherwise it starts a throwaway PostgreSQL from the local binaries.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
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
    let db = server.create_database("quickstart")?;
    let mut conn = PgConnection::establish(db.url())?;

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
    Ok(())
}

#[derive(QueryableByName)]
struct Entry {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    operation: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Nullable<Jsonb>)]
    record_pk: Option<Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    old_values: Option<Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    new_values: Option<Value>,
    #[diesel(sql_type = Nullable<Text>)]
    user_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    change_reason: Option<String>,
}

fn print_audit_trail(conn: &mut PgConnection) -> QueryResult<()> {
    let entries: Vec<Entry> = diesel::sql_query(
        "SELECT id, operation, table_name, record_pk, old_values, new_values,
                context ->> 'user_id' AS user_id, context ->> 'change_reason' AS change_reason
           FROM audit.auditlog ORDER BY id",
    )
    .load(conn)?;
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                e.id.to_string(),
                e.operation.clone(),
                e.table_name.clone(),
                e.record_pk.as_ref().map_or_else(String::new, compact),
                e.user_id.clone().unwrap_or_else(|| "-".to_owned()),
                e.change_reason.clone().unwrap_or_else(|| "-".to_owned()),
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
fn changes(e: &Entry) -> String {
    match (&e.old_values, &e.new_values) {
        // The log keeps whole rows; show the columns that differ.
        (Some(Value::Object(old)), Some(Value::Object(new))) => old
            .iter()
            .filter(|(k, v)| new.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: {} → {}",
                    scalar(v),
                    new.get(k).map_or_else(String::new, scalar)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        (None, Some(values)) | (Some(values), None) => compact(values),
        _ => String::new(),
    }
}
