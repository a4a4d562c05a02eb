//! Tokens reach no log line and no span: not from the query string of an
//! upgrade, not from a refused one, not from a `$refresh` taken or refused.
//! Everything the crate logs, at every level, is captured and searched.

mod support;

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use realtime::auth::{Identity, identify_with};
use realtime::testing::{TestClient, TestServer};
use realtime::{AuthError, MemoryBroker, Service};
use serde_json::{Value, json};
use support::{Hooks, Room};
use tokio_tungstenite::tungstenite::Message;

/// What the subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the log").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Every token below holds this; none may be written anywhere.
const SECRET: &str = "S3CRET";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reach_no_log_line_and_no_span() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("realtime=trace")
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    // `alice-S3CRET-<n>` is alice's, good for an hour; any other is refused.
    let validator = identify_with(|token: &str| match token.strip_prefix("alice-") {
        Some(rest) if rest.starts_with(SECRET) && !rest.ends_with("bad") => {
            let at = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
            Ok(Identity::until("alice".to_owned(), at))
        }
        _ => Err(AuthError::InvalidToken),
    });
    let service = Service::builder(Room, Arc::new(Hooks::default()), validator)
        .with_broker(MemoryBroker::new())
        .build()
        .expect("a valid config");
    let server = TestServer::start(realtime::route::router(service, "/ws/{topic}")).await;

    // A token in the query string, as a browser without the subprotocol
    // sends it; then a refused one.
    let url = server.ws_url(&format!("/ws/lobby?token=alice-{SECRET}-1"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the query string's token gets in");
    let refused = TestClient::connect(&server.ws_url("/ws/lobby"), &format!("alice-{SECRET}-bad"))
        .await
        .expect_err("refused");
    assert_eq!(refused.status(), Some(401));

    // `$refresh` taken, then refused.
    for (id, token) in [
        (1, format!("alice-{SECRET}-2")),
        (2, format!("alice-{SECRET}-bad")),
    ] {
        let frame = json!({"type": "$refresh", "data": {"token": token}, "id": id});
        socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
        let answer = loop {
            let Some(Ok(Message::Text(text))) = socket.next().await else {
                panic!("the connection ended");
            };
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value.get("reply_to").is_some() {
                break value;
            }
        };
        match id {
            1 => assert!(answer["ok"]["expires_in"].is_number(), "{answer}"),
            _ => assert_eq!(answer["error"]["code"], 401, "{answer}"),
        }
    }
    socket.close(None).await.expect("close");
    drop(socket);
    support::wait_until("the connection's span closes", || {
        let captured = captured.clone();
        async move {
            let text = String::from_utf8_lossy(&captured.0.lock().expect("the log")).into_owned();
            text.contains("close") && text.contains("token refreshed")
        }
    })
    .await;

    let text = String::from_utf8_lossy(&captured.0.lock().expect("the log")).into_owned();
    assert!(text.contains("connection"), "nothing was captured:\n{text}");
    let leaks: Vec<&str> = text.lines().filter(|line| line.contains(SECRET)).collect();
    assert!(leaks.is_empty(), "tokens in the log:\n{}", leaks.join("\n"));
}
