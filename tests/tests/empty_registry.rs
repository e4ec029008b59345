//! A program with no `#[pg_audit]` model linked in is told so, and how to fix it.

use pg_audit_diesel::{Error, ModelSet};

#[test]
fn an_empty_registry_explains_itself() {
    let e = ModelSet::registered().unwrap_err();
    assert!(matches!(e, Error::NoModels));
    let message = e.to_string();
    assert!(
        message.contains("the crate defining them is not linked"),
        "{message}"
    );
    assert!(
        message.contains("ModelSet::new().with::<Model>()"),
        "{message}"
    );
}
