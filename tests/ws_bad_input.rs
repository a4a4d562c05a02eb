//! Every kind of bad input gets its exact error frame or close code, and a
//! bystander on the same topic keeps receiving.

mod support;

use realtime::Config;
use realtime::testing::{Closed, TestClient};
use serde_json::{Value, json};
use support::room::RoomServer;
use tokio_tungstenite::tungstenite::Message;

/// Sends `text` from a fresh client and returns the frame it gets back;
/// then checks that the sender and a bystander still work.
async fn answer_to(text: &str) -> Value {
    let server = RoomServer::start().await;
    let mut client = server.connect("bad", "alice").await;
    let mut bystander = server.connect("bad", "bob").await;
    client.send_text(text).await;
    let answer = client.recv().await;
    still_served(&mut client, &mut bystander).await;
    answer
}

/// The offender is still connected and served, and a broadcast reaches the
/// bystander.
async fn still_served(client: &mut TestClient, bystander: &mut TestClient) {
    let echo = client
        .request("echo", json!({"text": "still here"}), 99)
        .await;
    assert_eq!(echo, json!({"reply_to": 99, "ok": "still here"}));
    bystander_receives(client, bystander).await;
}

async fn bystander_receives(from: &mut TestClient, bystander: &mut TestClient) {
    from.send(json!({"type": "say", "data": {"text": "ping"}}))
        .await;
    assert_eq!(bystander.recv().await["event"]["text"], "ping");
}

#[tokio::test]
async fn malformed_json_gets_400_without_reply_to() {
    assert_eq!(
        answer_to("{nope").await,
        json!({"error": {"code": 400, "message": "malformed JSON: key must be a string"}})
    );
}

#[tokio::test]
async fn frame_without_type_gets_400_with_its_id() {
    let answer = answer_to(r#"{"data": {}, "id": 3}"#).await;
    assert_eq!(answer["reply_to"], 3);
    assert_eq!(answer["error"]["code"], 400);
    assert_eq!(
        answer["error"]["message"],
        "malformed frame: missing field `type`; expected {\"type\": \"...\", \"data\": {...}, \"id\": ...}"
    );
}

#[tokio::test]
async fn unknown_type_lists_the_known_types() {
    assert_eq!(
        answer_to(r#"{"type": "sya", "data": {}, "id": 1}"#).await,
        json!({"reply_to": 1, "error": {"code": 400, "message":
            "unknown type `sya`; known types: `say`, `echo`, `slow`, `fail`, `quiet`, `whoami`, `whisper`, `here`, `post`"}})
    );
}

#[tokio::test]
async fn wrong_field_type_names_the_field_and_the_expected_type() {
    assert_eq!(
        answer_to(r#"{"type": "say", "data": {"text": 5}, "id": 2}"#).await,
        json!({"reply_to": 2, "error": {"code": 400, "message":
            "invalid field `data.text`: invalid type: integer `5`, expected a string"}})
    );
}

#[tokio::test]
async fn data_that_is_not_an_object_is_named_without_rust_types() {
    assert_eq!(
        answer_to(r#"{"type": "say", "data": "hi", "id": 4}"#).await,
        json!({"reply_to": 4, "error": {"code": 400, "message":
            "invalid `data`: invalid type: string \"hi\", expected an object"}})
    );
}

#[tokio::test]
async fn missing_field_is_named() {
    assert_eq!(
        answer_to(r#"{"type": "say", "data": {}, "id": 4}"#).await,
        json!({"reply_to": 4, "error": {"code": 400, "message": "invalid `data`: missing field `text`"}})
    );
}

#[tokio::test]
async fn unknown_dollar_type_is_refused() {
    assert_eq!(
        answer_to(r#"{"type": "$subscribe", "data": {}, "id": 5}"#).await,
        json!({"reply_to": 5, "error": {"code": 400, "message":
            "unknown control message `$subscribe`; known: `$join`, `$leave`, `$presence`, `$ping`, `$refresh`; type names starting with `$` are reserved"}})
    );
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    assert_eq!(
        answer_to(r#"{"type": "$ping", "id": 9}"#).await,
        json!({"reply_to": 9, "ok": "pong"})
    );
}

#[tokio::test]
async fn join_without_a_topic_names_the_field() {
    assert_eq!(
        answer_to(r#"{"type": "$join", "data": {}, "id": 6}"#).await,
        json!({"reply_to": 6, "error": {"code": 400, "message":
            "invalid `data`: missing field `topic`"}})
    );
    assert_eq!(
        answer_to(r#"{"type": "$join", "data": {"topic": 7}, "id": 7}"#).await,
        json!({"reply_to": 7, "error": {"code": 400, "message":
            "invalid field `data.topic`: invalid type: integer `7`, expected a string"}})
    );
}

#[tokio::test]
async fn non_scalar_id_is_refused() {
    assert_eq!(
        answer_to(r#"{"type": "echo", "data": {"text": "x"}, "id": {"a": 1}}"#).await,
        json!({"error": {"code": 400, "message":
            "`id` must be a number or a string of at most 128 bytes"}})
    );
}

#[tokio::test]
async fn binary_frame_closes_with_1003() {
    let server = RoomServer::start().await;
    let mut client = server.connect("bin", "alice").await;
    let mut bystander = server.connect("bin", "bob").await;
    let mut other = server.connect("bin", "carol").await;
    client.send_message(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(client.recv_close().await.code(), Some(1003));
    bystander_receives(&mut other, &mut bystander).await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let mut config = Config::default();
    config.max_frame_bytes = 1024;
    let server = RoomServer::with_config(config).await;
    let mut client = server.connect("big", "alice").await;
    let mut bystander = server.connect("big", "bob").await;
    let mut other = server.connect("big", "carol").await;
    let text = "x".repeat(2048);
    client
        .send(json!({"type": "say", "data": {"text": text}}))
        .await;
    assert_eq!(client.recv_close().await.code(), Some(1009));
    bystander_receives(&mut other, &mut bystander).await;
}

#[tokio::test]
async fn flood_gets_429_then_closes_with_1008() {
    let mut config = Config::default();
    config.max_messages_per_sec = 5;
    config.rate_burst = 5;
    let server = RoomServer::with_config(config).await;
    let mut client = server.connect("flood", "alice").await;
    let mut bystander = server.connect("flood", "bob").await;
    let mut other = server.connect("flood", "carol").await;
    for id in 0..100 {
        client
            .send(json!({"type": "echo", "data": {"text": "x"}, "id": id}))
            .await;
    }
    // The burst is answered, then each message past the limit gets a 429
    // naming its id, until the client has been refused a burst's worth.
    for id in 0..5 {
        assert_eq!(client.recv().await, json!({"reply_to": id, "ok": "x"}));
    }
    for id in 5..10 {
        assert_eq!(
            client.recv().await,
            json!({"reply_to": id, "error": {"code": 429, "message":
                "rate limit exceeded: at most 5 messages per second; this message was not handled"}})
        );
    }
    assert_eq!(
        client.recv_close().await,
        Closed::Frame(1008, "policy violation: rate limit or idle timeout".into())
    );
    assert!(server.service.metrics().rate_limited >= 6);
    bystander_receives(&mut other, &mut bystander).await;
}

/// A `$ping` without an id (the answer to the text heartbeat) past the rate
/// limit is refused as a pong is: counted, with no error frame for the
/// application to see; a flood of them is closed with 1008 all the same.
#[tokio::test]
async fn heartbeat_answers_past_the_rate_limit_get_no_error_frame() {
    let mut config = Config::default();
    config.max_messages_per_sec = 5;
    config.rate_burst = 5;
    let server = RoomServer::with_config(config).await;
    let mut client = server.connect("flood", "alice").await;
    for _ in 0..8 {
        client.send(json!({"type": "$ping"})).await;
    }
    support::wait_until("three answers refused", || async {
        server.service.metrics().rate_limited == 3
    })
    .await;
    // Past the refill, a request is answered, and nothing came before it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    client
        .send(json!({"type": "echo", "data": {"text": "x"}, "id": 1}))
        .await;
    assert_eq!(client.recv().await, json!({"reply_to": 1, "ok": "x"}));
    for _ in 0..100 {
        client.send(json!({"type": "$ping"})).await;
    }
    assert_eq!(
        client.recv_close().await,
        Closed::Frame(1008, "policy violation: rate limit or idle timeout".into())
    );
}

/// What a flooding client read back before the server closed it.
#[derive(Debug, Default)]
struct FloodOutcome {
    rate_limited: usize,
    pongs: usize,
    close: Option<u16>,
}

/// Sends `frame` in batches of 50 every 10 ms (5000 frames/s), without
/// reading, until the server stops taking them or 3 s have passed; then
/// reads what came back up to the close.
async fn flood(server: &RoomServer, frame: Message) -> FloodOutcome {
    use futures_util::{SinkExt, StreamExt};
    let client = server.connect("flood", "mallory").await;
    let mut socket = client.into_inner();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    'sending: while tokio::time::Instant::now() < until {
        for _ in 0..50 {
            if socket.feed(frame.clone()).await.is_err() {
                break 'sending;
            }
        }
        if socket.flush().await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut outcome = FloodOutcome::default();
    let read = async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) if text.contains("\"code\":429") => outcome.rate_limited += 1,
                Message::Pong(_) => outcome.pongs += 1,
                Message::Close(close) => {
                    outcome.close = close.map(|close| u16::from(close.code));
                    break;
                }
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(support::DEADLINE, read).await;
    outcome
}

fn flood_config() -> Config {
    let mut config = Config::default();
    config.max_messages_per_sec = 100;
    config.rate_burst = 20;
    config
}

#[tokio::test]
async fn a_steady_flood_is_closed_with_1008_after_a_bounded_number_of_429s() {
    // A token refills every 10 ms, so this flood is admitted a little all
    // along; it must still be closed, after at most a burst's worth of 429s.
    let server = RoomServer::with_config(flood_config()).await;
    let mut bystander = server.connect("flood", "bob").await;
    let mut other = server.connect("flood", "carol").await;
    let echo = Message::text(r#"{"type":"echo","data":{"text":"x"},"id":1}"#);
    let outcome = flood(&server, echo).await;
    assert_eq!(outcome.close, Some(1008), "{outcome:?}");
    assert!(outcome.rate_limited <= 20, "{outcome:?}");
    bystander_receives(&mut other, &mut bystander).await;
}

#[tokio::test]
async fn a_client_that_floods_on_after_the_close_is_let_go_within_the_bound() {
    use futures_util::SinkExt;
    // After the close frame the server reads a burst, then throws away what
    // comes (without parsing it) until the client ends its side: at most
    // 1 MiB, for at most the close timeout. A client that never stops must
    // not hold its socket longer than that.
    let mut config = flood_config();
    config.close_timeout = std::time::Duration::from_millis(300);
    let server = RoomServer::with_config(config).await;
    let mut socket = server.connect("flood", "mallory").await.into_inner();
    let endless = tokio::spawn(async move {
        let frame = Message::text(format!(
            r#"{{"type":"echo","data":{{"text":"{}"}}}}"#,
            "z".repeat(1000)
        ));
        // Never reads: sends until the server has let the socket go.
        while socket.send(frame.clone()).await.is_ok() {}
    });
    support::wait_until("the server lets the flooding client go", || async {
        server.service.connections() == 0
    })
    .await;
    tokio::time::timeout(support::DEADLINE, endless)
        .await
        .expect("the client's sends fail once the server let it go")
        .unwrap();
    assert!(server.service.metrics().rate_limited >= 1);
}

#[tokio::test]
async fn a_ping_flood_is_closed_with_1008() {
    let server = RoomServer::with_config(flood_config()).await;
    let outcome = flood(&server, Message::Ping(Default::default())).await;
    assert_eq!(outcome.close, Some(1008), "{outcome:?}");
    // A burst of pings is answered, then the refused ones until the close
    // (a burst and one), then at most a burst read while the server waits
    // for the client's close: each ping read costs a pong.
    assert!(outcome.pongs <= 3 * 20 + 1, "{outcome:?}");
}

#[tokio::test]
async fn an_id_that_json_cannot_carry_back_is_refused() {
    // Echoed raw, these would be answers a strict JSON reader refuses: a
    // number past f64, a lone surrogate, and an id as long as a frame.
    let long = format!(r#""{}""#, "i".repeat(200));
    for id in ["1e400", r#""\ud800""#, long.as_str()] {
        let frame = format!(r#"{{"type": "echo", "data": {{"text": "x"}}, "id": {id}}}"#);
        assert_eq!(
            answer_to(&frame).await,
            json!({"error": {"code": 400, "message":
                "`id` must be a number or a string of at most 128 bytes"}}),
            "id {id}"
        );
    }
    // What an id may be still is.
    for id in ["7", "-3", "1.5", r#""a-b""#, r#""\u00e9""#] {
        let frame = format!(r#"{{"type": "echo", "data": {{"text": "x"}}, "id": {id}}}"#);
        let answer = answer_to(&frame).await;
        let expected: Value = serde_json::from_str(id).unwrap();
        assert_eq!(answer["reply_to"], expected, "{answer}");
    }
}

#[tokio::test]
async fn an_error_echoes_a_bounded_part_of_the_input() {
    // A 60 KB type name, and a 60 KB string where a number is expected:
    // the errors name them, but not whole.
    let name = "x".repeat(60_000);
    let unknown = answer_to(&format!(r#"{{"type": "{name}", "id": 1}}"#)).await;
    let wrong = answer_to(&format!(
        r#"{{"type": "slow", "data": {{"ms": "{name}"}}, "id": 2}}"#
    ))
    .await;
    for answer in [unknown, wrong] {
        let message = answer["error"]["message"].as_str().expect("a message");
        assert_eq!(answer["error"]["code"], 400, "{answer}");
        assert!(message.len() <= 512, "{} bytes", message.len());
        assert!(message.ends_with('…'), "{message}");
    }
}
