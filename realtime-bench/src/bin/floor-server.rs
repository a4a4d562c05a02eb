//! The floor: the simplest correct axum WebSocket broadcast server, with one
//! tokio broadcast channel per topic and an optional Redis relay. The
//! benchmark measures `realtime` against it; it is not part of the product.
//!
//! It speaks the same protocol v1 subset as `examples/bench_server`:
//! `say {text}` broadcasts `{"topic": t, "event": {"text": ...}}` to the
//! topic, `echo {text}` answers `{"reply_to": id, "ok": text}`.
//!
//! Run: `PORT=4000 [REDIS_URL=redis://127.0.0.1/] cargo run --release -p realtime-bench --bin floor-server`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

/// Frames a slow subscriber may lag behind before it loses some; the same
/// depth as the benchmarked server's outbound queue.
const CHANNEL_DEPTH: usize = 4096;
const REDIS_PREFIX: &str = "floor:";

struct Floor {
    topics: Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>,
    redis: Option<redis::aio::MultiplexedConnection>,
}

impl Floor {
    fn channel(&self, topic: &str) -> broadcast::Sender<Utf8Bytes> {
        let mut topics = self.topics.lock().expect("floor lock");
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_DEPTH).0)
            .clone()
    }
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    data: Data,
    id: Option<u64>,
}

#[derive(Deserialize)]
struct Data {
    text: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(4000);
    let client = match std::env::var("REDIS_URL") {
        Ok(url) => Some(redis::Client::open(url)?),
        Err(_) => None,
    };
    let redis = match &client {
        Some(client) => Some(client.get_multiplexed_async_connection().await?),
        None => None,
    };
    let floor = Arc::new(Floor {
        topics: Mutex::default(),
        redis,
    });
    if let Some(client) = client {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe(format!("{REDIS_PREFIX}*")).await?;
        tokio::spawn(relay(pubsub, Arc::clone(&floor)));
    }
    let app = Router::new()
        .route("/ws/{topic}", get(upgrade))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Hands every Redis message to the local channel of its topic.
async fn relay(pubsub: redis::aio::PubSub, floor: Arc<Floor>) {
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let topic = &message.get_channel_name()[REDIS_PREFIX.len()..];
        if let Ok(frame) = Utf8Bytes::try_from(message.get_payload_bytes().to_vec()) {
            let _ = floor.channel(topic).send(frame);
        }
    }
}

async fn upgrade(
    ws: WebSocketUpgrade,
    Path(topic): Path<String>,
    State(floor): State<Arc<Floor>>,
) -> Response {
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| serve(socket, topic, floor))
}

async fn serve(socket: WebSocket, topic: String, floor: Arc<Floor>) {
    let channel = floor.channel(&topic);
    let mut events = channel.subscribe();
    let (mut sink, mut stream) = socket.split();
    let (replies, mut reply_rx) = mpsc::channel::<Utf8Bytes>(64);
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                event = events.recv() => match event {
                    Ok(frame) => frame,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                reply = reply_rx.recv() => match reply {
                    Some(frame) => frame,
                    None => break,
                },
            };
            if sink.send(Message::Text(frame)).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        match frame.kind.as_str() {
            "say" => {
                let event = serde_json::json!({"topic": topic, "event": {"text": frame.data.text}});
                let event = Utf8Bytes::from(event.to_string());
                match &floor.redis {
                    Some(redis) => {
                        let mut redis = redis.clone();
                        let channel = format!("{REDIS_PREFIX}{topic}");
                        let _: Result<(), _> = redis::cmd("PUBLISH")
                            .arg(channel)
                            .arg(event.as_bytes())
                            .query_async(&mut redis)
                            .await;
                    }
                    None => {
                        let _ = channel.send(event);
                    }
                }
            }
            "echo" => {
                let reply = serde_json::json!({"reply_to": frame.id, "ok": frame.data.text});
                if replies
                    .send(Utf8Bytes::from(reply.to_string()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            _ => {}
        }
    }
    writer.abort();
}
