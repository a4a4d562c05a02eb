//! Lowering one marked method: the rules each message method or hook
//! follows on its own (async, `&self`, named owned arguments, the return
//! shape, where the context goes).

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, FnArg, GenericParam, ImplItemFn, Pat, PatType, ReturnType, Signature, Type};

use super::types::{ContextArg, classify, event_of, is_self, result_ok, typed_inputs};
use super::{Arg, ContextType, Hook, MessageKind, MessageMethod, Output};
use crate::attr::{Marker, MarkerUse};
use crate::diagnostics::Diagnostics;
use crate::names;

/// What a message method or hook is called in messages.
fn what(marker: Marker) -> String {
    let noun = if marker.is_message() {
        "methods"
    } else {
        "hooks"
    };
    format!("`#[{}]` {noun}", marker.name())
}

pub(super) fn lower_message(
    diag: &mut Diagnostics,
    kind: MessageKind,
    marker_use: &MarkerUse,
    func: &ImplItemFn,
    mut arg_attrs: Vec<Vec<Attribute>>,
) -> Option<MessageMethod> {
    let before = diag.count();
    let sig = &func.sig;
    let marker = kind.marker();
    signature_rules(diag, marker, sig);

    let mut takes_context = false;
    let mut args = Vec::new();
    for (index, input) in typed_inputs(sig).enumerate() {
        let attrs = std::mem::take(&mut arg_attrs[index]);
        match classify(&input.ty) {
            ContextArg::Context(_) if index == 0 => takes_context = true,
            ContextArg::Context(_) if takes_context => diag.on(
                input,
                format!(
                    "a method takes the context once; remove `{}`",
                    names::render(input)
                ),
            ),
            ContextArg::Context(_) => diag.on(
                input,
                format!(
                    "the context goes right after `&self`; move `{}` there",
                    names::render(input)
                ),
            ),
            ContextArg::Misspelled(message) => diag.on(&input.ty, message),
            ContextArg::Not => {
                if let Some(arg) = lower_arg(diag, input, attrs) {
                    args.push(arg);
                }
            }
        }
    }

    let output = lower_output(diag, kind, sig);
    let (wire, wire_span) = match &marker_use.name {
        Some(lit) => (lit.value(), lit.span()),
        None => (names::wire_name(&sig.ident), sig.ident.span()),
    };
    if diag.count() != before {
        return None;
    }
    Some(MessageMethod {
        kind,
        ident: sig.ident.clone(),
        wire,
        wire_span,
        variant: names::variant_ident(&sig.ident),
        docs: func
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("doc"))
            .cloned()
            .collect(),
        takes_context,
        args,
        output: output?,
    })
}

/// The rules every marked method follows: `async`, safe, not generic, `&self`.
fn signature_rules(diag: &mut Diagnostics, marker: Marker, sig: &Signature) {
    let what = what(marker);
    if sig.asyncness.is_none() {
        diag.at(
            sig.fn_token.span,
            format!(
                "{what} must be `async`; write `async fn {}(...)`",
                sig.ident
            ),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        diag.at(
            unsafety.span,
            format!("{what} cannot be `unsafe`; remove `unsafe`"),
        );
    }
    generics_rule(diag, &what, sig);
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            let by_shared_ref = matches!(
                &*receiver.ty,
                Type::Reference(r) if r.mutability.is_none() && is_self(&r.elem)
            );
            if !by_shared_ref {
                let written = if receiver.colon_token.is_some() {
                    format!("self: {}", names::render(&receiver.ty))
                } else {
                    names::render(receiver)
                };
                let advice = if receiver.mutability.is_some() || receiver.reference.is_some() {
                    " and keep mutable state in the app state"
                } else {
                    ""
                };
                diag.on(
                    receiver,
                    format!("{what} take `&self`; change `{written}` to `&self`{advice}"),
                );
            }
        }
        _ => diag.at(
            sig.paren_token.span.join(),
            format!("{what} take `&self` first; add `&self` as the first parameter"),
        ),
    }
}

fn generics_rule(diag: &mut Diagnostics, what: &str, sig: &Signature) {
    let generics = &sig.generics;
    let reason = format!(
        "{what} cannot be generic because the generated code calls them with concrete types"
    );
    match generics.params.first() {
        Some(GenericParam::Type(param)) => diag.on(
            generics,
            format!("{reason}; replace `{}` with a concrete type", param.ident),
        ),
        Some(GenericParam::Lifetime(param)) => diag.on(
            generics,
            format!(
                "{reason}; remove `{}` and let the lifetimes be elided",
                param.lifetime
            ),
        ),
        Some(GenericParam::Const(param)) => diag.on(
            generics,
            format!("{reason}; replace `{}` with a constant", param.ident),
        ),
        None => {
            if let Some(clause) = &generics.where_clause {
                diag.on(clause, format!("{reason}; remove the `where` clause"));
            }
        }
    }
}

fn lower_arg(diag: &mut Diagnostics, input: &PatType, attrs: Vec<Attribute>) -> Option<Arg> {
    let before = diag.count();
    let ident = match &*input.pat {
        Pat::Ident(pat) if pat.subpat.is_none() && pat.by_ref.is_none() => Some(pat.ident.clone()),
        Pat::Wild(_) => {
            diag.on(
                &input.pat,
                format!(
                    "each argument becomes a JSON field, so it needs a name; \
                     write `name: {}`, or `_name` if the body does not use it",
                    names::render(&input.ty)
                ),
            );
            None
        }
        pat => {
            diag.on(
                pat,
                format!(
                    "each argument becomes a JSON field, so it needs a plain name; \
                     write `name: {}` and destructure in the body",
                    names::render(&input.ty)
                ),
            );
            None
        }
    };
    let mut finder = ImplTraitFinder(None);
    finder.visit_type_mut(&mut (*input.ty).clone());
    if let Some(impl_trait) = finder.0 {
        diag.at(
            impl_trait,
            "`impl Trait` cannot be deserialized; use a concrete type that implements `Deserialize`",
        );
    } else if let Type::Reference(reference) = &*input.ty {
        let owned = match &*reference.elem {
            Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
            Type::Slice(slice) => format!("Vec<{}>", names::render(&slice.elem)),
            elem => names::render(elem),
        };
        diag.on(
            &input.ty,
            format!(
                "arguments are deserialized from the message into owned values; \
                 write `{owned}` instead of `{}`",
                names::render(&input.ty)
            ),
        );
    }
    if diag.count() != before {
        return None;
    }
    Some(Arg {
        ident: ident?,
        ty: (*input.ty).clone(),
        attrs,
    })
}

/// Finds the first `impl Trait` inside a type.
struct ImplTraitFinder(Option<Span>);

impl VisitMut for ImplTraitFinder {
    fn visit_type_impl_trait_mut(&mut self, node: &mut syn::TypeImplTrait) {
        if self.0.is_none() {
            self.0 = Some(node.span());
        }
    }
}

fn lower_output(diag: &mut Diagnostics, kind: MessageKind, sig: &Signature) -> Option<Output> {
    let shape = match kind {
        MessageKind::Direct => {
            "`#[direct]` methods return `Result<T, HandlerError>`, with the reply as `T`"
        }
        MessageKind::Broadcast => {
            "`#[broadcast]` methods return `Result<E, HandlerError>` with the event as `E`, \
             or `Result<Option<E>, HandlerError>`"
        }
    };
    let ReturnType::Type(_, ty) = &sig.output else {
        diag.at(
            sig.ident.span(),
            format!("{shape}; add `-> Result<..., HandlerError>` after the parameters"),
        );
        return None;
    };
    let Some(ok) = result_ok(ty) else {
        diag.on(
            ty,
            format!(
                "{shape}; write `-> Result<{}, HandlerError>`",
                names::render(ty)
            ),
        );
        return None;
    };
    let result = (**ty).clone();
    Some(match kind {
        MessageKind::Direct => Output::Reply {
            reply: ok.clone(),
            result,
        },
        MessageKind::Broadcast => {
            let (event, optional) = event_of(ok);
            Output::Event {
                event: event.clone(),
                optional,
                result,
            }
        }
    })
}

pub(super) fn lower_hook(
    diag: &mut Diagnostics,
    marker_use: MarkerUse,
    func: &ImplItemFn,
) -> Option<Hook> {
    let before = diag.count();
    let sig = &func.sig;
    let marker = marker_use.marker;
    let what = what(marker);
    signature_rules(diag, marker, sig);
    let inputs: Vec<&PatType> = typed_inputs(sig).collect();
    let mut takes_context = false;
    let mut authorize = None;
    if marker == Marker::AuthorizeTopic {
        let signature = "`(&self, state: &State, user: &User, topic: &str)`";
        if inputs.len() == 3 {
            let state = by_reference(diag, &inputs[0].ty, "state");
            let user = by_reference(diag, &inputs[1].ty, "user");
            if let (Some(state), Some(user)) = (state, user) {
                authorize = Some(ContextType { state, user });
            }
        } else {
            diag.at(
                sig.paren_token.span.join(),
                format!("{what} take {signature}; write these parameters"),
            );
        }
        let returns_bool = matches!(
            &sig.output,
            ReturnType::Type(_, ty) if matches!(&**ty, Type::Path(p) if p.path.is_ident("bool"))
        );
        if !returns_bool {
            let message =
                format!("{what} return `bool`, `true` to let the user subscribe; write `-> bool`");
            match &sig.output {
                ReturnType::Type(_, ty) => diag.on(ty, message),
                ReturnType::Default => diag.at(sig.ident.span(), message),
            }
        }
    } else {
        let mut inputs = inputs.as_slice();
        if matches!(marker, Marker::OnJoin | Marker::OnLeave) {
            // The topic comes last: `(&self, [ctx,] topic: &str)`.
            match inputs.split_last() {
                Some((topic, rest)) if is_str_ref(&topic.ty) => inputs = rest,
                _ => diag.at(
                    sig.paren_token.span.join(),
                    format!(
                        "{what} take `(&self, ctx: &Context<S, U>, topic: &str)` (the context \
                         may be left out); write the `topic: &str` parameter last"
                    ),
                ),
            }
        }
        for (index, input) in inputs.iter().enumerate() {
            match classify(&input.ty) {
                ContextArg::Context(_) if index == 0 => takes_context = true,
                ContextArg::Misspelled(message) => diag.on(&input.ty, message),
                _ => diag.on(
                    input,
                    format!(
                        "{what} take `&self` and the context only; remove `{}`",
                        names::render(input)
                    ),
                ),
            }
        }
        if let ReturnType::Type(_, ty) = &sig.output
            && !matches!(&**ty, Type::Tuple(t) if t.elems.is_empty())
        {
            diag.on(
                ty,
                format!("{what} return nothing; remove `-> {}`", names::render(ty)),
            );
        }
    }
    if diag.count() != before {
        return None;
    }
    Some(Hook {
        marker,
        ident: sig.ident.clone(),
        attr: marker_use.attr,
        takes_context,
        authorize,
    })
}

/// Whether `ty` is `&str`.
fn is_str_ref(ty: &Type) -> bool {
    matches!(
        ty,
        Type::Reference(reference)
            if reference.mutability.is_none()
                && matches!(&*reference.elem, Type::Path(p) if p.path.is_ident("str"))
    )
}

fn by_reference(diag: &mut Diagnostics, ty: &Type, what: &str) -> Option<Type> {
    if let Type::Reference(reference) = ty
        && reference.mutability.is_none()
    {
        return Some((*reference.elem).clone());
    }
    let bare = match ty {
        Type::Reference(reference) => &*reference.elem,
        other => other,
    };
    diag.on(
        ty,
        format!(
            "`#[authorize_topic]` hooks take the {what} by shared reference; write `&{}`",
            names::render(bare)
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    use crate::ast::Handler;
    use crate::diagnostics::Diagnostics;

    /// Lowers a block with one marked method (beside a clean one) and returns
    /// the errors; the method must be left out of the model when there are.
    fn method_errors(method: &TokenStream) -> Vec<String> {
        let mut diag = Diagnostics::default();
        let handler = Handler::lower(
            &mut diag,
            quote!(state = App, user = UserId),
            quote! {
                impl Chat {
                    #[direct] async fn clean(&self) -> Result<u8, HandlerError> { Ok(1) }
                    #method
                }
            },
        );
        let handler = handler.expect("an impl block");
        let errors = diag.messages();
        let lowered = handler.messages.len() + handler.hooks.len();
        assert_eq!(lowered, if errors.is_empty() { 2 } else { 1 }, "{errors:?}");
        errors
    }

    #[test]
    fn not_async() {
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                fn history(&self) -> Result<u32, HandlerError> {
                    Ok(1)
                }
            )),
            ["`#[direct]` methods must be `async`; write `async fn history(...)`"]
        );
    }

    #[test]
    fn receivers() {
        assert_eq!(
            method_errors(&quote!(
                #[broadcast]
                async fn say(text: String) -> Result<E, HandlerError> {}
            )),
            ["`#[broadcast]` methods take `&self` first; add `&self` as the first parameter"]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&mut self) -> Result<u8, HandlerError> {}
            )),
            [
                "`#[direct]` methods take `&self`; change `&mut self` to `&self` and keep mutable \
              state in the app state"
            ]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(self) -> Result<u8, HandlerError> {}
            )),
            ["`#[direct]` methods take `&self`; change `self` to `&self`"]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(self: Box<Self>) -> Result<u8, HandlerError> {}
            )),
            ["`#[direct]` methods take `&self`; change `self: Box<Self>` to `&self`"]
        );
        assert!(
            method_errors(&quote!(
                #[direct]
                async fn a(self: &Self) -> Result<u8, HandlerError> {}
            ))
            .is_empty()
        );
    }

    #[test]
    fn generics() {
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a<T>(&self, x: T) -> Result<u8, HandlerError> {}
            )),
            [
                "`#[direct]` methods cannot be generic because the generated code calls them with \
              concrete types; replace `T` with a concrete type"
            ]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self) -> Result<u8, HandlerError>
                where
                    Self: Sized,
                {
                }
            )),
            [
                "`#[direct]` methods cannot be generic because the generated code calls them with \
              concrete types; remove the `where` clause"
            ]
        );
    }

    #[test]
    fn arguments() {
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self, (x, y): (u8, u8)) -> Result<u8, HandlerError> {}
            )),
            [
                "each argument becomes a JSON field, so it needs a plain name; write `name: (u8, u8)` \
              and destructure in the body"
            ]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self, _: u8) -> Result<u8, HandlerError> {}
            )),
            [
                "each argument becomes a JSON field, so it needs a name; write `name: u8`, or \
              `_name` if the body does not use it"
            ]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self, x: impl Into<u8>) -> Result<u8, HandlerError> {}
            )),
            [
                "`impl Trait` cannot be deserialized; use a concrete type that implements `Deserialize`"
            ]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self, x: &str) -> Result<u8, HandlerError> {}
            )),
            [
                "arguments are deserialized from the message into owned values; write `String` \
              instead of `&str`"
            ]
        );
        assert!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self, mut x: u8) -> Result<u8, HandlerError> {}
            ))
            .is_empty()
        );
    }

    #[test]
    fn context_rules() {
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self, x: u8, ctx: &Context<App, UserId>) -> Result<u8, HandlerError> {}
            )),
            ["the context goes right after `&self`; move `ctx: &Context<App, UserId>` there"]
        );
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self, ctx: Context<App, UserId>) -> Result<u8, HandlerError> {}
            )),
            ["the context is passed by shared reference; write `&Context<App, UserId>`"]
        );
        // Only `Context` is the context: any other type, an alias of it
        // included, is a message argument.
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(
                    &self,
                    ctx: &ConnectionContext<App, UserId>,
                ) -> Result<u8, HandlerError> {
                }
            )),
            [
                "arguments are deserialized from the message into owned values; write \
                 `ConnectionContext<App, UserId>` instead of `&ConnectionContext<App, UserId>`"
            ]
        );
    }

    #[test]
    fn return_types() {
        assert_eq!(
            method_errors(&quote!(
                #[direct]
                async fn a(&self) -> u32 {
                    1
                }
            )),
            [
                "`#[direct]` methods return `Result<T, HandlerError>`, with the reply as `T`; \
              write `-> Result<u32, HandlerError>`"
            ]
        );
        assert_eq!(
            method_errors(&quote!(
                #[broadcast]
                async fn a(&self) {}
            )),
            [
                "`#[broadcast]` methods return `Result<E, HandlerError>` with the event as `E`, or \
              `Result<Option<E>, HandlerError>`; add `-> Result<..., HandlerError>` after the \
              parameters"
            ]
        );
    }

    #[test]
    fn several_problems_in_one_method_are_all_reported() {
        let errors = method_errors(&quote!(
            #[direct]
            fn a<T>(&mut self, _: T) -> u8 {
                1
            }
        ));
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn hooks() {
        assert!(
            method_errors(&quote!(
                #[on_connect]
                async fn hi(&self) {}
            ))
            .is_empty()
        );
        assert_eq!(
            method_errors(&quote!(
                #[on_connect]
                async fn hi(&self, x: u8) {}
            )),
            ["`#[on_connect]` hooks take `&self` and the context only; remove `x: u8`"]
        );
        assert_eq!(
            method_errors(&quote!(
                #[on_disconnect]
                async fn bye(&self) -> bool {
                    true
                }
            )),
            ["`#[on_disconnect]` hooks return nothing; remove `-> bool`"]
        );
        assert_eq!(
            method_errors(&quote!(
                #[authorize_topic]
                async fn may(&self, s: &App, u: &UserId) -> bool {
                    true
                }
            )),
            [
                "`#[authorize_topic]` hooks take `(&self, state: &State, user: &User, topic: &str)`; \
              write these parameters"
            ]
        );
        assert_eq!(
            method_errors(&quote!(
                #[authorize_topic]
                async fn may(&self, s: App, u: &UserId, t: &str) {}
            )),
            [
                "`#[authorize_topic]` hooks take the state by shared reference; write `&App`",
                "`#[authorize_topic]` hooks return `bool`, `true` to let the user subscribe; \
                 write `-> bool`"
            ]
        );
    }
}
