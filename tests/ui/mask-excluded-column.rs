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

#[pg_audit(exclude_fields = [password_hash], mask = [email, password_hash])]
#[derive(diesel::Queryable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i32,
}

fn main() {}
