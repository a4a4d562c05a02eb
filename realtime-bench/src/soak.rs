//! `soak`: two chat instances (the repository's example, release build) on
//! one private Redis (append-only file, `appendfsync always`), many
//! subscribers over several rooms, one publisher per room at a steady
//! rate, for minutes; optionally a Redis restart in the middle.
//!
//! Each event's text is `<seq> <sent ns>`: every subscriber checks its
//! room's sequence (lost, reordered) and the latency. The chats' resident
//! memory is sampled as the run goes, and at the end their `/metrics` are
//! read and matched against what the generator counted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::matrix::{binaries, free_port, wait_for_port, workspace_root};
use crate::stats::percentile;
use crate::workload::rss_bytes;

/// Parameters of a soak.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) connections: usize,
    pub(crate) rooms: usize,
    /// Events per second over all rooms.
    pub(crate) rate: u64,
    pub(crate) duration: Duration,
    /// Seconds into the run at which Redis is killed and started again.
    pub(crate) restart_redis_at: Option<Duration>,
    pub(crate) sample_every: Duration,
}

/// What the subscribers counted, together.
#[derive(Debug, Default)]
struct Seen {
    events: u64,
    reordered: u64,
    /// Frames of a topic's ring: events, and `join`/`leave`.
    ring_frames: u64,
    resets: u64,
    latencies_us: Vec<u32>,
}

/// What one subscriber saw.
#[derive(Debug)]
struct Subscriber {
    room: usize,
    bits: Vec<u64>,
    last: u64,
    events: u64,
    reordered: u64,
    ring_frames: u64,
    resets: u64,
    latencies_us: Vec<u32>,
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Redis with its append-only file in a directory of its own, on a fixed
/// port: a restart comes back with every acknowledged write.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Result<Self, String> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("realtime-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut redis = Self {
            child: None,
            port,
            dir,
        };
        redis.launch()?;
        Ok(redis)
    }

    fn launch(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start redis-server: {e}"))?;
        self.child = Some(child);
        wait_for_port(self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The chat instances, killed on drop.
struct Chats(Vec<(Child, u16)>);

impl Drop for Chats {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn build(root: &Path) -> Result<(), String> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "realtime-suite",
            "--example",
            "chat",
        ])
        .current_dir(root)
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err("building the chat failed".to_owned());
    }
    Ok(())
}

/// A subscriber: reads until `stop`, counting what it sees.
async fn subscribe(
    url: String,
    room: usize,
    max_seq: usize,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
) -> Result<Subscriber, String> {
    let permit = gate.acquire_owned().await.expect("open");
    let connecting = tokio_tungstenite::connect_async(url);
    let connected_now = tokio::time::timeout(Duration::from_secs(30), connecting).await;
    // Counted either way, so that the run does not wait for a failure.
    connected.fetch_add(1, Ordering::Relaxed);
    let (socket, _) = connected_now
        .map_err(|_| "connect: timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    drop(permit);
    let (_sink, mut stream) = socket.split();
    let mut seen = Subscriber {
        room,
        bits: vec![0; max_seq / 64 + 1],
        last: 0,
        events: 0,
        reordered: 0,
        ring_frames: 0,
        resets: 0,
        latencies_us: Vec::new(),
    };
    loop {
        let next = tokio::time::timeout(Duration::from_millis(250), stream.next()).await;
        let message = match next {
            Err(_) if stop.load(Ordering::Relaxed) => return Ok(seen),
            Err(_) => continue,
            Ok(Some(Ok(message))) => message,
            Ok(_) => return Err(format!("subscriber of room {room} lost its connection")),
        };
        let Message::Text(text) = message else {
            continue;
        };
        if text.contains(r#""join":"#) || text.contains(r#""leave":"#) {
            seen.ring_frames += 1;
            continue;
        }
        if text.contains(r#""reset":"#) {
            seen.resets += 1;
            continue;
        }
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(body) = frame["event"]["text"].as_str() else {
            continue;
        };
        seen.ring_frames += 1;
        let mut parts = body.split(' ');
        let (Some(Ok(seq)), Some(Ok(sent))) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        seen.events += 1;
        if seq < seen.last {
            seen.reordered += 1;
        }
        seen.last = seen.last.max(seq);
        if let Some(word) = seen.bits.get_mut(seq as usize / 64) {
            *word |= 1 << (seq % 64);
        }
        let latency = now_ns(epoch).saturating_sub(sent) / 1000;
        seen.latencies_us
            .push(latency.min(u64::from(u32::MAX)) as u32);
    }
}

/// Counts of one room's publisher.
#[derive(Debug, Default)]
struct Published {
    /// Sequence numbers the server acknowledged.
    acked: Vec<u64>,
    refused: u64,
    /// Frames of its room's ring it received (its own events, and joins).
    ring_frames: u64,
}

/// A room's publisher: one `say` every `every`, until `stop`.
async fn publish(
    url: String,
    every: Duration,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Published, String> {
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect a publisher: {e}"))?;
    let (mut sink, mut stream) = socket.split();
    let published = Arc::new(Mutex::new(Published::default()));
    let answers = Arc::clone(&published);
    // Answers come back on the read side; events of the room too (ignored).
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if !text.contains(r#""reply_to":"#) {
                if text.contains(r#""event":"#)
                    || text.contains(r#""join":"#)
                    || text.contains(r#""leave":"#)
                {
                    answers.lock().expect("lock").ring_frames += 1;
                }
                continue;
            }
            let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let Some(seq) = frame["reply_to"].as_u64() else {
                continue;
            };
            let mut published = answers.lock().expect("lock");
            if frame.get("error").is_some() {
                published.refused += 1;
            } else {
                published.acked.push(seq);
            }
        }
    });
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        seq += 1;
        let say = serde_json::json!({
            "type": "say",
            "data": {"text": format!("{seq} {}", now_ns(epoch))},
            "id": seq,
        });
        if sink.send(Message::text(say.to_string())).await.is_err() {
            break;
        }
    }
    // The last answers, then a proper close.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = sink.send(Message::Close(None)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.abort();
    let published = std::mem::take(&mut *published.lock().expect("lock"));
    Ok(published)
}

/// The sum of a series over both chats' `/metrics`, every label together.
async fn scrape(ports: &[u16], name: &str) -> f64 {
    let mut total = 0.0;
    for port in ports {
        let Ok(text) = http_get(*port, "/metrics").await else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                total += value;
            }
        }
    }
    total
}

async fn http_get(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// Runs the soak and prints its report.
pub(crate) async fn run(options: &Options) -> Result<(), String> {
    build(&workspace_root())?;
    let binary = binaries()?.join("examples").join("chat");
    let mut redis = Redis::start()?;
    let mut chats = Chats(Vec::new());
    for _ in 0..2 {
        let port = free_port()?;
        let child = Command::new(&binary)
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis.url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start the chat: {e}"))?;
        wait_for_port(port)?;
        chats.0.push((child, port));
    }
    let ports: Vec<u16> = chats.0.iter().map(|(_, port)| *port).collect();
    let pids: Vec<u32> = chats.0.iter().map(|(child, _)| child.id()).collect();
    let url = |n: usize, room: usize, token: &str| {
        format!(
            "ws://127.0.0.1:{}/ws/soak{room}?token={token}",
            ports[n % ports.len()]
        )
    };

    let epoch = Instant::now();
    let per_room = Duration::from_secs_f64(options.rooms as f64 / options.rate as f64);
    let max_seq = (options.duration.as_secs_f64() / per_room.as_secs_f64()) as usize + 64;
    // Publishers stop first; subscribers read on until the last events
    // have arrived and the metrics were read.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reading = Arc::new(AtomicBool::new(false));
    let rss_before: Vec<u64> = pids
        .iter()
        .map(|pid| rss_bytes(*pid).unwrap_or(0))
        .collect();
    let gate = Arc::new(Semaphore::new(64));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut subscribers = Vec::new();
    for n in 0..options.connections {
        let room = n % options.rooms;
        subscribers.push(tokio::spawn(subscribe(
            url(n, room, &format!("s{n}")),
            room,
            max_seq,
            epoch,
            Arc::clone(&stop_reading),
            Arc::clone(&gate),
            Arc::clone(&connected),
        )));
    }
    // Everyone in before the first event.
    while connected.load(Ordering::Relaxed) < options.connections {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "soak: {} subscribers connected in {:?}",
        options.connections,
        epoch.elapsed()
    );
    let started = Instant::now();
    let mut publishers = Vec::new();
    for room in 0..options.rooms {
        publishers.push(tokio::spawn(publish(
            url(room + 1, room, &format!("p{room}")),
            per_room,
            epoch,
            Arc::clone(&stop),
        )));
    }

    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut restart = options.restart_redis_at;
    while started.elapsed() < options.duration {
        let elapsed = started.elapsed();
        if restart.is_some_and(|at| elapsed >= at) {
            restart = None;
            eprintln!("soak: restarting Redis at {elapsed:?}");
            redis.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.launch()?;
        }
        if elapsed >= next_sample {
            let rss: Vec<u64> = pids
                .iter()
                .map(|pid| rss_bytes(*pid).unwrap_or(0))
                .collect();
            eprintln!(
                "soak: {:>4} s  rss {:?} MiB",
                elapsed.as_secs(),
                rss.iter().map(|b| b / (1 << 20)).collect::<Vec<_>>()
            );
            samples.push((elapsed.as_secs(), rss));
            next_sample += options.sample_every;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for publisher in publishers {
        sent.push(publisher.await.map_err(|e| e.to_string())??);
    }
    // The last events' way to the subscribers; the metrics are read while
    // every connection is still open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut scraped = Vec::new();
    for name in [
        "realtime_events_published_total",
        "realtime_events_delivered_total",
        "realtime_broker_publish_errors_total",
        "realtime_connections",
        "realtime_connections_accepted_total",
        "realtime_broker_reconnects_total",
        "realtime_history_gap_fills_total",
        "realtime_topic_resets_total",
        "realtime_slow_closes_total",
        "realtime_connection_ends_total",
    ] {
        scraped.push((name, scrape(&ports, name).await));
    }
    stop_reading.store(true, Ordering::Relaxed);
    let mut seen = Seen::default();
    let mut lost = 0u64;
    let mut failures = Vec::new();
    let mut subscriber_results = Vec::new();
    for subscriber in subscribers {
        match subscriber.await.map_err(|e| e.to_string())? {
            Ok(one) => subscriber_results.push(one),
            Err(error) => failures.push(error),
        }
    }
    for one in &subscriber_results {
        for seq in &sent[one.room].acked {
            let bit = one
                .bits
                .get(*seq as usize / 64)
                .map_or(0, |word| (word >> (seq % 64)) & 1);
            if bit == 0 {
                lost += 1;
            }
        }
        seen.events += one.events;
        seen.reordered += one.reordered;
        seen.ring_frames += one.ring_frames;
        seen.resets += one.resets;
        seen.latencies_us.extend_from_slice(&one.latencies_us);
    }
    let mut latencies: Vec<u64> = seen.latencies_us.iter().map(|us| u64::from(*us)).collect();
    latencies.sort_unstable();
    let acked: usize = sent.iter().map(|room| room.acked.len()).sum();
    let refused: u64 = sent.iter().map(|room| room.refused).sum();
    let expected: u64 = subscriber_results
        .iter()
        .map(|one| sent[one.room].acked.len() as u64)
        .sum();

    println!("## soak");
    println!();
    println!(
        "{} subscribers in {} rooms on 2 chat instances, one publisher per room, {} events/s in all, {:?}{}",
        options.connections,
        options.rooms,
        options.rate,
        options.duration,
        match options.restart_redis_at {
            Some(at) => format!(", Redis killed and restarted at {at:?}"),
            None => String::new(),
        }
    );
    println!();
    println!("| t (s) | RSS instance 1 (MiB) | RSS instance 2 (MiB) |");
    println!("|---|---|---|");
    println!(
        "| before | {} | {} |",
        rss_before[0] >> 20,
        rss_before[1] >> 20
    );
    for (at, rss) in &samples {
        println!("| {at} | {} | {} |", rss[0] >> 20, rss[1] >> 20);
    }
    println!();
    println!("| | value |");
    println!("|---|---|");
    println!("| events acknowledged / refused (503) | {acked} / {refused} |");
    println!("| deliveries expected (acknowledged × subscribers of the room) | {expected} |");
    println!("| events received | {} |", seen.events);
    println!("| lost (acknowledged, never received) | {lost} |");
    println!("| reordered | {} |", seen.reordered);
    println!("| `reset` frames | {} |", seen.resets);
    println!(
        "| subscribers that lost their connection | {} |",
        failures.len()
    );
    println!(
        "| latency p50 / p99 / max | {:.1} ms / {:.1} ms / {:.1} ms |",
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!();
    let publishers_frames: u64 = sent.iter().map(|room| room.ring_frames).sum();
    let counted = |name: &str| match name {
        "realtime_events_published_total" => format!("{acked} acknowledged"),
        "realtime_events_delivered_total" => format!(
            "{} ring frames received ({} by subscribers, {publishers_frames} by publishers)",
            seen.ring_frames + publishers_frames,
            seen.ring_frames
        ),
        "realtime_broker_publish_errors_total" => format!("{refused} refused"),
        // The publishers closed (a close frame each) once they were done.
        "realtime_connections" => format!("{} subscribers open", subscriber_results.len()),
        _ => String::new(),
    };
    println!("| series (both instances, before the clients closed) | /metrics | generator |");
    println!("|---|---|---|");
    for (name, value) in &scraped {
        println!("| {name} | {value} | {} |", counted(name));
    }
    for failure in failures.iter().take(5) {
        eprintln!("soak: a subscriber failed: {failure}");
    }
    Ok(())
}
