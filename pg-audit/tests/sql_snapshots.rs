//! Every piece of SQL the engine generates, pinned exactly: a change to the generator shows as a
//! snapshot diff in review (`cargo insta review`). The same SQL is run on a real server by the
//! workspace's integration tests (`tests/`); these pin its text.

use pg_audit::{
    AuditLog, Ident, Operation, PartitionPeriod, QualifiedName, Retention, TriggerLevel,
    TriggerSpec, TriggerSpecBuilder,
};

fn users() -> TriggerSpecBuilder {
    TriggerSpec::builder(QualifiedName::parse("public.users").unwrap())
}

#[test]
fn log_create() {
    insta::assert_snapshot!(AuditLog::new().create_sql());
}

#[test]
fn log_create_weekly_named() {
    let log = AuditLog::named("history", "changes")
        .unwrap()
        .period(PartitionPeriod::Weekly)
        .premake(1);
    insta::assert_snapshot!(log.create_sql());
}

#[test]
fn log_create_daily() {
    insta::assert_snapshot!(AuditLog::new().period(PartitionPeriod::Daily).create_sql());
}

#[test]
fn log_drop_and_grant() {
    let log = AuditLog::new();
    let sql = format!(
        "{}\n{}",
        log.drop_sql(),
        log.grant_read_sql(&Ident::new("app reader").unwrap())
    );
    insta::assert_snapshot!(sql);
}

#[test]
fn log_maintenance_calls() {
    let log = AuditLog::new();
    let sql = [
        log.ensure_partitions_sql(3),
        log.list_partitions_sql(),
        log.prune_partitions_sql("90 days", Retention::Detach)
            .unwrap(),
        log.prune_partitions_sql("1 year", Retention::Drop).unwrap(),
        log.prune_partition_sql("90 days", Retention::Drop, "audit.auditlog_p20260101")
            .unwrap(),
        log.check_sql(),
    ]
    .join("\n");
    insta::assert_snapshot!(sql);
}

/// The table as of a time: the logged records' page, and the rows the log never saw.
#[test]
fn log_table_at() {
    let log = AuditLog::new();
    let table = pg_audit::QualifiedName::parse("public.users").unwrap();
    let sql = [
        log.table_at_sql(),
        log.unseen_rows_sql(pg_audit::sql::records::LiveRows {
            table: &table,
            key: "pg_catalog.jsonb_build_object('id', t.id)",
            values: "pg_catalog.to_jsonb(t)",
        }),
    ]
    .join("\n\n");
    insta::assert_snapshot!(sql);
}

#[test]
fn trigger_all_columns() {
    insta::assert_snapshot!(users().build().unwrap().install_sql(&AuditLog::new()));
}

#[test]
fn trigger_track_only() {
    let spec = users().track_only(["name", "email"]).build().unwrap();
    insta::assert_snapshot!(spec.install_sql(&AuditLog::new()));
}

#[test]
fn trigger_exclude_fields() {
    let spec = users().exclude_fields(["password_hash"]).build().unwrap();
    insta::assert_snapshot!(spec.install_sql(&AuditLog::new()));
}

#[test]
fn trigger_condition() {
    let spec = users()
        .condition("NEW.is_active AND OLD.\"name\" <> 'x'")
        .build()
        .unwrap();
    insta::assert_snapshot!(spec.install_sql(&AuditLog::new()));
}

#[test]
fn trigger_composite_key() {
    let spec = TriggerSpec::builder(QualifiedName::parse("sales.order_lines").unwrap())
        .primary_key(["order_id", "line_no"])
        .build()
        .unwrap();
    insta::assert_snapshot!(spec.install_sql(&AuditLog::named("history", "changes").unwrap()));
}

#[test]
fn trigger_row_level() {
    let spec = users()
        .track_only(["name"])
        .condition("NEW.is_active")
        .level(TriggerLevel::Row)
        .operations(Operation::ALL)
        .build()
        .unwrap();
    insta::assert_snapshot!(spec.install_sql(&AuditLog::new()));
}

#[test]
fn trigger_statement_level() {
    let spec = users()
        .exclude_fields(["password_hash"])
        .condition("NEW.is_active")
        .level(TriggerLevel::Statement)
        .operations(Operation::ALL)
        .build()
        .unwrap();
    insta::assert_snapshot!(spec.install_sql(&AuditLog::new()));
}

#[test]
fn trigger_unqualified_table_and_uninstall() {
    let spec = TriggerSpec::builder(QualifiedName::parse("Odd \"Name\"").unwrap())
        .operations([Operation::Insert, Operation::Truncate])
        .build()
        .unwrap();
    let log = AuditLog::new();
    insta::assert_snapshot!(format!(
        "{}\n{}",
        spec.install_sql(&log),
        spec.uninstall_sql(&log)
    ));
}

#[test]
fn wal_capture_install() {
    let spec = users()
        .exclude_fields(["password_hash"])
        .condition("NEW.is_active")
        .capture(pg_audit::Capture::Wal)
        .build()
        .unwrap();
    let log = AuditLog::new();
    insta::assert_snapshot!(format!(
        "{}\n-- uninstall\n{}",
        spec.install_sql(&log),
        spec.uninstall_sql(&log)
    ));
}

#[test]
fn wal_capture_worker_sql() {
    let log = AuditLog::new();
    let spec = users()
        .condition("NEW.is_active AND OLD.\"name\" <> 'x'")
        .capture(pg_audit::Capture::Wal)
        .build()
        .unwrap();
    insta::assert_snapshot!(
        [
            log.capture_setup_sql(),
            log.captured_tables_sql(),
            log.capture_insert_sql(),
            log.capture_progress_read_sql(),
            log.capture_progress_write_sql(),
            spec.capture_condition_sql().unwrap(),
            pg_audit::sql::capture::emit_context_sql("$1"),
        ]
        .join(";\n\n")
    );
}

#[test]
fn capture_generated_values() {
    let table = pg_audit::QualifiedName::parse("public.items").unwrap();
    let columns = [
        ("label".to_owned(), "(upper(name) || ':'::text)".to_owned()),
        ("n".to_owned(), "cardinality(tags)".to_owned()),
    ];
    insta::assert_snapshot!(format!(
        "{}\n\n{}",
        pg_audit::sql::capture::GENERATED_COLUMNS_SQL,
        pg_audit::sql::capture::generated_values_sql(&table, &columns)
    ));
}

#[test]
fn baseline_statements() {
    let log = AuditLog::new();
    let spec = TriggerSpec::builder(pg_audit::QualifiedName::parse("public.accounts").unwrap())
        .primary_key(["org", "id"])
        .exclude_fields(["secret"])
        .condition("NEW.active")
        .build()
        .unwrap();
    insta::assert_snapshot!(
        [
            log.installed_table_sql(),
            log.baseline_progress_sql(),
            log.baseline_begin_sql(false),
            log.baseline_begin_sql(true),
            log.baseline_step_sql(),
            log.baseline_batch_sql(&spec, true),
            log.baseline_batch_sql(&spec, false),
        ]
        .join(";\n\n")
    );
}

#[test]
fn trigger_masked() {
    let spec = TriggerSpec::builder(pg_audit::QualifiedName::parse("public.people").unwrap())
        .mask(["ssn", "dob"])
        .build()
        .unwrap();
    insta::assert_snapshot!(spec.install_sql(&AuditLog::new()));
}

#[test]
fn import_statements() {
    use pg_audit::sql::import::ImportSource;
    let log = AuditLog::new();
    let table = pg_audit::QualifiedName::parse("public.people").unwrap();
    let key = [pg_audit::Ident::new("id").unwrap()];
    let hstore = pg_audit::Ident::new("public").unwrap();
    let spec = TriggerSpec::builder(table.clone())
        .exclude_fields(["born"])
        .mask(["name"])
        .build()
        .unwrap();
    insta::assert_snapshot!(
        [
            ImportSource::AuditTrigger.tables_sql(),
            log.import_progress_sql(),
            log.import_step_sql(),
            log.import_batch_sql(
                ImportSource::AuditTrigger,
                &table,
                &key,
                Some(&hstore),
                false,
                None
            ),
            log.import_batch_sql(
                ImportSource::SupaAudit,
                &table,
                &key,
                None,
                true,
                Some(&spec)
            ),
            log.schema_changes_sql(),
        ]
        .join(";\n\n")
    );
}
