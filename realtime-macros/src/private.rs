//! The one place that spells the path of the runtime's hidden re-exports.

use proc_macro2::TokenStream;
use quote::quote;

/// `::realtime::__private`: serde and axum as the runtime re-exports them,
/// so an application depends on `realtime` alone and never needs serde or
/// axum in its own Cargo.toml.
pub(crate) fn path() -> TokenStream {
    quote!(::realtime::__private)
}

/// The same path as a string, for `#[serde(crate = "...")]`.
pub(crate) const SERDE_CRATE: &str = "::realtime::__private::serde";

/// The function that reads each message argument (see
/// `expand::argument_deserializer`), as a path string for
/// `#[serde(deserialize_with = "...")]`.
pub(crate) const DESERIALIZE_ARG: &str = "::realtime::__private::deserialize_arg";

/// schemars as the runtime re-exports it (with its `describe` feature), for
/// `#[schemars(crate = "...")]`.
pub(crate) const SCHEMARS_CRATE: &str = "::realtime::__private::schemars";
