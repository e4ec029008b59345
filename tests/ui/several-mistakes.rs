use pg_audit_diesel::pg_audit;

diesel::table! {
    users (id) {
        id -> Int4,
        name -> Text,
        email -> Text,
        password_hash -> Text,
        is_active -> Bool,
    }
}

diesel::table! {
    products (id) {
        id -> Int4,
        title -> Text,
    }
}

// The attribute's own mistakes are all reported in one compile. Column names are checked by
// rustc, which reports them once these are fixed: it suppresses name-resolution errors in an
// expansion that already reported errors (`nmae` is caught then, see
// misspelled-track-only-column.rs).
#[pg_audit(track_only = ["nmae"], exclude_fields = [], conditon = "x", operations = [])]
#[derive(diesel::Queryable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i32,
}

// The struct is still emitted: using it causes no further errors.
pub fn use_user(user: User) -> i32 {
    user.id
}

fn main() {}
