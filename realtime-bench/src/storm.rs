//! `storm`: a reconnect storm after a crash. Two `bench_server` instances
//! (history on) on one private Redis; `--clients` subscribers spread over
//! `--rooms` rooms and both instances, each following its room's positions;
//! one publisher per room on the instance that survives. Then one
//! instance is killed with SIGKILL, and its clients come back to the other
//! after a random wait in `[0, --backoff-ms)` (full jitter, as the
//! TypeScript client's first retry), each with `since` its last position.
//!
//! Reported: how many resumed with `recovered: true`, and how many were
//! refused (503 at the upgrade, 1013) or told `recovered: false`; any event
//! missed, repeated or out of order, checked against the offsets the
//! publishers were acknowledged; how long the storm took against the
//! backoff bound plus 5 s; the Redis commands it cost (`INFO
//! commandstats` before and after) per reconnecting client; and the
//! surviving instance's CPU.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::matrix::Redis;
use crate::scale::{bench_server, cpu_seconds};

/// Parameters of a `storm` run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) clients: usize,
    pub(crate) rooms: usize,
    /// Events per second over all rooms.
    pub(crate) rate: u64,
    /// The clients' first retry comes within this.
    pub(crate) backoff: Duration,
}

/// What the clients counted, together.
#[derive(Debug, Default)]
struct Tally {
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    refused_503: AtomicU64,
    closed_1013: AtomicU64,
    other_failures: AtomicU64,
    /// Events whose offset was not the one after the last seen.
    out_of_order: AtomicU64,
    /// Milliseconds after the kill at which the last resume was answered.
    last_resumed_ms: AtomicU64,
    resumed: AtomicU64,
    /// Subscribers that got their first `subscribed`.
    connected: AtomicU64,
}

/// A subscriber's view of its room: the last offset and epoch it saw.
#[derive(Debug, Default)]
struct Seen {
    offset: Option<u64>,
    epoch: String,
}

/// The text of a `subscribed` or event frame, read.
enum Frame {
    Subscribed {
        offset: u64,
        epoch: String,
        recovered: Option<bool>,
    },
    Event(u64),
    Other,
}

fn read_frame(text: &str) -> Frame {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Frame::Other;
    };
    if let Some(subscribed) = value.get("subscribed") {
        return Frame::Subscribed {
            offset: subscribed["offset"].as_u64().unwrap_or(0),
            epoch: subscribed["epoch"].as_str().unwrap_or("").to_owned(),
            recovered: subscribed["recovered"].as_bool(),
        };
    }
    match (value.get("event"), value["offset"].as_u64()) {
        (Some(_), Some(offset)) => Frame::Event(offset),
        _ => Frame::Other,
    }
}

/// One subscriber: connects to `bases[first]`, and after its socket ends
/// (the instance was killed), to the other after a jittered wait, with
/// `since` its last position. Returns the last offset it saw.
#[expect(clippy::too_many_arguments, reason = "a bench's one call site")]
async fn subscriber(
    bases: Arc<[String; 2]>,
    first: usize,
    room: usize,
    id: usize,
    gate: Arc<Semaphore>,
    tally: Arc<Tally>,
    killed: Arc<(AtomicBool, std::sync::OnceLock<Instant>)>,
    backoff: Duration,
) -> Option<u64> {
    let mut seen = Seen::default();
    let mut base = first;
    let mut resuming = false;
    loop {
        let since = match seen.offset {
            Some(offset) if resuming => format!("&since={offset}.{}", seen.epoch),
            _ => String::new(),
        };
        let url = format!("{}/room{room}?token=c{id}{since}", bases[base]);
        let permit = if resuming {
            None
        } else {
            Some(gate.acquire().await.ok()?)
        };
        let socket = tokio_tungstenite::connect_async(&url).await;
        drop(permit);
        let mut socket = match socket {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response)) if response.status() == 503 => {
                tally.refused_503.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(backoff)).await;
                continue;
            }
            Err(_) => {
                tally.other_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(backoff)).await;
                continue;
            }
        };
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => match read_frame(&text) {
                    Frame::Event(offset) => {
                        if seen.offset.is_some_and(|last| offset != last + 1) {
                            tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        seen.offset = Some(offset);
                    }
                    Frame::Subscribed {
                        offset,
                        epoch,
                        recovered,
                    } => {
                        if resuming {
                            match recovered {
                                Some(true) => &tally.recovered,
                                _ => &tally.not_recovered,
                            }
                            .fetch_add(1, Ordering::Relaxed);
                            if seen.offset != Some(offset) {
                                tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(at) = killed.1.get() {
                                let ms = at.elapsed().as_millis() as u64;
                                tally.last_resumed_ms.fetch_max(ms, Ordering::Relaxed);
                            }
                            tally.resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        if !resuming && seen.offset.is_none() {
                            tally.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        seen.offset = Some(offset);
                        seen.epoch = epoch;
                    }
                    Frame::Other => {}
                },
                Ok(Message::Close(Some(frame))) if u16::from(frame.code) == 1013 => {
                    tally.closed_1013.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if !killed.0.load(Ordering::Acquire) {
            // Ended by the run itself.
            return seen.offset;
        }
        // The instance is gone: come back to the other.
        if resuming && base != first {
            return seen.offset;
        }
        resuming = true;
        base = 1 - first;
        tokio::time::sleep(jitter(backoff)).await;
    }
}

fn jitter(bound: Duration) -> Duration {
    let millis = bound.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(0..millis))
}

/// `INFO commandstats` as command → calls.
fn command_calls(url: &str) -> Result<BTreeMap<String, u64>, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut connection = client.get_connection().map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connection)
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// Runs the storm and prints its report.
pub(crate) async fn run(options: &Options) -> Result<(), String> {
    let redis = Redis::start()?;
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..2 {
        let (server, base) = bench_server(&redis.url, &[("HISTORY", "1")])?;
        servers.push(Some(server));
        bases.push(base);
    }
    let bases: Arc<[String; 2]> = Arc::new([bases[0].clone(), bases[1].clone()]);
    let survivor_pid = servers[1].as_ref().map(|server| server.0.id()).unwrap_or(0);

    // One publisher per room, on the instance that survives; each keeps the
    // highest offset it was acknowledged.
    let publishing = Arc::new(AtomicBool::new(true));
    let mut publishers = Vec::new();
    let gap = Duration::from_secs_f64(options.rooms as f64 / options.rate.max(1) as f64);
    for room in 0..options.rooms {
        let url = format!("{}/room{room}?token=p{room}", bases[1]);
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .map_err(|e| format!("a publisher: {e}"))?;
        let publishing = Arc::clone(&publishing);
        publishers.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let acked = Arc::new(AtomicU64::new(0));
            let reader = {
                let acked = Arc::clone(&acked);
                tokio::spawn(async move {
                    while let Some(Ok(message)) = stream.next().await {
                        if let Message::Text(text) = message
                            && let Ok(value) = serde_json::from_str::<Value>(&text)
                            && let Some(offset) = value["ok"]["offset"].as_u64()
                        {
                            acked.fetch_max(offset, Ordering::Relaxed);
                        }
                    }
                })
            };
            let mut next = tokio::time::Instant::now();
            let mut id = 0_u64;
            while publishing.load(Ordering::Relaxed) {
                id += 1;
                let text = format!(r#"{{"type":"say","data":{{"text":"{id}"}},"id":{id}}}"#);
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
                next += gap;
                tokio::time::sleep_until(next).await;
            }
            // The last acknowledgements.
            tokio::time::sleep(Duration::from_secs(1)).await;
            reader.abort();
            acked.load(Ordering::Relaxed)
        }));
    }

    let tally = Arc::new(Tally::default());
    let killed = Arc::new((AtomicBool::new(false), std::sync::OnceLock::new()));
    let gate = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let mut subscribers = Vec::new();
    for id in 0..options.clients {
        subscribers.push((
            id % options.rooms,
            tokio::spawn(subscriber(
                Arc::clone(&bases),
                id % 2,
                id % options.rooms,
                id,
                Arc::clone(&gate),
                Arc::clone(&tally),
                Arc::clone(&killed),
                options.backoff,
            )),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.connected.load(Ordering::Relaxed) < options.clients as u64 {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} subscribers in after 120 s",
                tally.connected.load(Ordering::Relaxed),
                options.clients
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} subscribers in {} rooms on 2 instances, connected in {:.1} s; {} events/s",
        options.clients,
        options.rooms,
        started.elapsed().as_secs_f64(),
        options.rate
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let calls_before = command_calls(&redis.url)?;
    let cpu_before = cpu_seconds(survivor_pid)?;
    killed.0.store(true, Ordering::Release);
    let _ = killed.1.set(Instant::now());
    servers[0] = None; // SIGKILL, then reaped
    let reconnecting = options.clients.div_ceil(2) as u64;
    let deadline = Instant::now() + options.backoff + Duration::from_secs(30);
    while tally.resumed.load(Ordering::Relaxed) < reconnecting && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let storm = Instant::now() - *killed.1.get().ok_or("no kill")?;
    let cpu_after = cpu_seconds(survivor_pid)?;
    let calls_after = command_calls(&redis.url)?;

    // A little more traffic after the storm, then every subscriber must be
    // at its room's last acknowledged offset.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publishing.store(false, Ordering::Relaxed);
    let mut last = Vec::new();
    for publisher in publishers {
        last.push(publisher.await.map_err(|e| e.to_string())?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Ends the subscribers' sockets: they return what they saw.
    killed.0.store(false, Ordering::Release);
    drop(servers);
    let mut behind = 0;
    for (room, subscriber) in subscribers {
        let seen = subscriber.await.map_err(|e| e.to_string())?;
        if seen != Some(last[room]) {
            behind += 1;
        }
    }

    let resumed = tally.resumed.load(Ordering::Relaxed);
    println!(
        "storm: {resumed} of {reconnecting} resumed on the survivor, the last {:.2} s after the kill (bound: backoff {:.1} s + 5 s); took {:.1} s to see",
        tally.last_resumed_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        options.backoff.as_secs_f64(),
        storm.as_secs_f64()
    );
    println!(
        "  recovered: true {}, recovered: false {}; refused with 503 {}, closed with 1013 {}, other failures {}",
        tally.recovered.load(Ordering::Relaxed),
        tally.not_recovered.load(Ordering::Relaxed),
        tally.refused_503.load(Ordering::Relaxed),
        tally.closed_1013.load(Ordering::Relaxed),
        tally.other_failures.load(Ordering::Relaxed),
    );
    println!(
        "  events out of order or missed: {}; subscribers not at their room's last acknowledged offset: {behind}",
        tally.out_of_order.load(Ordering::Relaxed)
    );
    let mut total = 0;
    let mut lines = Vec::new();
    for (name, after) in &calls_after {
        let delta = after - calls_before.get(name).copied().unwrap_or(0);
        if delta > 0 {
            total += delta;
            lines.push(format!("{name} {delta}"));
        }
    }
    println!(
        "  Redis commands during the storm: {total} ({:.2} per reconnecting client, publishes included): {}",
        total as f64 / reconnecting as f64,
        lines.join(", ")
    );
    println!(
        "  the survivor's CPU during the storm: {:.2} s over {:.1} s",
        cpu_after - cpu_before,
        storm.as_secs_f64()
    );
    drop(redis);
    Ok(())
}
