//! pg-audit without Diesel: generate the SQL, run it with psql, make changes with plain SQL,
//! read the log.
//!
//! ```sh
//! cargo run -p pg-audit --example without_diesel
//! ```
//!
//! Uses `DATABASE_URL` when set, otherwise a throwaway server started from the local
//! PostgreSQL binaries.

use pg_audit::{AuditLog, QualifiedName, TriggerSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = pg_audit_tempdb::shared()?;
    let db = server.create_database("without_diesel")?;
    db.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text, password_hash text);",
    )?;

    // 1. The audit log and a table's triggers, as SQL text.
    let log = AuditLog::new();
    let users = TriggerSpec::builder(QualifiedName::parse("public.users")?)
        .primary_key(["id"])
        .exclude_fields(["password_hash"])
        .build()?;
    db.psql(&format!(
        "BEGIN;\n{}\n{}\nCOMMIT;",
        log.create_sql(),
        users.install_sql(&log)
    ))?;

    // 2. Changes made by any client are audited; context rides in transaction-local settings.
    db.psql(
        "INSERT INTO users (name, email, password_hash) VALUES ('Ann', 'ann@example.com', 'secret');
         BEGIN;
         SELECT set_config('pg_audit.context',
                json_build_object('user_id', 'admin-7',
                                  'change_reason', 'User asked to change their e-mail')::text,
                true);
         UPDATE users SET email = 'ann@example.org', password_hash = 'new secret' WHERE name = 'Ann';
         COMMIT;
         DELETE FROM users;",
    )?;

    // 3. The log.
    let rows = db.psql(&format!(
        "SELECT operation, record_pk, coalesce(context ->> 'user_id', '-'), coalesce(context ->> 'change_reason', '-'),
                coalesce(old_values::text, '-'), coalesce(new_values::text, '-')
           FROM {} ORDER BY id",
        log.table()
    ))?;
    println!("operation | key | user | reason | old values | new values");
    print!("{rows}");
    println!("\nPartitions:");
    print!(
        "{}",
        db.psql(&format!(
            "SELECT partition_name, range_start, range_end FROM ({}) p",
            log.list_partitions_sql()
        ))?
    );
    Ok(())
}
