//! Implementation detail of `realtime`; use it through `realtime`, which
//! re-exports these attributes and documents them (`realtime::realtime_handler`).
//!
//! Each entry point converts to `proc_macro2` and hands over to `expand`.
//! The entry points' own docs are one line: `realtime` re-exports them with
//! the user documentation in front of it.

mod ast;
mod attr;
mod check;
mod diagnostics;
mod expand;
mod fallback;
mod names;
mod private;

use proc_macro::TokenStream;

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn realtime_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::realtime_handler(args.into(), input.into()).into()
}

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn direct(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_marker("direct", &input.into()).into()
}

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn broadcast(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_marker("broadcast", &input.into()).into()
}

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn on_connect(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_marker("on_connect", &input.into()).into()
}

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn on_disconnect(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_marker("on_disconnect", &input.into()).into()
}

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn on_join(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_marker("on_join", &input.into()).into()
}

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn on_leave(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_marker("on_leave", &input.into()).into()
}

/// Implemented in `realtime-macros`; documented where `realtime` re-exports it.
#[proc_macro_attribute]
pub fn authorize_topic(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_marker("authorize_topic", &input.into()).into()
}
