//! Compile-fail tests of `#[pg_audit(...)]`: one file per mistake, each with the exact
//! message rustc prints (`TRYBUILD=overwrite cargo test -p pg-audit-tests --test ui` updates
//! them; read the diff before committing).

#[test]
fn mistakes_fail_to_compile_with_a_message_at_the_mistake() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
