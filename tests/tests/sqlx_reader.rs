//! The reader on sqlx asks the same questions as the reader on Diesel and gets the same
//! answers: one database, one workload (key changes, a composite key, a renamed column,
//! deletes, contexts), every question asked through both and compared, and each answer checked
//! against what the workload did so neither can agree by both being empty. Then revert and
//! restore through sqlx, with their change reason.

use std::time::{Duration, SystemTime};

use pg_audit::{Operation, QualifiedName, TriggerSpec};
use pg_audit_diesel::log::AuditReader as DieselReader;
use pg_audit_sqlx::log::{Activity, Page, TimeRange};
use pg_audit_sqlx::{AuditContext, AuditMigrations, AuditReader, AuditedBegin as _, ReadError};
use pg_audit_tests::{TestDb, runtime, value};
use pretty_assertions::assert_eq;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};

fn name(table: &str) -> QualifiedName {
    QualifiedName::parse(table).unwrap()
}

async fn run(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap();
}

/// A moment between two steps of the workload.
async fn mark() -> SystemTime {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    t
}

struct Marks {
    created: SystemTime,
    renamed: SystemTime,
    rekeyed: SystemTime,
}

/// The workload, through sqlx's context-carrying transactions.
async fn workload(pool: &PgPool) -> Marks {
    let alice = AuditContext::new().user_id("alice").request_id("req-1");
    let mut tx = pool.begin_audited(&alice).await.unwrap();
    run(
        &mut tx,
        "INSERT INTO people VALUES (1, 'Ann', 'ann@x'), (2, 'Bob', NULL);
         INSERT INTO lines VALUES ('acme', 1, 5), ('acme', 2, 7);",
    )
    .await;
    tx.commit().await.unwrap();
    let created = mark().await;

    let bob = AuditContext::new()
        .user_id("bob")
        .change_reason("fix e-mail");
    let mut tx = pool.begin_audited(&bob).await.unwrap();
    run(&mut tx, "UPDATE people SET email = 'ann@y' WHERE id = 1").await;
    run(
        &mut tx,
        "UPDATE lines SET qty = 6 WHERE org = 'acme' AND line_no = 1",
    )
    .await;
    tx.commit().await.unwrap();
    run(
        &mut pool.acquire().await.unwrap(),
        "ALTER TABLE people RENAME COLUMN name TO full_name",
    )
    .await;
    let renamed = mark().await;

    let mut tx = pool.begin_with_change_reason("renumber").await.unwrap();
    run(&mut tx, "UPDATE people SET id = 10 WHERE id = 1").await;
    run(
        &mut tx,
        "UPDATE people SET full_name = 'Anna' WHERE id = 10",
    )
    .await;
    tx.commit().await.unwrap();
    let rekeyed = mark().await;

    let mut tx = pool
        .begin_audited(&alice.clone().request_id("req-2"))
        .await
        .unwrap();
    run(
        &mut tx,
        "DELETE FROM people WHERE id = 2; DELETE FROM lines WHERE line_no = 2",
    )
    .await;
    tx.commit().await.unwrap();
    Marks {
        created,
        renamed,
        rekeyed,
    }
}

#[test]
fn the_sqlx_reader_answers_as_the_diesel_reader_does() {
    let db = TestDb::new("sqlx_reader");
    let rt = runtime();
    let pool = rt.block_on(async {
        let pool = PgPoolOptions::new().max_connections(2).connect(db.url()).await.unwrap();
        run(
            &mut pool.acquire().await.unwrap(),
            "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, email text);
             CREATE TABLE lines (org text, line_no int, qty int NOT NULL, PRIMARY KEY (org, line_no));",
        )
        .await;
        AuditMigrations::new()
            .table(TriggerSpec::builder(name("people")).build().unwrap())
            .table(
                TriggerSpec::builder(name("lines"))
                    .primary_key(["org", "line_no"])
                    .build()
                    .unwrap(),
            )
            .run(&pool)
            .await
            .unwrap();
        pool
    });
    let marks = rt.block_on(workload(&pool));
    let mut conn = db.conn();
    let diesel = DieselReader::new();
    let sqlx = AuditReader::new();
    let mut sq = rt.block_on(PgConnection::connect(db.url())).unwrap();
    let (people, lines) = (name("people"), name("lines"));
    let ann = json!({"id": 10});
    let line = json!({"org": "acme", "line_no": 1});

    // History across the key change and the rename, paged.
    let page = Page::first(2);
    let first = rt
        .block_on(sqlx.history(&mut sq, &people, &ann, page))
        .unwrap();
    assert_eq!(
        first,
        diesel.history_of(&mut conn, &people, &ann, page).unwrap()
    );
    let next = page.after(&first).unwrap();
    let rest = rt
        .block_on(sqlx.history(&mut sq, &people, &ann, next))
        .unwrap();
    assert_eq!(
        rest,
        diesel.history_of(&mut conn, &people, &ann, next).unwrap()
    );
    let all: Vec<_> = first.iter().chain(&rest).collect();
    let ops: Vec<Operation> = all.iter().map(|e| e.operation).collect();
    // Newest first: the name change, the key change, (the rename), the e-mail, the insert.
    assert_eq!(
        ops.iter()
            .filter(|o| **o != Operation::Ddl)
            .copied()
            .collect::<Vec<_>>(),
        [
            Operation::Update,
            Operation::Update,
            Operation::Update,
            Operation::Insert
        ]
    );
    let insert = all.last().unwrap();
    assert_eq!(
        insert.new_values,
        Some(json!({"id": 1, "full_name": "Ann", "email": "ann@x"}))
    );
    assert_eq!(insert.context.user_id.as_deref(), Some("alice"));
    let entry = rt
        .block_on(sqlx.entry(&mut sq, &people, &ann, insert.id))
        .unwrap();
    assert_eq!(entry.as_ref(), Some(*insert));

    // The composite key.
    let history = rt
        .block_on(sqlx.history(&mut sq, &lines, &line, Page::first(10)))
        .unwrap();
    assert_eq!(
        history,
        diesel
            .history_of(&mut conn, &lines, &line, Page::first(10))
            .unwrap()
    );
    assert_eq!(history.len(), 2);
    assert_eq!(
        rt.block_on(sqlx.recorded_keys(&mut sq, &lines)).unwrap(),
        [vec!["org".to_owned(), "line_no".to_owned()]]
    );

    // State at a time, and a diff across the rename and the key change.
    for at in [marks.created, marks.renamed, marks.rekeyed] {
        assert_eq!(
            rt.block_on(sqlx.state_at(&mut sq, &people, &ann, at))
                .unwrap(),
            diesel.state_of_at(&mut conn, &people, &ann, at).unwrap()
        );
    }
    let diff = rt
        .block_on(sqlx.diff(&mut sq, &people, &ann, marks.created, marks.rekeyed))
        .unwrap();
    assert_eq!(
        diff.before,
        Some(json!({"id": 1, "full_name": "Ann", "email": "ann@x"}))
    );
    assert_eq!(
        diff.after,
        Some(json!({"id": 10, "full_name": "Anna", "email": "ann@y"}))
    );
    assert_eq!(
        diff.changed.keys().collect::<Vec<_>>(),
        ["email", "full_name", "id"]
    );

    // Activity: everything, one user's, one request's, one table's, a time range; a
    // transaction; blame; the table as it was.
    let filters = [
        Activity::default(),
        Activity {
            user_id: Some("bob".into()),
            ..Activity::default()
        },
        Activity {
            request_id: Some("req-2".into()),
            ..Activity::default()
        },
        Activity {
            table: Some("lines".into()),
            ..Activity::default()
        },
        Activity {
            operation: Some(Operation::Delete),
            ..Activity::default()
        },
        Activity {
            range: TimeRange {
                from: Some(marks.created),
                until: Some(marks.rekeyed),
            },
            ..Activity::default()
        },
        Activity {
            table: Some("people".into()),
            key: Some(ann.clone()),
            ..Activity::default()
        },
    ];
    for filter in &filters {
        let got = rt
            .block_on(sqlx.activity(&mut sq, filter, Page::first(50)))
            .unwrap();
        assert_eq!(
            got,
            diesel.activity(&mut conn, filter, Page::first(50)).unwrap(),
            "{filter:?}"
        );
        assert!(!got.is_empty(), "{filter:?} matches something");
    }
    let bobs = rt
        .block_on(sqlx.by_user(&mut sq, "bob", TimeRange::default()))
        .unwrap();
    assert_eq!(bobs.len(), 2);
    assert_eq!(
        bobs,
        diesel
            .by_user(&mut conn, "bob", TimeRange::default())
            .unwrap()
    );
    let req = rt
        .block_on(sqlx.request(&mut sq, "req-2", TimeRange::default()))
        .unwrap();
    assert_eq!(
        req.iter().map(|e| e.operation).collect::<Vec<_>>(),
        [Operation::Delete; 2]
    );
    let tx = rt
        .block_on(sqlx.transaction(&mut sq, bobs[0].txid))
        .unwrap();
    assert_eq!(tx, diesel.transaction(&mut conn, bobs[0].txid).unwrap());
    assert_eq!(tx, bobs);
    let blame = rt.block_on(sqlx.blame(&mut sq, &people, &ann)).unwrap();
    assert_eq!(blame, diesel.blame_of(&mut conn, &people, &ann).unwrap());
    assert_eq!(
        blame.iter().find(|b| b.column == "email").unwrap().value,
        json!("ann@y")
    );
    let then = rt
        .block_on(sqlx.table_at(&mut sq, &people, marks.created, None, 10))
        .unwrap();
    assert_eq!(
        then,
        diesel
            .table_at(&mut conn, &people, marks.created, None, 10)
            .unwrap()
    );
    assert_eq!(then.rows.len(), 2);

    // Revert through sqlx: the row back as after the insert, logged with the reason.
    rt.block_on(sqlx.revert(&mut sq, &people, &ann, insert.id, "undo the edits"))
        .unwrap();
    assert_eq!(
        value(
            &mut conn,
            "SELECT row_to_json(p) FROM people p WHERE id = 1"
        ),
        json!({"id": 1, "full_name": "Ann", "email": "ann@x"})
    );
    let newest = rt
        .block_on(sqlx.activity(&mut sq, &Activity::default(), Page::first(1)))
        .unwrap();
    assert_eq!(
        newest[0].context.change_reason.as_deref(),
        Some("undo the edits")
    );
    // Restore the deleted one; one never deleted is refused, naming why.
    let bob_key = json!({"id": 2});
    rt.block_on(sqlx.restore(&mut sq, &people, &bob_key, "deleted by mistake"))
        .unwrap();
    assert_eq!(
        value(
            &mut conn,
            "SELECT row_to_json(p) FROM people p WHERE id = 2"
        ),
        json!({"id": 2, "full_name": "Bob", "email": null})
    );
    let refused = rt
        .block_on(sqlx.restore(&mut sq, &people, &bob_key, "again"))
        .unwrap_err();
    assert!(matches!(refused, ReadError::NotDeleted { .. }), "{refused}");
    let missing = rt
        .block_on(sqlx.revert(
            &mut sq,
            &people,
            &json!({"id": 1}),
            999_999,
            "no such entry",
        ))
        .unwrap_err();
    assert!(
        matches!(missing, ReadError::NotInHistory { entry: 999_999, .. }),
        "{missing}"
    );
    // A key that cannot name a record is said, naming the key columns; one that could but
    // names nothing answers nothing.
    for bad in [
        json!({"org": "acme"}),
        json!({"org": "acme", "line_no": 1, "x": 2}),
        json!(42),
    ] {
        let e = rt
            .block_on(sqlx.history(&mut sq, &lines, &bad, Page::first(5)))
            .unwrap_err();
        assert!(matches!(e, ReadError::BadKey { .. }), "{e}");
        assert!(e.to_string().contains("{org, line_no}"), "{e}");
        let e = diesel
            .history_of(&mut conn, &lines, &bad, Page::first(5))
            .unwrap_err();
        assert!(e.to_string().contains("{org, line_no}"), "{e}");
        let e = rt
            .block_on(sqlx.state_at(&mut sq, &lines, &bad, marks.rekeyed))
            .unwrap_err();
        assert!(matches!(e, ReadError::BadKey { .. }), "{e}");
        let e = rt
            .block_on(sqlx.restore(&mut sq, &lines, &bad, "no"))
            .unwrap_err();
        assert!(matches!(e, ReadError::BadKey { .. }), "{e}");
    }
    let unknown = json!({"org": "acme", "line_no": 99});
    assert!(
        rt.block_on(sqlx.history(&mut sq, &lines, &unknown, Page::first(5)))
            .unwrap()
            .is_empty()
    );
    // Inside a transaction of the caller's, the revert is a savepoint of it, rolled back with it.
    rt.block_on(async {
        let mut tx = sq.begin().await.unwrap();
        let history = sqlx
            .history(&mut tx, &people, &bob_key, Page::first(10))
            .await
            .unwrap();
        let insert = history.last().unwrap().id;
        sqlx.revert(&mut tx, &people, &bob_key, insert, "inside")
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    });
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FROM audit.auditlog WHERE context ->> 'change_reason' = 'inside'"
        ),
        json!(0)
    );
}
