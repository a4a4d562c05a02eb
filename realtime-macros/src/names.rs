//! Names: wire names, the generated enum and its variants, and how types are
//! quoted back to the user in messages.

use proc_macro2::{Delimiter, Ident, Spacing, TokenStream, TokenTree};
use quote::ToTokens;

/// The prefix that marks built-in control messages (`$join`, `$leave`).
pub(crate) const RESERVED_PREFIX: char = '$';

/// Whether a wire name is reserved for control messages.
pub(crate) fn is_reserved(wire: &str) -> bool {
    wire.starts_with(RESERVED_PREFIX)
}

/// The default wire name of a method: its name in snake_case, without `r#`.
pub(crate) fn wire_name(method: &Ident) -> String {
    snake_case(&unraw(method))
}

/// The variant of the client-message enum for a method: `say_hello` becomes
/// `SayHello`. Spanned like the method name, so "go to definition" on the
/// variant lands on the method.
pub(crate) fn variant_ident(method: &Ident) -> Ident {
    let mut camel = upper_camel_case(&unraw(method));
    if camel.is_empty() || camel.starts_with(|c: char| c.is_ascii_digit()) {
        camel.insert(0, '_');
    }
    Ident::new(&camel, method.span())
}

/// `<Type>ClientMessage`, spanned like the type's name.
pub(crate) fn client_message_ident(self_ident: &Ident) -> Ident {
    Ident::new(
        &format!("{}ClientMessage", unraw(self_ident)),
        self_ident.span(),
    )
}

/// An identifier without its `r#` prefix.
pub(crate) fn unraw(ident: &Ident) -> String {
    let text = ident.to_string();
    match text.strip_prefix("r#") {
        Some(bare) => bare.to_owned(),
        None => text,
    }
}

fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let after_lower = prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit());
            // The last capital of an acronym starts a word: `HTTPRequest`.
            let ends_acronym =
                prev.is_some_and(char::is_uppercase) && next.is_some_and(|n| n.is_lowercase());
            if (after_lower || ends_acronym) && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn upper_camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().expect("empty parts are filtered out");
            first.to_uppercase().chain(chars).collect::<String>()
        })
        .collect()
}

/// Tokens as a user would write them (`Result<Vec<Line>, HandlerError>`),
/// for quoting the user's own types back in messages; `to_string` on tokens
/// spaces them out (`Result < Vec < Line > , HandlerError >`).
pub(crate) fn render(node: &impl ToTokens) -> String {
    let mut out = String::new();
    render_into(node.to_token_stream(), &mut out);
    out
}

fn render_into(tokens: TokenStream, out: &mut String) {
    let mut word_before = false;
    let mut tokens = tokens.into_iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            TokenTree::Ident(ident) => {
                if word_before {
                    out.push(' ');
                }
                out.push_str(&ident.to_string());
                word_before = true;
            }
            TokenTree::Literal(literal) => {
                if word_before {
                    out.push(' ');
                }
                out.push_str(&literal.to_string());
                word_before = true;
            }
            TokenTree::Punct(punct) => {
                let c = punct.as_char();
                let joint = punct.spacing() == Spacing::Joint;
                match c {
                    ',' | ';' => out.push_str(&format!("{c} ")),
                    ':' if joint => {
                        // `::`: the second colon follows right away.
                        out.push_str("::");
                        tokens.next();
                    }
                    ':' => out.push_str(": "),
                    '-' if joint => {
                        out.push_str(" -> ");
                        tokens.next();
                    }
                    '+' | '=' => out.push_str(&format!(" {c} ")),
                    '\'' => {
                        if word_before {
                            out.push(' ');
                        }
                        out.push('\'');
                        // The lifetime's name is the next ident; no space.
                        if let Some(TokenTree::Ident(name)) = tokens.next() {
                            out.push_str(&name.to_string());
                        }
                        word_before = true;
                        continue;
                    }
                    _ => out.push(c),
                }
                word_before = false;
            }
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{ ", " }"),
                    Delimiter::None => ("", ""),
                };
                if word_before && group.delimiter() == Delimiter::None {
                    out.push(' ');
                }
                out.push_str(open);
                render_into(group.stream(), out);
                out.push_str(close);
                word_before = group.delimiter() == Delimiter::None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::Span;

    fn ident(name: &str) -> Ident {
        syn::parse_str(name).unwrap()
    }

    #[test]
    fn wire_names_are_snake_case() {
        assert_eq!(wire_name(&ident("say")), "say");
        assert_eq!(wire_name(&ident("say_hello")), "say_hello");
        assert_eq!(wire_name(&ident("sayHello")), "say_hello");
        assert_eq!(wire_name(&ident("HTTPRequest")), "http_request");
        assert_eq!(wire_name(&ident("get2Rooms")), "get2_rooms");
        assert_eq!(wire_name(&ident("r#type")), "type");
        assert_eq!(wire_name(&ident("_hidden")), "_hidden");
    }

    #[test]
    fn variants_are_upper_camel_case() {
        assert_eq!(variant_ident(&ident("say")).to_string(), "Say");
        assert_eq!(variant_ident(&ident("say_hello")).to_string(), "SayHello");
        assert_eq!(variant_ident(&ident("r#type")).to_string(), "Type");
        assert_eq!(variant_ident(&ident("http2_get")).to_string(), "Http2Get");
        assert_eq!(variant_ident(&ident("_hidden")).to_string(), "Hidden");
        assert_eq!(variant_ident(&ident("a__b")).to_string(), "AB");
    }

    #[test]
    fn client_message_is_named_after_the_type() {
        let chat = Ident::new("Chat", Span::call_site());
        assert_eq!(client_message_ident(&chat).to_string(), "ChatClientMessage");
        assert_eq!(
            client_message_ident(&ident("r#Chat")).to_string(),
            "ChatClientMessage"
        );
    }

    #[test]
    fn dollar_names_are_reserved() {
        assert!(is_reserved("$join"));
        assert!(!is_reserved("join"));
        assert!(!is_reserved("jo$in"));
    }

    #[test]
    fn render_writes_types_as_users_do() {
        let cases: [(syn::Type, &str); 9] = [
            (
                syn::parse_quote!(Result<Vec<Line>, HandlerError>),
                "Result<Vec<Line>, HandlerError>",
            ),
            (
                syn::parse_quote!(&realtime::Context<AppState, UserId>),
                "&realtime::Context<AppState, UserId>",
            ),
            (syn::parse_quote!(&'a mut str), "&'a mut str"),
            (syn::parse_quote!((u8, u8)), "(u8, u8)"),
            (syn::parse_quote!([u8; 4]), "[u8; 4]"),
            (syn::parse_quote!(impl Trait + Send), "impl Trait + Send"),
            (
                syn::parse_quote!(Box<dyn Fn(u8) -> u8>),
                "Box<dyn Fn(u8) -> u8>",
            ),
            (
                syn::parse_quote!(::std::string::String),
                "::std::string::String",
            ),
            (
                syn::parse_quote!(impl Iterator<Item = u8>),
                "impl Iterator<Item = u8>",
            ),
        ];
        for (ty, expected) in cases {
            assert_eq!(render(&ty), expected);
        }
    }
}
