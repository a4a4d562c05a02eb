//! The floor: the strongest simple axum WebSocket broadcast server we can
//! write, with none of the framework's work (no authentication, limits,
//! heartbeat or error frames). The benchmark measures `realtime` against it;
//! it is not part of the product.
//!
//! What makes it strong, so that it does not flatter the project:
//! - one `tokio::sync::broadcast` ring per topic: each event is written once,
//!   whatever the number of subscribers, and every writer reads it from there;
//! - one write task per connection that feeds every frame already waiting
//!   (up to a batch of 64) and flushes once;
//! - with Redis, one subscriber connection that feeds the rings, and one
//!   publisher task that hands each PUBLISH to a multiplexed connection
//!   without waiting for the one before (Redis keeps a connection's commands
//!   in order, so the pipeline keeps the publishers' order).
//!
//! With `PING_SECS`, each connection's write task also pings its client
//! every that many seconds, from a timer of its own in Tokio's timer wheel
//! (what a hand-written server does); the pongs are read and dropped. With
//! `PING_SWEEP=1` as well, it is the strongest simple idle server instead:
//! a connection only reads (no topic, no write task), and one task pings
//! every connection once per interval, a twentieth of them per tick, each
//! ping written into the socket by that task. The `scale` workload runs
//! both, to measure idle CPU against a floor.
//!
//! It speaks the same protocol v1 subset as `examples/bench_server`:
//! `say {text}` broadcasts `{"topic": t, "event": {"text": ...}}` to the
//! topic, `echo {text}` answers `{"reply_to": id, "ok": text}`.
//!
//! Run: `PORT=4000 [REDIS_URL=redis://127.0.0.1/] cargo run --release -p realtime-bench --bin floor-server`

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

/// Frames a slow subscriber may lag behind before it loses some; the same
/// depth as the benchmarked server's per-topic backlog.
const CHANNEL_DEPTH: usize = 4096;
/// Frames fed to the socket before one flush, as the benchmarked server.
const WRITE_BATCH: usize = 64;
/// PUBLISHes waiting for the publisher task.
const PUBLISH_QUEUE: usize = 4096;
const REDIS_PREFIX: &str = "floor:";

struct Floor {
    topics: Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>,
    /// To the publisher task, with Redis.
    publish: Option<mpsc::Sender<(String, Utf8Bytes)>>,
    /// How often each client is pinged, if at all.
    ping: Option<Duration>,
    /// With `PING_SWEEP`: the connections' write halves, pinged by one task.
    swept: Option<Swept>,
}

/// A connection's write half, shared with the sweep.
type SharedSink = tokio::sync::Mutex<futures_util::stream::SplitSink<WebSocket, Message>>;

/// Slots swept in turn, one per tick: each connection is pinged once per
/// interval.
const SWEEP_SLOTS: usize = 20;

/// The connections the sweep pings, dealt into slots.
struct Swept {
    slots: Vec<Mutex<Vec<Weak<SharedSink>>>>,
    next: AtomicUsize,
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
    let publish = match &client {
        Some(client) => {
            let conn = client.get_multiplexed_async_connection().await?;
            let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
            tokio::spawn(publisher(conn, rx));
            Some(tx)
        }
        None => None,
    };
    let ping = std::env::var("PING_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map(Duration::from_secs);
    let swept =
        (std::env::var("PING_SWEEP").is_ok_and(|on| on == "1") && ping.is_some()).then(|| Swept {
            slots: (0..SWEEP_SLOTS).map(|_| Mutex::default()).collect(),
            next: AtomicUsize::new(0),
        });
    let floor = Arc::new(Floor {
        topics: Mutex::default(),
        publish,
        ping,
        swept,
    });
    if let Some(every) = floor.ping
        && floor.swept.is_some()
    {
        tokio::spawn(sweep(Arc::clone(&floor), every));
    }
    if let Some(client) = client {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe(format!("{REDIS_PREFIX}*")).await?;
        tokio::spawn(relay(pubsub, Arc::clone(&floor)));
    }
    let app = Router::new()
        .route("/ws/{topic}", get(upgrade))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    // TCP_NODELAY, as `realtime::serve` sets it: small frames must not wait
    // for the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// Sends every PUBLISH as soon as it is queued and collects the answers
/// while the next ones go out: a pipeline on one multiplexed connection.
async fn publisher(
    conn: redis::aio::MultiplexedConnection,
    mut queue: mpsc::Receiver<(String, Utf8Bytes)>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some((channel, frame)) = next else { break };
                let mut conn = conn.clone();
                // Unconstrained, so that Tokio's cooperative budget cannot
                // make the first poll return before the command is queued.
                let mut sent = Box::pin(tokio::task::unconstrained(async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(frame.as_bytes())
                        .exec_async(&mut conn)
                        .await
                }));
                // Polled once now, so the command is queued on the
                // connection in the order the frames came.
                let pending =
                    std::future::poll_fn(|cx| Poll::Ready(sent.as_mut().poll(cx).is_pending()))
                        .await;
                if pending {
                    in_flight.push(sent);
                }
            }
            Some(_) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

/// Hands every Redis message to the local ring of its topic.
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
    let ws = ws.read_buffer_size(2 * 1024).write_buffer_size(8 * 1024);
    match floor.swept.is_some() {
        true => ws.on_upgrade(move |socket| serve_swept(socket, floor)),
        false => ws.on_upgrade(move |socket| serve(socket, topic, floor)),
    }
}

/// Pings a slot of the connections per tick, writing each ping itself.
async fn sweep(floor: Arc<Floor>, every: Duration) {
    let Some(swept) = &floor.swept else { return };
    let mut tick = tokio::time::interval(every / SWEEP_SLOTS as u32);
    for slot in (0..SWEEP_SLOTS).cycle() {
        tick.tick().await;
        let mut sinks = std::mem::take(&mut *swept.slots[slot].lock().expect("floor lock"));
        sinks.retain(|sink| sink.strong_count() > 0);
        for (count, sink) in sinks.iter().enumerate() {
            if let Some(sink) = sink.upgrade()
                && let Ok(mut sink) = sink.try_lock()
            {
                // A ping that cannot be written at once is skipped.
                let _ = sink.send(Message::Ping(Default::default())).now_or_never();
            }
            if (count + 1) % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        swept.slots[slot]
            .lock()
            .expect("floor lock")
            .append(&mut sinks);
    }
}

/// A connection of the sweeping floor: its write half goes to the sweep,
/// and its reads (the pongs) are dropped.
async fn serve_swept(socket: WebSocket, floor: Arc<Floor>) {
    let Some(swept) = &floor.swept else { return };
    let (sink, mut stream) = socket.split();
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let slot = swept.next.fetch_add(1, Ordering::Relaxed) % SWEEP_SLOTS;
    swept.slots[slot]
        .lock()
        .expect("floor lock")
        .push(Arc::downgrade(&sink));
    while let Some(Ok(_)) = stream.next().await {}
}

async fn serve(socket: WebSocket, topic: String, floor: Arc<Floor>) {
    let channel = floor.channel(&topic);
    let events = channel.subscribe();
    let (sink, mut stream) = socket.split();
    let (replies, reply_rx) = mpsc::channel::<Utf8Bytes>(64);
    let writer = tokio::spawn(write(sink, events, reply_rx, floor.ping));
    let redis_channel = format!("{REDIS_PREFIX}{topic}");
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
                match &floor.publish {
                    Some(publish) => {
                        if publish.send((redis_channel.clone(), event)).await.is_err() {
                            break;
                        }
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

/// Waits for a frame, then feeds every frame already waiting (up to a batch)
/// and flushes once; pings every `ping`, if given.
async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut events: broadcast::Receiver<Utf8Bytes>,
    mut replies: mpsc::Receiver<Utf8Bytes>,
    ping: Option<Duration>,
) {
    let every = ping.unwrap_or(Duration::MAX / 4);
    let pinged = tokio::time::sleep(every);
    tokio::pin!(pinged);
    loop {
        let first = tokio::select! {
            () = &mut pinged, if ping.is_some() => {
                pinged.as_mut().reset(tokio::time::Instant::now() + every);
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                continue;
            }
            event = events.recv() => match event {
                Ok(frame) => frame,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            reply = replies.recv() => match reply {
                Some(frame) => frame,
                None => return,
            },
        };
        if sink.feed(Message::Text(first)).await.is_err() {
            return;
        }
        let mut fed = 1;
        while fed < WRITE_BATCH {
            let next = match replies.try_recv() {
                Ok(frame) => frame,
                Err(_) => match events.try_recv() {
                    Ok(frame) => frame,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
            };
            if sink.feed(Message::Text(next)).await.is_err() {
                return;
            }
            fed += 1;
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
