//! The error collector: every stage records what it finds and goes on, so
//! the user sees all their mistakes at once (serde_derive's `Ctxt` works the
//! same way).

use std::fmt::Display;

use proc_macro2::Span;
use quote::ToTokens;

/// Errors gathered while lowering and checking one handler.
#[derive(Default)]
pub(crate) struct Diagnostics {
    errors: Vec<syn::Error>,
}

impl Diagnostics {
    /// An error underlining the whole of `node`, from its first token to its
    /// last.
    pub(crate) fn on(&mut self, node: impl ToTokens, message: impl Display) {
        self.errors.push(syn::Error::new_spanned(node, message));
    }

    /// An error underlining one token.
    pub(crate) fn at(&mut self, span: Span, message: impl Display) {
        self.errors.push(syn::Error::new(span, message));
    }

    /// An error a syn parser produced.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// How many errors were recorded so far; a stage compares the count
    /// before and after a step to know whether that step failed.
    pub(crate) fn count(&self) -> usize {
        self.errors.len()
    }

    /// `Ok` when nothing was recorded; otherwise one `syn::Error` that holds
    /// every message with its own span.
    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        let mut all = self.errors.into_iter();
        let Some(mut first) = all.next() else {
            return Ok(());
        };
        first.extend(all);
        Err(first)
    }
}

#[cfg(test)]
impl Diagnostics {
    /// The messages recorded so far, in order.
    pub(crate) fn messages(&self) -> Vec<String> {
        self.errors.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_keeps_every_message_in_order() {
        let mut diag = Diagnostics::default();
        diag.at(Span::call_site(), "first");
        diag.on(quote::quote!(a b), "second");
        assert_eq!(diag.count(), 2);
        let all: Vec<String> = diag
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(all, ["first", "second"]);
    }

    #[test]
    fn nothing_recorded_is_ok() {
        assert!(Diagnostics::default().finish().is_ok());
    }
}
