//! Model mistakes only the runtime can see: a key column excluded, two models on one table, a
//! key Diesel knows that the database table lacks.

use diesel::Queryable;
use pg_audit::AuditLog;
use pg_audit_diesel::{Audited, ModelSet, pg_audit};
use pg_audit_tests::{TestDb, exec, exec_err};

mod schema {
    diesel::table! {
        accounts (code) {
            code -> Text,
            secret -> Text,
        }
    }

    diesel::table! {
        notes (id) {
            id -> Int4,
            body -> Text,
        }
    }
}

use schema::{accounts, notes};

#[pg_audit(exclude_fields = [code])]
#[derive(Queryable)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub code: String,
}

#[pg_audit]
#[derive(Queryable)]
#[diesel(table_name = notes)]
pub struct Note {
    pub id: i32,
}

#[pg_audit(track_only = [body])]
#[derive(Queryable)]
#[diesel(table_name = notes)]
pub struct NoteBody {
    pub body: String,
}

#[test]
fn excluding_a_key_column_is_refused_naming_the_model() {
    let e = Account::trigger_spec().unwrap_err();
    assert_eq!(
        e.to_string(),
        "#[pg_audit] on `Account`: primary-key column `code` cannot be excluded: the log stores every record's key"
    );
}

#[test]
fn two_models_on_one_table_are_refused() {
    let e = ModelSet::new()
        .with::<Note>()
        .with::<NoteBody>()
        .specs()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`Note` and `NoteBody` both audit table \"notes\"; keep #[pg_audit] on one of them"
    );
    // The registry holds all three, so it reports the first problem it meets.
    assert!(ModelSet::registered().unwrap().specs().is_err());
}

#[test]
fn a_table_without_the_declared_key_is_a_clear_install_error() {
    let db = TestDb::new("model_no_key");
    let mut conn = db.conn();
    let log = AuditLog::new();
    exec(&mut conn, &log.create_sql());
    exec(&mut conn, "CREATE TABLE notes (id int, body text)");
    let e = exec_err(&mut conn, &Note::trigger_spec().unwrap().install_sql(&log));
    assert!(
        e.contains("pg-audit: table notes has no primary key or unique index on (\"id\")"),
        "{e}"
    );
}
