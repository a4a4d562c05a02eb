//! The expansion of `#[realtime_handler]` compiles without a warning in a
//! crate that denies `warnings` and `missing_docs`, because generated code
//! lands in the user's crate and must not break a build that denies them;
//! clippy with `-D warnings` covers it too, as CI runs it on every target.
#![deny(warnings, missing_docs)]

use realtime::auth::validate_with;
use realtime::prelude::*;
use realtime::{MemoryBroker, Service};
use serde::{Deserialize, Serialize};

/// The application state.
#[derive(Debug, Default)]
pub struct AppState {
    /// Lines said so far.
    pub lines: std::sync::Mutex<Vec<String>>,
}

/// What subscribers receive.
#[derive(Debug, Clone, Serialize)]
pub enum ChatEvent {
    /// Someone said something.
    Said {
        /// Who.
        from: String,
        /// What.
        text: String,
    },
    /// Someone is typing.
    Typing(String),
}

/// A point, to show a struct argument.
#[derive(Debug, Deserialize)]
pub struct Point {
    /// Across.
    pub x: i32,
    /// Down.
    pub y: i32,
}

/// A handler with every kind of method.
#[derive(Debug)]
pub struct Chat;

#[realtime_handler(path = "/chat/{topic}")]
impl Chat {
    /// The last `limit` lines.
    #[direct]
    async fn history(
        &self,
        ctx: &Context<AppState, String>,
        limit: usize,
        /// Skip this many lines from the end.
        #[serde(default)]
        skip: usize,
    ) -> Result<Vec<String>, HandlerError> {
        let lines = ctx.state().lines.lock().expect("not poisoned");
        Ok(lines.iter().rev().skip(skip).take(limit).cloned().collect())
    }

    /// Answers `"pong"`.
    #[direct(name = "ping")]
    async fn ping_pong(&self) -> Result<&'static str, HandlerError> {
        Ok("pong")
    }

    /// Where a point would land.
    #[direct]
    async fn locate(&self, point: Point, zoom: Option<u8>) -> Result<i64, HandlerError> {
        Ok(i64::from(point.x) * i64::from(point.y) * i64::from(zoom.unwrap_or(1)))
    }

    /// Says something to the room.
    #[broadcast]
    async fn say(
        &self,
        ctx: &Context<AppState, String>,
        #[serde(rename = "body")] text: String,
    ) -> Result<ChatEvent, HandlerError> {
        ctx.state()
            .lines
            .lock()
            .expect("not poisoned")
            .push(text.clone());
        Ok(ChatEvent::Said {
            from: ctx.user_id().clone(),
            text,
        })
    }

    /// Tells the room someone types, at most once in a while.
    #[broadcast(name = "typing")]
    async fn is_typing(
        &self,
        ctx: &Context<AppState, String>,
    ) -> Result<Option<ChatEvent>, HandlerError> {
        Ok(Some(ChatEvent::Typing(ctx.user_id().clone())))
    }

    /// Greets the newcomer.
    #[on_connect]
    async fn joined(&self, ctx: &Context<AppState, String>) {
        let _ = ctx.send(&"welcome");
    }

    /// Nothing to clean up.
    #[on_disconnect]
    async fn left(&self) {}

    /// Anyone but `"mallory"` may follow any topic.
    #[authorize_topic]
    async fn may_follow(&self, state: &AppState, user: &String, topic: &str) -> bool {
        let _ = (state, topic);
        user != "mallory"
    }

    /// An ordinary method stays ordinary.
    fn name(&self) -> String {
        format!("{self:?}")
    }
}

mod private {
    //! A handler that is private, undocumented and names its types in the
    //! attribute.
    use realtime::prelude::*;

    pub(crate) struct Quiet;

    #[realtime_handler(state = (), user = u64)]
    impl Quiet {
        #[direct]
        async fn add(&self, a: u32, b: u32) -> Result<u32, HandlerError> {
            a.checked_add(b)
                .ok_or_else(|| HandlerError::bad_request("overflow"))
        }
    }
}

mod shadowed {
    //! A handler in a module that shadows the names generated code could
    //! trip on: `Result` (a one-parameter alias), `core`, `serde`, `axum`,
    //! and a generic parameter named `B`, like the broker of `router`.
    use realtime::prelude::*;

    type Result<T> = ::core::result::Result<T, HandlerError>;

    mod core {}
    mod serde {}
    mod axum {}

    pub(crate) struct Holder<B> {
        pub(crate) value: B,
    }

    #[realtime_handler(state = (), user = u64)]
    impl<B: Clone + ::serde::Serialize + Send + Sync + 'static> Holder<B> {
        #[direct]
        async fn get(&self) -> Result<B> {
            Ok(self.value.clone())
        }

        #[broadcast]
        async fn echo(&self, msg: String, ctx: u8) -> Result<(String, u8)> {
            Ok((msg, ctx))
        }
    }
}

#[test]
fn handlers_build_into_routers() {
    let service = Service::builder(
        Chat,
        AppState::default(),
        validate_with(|t: &str| Ok(t.to_owned())),
    )
    .build()
    .expect("default config");
    assert_eq!(service.handler().name(), "Chat");
    let _: axum::Router = Chat::router(service);
    let _: axum::routing::MethodRouter<Service<Chat, MemoryBroker>> = Chat::route();

    let quiet = Service::builder(private::Quiet, (), validate_with(|_: &str| Ok(7_u64)))
        .build()
        .expect("default config");
    let _: axum::Router = private::Quiet::router(quiet);

    let holder = shadowed::Holder { value: 3_u8 };
    let holder = Service::builder(holder, (), validate_with(|_: &str| Ok(7_u64)))
        .build()
        .expect("default config");
    let _: axum::Router = shadowed::Holder::router(holder);
}
