//! What is emitted when there are errors: the errors, the user's code, and
//! stand-ins for every item the user may name, so that one mistake gives one
//! error and not a cascade of "cannot find `ChatClientMessage`"
//! (thiserror's fallback does the same "to minimize spurious secondary
//! errors").

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Handler;
use crate::diagnostics::Diagnostics;
use crate::{expand, names, private};

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
    let p = private::path();
    let serde_crate = private::SERDE_CRATE;
    let errors = errors.to_compile_error();
    let item = &handler.item;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let enum_ident = names::client_message_ident(&handler.self_ident);
    let unit = || quote!(());
    let (state, user) = match handler.state_and_user() {
        Some((state, user)) => (quote!(#state), quote!(#user)),
        None => match &handler.seen.context {
            Some(ctx) => {
                let (state, user) = (&ctx.state, &ctx.user);
                (quote!(#state), quote!(#user))
            }
            None => (unit(), unit()),
        },
    };
    let event = handler
        .event_type()
        .or(handler.seen.event.as_ref())
        .map_or_else(unit, |event| quote!(#event));
    let routes = expand::routes(handler, true);
    quote! {
        #errors

        #item

        /// Stand-in emitted while `#[realtime_handler]` reports errors.
        #[derive(#p::serde::Deserialize)]
        #[serde(crate = #serde_crate)]
        pub enum #enum_ident {}

        #routes

        const _: () = {
            #[automatically_derived]
            impl ::core::fmt::Debug for #enum_ident {
                fn fmt(&self, _: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    match *self {}
                }
            }

            #[automatically_derived]
            impl #impl_generics ::realtime::MessageHandler for #self_ty #where_clause {
                type ClientMessage = #enum_ident;
                type ServerEvent = #event;
                type AppState = #state;
                type UserId = #user;

                async fn handle(
                    &self,
                    _: Self::ClientMessage,
                    _: &::realtime::Context<Self::AppState, Self::UserId>,
                ) -> ::core::result::Result<
                    ::realtime::handler::Outcome<Self::ServerEvent>,
                    ::realtime::HandlerError,
                > {
                    ::core::unreachable!()
                }
            }
        };
    }
}
