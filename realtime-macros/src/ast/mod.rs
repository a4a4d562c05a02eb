//! The lowered model of a `#[realtime_handler]` impl block, and `lower`,
//! which builds it from syn's tree.
//!
//! Lowering removes the markers from the block that is emitted again,
//! moves argument attributes meant for the generated enum (`#[serde(...)]`,
//! doc comments) off the method parameters, and checks each method on its
//! own (`method`). A method with a problem is reported and left out of the
//! model; lowering goes on with the next one, so every mistake is reported
//! at once.

mod method;
mod types;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::{Attribute, FnArg, Ident, ImplItem, Item, ItemImpl, ReturnType, Signature, Type};

use crate::attr::{self, HandlerOptions, Marked, Marker};
use crate::diagnostics::Diagnostics;
use crate::names;
use method::{lower_hook, lower_message};
use types::{event_of, first_context, result_ok, type_ident};

/// Whether `ty` is written `Option<T>` (serde treats such a field as
/// optional).
pub(crate) fn is_option(ty: &Type) -> bool {
    types::generic_args(ty, "Option").is_some_and(|args| args.len() == 1)
}

/// One `#[realtime_handler]` impl block.
pub(crate) struct Handler {
    /// The block as it is emitted again: markers removed, argument
    /// attributes moved to the enum.
    pub(crate) item: ItemImpl,
    /// The name of the implementing type (`Chat` in `impl Chat`).
    pub(crate) self_ident: Ident,
    pub(crate) options: HandlerOptions,
    /// Message methods that lowered cleanly, in source order.
    pub(crate) messages: Vec<MessageMethod>,
    /// Hooks that lowered cleanly, in source order.
    pub(crate) hooks: Vec<Hook>,
    /// The context of every method and hook that lowered cleanly and takes
    /// one, in source order, with the method's name.
    pub(crate) contexts: Vec<(Ident, ContextType)>,
    /// Methods marked `#[direct]` or `#[broadcast]`, including those that
    /// failed to lower: "no message method" must not fire because of them.
    pub(crate) marked_messages: usize,
    /// What could be read even from methods that failed, so that the
    /// stand-ins emitted on errors have the user's types.
    pub(crate) seen: Seen,
}

/// Types read from every marked method, whether or not it lowered.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) context: Option<ContextType>,
    pub(crate) event: Option<Type>,
}

/// `#[direct]` or `#[broadcast]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Direct,
    Broadcast,
}

impl MessageKind {
    /// The kind of message method a marker makes, if it makes one.
    pub(crate) fn of(marker: Marker) -> Option<Self> {
        [Self::Direct, Self::Broadcast]
            .into_iter()
            .find(|kind| kind.marker() == marker)
    }

    pub(crate) fn marker(self) -> Marker {
        match self {
            Self::Direct => Marker::Direct,
            Self::Broadcast => Marker::Broadcast,
        }
    }
}

/// A `#[direct]` or `#[broadcast]` method.
pub(crate) struct MessageMethod {
    pub(crate) kind: MessageKind,
    /// The method's name.
    pub(crate) ident: Ident,
    /// The `type` of its frames.
    pub(crate) wire: String,
    /// Where the wire name was written: the `name = "..."` literal, or the
    /// method's name.
    pub(crate) wire_span: Span,
    /// Its variant in the client-message enum.
    pub(crate) variant: Ident,
    /// The method's doc comments, copied to the variant.
    pub(crate) docs: Vec<Attribute>,
    /// Whether the method takes the context after `&self`.
    pub(crate) takes_context: bool,
    /// The named arguments, which become the variant's fields.
    pub(crate) args: Vec<Arg>,
    pub(crate) output: Output,
}

/// A named argument of a message method.
pub(crate) struct Arg {
    pub(crate) ident: Ident,
    /// The type, as the user wrote it (spans kept).
    pub(crate) ty: Type,
    /// Doc comments and `#[serde(...)]` attributes, for the field.
    pub(crate) attrs: Vec<Attribute>,
}

/// What a message method returns.
pub(crate) enum Output {
    /// `Result<T, E>` of a direct method: `T` is the reply.
    Reply { reply: Type, result: Type },
    /// `Result<E, _>` or `Result<Option<E>, _>` of a broadcast method.
    Event {
        event: Type,
        optional: bool,
        result: Type,
    },
}

impl Output {
    /// The whole return type, for spans.
    pub(crate) fn result(&self) -> &Type {
        match self {
            Self::Reply { result, .. } | Self::Event { result, .. } => result,
        }
    }
}

/// `&Context<S, U>`: the state and user types.
#[derive(Clone)]
pub(crate) struct ContextType {
    pub(crate) state: Type,
    pub(crate) user: Type,
}

/// A lifecycle or authorization hook.
pub(crate) struct Hook {
    /// `OnConnect`, `OnDisconnect`, `OnJoin`, `OnLeave` or `AuthorizeTopic`.
    pub(crate) marker: Marker,
    pub(crate) ident: Ident,
    /// The marker attribute, for spans.
    pub(crate) attr: Attribute,
    /// Whether a hook other than `authorize_topic` takes the context.
    pub(crate) takes_context: bool,
    /// The state and user types an `authorize_topic` hook takes by reference.
    pub(crate) authorize: Option<ContextType>,
}

impl Handler {
    /// Lowers `#[realtime_handler(args)]` on `input`. `Err` carries what to
    /// emit as it is (the errors are in `diag`): the input was not an
    /// inherent impl block of a named type.
    pub(crate) fn lower(
        diag: &mut Diagnostics,
        args: TokenStream,
        input: TokenStream,
    ) -> Result<Self, TokenStream> {
        let options = HandlerOptions::parse(diag, args);
        let item: Item = match syn::parse2(input.clone()) {
            Ok(item) => item,
            Err(error) => {
                diag.push(error);
                return Err(input);
            }
        };
        let mut item = match item {
            Item::Impl(item) => item,
            other => {
                not_an_impl(diag, &other);
                return Err(input);
            }
        };
        if let Some((_, trait_path, _)) = &item.trait_ {
            diag.on(
                trait_path,
                format!(
                    "`#[realtime_handler]` writes the `MessageHandler` impl itself; \
                     put it on the inherent block `impl {} {{ ... }}`",
                    names::render(&item.self_ty)
                ),
            );
            strip_markers(&mut item);
            return Err(item.into_token_stream());
        }
        let Some(self_ident) = type_ident(&item.self_ty).cloned() else {
            diag.on(
                &item.self_ty,
                "`#[realtime_handler]` needs a named type, as in `impl Chat { ... }`",
            );
            strip_markers(&mut item);
            return Err(item.into_token_stream());
        };

        let items = std::mem::take(&mut item.items);
        let mut handler = Self {
            item,
            self_ident,
            options,
            messages: Vec::new(),
            hooks: Vec::new(),
            contexts: Vec::new(),
            marked_messages: 0,
            seen: Seen::default(),
        };
        for mut impl_item in items {
            handler.lower_item(diag, &mut impl_item);
            handler.item.items.push(impl_item);
        }
        Ok(handler)
    }

    fn lower_item(&mut self, diag: &mut Diagnostics, impl_item: &mut ImplItem) {
        let ImplItem::Fn(func) = impl_item else {
            if let Some(attrs) = item_attrs(impl_item) {
                if let Some((marker, attr)) = attr::find(attrs) {
                    diag.on(
                        attr,
                        format!(
                            "`#[{}]` goes on a method of the block; remove it from this item",
                            marker.name()
                        ),
                    );
                }
                let _ = attr::take(&mut Diagnostics::default(), attrs);
            }
            return;
        };
        let marked = attr::take(diag, &mut func.attrs);
        // Parameters cannot carry doc comments or `#[serde]`: they move to
        // the enum's fields, whatever else is wrong with the method.
        let arg_attrs = match marked {
            Marked::Unmarked => return,
            _ => take_arg_attrs(&mut func.sig),
        };
        let marker_use = match marked {
            Marked::Unmarked => return,
            Marked::One(marker_use) => *marker_use,
            Marked::Broken(marker) => {
                if marker.is_message() {
                    self.marked_messages += 1;
                }
                self.see(&func.sig, None);
                return;
            }
        };
        match MessageKind::of(marker_use.marker) {
            Some(kind) => {
                self.marked_messages += 1;
                self.see(&func.sig, Some(kind));
                if let Some(method) = lower_message(diag, kind, &marker_use, func, arg_attrs) {
                    if method.takes_context
                        && let Some(ctx) = first_context(&func.sig)
                    {
                        self.contexts.push((method.ident.clone(), ctx));
                    }
                    self.messages.push(method);
                }
            }
            None => {
                self.see(&func.sig, None);
                if let Some(hook) = lower_hook(diag, marker_use, func) {
                    if hook.takes_context
                        && let Some(ctx) = first_context(&func.sig)
                    {
                        self.contexts.push((hook.ident.clone(), ctx));
                    }
                    self.hooks.push(hook);
                }
            }
        }
    }

    /// Records the context and event types of a marked method, even one
    /// that fails to lower.
    fn see(&mut self, sig: &Signature, kind: Option<MessageKind>) {
        if self.seen.context.is_none() {
            self.seen.context = first_context(sig);
        }
        if kind == Some(MessageKind::Broadcast)
            && self.seen.event.is_none()
            && let ReturnType::Type(_, ty) = &sig.output
            && let Some(ok) = result_ok(ty)
        {
            self.seen.event = Some(event_of(ok).0.clone());
        }
    }

    /// The handler's state and user types: the options, else the first
    /// context. `None` only when `check` has reported it.
    pub(crate) fn state_and_user(&self) -> Option<(&Type, &Type)> {
        let first = self.contexts.first().map(|(_, ctx)| ctx);
        let state = self
            .options
            .state
            .as_ref()
            .or_else(|| first.map(|ctx| &ctx.state))?;
        let user = self
            .options
            .user
            .as_ref()
            .or_else(|| first.map(|ctx| &ctx.user))?;
        Some((state, user))
    }

    /// The event type of the broadcast methods, if there is one.
    pub(crate) fn event_type(&self) -> Option<&Type> {
        self.messages.iter().find_map(|m| match &m.output {
            Output::Event { event, .. } => Some(event),
            Output::Reply { .. } => None,
        })
    }

    /// The hook with this marker, if the block has one.
    pub(crate) fn hook(&self, marker: Marker) -> Option<&Hook> {
        self.hooks.iter().find(|hook| hook.marker == marker)
    }
}

/// Removes doc comments and `#[serde(...)]` from every typed parameter and
/// returns them, one list per parameter.
fn take_arg_attrs(sig: &mut Signature) -> Vec<Vec<Attribute>> {
    sig.inputs
        .iter_mut()
        .filter_map(|input| match input {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        })
        .map(|typed| {
            let (moved, kept) = std::mem::take(&mut typed.attrs)
                .into_iter()
                .partition(|attr| attr.path().is_ident("doc") || attr.path().is_ident("serde"));
            typed.attrs = kept;
            moved
        })
        .collect()
}

fn item_attrs(item: &mut ImplItem) -> Option<&mut Vec<Attribute>> {
    match item {
        ImplItem::Const(item) => Some(&mut item.attrs),
        ImplItem::Type(item) => Some(&mut item.attrs),
        ImplItem::Macro(item) => Some(&mut item.attrs),
        ImplItem::Fn(item) => Some(&mut item.attrs),
        _ => None,
    }
}

/// Removes our markers from a block that is given back as it was, so that
/// they do not add errors of their own to the one reported.
fn strip_markers(item: &mut ItemImpl) {
    let mut ignored = Diagnostics::default();
    for impl_item in &mut item.items {
        if let Some(attrs) = item_attrs(impl_item) {
            let _ = attr::take(&mut ignored, attrs);
        }
        if let ImplItem::Fn(func) = impl_item {
            let _ = take_arg_attrs(&mut func.sig);
        }
    }
}

/// Reports `#[realtime_handler]` on an item that is not an impl block,
/// underlining its keyword and name.
fn not_an_impl(diag: &mut Diagnostics, item: &Item) {
    fn head(keyword: &impl ToTokens, name: &Ident) -> TokenStream {
        quote!(#keyword #name)
    }
    let (what, head): (&str, TokenStream) = match item {
        Item::Struct(s) => ("a struct", head(&s.struct_token, &s.ident)),
        Item::Enum(e) => ("an enum", head(&e.enum_token, &e.ident)),
        Item::Union(u) => ("a union", head(&u.union_token, &u.ident)),
        Item::Fn(f) => ("a function", head(&f.sig.fn_token, &f.sig.ident)),
        Item::Trait(t) => ("a trait", head(&t.trait_token, &t.ident)),
        Item::Mod(m) => ("a module", head(&m.mod_token, &m.ident)),
        Item::Const(c) => ("a constant", head(&c.const_token, &c.ident)),
        Item::Static(s) => ("a static", head(&s.static_token, &s.ident)),
        Item::Type(t) => ("a type alias", head(&t.type_token, &t.ident)),
        Item::Use(u) => ("a `use` declaration", u.use_token.into_token_stream()),
        other => ("another kind of item", other.into_token_stream()),
    };
    diag.on(
        head,
        format!("`#[realtime_handler]` goes on an `impl` block; found {what}"),
    );
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    use super::*;

    /// Lowers only (no cross-method checks); returns the model, if the
    /// input was an inherent impl block, and every message.
    fn lower(args: TokenStream, input: TokenStream) -> (Option<Handler>, Vec<String>) {
        let mut diag = Diagnostics::default();
        let handler = Handler::lower(&mut diag, args, input).ok();
        (handler, diag.messages())
    }

    fn names_of(handler: &Handler) -> Vec<String> {
        handler
            .messages
            .iter()
            .map(|m| m.ident.to_string())
            .collect()
    }

    #[test]
    fn a_clean_block_lowers_to_the_model() {
        let (handler, errors) = lower(
            quote!(),
            quote! {
                impl Chat {
                    /// Past lines.
                    #[direct]
                    async fn history(&self, ctx: &Context<App, UserId>, limit: u32)
                        -> Result<Vec<Line>, HandlerError> { todo!() }
                    #[broadcast(name = "talk")]
                    async fn say(&self, ctx: &realtime::Context<App, UserId>,
                        /// What to say.
                        #[serde(default)] text: String)
                        -> Result<Option<ChatEvent>, HandlerError> { todo!() }
                    #[direct]
                    async fn ping(&self) -> Result<(), HandlerError> { Ok(()) }
                    #[on_connect]
                    async fn hello(&self, ctx: &Context<App, UserId>) {}
                    #[authorize_topic]
                    async fn may(&self, state: &App, user: &UserId, topic: &str) -> bool { true }
                    fn helper(&self) {}
                }
            },
        );
        assert!(errors.is_empty(), "{errors:?}");
        let handler = handler.unwrap();
        assert_eq!(names_of(&handler), ["history", "say", "ping"]);
        let [history, say, ping] = &handler.messages[..] else {
            panic!("three methods")
        };
        assert_eq!(history.kind, MessageKind::Direct);
        assert_eq!(history.wire, "history");
        assert_eq!(history.docs.len(), 1);
        assert!(history.takes_context);
        assert_eq!(history.args.len(), 1);
        assert!(matches!(&history.output, Output::Reply { reply, .. }
            if names::render(reply) == "Vec<Line>"));
        assert_eq!(say.wire, "talk");
        assert_eq!(say.variant.to_string(), "Say");
        assert_eq!(
            say.args[0].attrs.len(),
            2,
            "doc and serde move to the field"
        );
        assert!(
            matches!(&say.output, Output::Event { event, optional: true, .. }
            if names::render(event) == "ChatEvent")
        );
        assert!(!ping.takes_context);
        assert!(ping.args.is_empty());
        assert_eq!(handler.hooks.len(), 2);
        let (state, user) = handler.state_and_user().unwrap();
        assert_eq!(
            (names::render(state), names::render(user)),
            ("App".into(), "UserId".into())
        );
        assert_eq!(names::render(handler.event_type().unwrap()), "ChatEvent");

        // The emitted block has no marker and no attribute on parameters.
        let emitted = quote::ToTokens::to_token_stream(&handler.item).to_string();
        for gone in [
            "direct",
            "broadcast",
            "on_connect",
            "authorize_topic",
            "serde",
            "What to say",
        ] {
            assert!(!emitted.contains(gone), "`{gone}` left in {emitted}");
        }
        assert!(emitted.contains("Past lines"), "method docs stay");
        assert!(emitted.contains("fn helper"));
    }

    #[test]
    fn not_an_inherent_impl() {
        let (handler, errors) = lower(
            quote!(),
            quote!(
                struct Chat;
            ),
        );
        assert!(handler.is_none());
        assert_eq!(
            errors,
            ["`#[realtime_handler]` goes on an `impl` block; found a struct"]
        );
        let (handler, errors) = lower(quote!(), quote!(impl MessageHandler for Chat {}));
        assert!(handler.is_none());
        assert_eq!(
            errors,
            [
                "`#[realtime_handler]` writes the `MessageHandler` impl itself; put it on the \
              inherent block `impl Chat { ... }`"
            ]
        );
    }

    #[test]
    fn marker_on_a_non_method_is_reported_and_removed() {
        let (handler, errors) = lower(
            quote!(state = App, user = UserId),
            quote! {
                impl Chat {
                    #[direct] const X: u8 = 1;
                    #[direct] async fn a(&self) -> Result<u8, HandlerError> {}
                }
            },
        );
        assert_eq!(
            errors,
            ["`#[direct]` goes on a method of the block; remove it from this item"]
        );
        let emitted = quote::ToTokens::to_token_stream(&handler.unwrap().item).to_string();
        assert!(!emitted.contains("direct"));
    }
}
