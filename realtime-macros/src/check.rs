//! Rules over the whole block, run on the methods that lowered cleanly:
//! one wire name per method, one event type, one state and user type, at
//! least one message method, each hook at most once.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::{Ident, Type};

use crate::ast::{Handler, MessageMethod, Output};
use crate::attr::Marker;
use crate::diagnostics::Diagnostics;
use crate::names;

/// Runs every rule, recording each problem.
pub(crate) fn handler(diag: &mut Diagnostics, handler: &Handler) {
    has_message_method(diag, handler);
    unique_wire_names(diag, handler);
    one_event_type(diag, handler);
    hooks_at_most_once(diag, handler);
    one_state_and_user(diag, handler);
}

fn has_message_method(diag: &mut Diagnostics, handler: &Handler) {
    if handler.marked_messages == 0 {
        diag.on(
            &handler.item.self_ty,
            "this handler has no `#[direct]` or `#[broadcast]` method; mark at least one",
        );
    }
}

/// Two methods cannot share a wire name, nor a variant of the enum (which
/// only differs from the wire name after a rename).
fn unique_wire_names(diag: &mut Diagnostics, handler: &Handler) {
    let mut wires: HashMap<&str, &MessageMethod> = HashMap::new();
    let mut variants: HashMap<String, &MessageMethod> = HashMap::new();
    for method in &handler.messages {
        if let Some(earlier) = wires.get(method.wire.as_str()) {
            diag.at(
                method.wire_span,
                format!(
                    "wire name `{}` is already used by `fn {}`; rename one with `#[{}(name = \"...\")]`",
                    method.wire,
                    earlier.ident,
                    method.kind.marker().name()
                ),
            );
            continue;
        }
        wires.insert(&method.wire, method);
        if let Some(earlier) = variants.get(&method.variant.to_string()) {
            diag.at(
                method.ident.span(),
                format!(
                    "`fn {}` and `fn {}` both become the variant `{}` of `{}`; rename one of the methods",
                    earlier.ident,
                    method.ident,
                    method.variant,
                    names::client_message_ident(&handler.self_ident)
                ),
            );
            continue;
        }
        variants.insert(method.variant.to_string(), method);
    }
}

fn one_event_type(diag: &mut Diagnostics, handler: &Handler) {
    let mut first: Option<(&Ident, &Type, String)> = None;
    for method in &handler.messages {
        let Output::Event { event, .. } = &method.output else {
            continue;
        };
        let written = names::render(event);
        match &first {
            None => first = Some((&method.ident, event, written)),
            Some((earlier, _, expected)) if *expected != written => diag.on(
                event,
                format!(
                    "every `#[broadcast]` method returns the same event type; \
                     `{earlier}` returns `{expected}`, so write `{expected}` here"
                ),
            ),
            Some(_) => {}
        }
    }
}

fn hooks_at_most_once(diag: &mut Diagnostics, handler: &Handler) {
    let mut seen: HashMap<Marker, &Ident> = HashMap::new();
    for hook in &handler.hooks {
        if let Some(earlier) = seen.get(&hook.marker) {
            diag.on(
                &hook.attr,
                format!(
                    "`fn {earlier}` is already the `#[{0}]` hook and a handler has one; \
                     merge the two into one `#[{0}]` method",
                    hook.marker.name()
                ),
            );
        } else {
            seen.insert(hook.marker, &hook.ident);
        }
    }
}

/// Where the handler's state or user type was first named.
enum Origin<'a> {
    Option,
    Method(&'a Ident),
}

/// One state type and one user type for the whole handler: the options if
/// given, else the first context; every context and `authorize_topic` agree.
fn one_state_and_user(diag: &mut Diagnostics, handler: &Handler) {
    let mut state: Option<(String, Origin<'_>)> = handler
        .options
        .state
        .as_ref()
        .map(|ty| (names::render(ty), Origin::Option));
    let mut user: Option<(String, Origin<'_>)> = handler
        .options
        .user
        .as_ref()
        .map(|ty| (names::render(ty), Origin::Option));
    for (method, ctx) in &handler.contexts {
        agree(diag, &mut state, &ctx.state, Some(method), "state");
        agree(diag, &mut user, &ctx.user, Some(method), "user");
    }
    if let Some(types) = handler
        .hook(Marker::AuthorizeTopic)
        .and_then(|hook| hook.authorize.as_ref())
    {
        agree(diag, &mut state, &types.state, None, "state");
        agree(diag, &mut user, &types.user, None, "user");
    }
    // A context in a method that failed to lower would have named the
    // types; that method's own error is the one to fix.
    if handler.seen.context.is_some() {
        return;
    }
    let missing = match (&state, &user) {
        (Some(_), Some(_)) => return,
        (None, None) => "`state = AppState, user = UserId`",
        (None, Some(_)) => "`state = AppState`",
        (Some(_), None) => "`user = UserId`",
    };
    diag.at(
        Span::call_site(),
        format!(
            "no method takes a `&Context<State, User>`, so the handler's state and user types \
             are unknown; add {missing} (with your types) to `#[realtime_handler(...)]`"
        ),
    );
}

/// Compares one type with the reference, or makes it the reference when
/// there is none yet (and `method` may set it).
fn agree<'a>(
    diag: &mut Diagnostics,
    reference: &mut Option<(String, Origin<'a>)>,
    ty: &Type,
    method: Option<&'a Ident>,
    what: &str,
) {
    let written = names::render(ty);
    match reference {
        Some((expected, origin)) => {
            if *expected != written {
                let source = match origin {
                    Origin::Option => format!("`#[realtime_handler({what} = {expected})]`"),
                    Origin::Method(method) => format!("the context of `fn {method}`"),
                };
                diag.on(
                    ty,
                    format!(
                        "a handler has one {what} type and {source} names `{expected}`; \
                         write `{expected}` here"
                    ),
                );
            }
        }
        None => {
            if let Some(method) = method {
                *reference = Some((written, Origin::Method(method)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    use super::*;

    /// Lowers and checks; returns the model (if the input was an impl block)
    /// and every message.
    fn run(args: TokenStream, input: TokenStream) -> (Option<Handler>, Vec<String>) {
        let mut diag = Diagnostics::default();
        let handler = Handler::lower(&mut diag, args, input).ok();
        if let Some(handler) = &handler {
            super::handler(&mut diag, handler);
        }
        (handler, diag.messages())
    }

    #[test]
    fn duplicate_wire_names_and_variants() {
        let (_, errors) = run(
            quote!(state = App, user = UserId),
            quote! {
                impl Chat {
                    #[broadcast] async fn talk(&self) -> Result<E, HandlerError> {}
                    #[broadcast(name = "talk")] async fn say(&self) -> Result<E, HandlerError> {}
                    #[direct(name = "x")] async fn a_b(&self) -> Result<u8, HandlerError> {}
                    #[direct(name = "y")] async fn a__b(&self) -> Result<u8, HandlerError> {}
                }
            },
        );
        assert_eq!(
            errors,
            [
                "wire name `talk` is already used by `fn talk`; rename one with \
                 `#[broadcast(name = \"...\")]`",
                "`fn a_b` and `fn a__b` both become the variant `AB` of `ChatClientMessage`; \
                 rename one of the methods"
            ]
        );
    }

    #[test]
    fn one_event_type() {
        let (_, errors) = run(
            quote!(state = App, user = UserId),
            quote! {
                impl Chat {
                    #[broadcast] async fn say(&self) -> Result<ChatEvent, HandlerError> {}
                    #[broadcast] async fn leave(&self) -> Result<Option<ChatEvent>, HandlerError> {}
                    #[broadcast] async fn shout(&self) -> Result<String, HandlerError> {}
                }
            },
        );
        assert_eq!(
            errors,
            [
                "every `#[broadcast]` method returns the same event type; `say` returns \
              `ChatEvent`, so write `ChatEvent` here"
            ]
        );
    }

    #[test]
    fn no_message_method() {
        let (_, errors) = run(
            quote!(state = App, user = UserId),
            quote!(impl Chat { fn helper(&self) {} }),
        );
        assert_eq!(
            errors,
            ["this handler has no `#[direct]` or `#[broadcast]` method; mark at least one"]
        );
        // A marked method that failed is not "no method".
        let (_, errors) = run(
            quote!(state = App, user = UserId),
            quote!(impl Chat { #[direct] fn a(&self) -> Result<u8, HandlerError> {} }),
        );
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn hooks_at_most_once() {
        let (_, errors) = run(
            quote!(state = App, user = UserId),
            quote! {
                impl Chat {
                    #[direct] async fn a(&self) -> Result<u8, HandlerError> {}
                    #[on_connect] async fn hi(&self) {}
                    #[on_connect] async fn hello(&self) {}
                }
            },
        );
        assert_eq!(
            errors,
            [
                "`fn hi` is already the `#[on_connect]` hook and a handler has one; merge the two \
              into one `#[on_connect]` method"
            ]
        );
    }

    #[test]
    fn state_and_user_agree() {
        let (_, errors) = run(
            quote!(),
            quote! {
                impl Chat {
                    #[direct] async fn a(&self, ctx: &Context<App, UserId>) -> Result<u8, HandlerError> {}
                    #[direct] async fn b(&self, ctx: &Context<Other, UserId>) -> Result<u8, HandlerError> {}
                    #[authorize_topic] async fn may(&self, s: &App, u: &String, t: &str) -> bool { true }
                }
            },
        );
        assert_eq!(
            errors,
            [
                "a handler has one state type and the context of `fn a` names `App`; write \
                 `App` here",
                "a handler has one user type and the context of `fn a` names `UserId`; write \
                 `UserId` here"
            ]
        );
        let (_, errors) = run(
            quote!(state = App),
            quote! {
                impl Chat {
                    #[direct] async fn a(&self, ctx: &Context<Other, UserId>) -> Result<u8, HandlerError> {}
                }
            },
        );
        assert_eq!(
            errors,
            [
                "a handler has one state type and `#[realtime_handler(state = App)]` names `App`; \
              write `App` here"
            ]
        );
    }

    #[test]
    fn state_and_user_must_be_known() {
        let (_, errors) = run(
            quote!(),
            quote!(impl Chat { #[direct] async fn a(&self) -> Result<u8, HandlerError> {} }),
        );
        assert_eq!(
            errors,
            [
                "no method takes a `&Context<State, User>`, so the handler's state and user types \
              are unknown; add `state = AppState, user = UserId` (with your types) to \
              `#[realtime_handler(...)]`"
            ]
        );
        let (handler, errors) = run(
            quote!(state = App, user = u64),
            quote!(impl Chat { #[direct] async fn a(&self) -> Result<u8, HandlerError> {} }),
        );
        assert!(errors.is_empty());
        let handler = handler.unwrap();
        let (state, user) = handler.state_and_user().unwrap();
        assert_eq!(
            (names::render(state), names::render(user)),
            ("App".into(), "u64".into())
        );
    }
}
