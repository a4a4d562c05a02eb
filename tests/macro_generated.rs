//! What `#[realtime_handler]` generates, over real sockets: wire names and
//! renames, serde attributes on arguments, the hooks, topic authorization,
//! the `path` and `serialize` options, `route()` for manual wiring, and
//! handlers that name their types in the attribute.

use std::sync::{Arc, Mutex};

use realtime::auth::validate_with;
use realtime::prelude::*;
use realtime::testing::{DEADLINE, TestClient, TestServer};
use realtime::{MemoryBroker, Service};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;

/// What the hooks saw.
#[derive(Debug, Default)]
struct Journal {
    lines: Mutex<Vec<String>>,
    changed: Notify,
}

impl Journal {
    fn write(&self, line: String) {
        self.lines.lock().expect("not poisoned").push(line);
        self.changed.notify_waiters();
    }

    /// Waits until `line` is written; fails the test after the deadline.
    async fn wait_for(&self, line: &str) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if self
                    .lines
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .any(|l| l == line)
                {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("the journal never got `{line}`"));
    }
}

/// The event of [`Chat`].
#[derive(Debug, Serialize)]
struct Posted {
    by: String,
    body: String,
}

struct Chat;

#[realtime_handler(path = "/live/{topic}", serialize)]
impl Chat {
    /// Renamed on the wire.
    #[direct(name = "get-history")]
    async fn history(
        &self,
        ctx: &realtime::Context<Journal, String>,
        #[serde(default)] limit: usize,
    ) -> Result<Vec<String>, HandlerError> {
        let lines = ctx.state().lines.lock().expect("not poisoned");
        Ok(lines.iter().take(limit).cloned().collect())
    }

    /// A camelCase method name becomes snake_case on the wire.
    #[allow(non_snake_case)]
    #[direct]
    async fn whoAmI(&self, ctx: &Context<Journal, String>) -> Result<String, HandlerError> {
        Ok(ctx.user_id().clone())
    }

    /// An argument renamed by serde, and one with a default.
    #[broadcast(name = "post")]
    async fn say(
        &self,
        ctx: &Context<Journal, String>,
        #[serde(rename = "text")] body: String,
        #[serde(default = "default_times")] times: usize,
    ) -> Result<Posted, HandlerError> {
        Ok(Posted {
            by: ctx.user_id().clone(),
            body: body.repeat(times),
        })
    }

    /// Writes the newcomer into the journal and greets them.
    #[on_connect]
    async fn hello(&self, ctx: &Context<Journal, String>) {
        ctx.state().write(format!("connect {}", ctx.user_id()));
        let _ = ctx.send(&format!("welcome {}", ctx.user_id()));
    }

    /// Writes who left.
    #[on_disconnect]
    async fn bye(&self, ctx: &Context<Journal, String>) {
        ctx.state().write(format!("disconnect {}", ctx.user_id()));
    }

    /// Nobody may follow `secret`, and `mallory` may follow nothing.
    #[authorize_topic]
    async fn may_follow(&self, state: &Journal, user: &String, topic: &str) -> bool {
        state.write(format!("authorize {user} {topic}"));
        topic != "secret" && user != "mallory"
    }
}

fn default_times() -> usize {
    1
}

async fn chat_server() -> (TestServer, Arc<Journal>) {
    let journal = Arc::new(Journal::default());
    let service = Service::builder(
        Chat,
        Arc::clone(&journal),
        validate_with(|t: &str| Ok(t.to_owned())),
    )
    .build()
    .expect("the default config is valid");
    (TestServer::start(Chat::router(service)).await, journal)
}

/// With `serialize`, the generated enum writes the frames the server reads,
/// renames included: a test builds them with the compiler's help.
#[tokio::test]
async fn typed_frames_from_the_generated_enum() {
    let (server, _) = chat_server().await;
    let mut client = TestClient::connect(&server.ws_url("/live/lobby"), "alice")
        .await
        .expect("connect");
    let _welcome = client.recv().await;

    let post = ChatClientMessage::Say {
        body: "ab".into(),
        times: 2,
    };
    assert_eq!(
        serde_json::to_value(&post).expect("serializes"),
        json!({"type": "post", "data": {"text": "ab", "times": 2}})
    );
    assert_eq!(
        client.call(&post, 1).await,
        json!({"reply_to": 1, "ok": null})
    );
    assert_eq!(
        client.recv_event().await,
        json!({"topic": "lobby", "event": {"by": "alice", "body": "abab"}})
    );
    let history = ChatClientMessage::History { limit: 1 };
    assert_eq!(
        client.call(&history, 2).await,
        json!({"reply_to": 2, "ok": ["authorize alice lobby"]})
    );
}

#[tokio::test]
async fn wire_names_follow_renames_and_snake_case() {
    let (server, _) = chat_server().await;
    let mut client = TestClient::connect(&server.ws_url("/live/lobby"), "alice")
        .await
        .expect("connect");
    let _welcome = client.recv().await;

    let answer = client.request("who_am_i", json!({}), 1).await;
    assert_eq!(answer, json!({"reply_to": 1, "ok": "alice"}));

    let answer = client.request("get-history", json!({"limit": 2}), 2).await;
    assert_eq!(
        answer,
        json!({"reply_to": 2, "ok": ["authorize alice lobby", "connect alice"]})
    );

    // The method's own name is not a wire name once renamed.
    let answer = client.request("history", json!({}), 3).await;
    assert_eq!(answer["error"]["code"], 400);
    assert_eq!(
        answer["error"]["message"],
        "unknown type `history`; known types: `get-history`, `who_am_i`, `post`"
    );
}

#[tokio::test]
async fn serde_attributes_on_arguments_apply_to_the_fields() {
    let (server, _) = chat_server().await;
    let mut client = TestClient::connect(&server.ws_url("/live/lobby"), "alice")
        .await
        .expect("connect");
    let _welcome = client.recv().await;

    // `limit` has `#[serde(default)]`: absent, it is 0.
    let answer = client.request("get-history", json!({}), 1).await;
    assert_eq!(answer, json!({"reply_to": 1, "ok": []}));

    // `body` is `text` on the wire; `times` defaults to 1.
    client
        .send(json!({"type": "post", "data": {"text": "hi"}, "id": 2}))
        .await;
    assert_eq!(
        client.recv_event().await,
        json!({"topic": "lobby", "event": {"by": "alice", "body": "hi"}})
    );
    assert_eq!(
        client.recv_reply().await,
        json!({"reply_to": 2, "ok": null})
    );

    client
        .send(json!({"type": "post", "data": {"text": "ha", "times": 3}, "id": 3}))
        .await;
    assert_eq!(
        client.recv_event().await,
        json!({"topic": "lobby", "event": {"by": "alice", "body": "hahaha"}})
    );
    assert_eq!(
        client.recv_reply().await,
        json!({"reply_to": 3, "ok": null})
    );

    // The Rust name of a renamed argument is not a field.
    let answer = client.request("post", json!({"body": "hi"}), 4).await;
    assert_eq!(
        answer["error"],
        json!({"code": 400, "message": "invalid `data`: missing field `text`"})
    );
}

#[tokio::test]
async fn hooks_run_on_connect_and_disconnect() {
    let (server, journal) = chat_server().await;
    let mut client = TestClient::connect(&server.ws_url("/live/lobby"), "alice")
        .await
        .expect("connect");
    assert_eq!(
        client.recv().await,
        json!({"topic": "lobby", "event": "welcome alice"}),
        "on_connect's frame comes first"
    );
    journal.wait_for("authorize alice lobby").await;
    journal.wait_for("connect alice").await;
    client.close().await;
    journal.wait_for("disconnect alice").await;
}

#[tokio::test]
async fn authorize_topic_refuses_with_403() {
    let (server, journal) = chat_server().await;
    let refused = TestClient::connect(&server.ws_url("/live/secret"), "alice")
        .await
        .expect_err("`secret` is refused");
    assert_eq!(refused.status(), Some(403));
    let refused = TestClient::connect(&server.ws_url("/live/lobby"), "mallory")
        .await
        .expect_err("`mallory` is refused");
    assert_eq!(refused.status(), Some(403));
    journal.wait_for("authorize mallory lobby").await;
    assert!(
        !journal
            .lines
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|line| line == "connect mallory"),
        "a refused user is never connected"
    );
}

#[tokio::test]
async fn router_serves_the_path_option_only() {
    let (server, _) = chat_server().await;
    let refused = TestClient::connect(&server.ws_url("/ws/lobby"), "alice")
        .await
        .expect_err("the default path is not served");
    assert_eq!(refused.status(), Some(404));
}

/// A handler without any context argument: its types come from the
/// attribute, and its router serves the default path.
struct Calculator;

#[realtime_handler(state = (), user = u64)]
impl Calculator {
    /// Adds; `b` may be absent.
    #[direct]
    async fn add(&self, a: i64, b: Option<i64>) -> Result<i64, HandlerError> {
        Ok(a + b.unwrap_or(0))
    }

    /// Broadcasts nothing, ever. (Markers may also be written by path.)
    #[realtime::broadcast]
    async fn nothing(&self) -> Result<Option<String>, HandlerError> {
        Ok(None)
    }
}

#[tokio::test]
async fn types_named_in_the_attribute_and_the_default_path() {
    let service = Service::builder(Calculator, (), validate_with(|_: &str| Ok(7_u64)))
        .build()
        .expect("the default config is valid");
    let server = TestServer::start(Calculator::router(service)).await;
    let mut client = TestClient::connect(&server.ws_url("/ws/sums"), "any")
        .await
        .expect("connect");
    let answer = client.request("add", json!({"a": 2}), 1).await;
    assert_eq!(answer, json!({"reply_to": 1, "ok": 2}));
    let answer = client.request("add", json!({"a": 2, "b": 3}), 2).await;
    assert_eq!(answer, json!({"reply_to": 2, "ok": 5}));
    let answer = client.request("nothing", json!({}), 3).await;
    assert_eq!(answer, json!({"reply_to": 3, "ok": null}));
}

#[tokio::test]
async fn route_wires_the_upgrade_by_hand() {
    let service = Service::builder(Calculator, (), validate_with(|_: &str| Ok(7_u64)))
        .build()
        .expect("the default config is valid");
    let app = axum::Router::new()
        .route("/custom/{topic}", Calculator::route::<MemoryBroker>())
        .with_state(service);
    let server = TestServer::start(app).await;
    let mut client = TestClient::connect(&server.ws_url("/custom/sums"), "any")
        .await
        .expect("connect");
    let answer = client.request("add", json!({"a": 40, "b": 2}), 1).await;
    assert_eq!(answer, json!({"reply_to": 1, "ok": 42}));
}

#[test]
fn the_client_message_enum_is_public_and_deserializes_protocol_v1() {
    let message: ChatClientMessage = serde_json::from_value(json!({
        "type": "post",
        "data": {"text": "hi"}
    }))
    .expect("a valid message");
    let ChatClientMessage::Say { body, times } = message else {
        panic!("`post` is `say`");
    };
    assert_eq!((body.as_str(), times), ("hi", 1));

    let message: ChatClientMessage =
        serde_json::from_value(json!({"type": "who_am_i", "data": {}})).expect("a valid message");
    assert!(matches!(message, ChatClientMessage::WhoAmI {}));
    // `Debug` names the variant without requiring `Debug` of the arguments.
    assert_eq!(format!("{message:?}"), "WhoAmI { .. }");

    let error = serde_json::from_value::<CalculatorClientMessage>(json!({
        "type": "$join",
        "data": {}
    }))
    .expect_err("no method answers a control message");
    assert!(
        error.to_string().contains("unknown variant `$join`"),
        "{error}"
    );
}
