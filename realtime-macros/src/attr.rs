//! Attribute parsing: the options of `#[realtime_handler(...)]` and the
//! markers on methods (`#[direct]`, `#[broadcast]` and the hooks). The known
//! options are listed here and nowhere else.

use proc_macro2::{TokenStream, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, Expr, Lit, LitStr, Meta, Type};

use crate::diagnostics::Diagnostics;
use crate::names;

/// The route used when `path` is not given.
pub(crate) const DEFAULT_PATH: &str = "/ws/{topic}";

/// The options of `#[realtime_handler(...)]`.
#[derive(Default)]
pub(crate) struct HandlerOptions {
    /// `path = "/ws/{topic}"`: the route of `router()`.
    pub(crate) path: Option<LitStr>,
    /// `state = AppState`: the state type, for handlers whose methods take no
    /// context.
    pub(crate) state: Option<Type>,
    /// `user = UserId`: the user type, likewise.
    pub(crate) user: Option<Type>,
    /// `serialize`: the client-message enum also derives `Serialize`, so
    /// that tests and Rust clients build frames from it. Opt-in, because it
    /// asks every argument type to be `Serialize` too.
    pub(crate) serialize: bool,
    /// `describe`: the client-message enum also derives `JsonSchema`, and
    /// the type gets `describe()`, the description generated clients and
    /// documents are written from. Opt-in: it asks every argument, reply and
    /// event type to derive `JsonSchema`, and the runtime's `describe`
    /// feature.
    pub(crate) describe: bool,
}

const HANDLER_OPTIONS: &str =
    "`path = \"...\"`, `state = Type`, `user = Type`, `serialize` and `describe`";

impl HandlerOptions {
    /// Parses the arguments of `#[realtime_handler(...)]`, recording every
    /// problem and keeping the options that parsed.
    pub(crate) fn parse(diag: &mut Diagnostics, args: TokenStream) -> Self {
        let mut options = Self::default();
        let parser = syn::meta::parser(|meta| {
            let key = names::render(&meta.path);
            match key.as_str() {
                "path" => {
                    let value = meta.value()?;
                    let lit = string_value(diag, value, "path", DEFAULT_PATH)?;
                    if let Some(lit) = lit {
                        check_path(diag, &lit);
                        set_once(diag, &meta, &mut options.path, lit);
                    }
                }
                "state" | "user" => {
                    let ty: Type = meta.value()?.parse()?;
                    let slot = if key == "state" {
                        &mut options.state
                    } else {
                        &mut options.user
                    };
                    set_once(diag, &meta, slot, ty);
                }
                "serialize" | "describe" => {
                    let flag = if key == "serialize" {
                        &mut options.serialize
                    } else {
                        &mut options.describe
                    };
                    if *flag {
                        diag.on(&meta.path, format!("duplicate `{key}` option"));
                    }
                    *flag = true;
                    if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                        diag.on(
                            &meta.path,
                            format!("`{key}` takes no value; write `{key}` alone"),
                        );
                        skip_value(meta.input)?;
                    }
                }
                _ => {
                    diag.on(
                        &meta.path,
                        format!(
                            "unknown option `{key}` in `#[realtime_handler(...)]`; \
                             the options are {HANDLER_OPTIONS}"
                        ),
                    );
                    skip_value(meta.input)?;
                }
            }
            Ok(())
        });
        if let Err(error) = parser.parse2(args) {
            diag.push(error);
        }
        options
    }
}

fn check_path(diag: &mut Diagnostics, lit: &LitStr) {
    let path = lit.value();
    if !path.starts_with('/') {
        diag.on(
            lit,
            format!("the route must start with `/`; write `path = \"/{path}\"`"),
        );
    } else if !path.contains("{topic}") {
        diag.on(
            lit,
            format!(
                "the route needs a `{{topic}}` segment, the topic a client subscribes to; \
                 write `path = \"{}/{{topic}}\"`",
                path.trim_end_matches('/')
            ),
        );
    }
}

/// One of the attributes `#[realtime_handler]` reads on a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Marker {
    Direct,
    Broadcast,
    OnConnect,
    OnDisconnect,
    OnJoin,
    OnLeave,
    AuthorizeTopic,
}

impl Marker {
    const ALL: [Self; 7] = [
        Self::Direct,
        Self::Broadcast,
        Self::OnConnect,
        Self::OnDisconnect,
        Self::OnJoin,
        Self::OnLeave,
        Self::AuthorizeTopic,
    ];

    /// The attribute's name, as written between `#[` and `]`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Broadcast => "broadcast",
            Self::OnConnect => "on_connect",
            Self::OnDisconnect => "on_disconnect",
            Self::OnJoin => "on_join",
            Self::OnLeave => "on_leave",
            Self::AuthorizeTopic => "authorize_topic",
        }
    }

    /// Whether the marker makes a message method (rather than a hook).
    pub(crate) fn is_message(self) -> bool {
        matches!(self, Self::Direct | Self::Broadcast)
    }

    /// The marker an attribute is, if any: `#[direct]`, `#[realtime::direct]`,
    /// `#[::realtime::prelude::direct]` and the like.
    fn of(attr: &Attribute) -> Option<Self> {
        let path = attr.path();
        let last = path.segments.last()?;
        let from_us = path.segments.len() == 1
            || path
                .segments
                .first()
                .is_some_and(|first| first.ident == "realtime");
        if !from_us || !last.arguments.is_none() {
            return None;
        }
        Self::ALL
            .into_iter()
            .find(|marker| last.ident == marker.name())
    }
}

/// A marker found on a method, with its options.
pub(crate) struct MarkerUse {
    pub(crate) marker: Marker,
    /// The whole attribute, `#[direct(name = "say")]`, for spans.
    pub(crate) attr: Attribute,
    /// `name = "..."` of a message marker.
    pub(crate) name: Option<LitStr>,
}

/// What [`take`] found on one item.
pub(crate) enum Marked {
    /// No marker: an ordinary item.
    Unmarked,
    /// Exactly one marker, whose options parsed.
    One(Box<MarkerUse>),
    /// A marker whose options did not parse, or markers that exclude each
    /// other; the errors are recorded. Carries the first marker.
    Broken(Marker),
}

/// Removes every marker from `attrs` and reads them.
pub(crate) fn take(diag: &mut Diagnostics, attrs: &mut Vec<Attribute>) -> Marked {
    let mut found: Vec<Attribute> = Vec::new();
    attrs.retain(|attr| {
        if Marker::of(attr).is_some() {
            found.push(attr.clone());
            false
        } else {
            true
        }
    });
    let Some(first) = found.first() else {
        return Marked::Unmarked;
    };
    let first_marker = Marker::of(first).expect("kept because it is a marker");
    let before = diag.count();
    let mut kept: Option<MarkerUse> = None;
    for attr in found {
        let marker = Marker::of(&attr).expect("kept because it is a marker");
        let name = marker_options(diag, &attr, marker);
        match &kept {
            None => {
                kept = Some(MarkerUse { marker, attr, name });
            }
            Some(earlier) if earlier.marker == marker => {
                diag.on(&attr, format!("duplicate `#[{}]`", marker.name()));
            }
            Some(earlier) if earlier.marker.is_message() && marker.is_message() => {
                diag.on(
                    &attr,
                    "a method is either `#[direct]` or `#[broadcast]`; remove one",
                );
            }
            Some(earlier) => {
                diag.on(
                    &attr,
                    format!(
                        "a method takes one marker and this one already has `#[{}]`; \
                         remove `#[{}]` or move it to another method",
                        earlier.marker.name(),
                        marker.name()
                    ),
                );
            }
        }
    }
    match kept {
        Some(marker) if diag.count() == before => Marked::One(Box::new(marker)),
        _ => Marked::Broken(first_marker),
    }
}

/// Reads the options of one marker; returns `name = "..."` if given.
fn marker_options(diag: &mut Diagnostics, attr: &Attribute, marker: Marker) -> Option<LitStr> {
    let list = match &attr.meta {
        Meta::Path(_) => return None,
        Meta::List(list) => list,
        Meta::NameValue(pair) => {
            let hint = if marker.is_message() {
                format!("; write `#[{}(name = \"...\")]`", marker.name())
            } else {
                String::new()
            };
            diag.on(
                &pair.value,
                format!("`#[{}]` takes no value after `=`{hint}", marker.name()),
            );
            return None;
        }
    };
    if !marker.is_message() {
        if !list.tokens.is_empty() {
            diag.on(
                &list.tokens,
                format!("`#[{0}]` takes no options; write `#[{0}]`", marker.name()),
            );
        }
        return None;
    }
    let mut name = None;
    let result = list.parse_nested_meta(|meta| {
        if meta.path.is_ident("name") {
            let value = meta.value()?;
            if let Some(lit) = string_value(diag, value, "name", "say")? {
                check_wire_name(diag, &lit);
                set_once(diag, &meta, &mut name, lit);
            }
        } else {
            diag.on(
                &meta.path,
                format!(
                    "unknown option `{}` in `#[{}(...)]`; the only option is `name = \"...\"`",
                    names::render(&meta.path),
                    marker.name()
                ),
            );
            skip_value(meta.input)?;
        }
        Ok(())
    });
    if let Err(error) = result {
        diag.push(error);
    }
    name
}

fn check_wire_name(diag: &mut Diagnostics, lit: &LitStr) {
    let wire = lit.value();
    if names::is_reserved(&wire) {
        let bare = wire.trim_start_matches(names::RESERVED_PREFIX);
        let instead = if bare.is_empty() { "say" } else { bare };
        diag.on(
            lit,
            format!(
                "wire names starting with `$` are reserved for control messages such as \
                 `$join`; write `name = \"{instead}\"`"
            ),
        );
    }
}

/// A string literal option value; records an error (and returns `None`) for
/// anything else, including an empty string.
fn string_value(
    diag: &mut Diagnostics,
    input: ParseStream<'_>,
    key: &str,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    let expr: Expr = input.parse()?;
    if let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(lit), ..
    }) = &expr
        && !lit.value().is_empty()
    {
        return Ok(Some(lit.clone()));
    }
    diag.on(
        &expr,
        format!("`{key}` takes a non-empty string literal, as in `{key} = \"{example}\"`"),
    );
    Ok(None)
}

/// Stores an option's value, or reports the repeat.
fn set_once<T>(diag: &mut Diagnostics, meta: &ParseNestedMeta<'_>, slot: &mut Option<T>, value: T) {
    if slot.is_some() {
        diag.on(
            &meta.path,
            format!("duplicate `{}` option", names::render(&meta.path)),
        );
    } else {
        *slot = Some(value);
    }
}

/// Skips an unknown option's `= value`, up to the next comma, so the
/// options after it are still read.
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((token, next)) = rest.token_tree() {
            if matches!(&token, TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// The first marker among `attrs`, without removing anything.
pub(crate) fn find(attrs: &[Attribute]) -> Option<(Marker, &Attribute)> {
    attrs
        .iter()
        .find_map(|attr| Marker::of(attr).map(|marker| (marker, attr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn options(args: TokenStream) -> (HandlerOptions, Vec<String>) {
        let mut diag = Diagnostics::default();
        let options = HandlerOptions::parse(&mut diag, args);
        (options, diag.messages())
    }

    fn take_all(attrs: Vec<Attribute>) -> (Marked, Vec<Attribute>, Vec<String>) {
        let mut diag = Diagnostics::default();
        let mut attrs = attrs;
        let marked = take(&mut diag, &mut attrs);
        (marked, attrs, diag.messages())
    }

    #[test]
    fn handler_options_parse() {
        let (options, errors) =
            options(quote!(path = "/live/{topic}", state = AppState, user = u64));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(options.path.unwrap().value(), "/live/{topic}");
        assert_eq!(names::render(&options.state.unwrap()), "AppState");
        assert_eq!(names::render(&options.user.unwrap()), "u64");
    }

    #[test]
    fn serialize_is_a_flag() {
        let (flagged, errors) = options(quote!(serialize, user = u64));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(flagged.serialize);
        assert!(!options(quote!(user = u64)).0.serialize);

        let (valued, errors) = options(quote!(serialize = true, user = u64));
        assert_eq!(
            errors,
            ["`serialize` takes no value; write `serialize` alone"]
        );
        assert_eq!(names::render(&valued.user.unwrap()), "u64");
    }

    #[test]
    fn unknown_handler_option_lists_the_known_ones_and_reading_goes_on() {
        let (options, errors) = options(quote!(stat = AppState, user = u64));
        assert_eq!(
            errors,
            [
                "unknown option `stat` in `#[realtime_handler(...)]`; the options are \
              `path = \"...\"`, `state = Type`, `user = Type`, `serialize` and `describe`"
            ]
        );
        assert!(options.user.is_some());
    }

    #[test]
    fn path_needs_topic_and_slash() {
        let (_, errors) = options(quote!(path = "/ws"));
        assert_eq!(
            errors,
            [
                "the route needs a `{topic}` segment, the topic a client subscribes to; \
              write `path = \"/ws/{topic}\"`"
            ]
        );
        let (_, errors) = options(quote!(path = "ws/{topic}"));
        assert_eq!(
            errors,
            ["the route must start with `/`; write `path = \"/ws/{topic}\"`"]
        );
        let (_, errors) = options(quote!(path = 3));
        assert_eq!(
            errors,
            ["`path` takes a non-empty string literal, as in `path = \"/ws/{topic}\"`"]
        );
    }

    #[test]
    fn duplicate_option_is_reported_on_the_repeat() {
        let (options, errors) = options(quote!(state = A, state = B));
        assert_eq!(errors, ["duplicate `state` option"]);
        assert_eq!(names::render(&options.state.unwrap()), "A");
    }

    #[test]
    fn markers_are_found_by_name_or_by_path_and_removed() {
        for attr in [
            syn::parse_quote!(#[direct]),
            syn::parse_quote!(#[realtime::direct]),
            syn::parse_quote!(#[::realtime::prelude::direct]),
        ] {
            let (marked, left, errors) = take_all(vec![attr, syn::parse_quote!(#[inline])]);
            assert!(errors.is_empty());
            assert!(matches!(marked, Marked::One(used) if used.marker == Marker::Direct));
            assert_eq!(left.len(), 1);
        }
        let (marked, left, _) = take_all(vec![syn::parse_quote!(#[other::direct])]);
        assert!(matches!(marked, Marked::Unmarked));
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn name_option_is_read() {
        let (marked, _, errors) = take_all(vec![syn::parse_quote!(#[broadcast(name = "talk")])]);
        assert!(errors.is_empty());
        let Marked::One(used) = marked else {
            panic!("one marker")
        };
        assert_eq!(used.name.unwrap().value(), "talk");
    }

    #[test]
    fn marker_option_errors() {
        let cases: [(Attribute, &str); 6] = [
            (
                syn::parse_quote!(#[direct(nme = "x")]),
                "unknown option `nme` in `#[direct(...)]`; the only option is `name = \"...\"`",
            ),
            (
                syn::parse_quote!(#[direct(name = "")]),
                "`name` takes a non-empty string literal, as in `name = \"say\"`",
            ),
            (
                syn::parse_quote!(#[broadcast(name = say)]),
                "`name` takes a non-empty string literal, as in `name = \"say\"`",
            ),
            (
                syn::parse_quote!(#[direct(name = "$join")]),
                "wire names starting with `$` are reserved for control messages such as \
                 `$join`; write `name = \"join\"`",
            ),
            (
                syn::parse_quote!(#[on_connect(x)]),
                "`#[on_connect]` takes no options; write `#[on_connect]`",
            ),
            (
                syn::parse_quote!(#[direct(name = "a", name = "b")]),
                "duplicate `name` option",
            ),
        ];
        for (attr, expected) in cases {
            let (marked, _, errors) = take_all(vec![attr]);
            assert_eq!(errors, [expected]);
            assert!(matches!(marked, Marked::Broken(_)));
        }
    }

    #[test]
    fn two_markers_conflict_on_the_second() {
        let (marked, left, errors) = take_all(vec![
            syn::parse_quote!(#[direct]),
            syn::parse_quote!(#[broadcast]),
        ]);
        assert_eq!(
            errors,
            ["a method is either `#[direct]` or `#[broadcast]`; remove one"]
        );
        assert!(matches!(marked, Marked::Broken(Marker::Direct)));
        assert!(left.is_empty());

        let (_, _, errors) = take_all(vec![
            syn::parse_quote!(#[direct]),
            syn::parse_quote!(#[direct]),
        ]);
        assert_eq!(errors, ["duplicate `#[direct]`"]);

        let (_, _, errors) = take_all(vec![
            syn::parse_quote!(#[on_connect]),
            syn::parse_quote!(#[direct]),
        ]);
        assert_eq!(
            errors,
            [
                "a method takes one marker and this one already has `#[on_connect]`; \
              remove `#[direct]` or move it to another method"
            ]
        );
    }
}
