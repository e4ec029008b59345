//! The `#[pg_audit(...)]` attribute of pg-audit. Use it through `pg-audit-diesel`, which
//! re-exports it together with the runtime the generated code names; its documentation is the
//! attribute's reference.
#![warn(missing_docs)]

use proc_macro::TokenStream;

mod ast;
mod attr;
mod change_reason;
mod check;
mod ctxt;
mod expand;
mod symbol;

/// Audits a Diesel model's table. See `pg_audit_diesel` for the reference.
#[proc_macro_attribute]
pub fn pg_audit(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::pg_audit_inner(args.into(), input.into()).into()
}

/// Runs a function's body with an ambient change reason. See
/// `pg_audit_diesel::ambient` for the reference.
#[proc_macro_attribute]
pub fn with_change_reason(args: TokenStream, input: TokenStream) -> TokenStream {
    change_reason::with_change_reason_inner(args.into(), input.into()).into()
}
