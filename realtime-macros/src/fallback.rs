//! What is emitted when there are errors: the errors, the user's code, and
//! stand-ins for every item the user may name, so that one mistake gives one
//! error and not a cascade of "cannot find `ChatClientMessage`"
//! (thiserror's fallback does the same "to minimize spurious secondary
//! errors").

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Handler;
use crate::diagnostics::Diagnostics;
use crate::expand;

/// The input as it was (markers removed where it was an impl block), after
/// the errors.
pub(crate) fn verbatim(item: &TokenStream, diag: Diagnostics) -> TokenStream {
    let errors = diag.finish().err().map(|error| error.to_compile_error());
    quote! {
        #errors
        #item
    }
}

/// The errors, the user's block with markers removed and every method kept,
/// then stand-ins for `<Type>ClientMessage`, `router`, `route` and the
/// `MessageHandler` impl, whose bodies are never run.
pub(crate) fn with_errors(handler: &Handler, errors: &syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    let item = &handler.item;
    let client_message = expand::client_message_enum(handler, true);
    let routes = expand::routes(handler, true);
    let handler_impl = expand::handler_impl(handler, true);
    let debug_impl = expand::client_message_debug(handler, true);
    quote! {
        #errors

        #item

        #client_message

        #routes

        const _: () = {
            #debug_impl

            #handler_impl
        };
    }
}
