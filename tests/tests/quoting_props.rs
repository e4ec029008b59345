//! Property tests of the quoting module against a real server: any text PostgreSQL can hold
//! round-trips exactly through `quote_literal`, `Ident` and `dollar_quote`, and the condition
//! tokenizer never panics on arbitrary input.

use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use diesel::sql_types::Text;
use pg_audit::{Condition, Ident, dollar_quote, quote_literal};
use pg_audit_tests::TestDb;
use proptest::prelude::*;

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Text)]
    v: String,
}

fn text_without_nul() -> impl Strategy<Value = String> {
    // Quotes, backslashes and dollars are over-represented: they are what quoting is about.
    prop::collection::vec(
        prop_oneof![
            Just('\''),
            Just('\\'),
            Just('$'),
            Just('"'),
            Just('\n'),
            any::<char>().prop_filter("no NUL", |c| *c != '\0'),
        ],
        0..40,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn condition_parsing_never_panics(text in any::<String>()) {
        let _ = Condition::parse(&text);
    }
}

#[test]
fn literals_identifiers_and_dollar_quotes_round_trip() {
    let db = TestDb::new("quoting_props");
    // The runner takes an `Fn`: the connection is borrowed per case.
    let conn = std::cell::RefCell::new(db.conn());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    runner
        .run(&text_without_nul(), |s| {
            let mut conn = conn.borrow_mut();
            let conn = &mut *conn;
            let literal: One = diesel::sql_query(format!("SELECT {} AS v", quote_literal(&s).unwrap()))
                .get_result(conn)
                .unwrap();
            prop_assert_eq!(&literal.v, &s);
            let dollar: One = diesel::sql_query(format!("SELECT {}::text AS v", dollar_quote(&s)))
                .get_result(conn)
                .unwrap();
            prop_assert_eq!(&dollar.v, &s);
            if let Ok(ident) = Ident::new(s.clone()) {
                conn.batch_execute(&format!("CREATE TEMP TABLE q ({ident} int)")).unwrap();
                let name: One = diesel::sql_query(
                    "SELECT attname::text AS v FROM pg_attribute WHERE attrelid = 'pg_temp.q'::regclass AND attnum = 1",
                )
                .get_result(conn)
                .unwrap();
                conn.batch_execute("DROP TABLE pg_temp.q").unwrap();
                prop_assert_eq!(&name.v, &s);
            }
            Ok(())
        })
        .unwrap();
}
