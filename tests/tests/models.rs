//! `#[pg_audit(...)]` on real Diesel models: the triggers they produce install on a real server
//! and log what the configuration says.

use std::time::SystemTime;

use diesel::prelude::*;
use pg_audit::{AuditLog, Columns, Operation};
use pg_audit_diesel::{Audited, ModelSet, pg_audit};
use pg_audit_tests::{TestDb, audit_rows, change, exec};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

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
            created_at -> Timestamp,
            updated_at -> Timestamp,
        }
    }

    diesel::table! {
        billing.subscriptions (id) {
            id -> Int4,
            plan -> Text,
            is_active -> Bool,
        }
    }

    diesel::table! {
        order_lines (order_id, line_no) {
            order_id -> Int4,
            line_no -> Int4,
            qty -> Int4,
        }
    }

    diesel::table! {
        documents (id) {
            id -> Int4,
            #[sql_name = "type"]
            kind -> Text,
            body -> Text,
        }
    }
}

use schema::{documents, order_lines, products, subscriptions, users};

#[pg_audit(track_only = ["name", "email"])]
#[derive(Queryable, Selectable, Insertable, Debug)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i32,
    pub name: String,
    pub email: String,
    pub password_hash: String,
}

#[pg_audit(exclude_fields = ["created_at", "updated_at"])]
#[derive(Queryable, Debug)]
pub struct Product {
    pub id: i32,
    pub title: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

#[pg_audit(condition = "NEW.is_active = TRUE")]
#[derive(Queryable, Debug)]
#[diesel(table_name = subscriptions)]
pub struct Subscription {
    pub id: i32,
    pub plan: String,
    pub is_active: bool,
}

#[pg_audit(operations = [insert, "DELETE"])]
#[derive(Queryable, Insertable, Debug)]
#[diesel(table_name = order_lines)]
pub struct OrderLine {
    pub order_id: i32,
    pub line_no: i32,
    pub qty: i32,
}

// `kind` is the Rust name of SQL column `type`: lists use the Rust name, the condition SQL.
#[pg_audit(track_only = [kind], condition = "NEW.type <> 'draft'")]
#[derive(Queryable, Debug)]
#[diesel(table_name = documents)]
pub struct Document {
    pub id: i32,
    pub kind: String,
    pub body: String,
}

const DDL: &str = "
    CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, password_hash text NOT NULL);
    CREATE TABLE products (id int PRIMARY KEY, title text NOT NULL,
                           created_at timestamp NOT NULL DEFAULT now(), updated_at timestamp NOT NULL DEFAULT now());
    CREATE SCHEMA billing;
    CREATE TABLE billing.subscriptions (id int PRIMARY KEY, plan text NOT NULL, is_active boolean NOT NULL);
    CREATE TABLE order_lines (order_id int, line_no int, qty int NOT NULL, PRIMARY KEY (order_id, line_no));
    CREATE TABLE documents (id int PRIMARY KEY, type text NOT NULL, body text NOT NULL);";

/// A database with the tables, the log, and every registered model's triggers.
fn installed(hint: &str) -> (TestDb, PgConnection, AuditLog) {
    let db = TestDb::new(hint);
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, DDL);
    exec(&mut conn, &log.create_sql());
    for (_, spec) in ModelSet::registered().unwrap().specs().unwrap() {
        exec(&mut conn, &spec.install_sql(&log));
    }
    (db, conn, log)
}

fn changes(conn: &mut PgConnection, log: &AuditLog, table: &str) -> Vec<Value> {
    audit_rows(conn, log)
        .iter()
        .filter(|r| r["table_name"] == table)
        .map(change)
        .collect()
}

#[test]
fn the_registry_holds_every_annotated_model() {
    let registered = ModelSet::registered().unwrap();
    let names: Vec<&str> = registered.models().iter().map(|m| m.model()).collect();
    assert_eq!(
        names,
        ["Document", "OrderLine", "Product", "Subscription", "User"]
    );
}

#[test]
fn specs_come_from_the_table_declarations() {
    let spec = Subscription::trigger_spec().unwrap();
    assert_eq!(spec.table().to_string(), "\"billing\".\"subscriptions\"");
    assert_eq!(spec.condition().unwrap().as_str(), "NEW.is_active = TRUE");

    let spec = OrderLine::trigger_spec().unwrap();
    assert_eq!(spec.table().to_string(), "\"order_lines\"");
    let key: Vec<&str> = spec.primary_key().iter().map(|c| c.as_str()).collect();
    assert_eq!(key, ["order_id", "line_no"]);
    assert_eq!(spec.operations(), [Operation::Insert, Operation::Delete]);

    let spec = Document::trigger_spec().unwrap();
    assert_eq!(
        spec.columns(),
        &Columns::TrackOnly(vec![pg_audit::Ident::new("type").unwrap()])
    );

    let spec = Product::trigger_spec().unwrap();
    assert_eq!(spec.table().to_string(), "\"products\"");
    assert!(matches!(spec.columns(), Columns::Exclude(cols) if cols.len() == 2));
}

#[test]
fn track_only_model_logs_diesel_and_raw_sql_changes() {
    let (_db, mut conn, log) = installed("model_track_only");
    diesel::insert_into(users::table)
        .values(&User {
            id: 1,
            name: "Ann".into(),
            email: "ann@x".into(),
            password_hash: "h".into(),
        })
        .execute(&mut conn)
        .unwrap();
    diesel::update(users::table)
        .set(users::password_hash.eq("h2"))
        .execute(&mut conn)
        .unwrap();
    exec(&mut conn, "UPDATE users SET email = 'ann@y'");
    let user: User = users::table
        .select(User::as_select())
        .first(&mut conn)
        .unwrap();
    assert_eq!(user.email, "ann@y");
    assert_eq!(
        changes(&mut conn, &log, "users"),
        [
            json!(["INSERT", {"id": 1}, null, {"name": "Ann", "email": "ann@x"}]),
            json!(["UPDATE", {"id": 1}, {"email": "ann@x"}, {"email": "ann@y"}]),
        ]
    );
}

#[test]
fn exclude_fields_model_with_default_table_name() {
    let (_db, mut conn, log) = installed("model_exclude");
    exec(
        &mut conn,
        "INSERT INTO products (id, title) VALUES (1, 'Lamp')",
    );
    exec(
        &mut conn,
        "UPDATE products SET updated_at = now() + interval '1 day'",
    );
    exec(
        &mut conn,
        "UPDATE products SET title = 'Desk lamp', updated_at = now()",
    );
    assert_eq!(
        changes(&mut conn, &log, "products"),
        [
            json!(["INSERT", {"id": 1}, null, {"id": 1, "title": "Lamp"}]),
            json!(["UPDATE", {"id": 1}, {"title": "Lamp"}, {"title": "Desk lamp"}]),
        ]
    );
}

#[test]
fn condition_model_on_a_schema_qualified_table() {
    let (_db, mut conn, log) = installed("model_condition");
    exec(
        &mut conn,
        "INSERT INTO billing.subscriptions VALUES (1, 'pro', true), (2, 'free', false)",
    );
    exec(
        &mut conn,
        "UPDATE billing.subscriptions SET plan = plan || '+'",
    );
    exec(&mut conn, "DELETE FROM billing.subscriptions");
    let rows = audit_rows(&mut conn, &log);
    assert!(rows.iter().all(|r| r["schema_name"] == "billing"));
    let logged: Vec<Value> = rows
        .iter()
        .map(|r| json!([r["operation"], r["record_pk"]]))
        .collect();
    assert_eq!(
        logged,
        [
            json!(["INSERT", {"id": 1}]),
            json!(["UPDATE", {"id": 1}]),
            json!(["DELETE", {"id": 1}])
        ]
    );
}

#[test]
fn composite_key_model_with_chosen_operations() {
    let (_db, mut conn, log) = installed("model_composite");
    diesel::insert_into(order_lines::table)
        .values(&OrderLine {
            order_id: 7,
            line_no: 2,
            qty: 1,
        })
        .execute(&mut conn)
        .unwrap();
    diesel::update(order_lines::table)
        .set(order_lines::qty.eq(5))
        .execute(&mut conn)
        .unwrap();
    diesel::delete(order_lines::table)
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        changes(&mut conn, &log, "order_lines"),
        [
            json!(["INSERT", {"order_id": 7, "line_no": 2}, null, {"order_id": 7, "line_no": 2, "qty": 1}]),
            json!(["DELETE", {"order_id": 7, "line_no": 2}, {"order_id": 7, "line_no": 2, "qty": 5}, null]),
        ]
    );
}

#[test]
fn sql_name_columns_use_their_sql_names() {
    let (_db, mut conn, log) = installed("model_sql_name");
    exec(
        &mut conn,
        "INSERT INTO documents VALUES (1, 'draft', 'x'), (2, 'memo', 'y')",
    );
    exec(
        &mut conn,
        "UPDATE documents SET type = 'letter', body = 'z' WHERE id = 2",
    );
    exec(&mut conn, "UPDATE documents SET body = 'w'");
    assert_eq!(
        changes(&mut conn, &log, "documents"),
        [
            json!(["INSERT", {"id": 2}, null, {"type": "memo"}]),
            json!(["UPDATE", {"id": 2}, {"type": "memo"}, {"type": "letter"}]),
        ]
    );
}

#[test]
fn an_explicit_model_list_works_without_the_registry() {
    let models = ModelSet::new()
        .with::<User>()
        .with::<User>()
        .with::<OrderLine>();
    let specs = models.specs().unwrap();
    let names: Vec<&str> = specs.iter().map(|(m, _)| *m).collect();
    assert_eq!(names, ["User", "OrderLine"]);
}
