//! A handler written with `#[realtime_handler]` and the same handler written
//! by hand against `MessageHandler` answer the same inputs with the same
//! frames over a real socket, errors included.

use realtime::auth::validate_with;
use realtime::testing::{TestClient, TestServer};
use realtime::{MessageHandler, Service};
use serde::Serialize;
use serde_json::{Value, json};

/// The event both handlers broadcast.
#[derive(Debug, Clone, Serialize)]
pub struct Said {
    /// Who said it.
    pub from: String,
    /// What was said.
    pub text: String,
}

mod with_macro {
    //! The handler, written with the macro.
    use realtime::prelude::*;

    use super::Said;

    /// Answers and broadcasts through the macro.
    pub(crate) struct Room;

    #[realtime_handler]
    impl Room {
        /// Answers `text` back.
        #[direct]
        async fn echo(&self, text: String) -> Result<String, HandlerError> {
            Ok(text)
        }

        /// Adds two numbers.
        #[direct]
        async fn add(&self, a: i32, b: i32) -> Result<i32, HandlerError> {
            a.checked_add(b)
                .ok_or_else(|| HandlerError::bad_request("overflow"))
        }

        /// Fails with `code`.
        #[direct]
        async fn fail(&self, code: u16) -> Result<(), HandlerError> {
            Err(HandlerError::new(code, "asked to fail"))
        }

        /// No arguments.
        #[direct]
        async fn ping(&self) -> Result<&'static str, HandlerError> {
            Ok("pong")
        }

        /// An optional argument.
        #[direct]
        async fn greet(
            &self,
            ctx: &Context<(), String>,
            name: Option<String>,
        ) -> Result<String, HandlerError> {
            Ok(format!(
                "hello {}",
                name.as_deref().unwrap_or(ctx.user_id())
            ))
        }

        /// Broadcasts `text`.
        #[broadcast]
        async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<Said, HandlerError> {
            Ok(Said {
                from: ctx.user_id().clone(),
                text,
            })
        }

        /// Broadcasts only when `loud`.
        #[broadcast]
        async fn shout(
            &self,
            ctx: &Context<(), String>,
            loud: bool,
        ) -> Result<Option<Said>, HandlerError> {
            Ok(loud.then(|| Said {
                from: ctx.user_id().clone(),
                text: "!".into(),
            }))
        }

        /// A broadcast that fails.
        #[broadcast]
        async fn refuse(&self) -> Result<Said, HandlerError> {
            Err(HandlerError::forbidden("not here"))
        }
    }
}

mod by_hand {
    //! The same handler, written against the trait.
    use realtime::handler::Outcome;
    use realtime::{Context, HandlerError, MessageHandler};
    use serde::Deserialize;

    use super::Said;

    /// What clients send. Named as the macro names its enum: serde's message
    /// for `data` of the wrong shape names the enum ("expected struct
    /// variant RoomClientMessage::Echo").
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", content = "data", rename_all = "snake_case")]
    pub(crate) enum RoomClientMessage {
        /// See `with_macro`.
        Echo { text: String },
        /// See `with_macro`.
        Add { a: i32, b: i32 },
        /// See `with_macro`.
        Fail { code: u16 },
        /// See `with_macro`.
        Ping {},
        /// See `with_macro`.
        Greet { name: Option<String> },
        /// See `with_macro`.
        Say { text: String },
        /// See `with_macro`.
        Shout { loud: bool },
        /// See `with_macro`.
        Refuse {},
    }

    /// Answers and broadcasts by hand.
    pub(crate) struct Room;

    impl MessageHandler for Room {
        type ClientMessage = RoomClientMessage;
        type ServerEvent = Said;
        type AppState = ();
        type UserId = String;

        async fn handle(
            &self,
            msg: RoomClientMessage,
            ctx: &Context<(), String>,
        ) -> Result<Outcome<Said>, HandlerError> {
            match msg {
                RoomClientMessage::Echo { text } => Outcome::reply(&text),
                RoomClientMessage::Add { a, b } => Outcome::reply(
                    &a.checked_add(b)
                        .ok_or_else(|| HandlerError::bad_request("overflow"))?,
                ),
                RoomClientMessage::Fail { code } => Err(HandlerError::new(code, "asked to fail")),
                RoomClientMessage::Ping {} => Outcome::reply("pong"),
                RoomClientMessage::Greet { name } => Outcome::reply(&format!(
                    "hello {}",
                    name.as_deref().unwrap_or(ctx.user_id())
                )),
                RoomClientMessage::Say { text } => Ok(Outcome::Broadcast(Said {
                    from: ctx.user_id().clone(),
                    text,
                })),
                RoomClientMessage::Shout { loud } => Ok(match loud {
                    true => Outcome::Broadcast(Said {
                        from: ctx.user_id().clone(),
                        text: "!".into(),
                    }),
                    false => Outcome::Handled,
                }),
                RoomClientMessage::Refuse {} => Err(HandlerError::forbidden("not here")),
            }
        }
    }
}

/// Every input, as raw text: valid messages of each kind and each way a
/// message can be wrong.
const INPUTS: &[&str] = &[
    r#"{"type": "nope", "data": {}, "id": 1}"#,
    r#"{"type": "add", "data": {"a": 1, "b": "x"}, "id": 2}"#,
    r#"{"type": "add", "data": {"a": 1}, "id": 3}"#,
    r#"{"type": "fail", "data": {"code": 404}, "id": 4}"#,
    r#"{"type": "echo", "data": {"text": "hi"}, "id": 5}"#,
    r#"{"type": "say", "data": {"text": "hello"}, "id": 6}"#,
    r#"{"type": "ping", "id": 7}"#,
    r#"{"type": "greet", "data": {}, "id": 8}"#,
    r#"{"type": "greet", "data": {"name": "bob"}, "id": 9}"#,
    r#"{"type": "shout", "data": {"loud": false}, "id": 10}"#,
    r#"{"type": "shout", "data": {"loud": true}, "id": 11}"#,
    r#"{"type": "refuse", "id": 12}"#,
    r#"{"type": "add", "data": {"a": 2147483647, "b": 1}, "id": 13}"#,
    r#"{"type": "ping", "data": {"extra": true}, "id": 14}"#,
    r#"{"type": "echo", "data": {"text": "no id"}}"#,
    r#"{"type": "say", "data": {"text": "no id"}}"#,
    r#"{"type": "echo", "data": {"text": 5}}"#,
    r#"{"type": "nope"}"#,
    r#"{"data": {}, "id": 15}"#,
    r#"{nope"#,
    r#"{"type": "echo", "data": [1], "id": 16}"#,
];

/// Serves `handler` and returns, for each input, every frame the sender got
/// until a marker request was answered, then what a bystander on the same
/// topic received.
async fn transcript<H>(handler: H) -> (Vec<Vec<Value>>, Vec<Value>)
where
    H: MessageHandler<AppState = (), UserId = String>,
{
    let service = Service::builder(handler, (), validate_with(|t: &str| Ok(t.to_owned())))
        .build()
        .expect("the default config is valid");
    let app = realtime::route::router(service, "/ws/{topic}");
    let server = TestServer::start(app).await;
    let url = server.ws_url("/ws/room");
    let mut sender = TestClient::connect(&url, "alice").await.expect("connect");
    let mut bystander = TestClient::connect(&url, "bob").await.expect("connect");

    let mut answers = Vec::new();
    for (n, input) in INPUTS.iter().enumerate() {
        sender.send_text(input).await;
        // A marker request after each input: everything before its answer
        // belongs to the input.
        let marker = format!("marker-{n}");
        sender
            .send(json!({"type": "echo", "data": {"text": marker}, "id": marker}))
            .await;
        let mut frames = Vec::new();
        loop {
            let frame = sender.recv().await;
            if frame["reply_to"] == json!(marker) {
                break;
            }
            frames.push(frame);
        }
        // A broadcast's ack and the sender's own event may come in either
        // order; compare them events first.
        frames.sort_by_key(|frame| frame.get("topic").is_none());
        answers.push(frames);
    }

    sender
        .send(json!({"type": "say", "data": {"text": "end"}}))
        .await;
    let mut seen = Vec::new();
    loop {
        let frame = bystander.recv().await;
        let end = frame["event"]["text"] == "end";
        seen.push(frame);
        if end {
            break;
        }
    }
    (answers, seen)
}

#[tokio::test]
async fn macro_and_hand_written_handlers_send_the_same_frames() {
    let (macro_answers, macro_seen) = transcript(with_macro::Room).await;
    let (hand_answers, hand_seen) = transcript(by_hand::Room).await;
    for ((input, with_macro), by_hand) in INPUTS.iter().zip(&macro_answers).zip(&hand_answers) {
        assert_eq!(with_macro, by_hand, "frames answering {input}");
    }
    assert_eq!(macro_seen, hand_seen, "what the bystander received");

    // And the frames are the ones the protocol promises, so the comparison
    // is not between two wrong answers.
    let said =
        |from: &str, text: &str| json!({"topic": "room", "event": {"from": from, "text": text}});
    let expected: Vec<Vec<Value>> = vec![
        vec![json!({"reply_to": 1, "error": {"code": 400, "message":
            "unknown type `nope`; known types: `echo`, `add`, `fail`, `ping`, `greet`, `say`, `shout`, `refuse`"}})],
        vec![json!({"reply_to": 2, "error": {"code": 400, "message":
            "invalid field `data.b`: invalid type: string \"x\", expected i32"}})],
        vec![json!({"reply_to": 3, "error": {"code": 400, "message":
            "invalid `data`: missing field `b`"}})],
        vec![json!({"reply_to": 4, "error": {"code": 404, "message": "asked to fail"}})],
        vec![json!({"reply_to": 5, "ok": "hi"})],
        vec![said("alice", "hello"), json!({"reply_to": 6, "ok": null})],
        vec![json!({"reply_to": 7, "ok": "pong"})],
        vec![json!({"reply_to": 8, "ok": "hello alice"})],
        vec![json!({"reply_to": 9, "ok": "hello bob"})],
        vec![json!({"reply_to": 10, "ok": null})],
        vec![said("alice", "!"), json!({"reply_to": 11, "ok": null})],
        vec![json!({"reply_to": 12, "error": {"code": 403, "message": "not here"}})],
        vec![json!({"reply_to": 13, "error": {"code": 400, "message": "overflow"}})],
        vec![json!({"reply_to": 14, "ok": "pong"})],
        vec![json!({"ok": "no id"})],
        vec![said("alice", "no id")],
    ];
    assert_eq!(macro_answers[..expected.len()], expected[..]);
    // The malformed inputs get an error frame each, without `reply_to`
    // where no id could be read.
    for (input, frames) in INPUTS.iter().zip(&macro_answers).skip(expected.len()) {
        assert_eq!(frames.len(), 1, "one answer to {input}");
        assert_eq!(frames[0]["error"]["code"], 400, "answer to {input}");
    }
    assert_eq!(macro_answers[16][0].get("reply_to"), None);
    assert_eq!(macro_answers[18][0]["reply_to"], 15);
}
