//! The annotated struct, as the rest of the macro needs it: its name and its Diesel table.

use proc_macro2::{TokenStream, TokenTree};
use syn::spanned::Spanned as _;
use syn::{Ident, Path};

use crate::ctxt::Ctxt;

pub(crate) struct Model {
    pub(crate) ident: Ident,
    /// The path to the Diesel `table!` module, as the user wrote it (or Diesel's default).
    pub(crate) table: Path,
}

impl Model {
    /// Reads the struct; `None` (with the error recorded) when the item cannot be audited.
    pub(crate) fn from_item(item: &syn::Item, cx: &mut Ctxt) -> Option<Model> {
        let syn::Item::Struct(item) = item else {
            cx.error(item.span(), "#[pg_audit] goes on a Diesel model struct");
            return None;
        };
        if !item.generics.params.is_empty() {
            cx.error(
                item.generics.span(),
                "#[pg_audit] does not support generic structs: the audit registry needs one concrete model per table",
            );
            return None;
        }
        let table = table_name(item, cx).unwrap_or_else(|| {
            let name = infer_table_name(&item.ident.to_string());
            Ident::new(&name, item.ident.span()).into()
        });
        Some(Model {
            ident: item.ident.clone(),
            table,
        })
    }
}

/// `table_name = path` from the struct's `#[diesel(...)]` attributes, read as Diesel reads it.
fn table_name(item: &syn::ItemStruct, cx: &mut Ctxt) -> Option<Path> {
    let mut found: Option<Path> = None;
    for attr in item.attrs.iter().filter(|a| a.path().is_ident("diesel")) {
        let Ok(list) = attr.meta.require_list() else {
            continue;
        };
        for option in split_commas(list.tokens.clone()) {
            let mut tokens = option.into_iter();
            let is_table_name = matches!(tokens.next(), Some(TokenTree::Ident(i)) if i == "table_name")
                && matches!(tokens.next(), Some(TokenTree::Punct(p)) if p.as_char() == '=');
            if !is_table_name {
                continue;
            }
            let value: TokenStream = tokens.collect();
            match syn::parse2::<Path>(value.clone()) {
                Ok(path) if found.is_none() => found = Some(path),
                Ok(path) => cx.error(
                    path.span(),
                    "#[pg_audit] needs one `table_name`; this struct names several",
                ),
                Err(_) => cx.error(
                    value.span(),
                    "`table_name` must be the path of a Diesel `table!` module, such as `users` or \
                     `crate::schema::users`; a SQL schema comes from the `table!` declaration \
                     (`table! { billing.subscriptions (id) { ... } }`)",
                ),
            }
        }
    }
    found
}

fn split_commas(tokens: TokenStream) -> Vec<Vec<TokenTree>> {
    let mut parts = vec![Vec::new()];
    for token in tokens {
        match &token {
            TokenTree::Punct(p) if p.as_char() == ',' => parts.push(Vec::new()),
            _ => parts.last_mut().expect("never empty").push(token),
        }
    }
    parts
}

/// Diesel's default table name for a struct: snake case, plus `s` (`UserProfile` →
/// `user_profiles`), exactly as `diesel_derives` infers it.
pub(crate) fn infer_table_name(name: &str) -> String {
    let mut result = String::with_capacity(name.len() + 1);
    let mut chars = name.chars();
    if let Some(first) = chars.next() {
        result.extend(first.to_lowercase());
    }
    for c in chars {
        if c.is_uppercase() {
            result.push('_');
            result.extend(c.to_lowercase());
        } else {
            result.push(c);
        }
    }
    result.push('s');
    result
}

#[cfg(test)]
mod tests {
    use super::infer_table_name;

    #[test]
    fn default_table_names_match_diesel() {
        assert_eq!(infer_table_name("Product"), "products");
        assert_eq!(infer_table_name("UserProfile"), "user_profiles");
        assert_eq!(infer_table_name("FooBarBaz"), "foo_bar_bazs");
    }
}
