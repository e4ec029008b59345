//! A model with masked columns, through the Diesel runtime: its migration installs the mask,
//! entries hold digests, and revert and restore never write a digest into the table.

use diesel::prelude::*;
use pg_audit_diesel::log::AuditReader;
use pg_audit_diesel::{AuditMigrations, ModelSet, pg_audit};
use pg_audit_tests::{TestDb, exec, value};
use serde_json::{Map, json};

mod schema {
    diesel::table! {
        patients (id) {
            id -> Int4,
            name -> Text,
            ssn -> Text,
        }
    }
}

use schema::patients;

#[pg_audit(mask = [ssn])]
#[derive(Queryable)]
#[diesel(table_name = patients)]
pub struct Patient {
    pub id: i32,
}

#[test]
fn revert_and_restore_leave_masked_columns_to_the_table() {
    let db = TestDb::new("mask_revert");
    let mut conn = db.conn();
    exec(
        &mut conn,
        "CREATE TABLE patients (id int PRIMARY KEY, name text NOT NULL, ssn text NOT NULL)",
    );
    pg_audit_diesel::run_migrations(
        &mut conn,
        AuditMigrations::models(ModelSet::new().with::<Patient>()),
    )
    .unwrap();
    exec(
        &mut conn,
        "INSERT INTO patients VALUES (1, 'Ann', '123-45-6789');
         UPDATE patients SET name = 'Anne', ssn = '987-65-4321' WHERE id = 1;",
    );
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FROM audit.auditlog WHERE concat(old_values, new_values)::text LIKE '%-45-%'
                                                    OR concat(old_values, new_values)::text LIKE '%-65-%'"
        ),
        json!(0)
    );
    let reader = AuditReader::new();
    let history = reader
        .history::<Patient>(&mut conn, 1, pg_audit_diesel::log::Page::first(10))
        .unwrap();
    let insert = history.last().unwrap();
    // The change shows on the masked column too (its digest changed).
    assert!(history[0].changes().contains_key("ssn"));
    reader
        .revert::<Patient>(&mut conn, 1, insert.id, "undo the rename")
        .unwrap();
    assert_eq!(
        value(&mut conn, "SELECT row_to_json(p) FROM patients AS p"),
        json!({"id": 1, "name": "Ann", "ssn": "987-65-4321"})
    );
    exec(&mut conn, "DELETE FROM patients WHERE id = 1");
    let err = reader
        .restore::<Patient>(&mut conn, 1, "bring back")
        .unwrap_err();
    assert!(
        err.to_string().contains("ssn") && err.to_string().contains("masked"),
        "{err}"
    );
    let mut values = Map::new();
    values.insert("ssn".to_owned(), json!("555-55-5555"));
    reader
        .restore_with::<Patient>(&mut conn, 1, "bring back", values)
        .unwrap();
    assert_eq!(
        value(&mut conn, "SELECT row_to_json(p) FROM patients AS p"),
        json!({"id": 1, "name": "Ann", "ssn": "555-55-5555"})
    );
}
