//! `#[with_change_reason("...")]`: a function whose body runs with an ambient change reason.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{ItemFn, LitStr};

pub(crate) fn with_change_reason_inner(args: TokenStream, input: TokenStream) -> TokenStream {
    let reason = match syn::parse2::<LitStr>(args.clone()) {
        Ok(reason) if reason.value().trim().is_empty() => Err(syn::Error::new(
            reason.span(),
            "the change reason is empty; say why the function's changes are made",
        )),
        Ok(reason) => Ok(reason),
        Err(_) => Err(syn::Error::new_spanned(
            &args,
            "expected the change reason as a string literal: #[with_change_reason(\"...\")]",
        )),
    };
    let function = syn::parse2::<ItemFn>(input.clone()).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[with_change_reason] goes on a function or method",
        )
    });
    match (reason, function) {
        (Ok(reason), Ok(function)) => expand(&reason, function),
        (reason, function) => {
            let errors = [reason.err(), function.err()]
                .into_iter()
                .flatten()
                .map(|e| e.to_compile_error());
            quote! {
                #input
                #(#errors)*
            }
        }
    }
}

fn expand(reason: &LitStr, mut function: ItemFn) -> TokenStream {
    let block = &function.block;
    let body = if function.sig.asyncness.is_some() {
        // The reason is installed around every poll, so it survives `.await`.
        quote!({
            ::pg_audit_diesel::ambient::scope_change_reason(#reason, async move #block).await
        })
    } else {
        quote!({
            let __pg_audit_change_reason = ::pg_audit_diesel::ambient::use_change_reason(#reason);
            #block
        })
    };
    *function.block = syn::parse2(body).expect("a block");
    quote!(#function)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretty(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("parses"))
    }

    #[test]
    fn sync_function_holds_a_guard() {
        insta::assert_snapshot!(pretty(with_change_reason_inner(
            quote!("Bulk update for compliance"),
            quote! {
                pub fn bulk(conn: &mut PgConnection) -> QueryResult<usize> {
                    conn.audited_transaction(|conn| update(conn))
                }
            },
        )));
    }

    #[test]
    fn async_function_is_scoped() {
        insta::assert_snapshot!(pretty(with_change_reason_inner(
            quote!("Nightly cleanup"),
            quote! {
                pub async fn cleanup(&self, pool: &Pool) -> Result<(), Error> {
                    work(pool).await?;
                    Ok(())
                }
            },
        )));
    }

    #[test]
    fn mistakes_keep_the_function() {
        let out = with_change_reason_inner(
            quote!(42),
            quote!(
                fn f() {}
            ),
        )
        .to_string();
        assert!(out.contains("fn f"), "{out}");
        assert!(
            out.contains("expected the change reason as a string literal"),
            "{out}"
        );
        let out = with_change_reason_inner(
            quote!(""),
            quote!(
                fn f() {}
            ),
        )
        .to_string();
        assert!(out.contains("the change reason is empty"), "{out}");
        let out = with_change_reason_inner(
            quote!("x"),
            quote!(
                struct S;
            ),
        )
        .to_string();
        assert!(out.contains("goes on a function or method"), "{out}");
    }
}
