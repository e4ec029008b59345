//! Names from Diesel's metadata: the SQL names of a `table!`'s table, key and columns.
//!
//! Column names are Diesel's `Column::NAME` (so `#[sql_name = "..."]` is respected). The table's
//! schema and name and its primary key are rendered by Diesel itself, as it would write them in a
//! query, and read back; that keeps them exact without relying on Diesel internals.

use diesel::Column;
use diesel::pg::{Pg, PgQueryBuilder};
use diesel::query_builder::{QueryBuilder as _, QueryFragment};

/// The SQL names of a tuple of Diesel columns, as a constant.
pub trait ColumnNames {
    /// The names, in tuple order.
    const NAMES: &'static [&'static str];
}

macro_rules! column_names {
    ($($T:ident)+) => {
        impl<$($T: Column),+> ColumnNames for ($($T,)+) {
            const NAMES: &'static [&'static str] = &[$($T::NAME),+];
        }
    };
}

macro_rules! for_every_arity {
    ($first:ident $($rest:ident)*) => {
        column_names!($first $($rest)*);
        for_every_arity!($($rest)*);
    };
    () => {};
}

// Diesel tables have up to 128 columns with its largest feature; 64 covers its default (32)
// and the next feature up. A wider table still works; only `NEW.col` checks in conditions
// need this.
for_every_arity!(
    C64 C63 C62 C61 C60 C59 C58 C57 C56 C55 C54 C53 C52 C51 C50 C49 C48 C47 C46 C45 C44 C43 C42
    C41 C40 C39 C38 C37 C36 C35 C34 C33 C32 C31 C30 C29 C28 C27 C26 C25 C24 C23 C22 C21 C20 C19
    C18 C17 C16 C15 C14 C13 C12 C11 C10 C9 C8 C7 C6 C5 C4 C3 C2 C1
);

/// Whether table `T` has a column whose SQL name is `name`; evaluated at compile time for the
/// columns a condition names.
pub const fn has_column<T: diesel::Table>(name: &str) -> bool
where
    T::AllColumns: ColumnNames,
{
    let names = <T::AllColumns as ColumnNames>::NAMES;
    let mut i = 0;
    while i < names.len() {
        if str_eq(names[i], name) {
            return true;
        }
        i += 1;
    }
    false
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// How Diesel writes `fragment` for PostgreSQL.
pub(crate) fn render<T: QueryFragment<Pg>>(fragment: &T) -> Option<String> {
    let mut builder = PgQueryBuilder::default();
    fragment.to_sql(&mut builder, &Pg).ok()?;
    Some(builder.finish())
}

/// Reads a comma-separated list of dotted, double-quoted identifiers as Diesel writes them
/// (`"s"."t"."c", "s"."t"."d"`), unescaping doubled quotes.
pub(crate) fn parse_identifier_list(sql: &str) -> Option<Vec<Vec<String>>> {
    let mut items = vec![vec![]];
    let mut chars = sql.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next()? != '"' {
            return None;
        }
        let mut ident = String::new();
        loop {
            match chars.next()? {
                '"' if chars.next_if_eq(&'"').is_some() => ident.push('"'),
                '"' => break,
                c => ident.push(c),
            }
        }
        items.last_mut()?.push(ident);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Some(items),
            Some('.') => {}
            Some(',') => items.push(vec![]),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_lists_are_read_back() {
        assert_eq!(
            parse_identifier_list(r#""billing"."subscriptions""#),
            Some(vec![vec!["billing".to_owned(), "subscriptions".to_owned()]])
        );
        assert_eq!(
            parse_identifier_list(r#""t"."a", "t"."we""ird""#),
            Some(vec![
                vec!["t".to_owned(), "a".to_owned()],
                vec!["t".to_owned(), "we\"ird".to_owned()]
            ])
        );
        assert_eq!(parse_identifier_list("users"), None);
        assert_eq!(parse_identifier_list(r#""unterminated"#), None);
    }
}
