//! The shapes of types the lowering recognizes: the context, `Result`,
//! `Option`, `Self`.

use syn::{FnArg, GenericArgument, Ident, PatType, PathArguments, Signature, Type};

use super::ContextType;
use crate::names;

/// How a parameter's type relates to the context.
pub(super) enum ContextArg {
    /// `&Context<S, U>`.
    Context(Box<ContextType>),
    /// A context taken some other way, with the message saying how to fix it.
    Misspelled(String),
    /// Anything else: a message argument.
    Not,
}

pub(super) fn classify(ty: &Type) -> ContextArg {
    let (shared_ref, referent) = match ty {
        Type::Reference(reference) => (reference.mutability.is_none(), &*reference.elem),
        other => (false, other),
    };
    let Some(args) = generic_args(referent, "Context") else {
        return ContextArg::Not;
    };
    let [state, user] = args[..] else {
        return ContextArg::Not;
    };
    if shared_ref {
        ContextArg::Context(Box::new(ContextType {
            state: state.clone(),
            user: user.clone(),
        }))
    } else {
        ContextArg::Misspelled(format!(
            "the context is passed by shared reference; write `&{}`",
            names::render(referent)
        ))
    }
}

pub(super) fn first_context(sig: &Signature) -> Option<ContextType> {
    typed_inputs(sig).find_map(|input| match classify(&input.ty) {
        ContextArg::Context(ctx) => Some(*ctx),
        _ => None,
    })
}

/// The type arguments of `ty` when its last path segment is `name`:
/// `Result<T, E>` gives `[T, E]`.
pub(super) fn generic_args<'t>(ty: &'t Type, name: &str) -> Option<Vec<&'t Type>> {
    let ty = ungroup(ty);
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    (!types.is_empty()).then_some(types)
}

/// `T` of `Result<T, E>`.
pub(super) fn result_ok(ty: &Type) -> Option<&Type> {
    generic_args(ty, "Result").and_then(|args| args.first().copied())
}

/// A broadcast method's event: `E` of `Option<E>` with `true` (an event
/// that may not be sent), or the type itself with `false`.
pub(super) fn event_of(ok: &Type) -> (&Type, bool) {
    match generic_args(ok, "Option") {
        Some(args) if args.len() == 1 => (args[0], true),
        _ => (ok, false),
    }
}

pub(super) fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            other => return other,
        }
    }
}

pub(super) fn is_self(ty: &Type) -> bool {
    matches!(ungroup(ty), Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self"))
}

pub(super) fn type_ident(ty: &Type) -> Option<&Ident> {
    match ungroup(ty) {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last().map(|s| &s.ident),
        _ => None,
    }
}

pub(super) fn typed_inputs(sig: &Signature) -> impl Iterator<Item = &PatType> {
    sig.inputs.iter().filter_map(|input| match input {
        FnArg::Typed(typed) => Some(typed),
        FnArg::Receiver(_) => None,
    })
}
