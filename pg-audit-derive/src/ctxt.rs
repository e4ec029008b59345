//! Error collection: every mistake in an attribute is reported in one compile.

use std::fmt::Display;

use proc_macro2::Span;

#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Option<syn::Error>,
}

impl Ctxt {
    pub(crate) fn error(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    pub(crate) fn check(self) -> Result<(), syn::Error> {
        self.errors.map_or(Ok(()), Err)
    }
}
