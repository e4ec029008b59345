//! Writing the code: the struct unchanged, an `Audited` implementation and a registry entry.

use pg_audit::{Capture, Operation, RowRef};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::Ident;

use crate::ast::Model;
use crate::attr::{self, Attrs, Column};
use crate::check;
use crate::ctxt::Ctxt;

/// `#[pg_audit(args)] item`, on `proc_macro2` tokens so tests can call it.
pub(crate) fn pg_audit_inner(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let attrs = attr::parse(args, &mut cx);
    let model = match syn::parse2::<syn::Item>(input.clone()) {
        Ok(item) => Model::from_item(&item, &mut cx),
        Err(e) => {
            cx.push(e);
            None
        }
    };
    check::check(&attrs, &mut cx);
    match (model, cx.check()) {
        (Some(model), Ok(())) => {
            let generated = expand(&model, &attrs);
            quote! {
                #input
                #generated
            }
        }
        // Still emit the struct, so one mistake here does not turn into errors wherever the
        // struct is used. (Column names are left for the next compile: rustc suppresses
        // name-resolution errors in an expansion that reported errors.)
        (_, Err(e)) => {
            let errors = e.to_compile_error();
            quote! {
                #input
                #errors
            }
        }
        (None, Ok(())) => unreachable!("a missing model always records an error"),
    }
}

/// `<table::columns::col as Column>::NAME`, all spanned at the column as the user wrote it, so
/// rustc reports a wrong name there (and its suggestions edit just that name).
fn column_name(table: &syn::Path, c: &Column) -> TokenStream {
    let col = &c.ident;
    let mut table = table.clone();
    for segment in &mut table.segments {
        segment.ident.set_span(col.span());
    }
    let columns = Ident::new("columns", col.span());
    quote!(<#table::#columns::#col as ::pg_audit_diesel::__private::diesel::Column>::NAME)
}

/// For each `NEW.col`/`OLD.col` in the condition, a constant rustc evaluates: a column the
/// table lacks fails to compile, at the condition.
fn condition_checks(table: &syn::Path, attrs: &Attrs) -> Vec<TokenStream> {
    let Some(c) = &attrs.condition else {
        return Vec::new();
    };
    let (lit, condition) = &c.value;
    let table_text = quote!(#table).to_string().replace(' ', "");
    let mut seen = Vec::new();
    let mut checks = Vec::new();
    for r in condition.column_refs() {
        if seen.contains(&r.column) {
            continue;
        }
        seen.push(r.column.clone());
        let row = match r.row {
            RowRef::New => "NEW",
            RowRef::Old => "OLD",
        };
        let message = format!(
            "`{row}.{}` in `condition`: `{table_text}` has no column with that SQL name",
            r.column
        );
        let column = &r.column;
        checks.push(quote_spanned! {lit.span()=>
            const _: () = ::core::assert!(
                ::pg_audit_diesel::__private::has_column::<#table::table>(#column),
                #message
            );
        });
    }
    checks
}

fn expand(model: &Model, attrs: &Attrs) -> TokenStream {
    let ident = &model.ident;
    let table = &model.table;
    let model_name = ident.to_string();
    let column_path = |c: &Column| column_name(table, c);
    let columns = match (&attrs.track_only, &attrs.exclude_fields) {
        (Some(track), _) => {
            let names = track.value.iter().map(column_path);
            quote!(::pg_audit_diesel::ColumnSelection::TrackOnly(&[#(#names),*]))
        }
        (None, Some(exclude)) => {
            let names = exclude.value.iter().map(column_path);
            quote!(::pg_audit_diesel::ColumnSelection::Exclude(&[#(#names),*]))
        }
        (None, None) => quote!(::pg_audit_diesel::ColumnSelection::All),
    };
    let mask: Vec<TokenStream> = attrs
        .mask
        .as_ref()
        .map(|m| m.value.iter().map(column_path).collect())
        .unwrap_or_default();
    let condition = match &attrs.condition {
        Some(c) => {
            let lit = &c.value.0;
            quote!(::core::option::Option::Some(#lit))
        }
        None => quote!(::core::option::Option::None),
    };
    let operations: Vec<TokenStream> = attrs
        .operations
        .as_ref()
        .map_or_else(|| Operation::DEFAULT.to_vec(), |ops| ops.value.clone())
        .into_iter()
        .map(|op| {
            let variant = Ident::new(
                match op {
                    Operation::Insert => "Insert",
                    Operation::Update => "Update",
                    Operation::Delete => "Delete",
                    Operation::Truncate => "Truncate",
                    Operation::Snapshot => "Snapshot",
                    Operation::Ddl => "Ddl",
                },
                Span::call_site(),
            );
            quote!(::pg_audit_diesel::__private::Operation::#variant)
        })
        .collect();
    let capture = Ident::new(
        match attrs.capture.as_ref().map_or(Capture::Trigger, |c| c.value) {
            Capture::Trigger => "Trigger",
            Capture::Wal => "Wal",
        },
        Span::call_site(),
    );
    let condition_checks = condition_checks(table, attrs);
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications)]
        const _: () = {
            #[automatically_derived]
            impl ::pg_audit_diesel::Audited for #ident {
                type Table = #table::table;
                const MODEL: &'static str = #model_name;
                const CONFIG: ::pg_audit_diesel::AuditConfig = ::pg_audit_diesel::AuditConfig {
                    columns: #columns,
                    mask: &[#(#mask),*],
                    condition: #condition,
                    operations: &[#(#operations),*],
                    capture: ::pg_audit_diesel::__private::Capture::#capture,
                };
            }

            #(#condition_checks)*

            ::pg_audit_diesel::__private::inventory::submit! {
                ::pg_audit_diesel::AuditedModel::of::<#ident>()
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_pretty(args: TokenStream, input: TokenStream) -> String {
        let tokens = pg_audit_inner(args, input);
        let file: syn::File = syn::parse2(tokens).expect("the expansion parses");
        prettyplease::unparse(&file)
    }

    #[test]
    fn track_only_with_explicit_table() {
        insta::assert_snapshot!(expand_pretty(
            quote!(track_only = ["name", email]),
            quote! {
                #[derive(Queryable, Selectable)]
                #[diesel(table_name = crate::schema::users, check_for_backend(diesel::pg::Pg))]
                pub struct User { pub id: i32, pub name: String, pub email: String }
            },
        ));
    }

    #[test]
    fn exclude_fields_with_default_table_name() {
        insta::assert_snapshot!(expand_pretty(
            quote!(exclude_fields = ["created_at", "updated_at"]),
            quote! {
                #[derive(Queryable)]
                pub struct ProductVariant { pub id: i32 }
            },
        ));
    }

    #[test]
    fn condition_and_operations() {
        insta::assert_snapshot!(expand_pretty(
            quote!(
                condition = "NEW.is_active = TRUE OR OLD.is_active",
                operations = [insert, "DELETE"]
            ),
            quote! {
                #[diesel(table_name = subscriptions)]
                pub struct Subscription { pub id: i32, pub is_active: bool }
            },
        ));
    }

    #[test]
    fn mistakes_are_reported_together_and_the_struct_is_kept() {
        insta::assert_snapshot!(expand_pretty(
            quote!(
                trak_only = ["a"],
                track_only = [],
                condition = "(",
                exclude_fields = ["b", "b"],
                operations = [upsert]
            ),
            quote! {
                pub struct User { pub id: i32 }
            },
        ));
    }
}
