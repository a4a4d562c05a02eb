//! `scale`: many idle connections over several instances on one Redis, as
//! production runs them, and what they cost.
//!
//! A process here may hold at most 20,000 files (the hard limit cannot be
//! raised), so 100,000 sockets are held by several `bench_server`
//! instances on one private Redis, and by several client processes
//! (`scale-client`, this binary again), each connecting from its own
//! source address (127.0.0.2 and up) so that no address runs out of ports.
//! Then, in order:
//!
//! 1. resident memory per connection: each instance's RSS once every
//!    socket is in, less its RSS before;
//! 2. idle CPU: the instances' user and system time over `--idle-secs`
//!    (two ping rounds by default), as a share of one core per 100,000
//!    connections;
//! 3. one event to every subscriber of the one topic, across the
//!    instances: how long until the last got it, and the p99;
//! 4. `--rate` events a second for `--seconds`: every delivery counted
//!    (lost = sent × connections − received), and the p99.
//!
//! Latency is from the publisher's wall clock to the subscriber's (one
//! machine, one clock), in a log histogram each client process keeps.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::matrix::{Redis, binaries, free_port, wait_for_port};
use crate::workload::rss_bytes;

/// Parameters of a `scale` run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) instances: usize,
    pub(crate) connections: usize,
    pub(crate) clients: usize,
    pub(crate) idle: Duration,
    pub(crate) rate: u64,
    pub(crate) seconds: u64,
    /// Runs the floor server (pinging every 25 s, as `Config::ping_interval`'s
    /// default) in place of `bench_server`: the same connections, memory
    /// and idle CPU; then one event to all with the timer floor, and no
    /// steady rate, since the floor acknowledges no broadcast.
    pub(crate) floor: Option<Floor>,
    /// Each client does what the TypeScript client's watchdog does: after
    /// this long without a text frame from the server (a browser sees no
    /// WebSocket ping), it sends a `$ping`. `None`: it only answers pings.
    pub(crate) watchdog: Option<Duration>,
    /// Each client asks for the heartbeat as text (`?heartbeat=text`) and
    /// answers it with a `$ping` that has no id, as the TypeScript client
    /// does.
    pub(crate) text_heartbeat: bool,
}

/// Which floor server `scale` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// Each connection's write task pings from a timer of its own.
    Timer,
    /// One task pings every connection, a slot per tick, writing the pings
    /// itself; connections only read (no topics: no event is delivered).
    Sweep,
}

/// Histogram buckets: eight per power of two of microseconds, to 2^27 µs.
const BUCKETS: usize = 8 * 27;

fn bucket_of(micros: u64) -> usize {
    let micros = micros.max(1) as f64;
    ((micros.log2() * 8.0) as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn bucket_bound(bucket: usize) -> u64 {
    2f64.powf((bucket + 1) as f64 / 8.0).ceil() as u64
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// A latency histogram shared by a client process's sockets.
struct Histogram {
    counts: Vec<AtomicU64>,
    received: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    fn record(&self, micros: u64) {
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    fn reset(&self) {
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
        self.received.store(0, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }

    /// `received max count0,count1,...`
    fn line(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed).to_string())
            .collect();
        format!(
            "{} {} {}",
            self.received.load(Ordering::Relaxed),
            self.max.load(Ordering::Relaxed),
            counts.join(",")
        )
    }
}

/// `scale-client`: holds `connections` sockets from `source` to `urls` in
/// turn, records the latency of every event, sends a `$ping` after
/// `watchdog` without a text frame (if given), answers the text heartbeat
/// (asked for with `text_heartbeat`), and answers the commands on
/// stdin: `mark` (start counting again; answers `marked`) and `report`
/// (a line on stdout).
/// Prints `ready <held>` once every socket is in.
pub(crate) async fn client(
    source: Ipv4Addr,
    urls: &[String],
    topic: &str,
    connections: usize,
    watchdog: Option<Duration>,
    text_heartbeat: bool,
) -> Result<(), String> {
    let histogram = Arc::new(Histogram::new());
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::with_capacity(connections);
    for n in 0..connections {
        let base = &urls[n % urls.len()];
        let heartbeat = if text_heartbeat {
            "&heartbeat=text"
        } else {
            ""
        };
        let url = format!("{base}/{topic}?token={source}-{n}{heartbeat}");
        let port: u16 = base
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| format!("no port in {base}"))?;
        let gate = Arc::clone(&gate);
        let histogram = Arc::clone(&histogram);
        connecting.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("open");
            let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::from((source, 0)))
                .map_err(|e| format!("bind {source}: {e}"))?;
            let stream = socket
                .connect(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (mut socket, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
            drop(permit);
            // Reading answers the server's pings; every event is timed.
            tokio::spawn(async move {
                let every = watchdog.unwrap_or(Duration::MAX / 4);
                let silence = tokio::time::sleep(every);
                tokio::pin!(silence);
                let mut pings = 0_u64;
                loop {
                    let next = tokio::select! {
                        () = &mut silence, if watchdog.is_some() => {
                            pings += 1;
                            let ping = format!(r#"{{"type":"$ping","id":{pings}}}"#);
                            if socket.send(Message::text(ping)).await.is_err() {
                                break;
                            }
                            silence.as_mut().reset(tokio::time::Instant::now() + every);
                            continue;
                        }
                        next = socket.next() => next,
                    };
                    match next {
                        Some(Ok(Message::Text(text))) => {
                            if watchdog.is_some() {
                                silence.as_mut().reset(tokio::time::Instant::now() + every);
                            }
                            if text.as_str() == r#"{"heartbeat":{}}"# {
                                let alive = Message::text(r#"{"type":"$ping"}"#);
                                if socket.send(alive).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            if let Some(sent) = sent_at(&text) {
                                histogram.record(unix_micros().saturating_sub(sent));
                            }
                        }
                        Some(Ok(Message::Close(close))) => {
                            let code = close.map_or(1005, |close| u16::from(close.code));
                            eprintln!("scale-client: closed by the server with {code}");
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => {
                            eprintln!("scale-client: socket failed: {error}");
                            break;
                        }
                        None => break,
                    }
                }
            });
            Ok::<(), String>(())
        }));
    }
    let mut held = 0;
    for task in connecting {
        if task.await.map_err(|e| e.to_string())?.is_ok() {
            held += 1;
        }
    }
    println!("ready {held}");
    let mut lines = BufReader::new(std::io::stdin()).lines();
    let histogram = Arc::clone(&histogram);
    tokio::task::spawn_blocking(move || {
        while let Some(Ok(line)) = lines.next() {
            match line.trim() {
                "mark" => {
                    histogram.reset();
                    println!("marked");
                }
                "report" => println!("report {}", histogram.line()),
                _ => {}
            }
            let _ = std::io::stdout().flush();
        }
    })
    .await
    .map_err(|e| e.to_string())
}

/// The publisher's clock in an event: `{"text":"<unix µs>"}`.
fn sent_at(frame: &str) -> Option<u64> {
    let start = frame.find("\"text\":\"")? + 8;
    let rest = &frame[start..];
    rest[..rest.find('"')?].parse().ok()
}

/// A child process killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client process, its stdin for commands and stdout for answers.
struct ClientProcess {
    _process: Process,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ClientProcess {
    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("read a client's answer: {e}"))?;
        if line.is_empty() {
            return Err("a client process ended".to_owned());
        }
        Ok(line.trim().to_owned())
    }

    fn command(&mut self, command: &str) -> Result<(), String> {
        writeln!(self.stdin, "{command}").map_err(|e| format!("command a client: {e}"))
    }
}

/// Merged reports: deliveries, the largest latency, and the buckets.
#[derive(Debug, Default)]
struct Merged {
    received: u64,
    max_us: u64,
    counts: Vec<u64>,
}

impl Merged {
    fn add(&mut self, line: &str) -> Result<(), String> {
        let mut parts = line.split_whitespace().skip(1);
        let mut next = || parts.next().ok_or("a short report".to_owned());
        self.received += next()?.parse::<u64>().map_err(|e| e.to_string())?;
        self.max_us = self
            .max_us
            .max(next()?.parse::<u64>().map_err(|e| e.to_string())?);
        let counts: Vec<u64> = next()?
            .split(',')
            .map(|count| count.parse().unwrap_or(0))
            .collect();
        if self.counts.is_empty() {
            self.counts = vec![0; counts.len()];
        }
        for (total, count) in self.counts.iter_mut().zip(counts) {
            *total += count;
        }
        Ok(())
    }

    /// The latency below which `p` of the deliveries came, in µs (a
    /// bucket's upper bound: within 9 %).
    fn percentile_us(&self, p: f64) -> u64 {
        let total: u64 = self.counts.iter().sum();
        let wanted = (total as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= wanted && *count > 0 {
                return bucket_bound(bucket).min(self.max_us);
            }
        }
        self.max_us
    }
}

/// User plus system CPU time of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the line.
    let rest = &stat[stat.rfind(')').ok_or("unreadable stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().map_err(|e| e.to_string())?
        + fields[12].parse::<u64>().map_err(|e| e.to_string())?;
    // USER_HZ is 100 on Linux.
    Ok(ticks as f64 / 100.0)
}

/// Starts every client's count again, and waits until each has: a
/// delivery counted before its reset would be lost from the next phase.
fn mark_all(clients: &mut [ClientProcess]) -> Result<(), String> {
    for client in clients.iter_mut() {
        client.command("mark")?;
    }
    for client in clients.iter_mut() {
        let line = client.line()?;
        if line != "marked" {
            return Err(format!("a client answered `{line}` to mark"));
        }
    }
    Ok(())
}

fn report_all(clients: &mut [ClientProcess]) -> Result<Merged, String> {
    let mut merged = Merged::default();
    for client in clients.iter_mut() {
        client.command("report")?;
    }
    for client in clients.iter_mut() {
        merged.add(&client.line()?)?;
    }
    Ok(merged)
}

/// Polls the clients until `expected` deliveries arrived, or nothing more
/// came for five seconds.
async fn drained(clients: &mut [ClientProcess], expected: u64) -> Result<Merged, String> {
    let mut last = (0, Instant::now());
    loop {
        let merged = report_all(clients)?;
        if merged.received >= expected {
            return Ok(merged);
        }
        if merged.received != last.0 {
            last = (merged.received, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return Ok(merged);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a release `bench_server` on a free port, on the Redis at
/// `redis_url`, with `env` besides; returns it and its WebSocket URL.
pub(crate) fn bench_server(
    redis_url: &str,
    env: &[(&str, &str)],
) -> Result<(Process, String), String> {
    let server = binaries()?.join("examples").join("bench_server");
    let mut all = vec![("RUST_LOG", "warn")];
    all.extend_from_slice(env);
    start(
        &server,
        "cargo build --release -p realtime-suite --example bench_server",
        redis_url,
        &all,
    )
}

/// Starts a floor server (see `src/bin/floor-server.rs`) that pings its
/// clients every 25 s; returns it and its WebSocket base URL.
fn floor_server(redis_url: &str, floor: Floor) -> Result<(Process, String), String> {
    let server = binaries()?.join("floor-server");
    let sweep = if floor == Floor::Sweep { "1" } else { "0" };
    start(
        &server,
        "cargo build --release -p realtime-bench --bin floor-server",
        redis_url,
        &[("PING_SECS", "25"), ("PING_SWEEP", sweep)],
    )
}

/// Starts the server binary at `server` (built by `build`) on a free port,
/// on the Redis at `redis_url`, with `env`; waits until it listens.
fn start(
    server: &std::path::Path,
    build: &str,
    redis_url: &str,
    env: &[(&str, &str)],
) -> Result<(Process, String), String> {
    if !server.exists() {
        return Err(format!("{} is missing: {build}", server.display()));
    }
    let port = free_port()?;
    let child = Command::new(server)
        .env("PORT", port.to_string())
        .env("REDIS_URL", redis_url)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", server.display()))?;
    let server = Process(child);
    wait_for_port(port)?;
    Ok((server, format!("ws://127.0.0.1:{port}/ws")))
}

/// Runs the whole measurement and prints its report.
pub(crate) async fn run(options: &Options) -> Result<(), String> {
    let redis = Redis::start()?;
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..options.instances {
        let (server, url) = match options.floor {
            Some(floor) => floor_server(&redis.url, floor)?,
            None => bench_server(&redis.url, &[])?,
        };
        servers.push(server);
        urls.push(url);
    }
    let pids: Vec<u32> = servers.iter().map(|server| server.0.id()).collect();
    // Let the instances settle before their baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: u64 = pids
        .iter()
        .map(|pid| rss_bytes(*pid))
        .sum::<Result<u64, String>>()?;

    let topic = format!("scale{}", unix_micros());
    let started = Instant::now();
    let per_client = options.connections.div_ceil(options.clients);
    let mut clients = Vec::new();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    for index in 0..options.clients {
        let count = per_client.min(options.connections - index * per_client);
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            2 + u8::try_from(index).map_err(|e| e.to_string())?,
        );
        let mut command = Command::new(&me);
        command
            .args(["scale-client", "--source", &source.to_string()])
            .args(["--topic", &topic, "--conns", &count.to_string()]);
        if let Some(watchdog) = options.watchdog {
            command.args(["--watchdog-secs", &watchdog.as_secs().to_string()]);
        }
        if options.text_heartbeat {
            command.arg("--text-heartbeat");
        }
        for url in &urls {
            command.args(["--url", url]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start a client process: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        clients.push(ClientProcess {
            _process: Process(child),
            stdin,
            stdout,
        });
    }
    let mut held = 0_u64;
    for client in &mut clients {
        let line = client.line()?;
        held += line
            .strip_prefix("ready ")
            .and_then(|count| count.parse::<u64>().ok())
            .ok_or_else(|| format!("a client said `{line}`"))?;
    }
    let connected_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: u64 = pids
        .iter()
        .map(|pid| rss_bytes(*pid))
        .sum::<Result<u64, String>>()?;
    let per_connection = after.saturating_sub(before) as f64 / held.max(1) as f64 / 1024.0;
    println!(
        "connections: {held} of {} held over {} instances and {} client processes, in {:.1} s",
        options.connections,
        options.instances,
        options.clients,
        connected_in.as_secs_f64()
    );
    println!("memory: {per_connection:.2} KiB resident per connection (the instances' RSS)");

    let cpu_before: f64 = pids
        .iter()
        .map(|pid| cpu_seconds(*pid))
        .sum::<Result<f64, String>>()?;
    tokio::time::sleep(options.idle).await;
    let cpu_after: f64 = pids
        .iter()
        .map(|pid| cpu_seconds(*pid))
        .sum::<Result<f64, String>>()?;
    let share = (cpu_after - cpu_before) / options.idle.as_secs_f64();
    let per_100k = share * 100_000.0 / held.max(1) as f64 * 100.0;
    println!(
        "idle CPU: {:.2} s over {} s, {per_100k:.1} % of one core per 100,000 connections",
        cpu_after - cpu_before,
        options.idle.as_secs()
    );

    if options.floor == Some(Floor::Sweep) {
        return Ok(());
    }
    let publisher_url = format!("{}/{topic}?token=publisher", urls[0]);
    let (mut publisher, _) = tokio_tungstenite::connect_async(publisher_url)
        .await
        .map_err(|e| format!("the publisher: {e}"))?;
    let say = |id: u64| {
        let text = format!(
            r#"{{"type":"say","data":{{"text":"{}"}},"id":{id}}}"#,
            unix_micros()
        );
        Message::text(text)
    };
    mark_all(&mut clients)?;
    // The publisher is a subscriber too: it is not counted.
    publisher
        .send(say(1))
        .await
        .map_err(|e| format!("publish: {e}"))?;
    let one = drained(&mut clients, held).await?;
    println!(
        "one event to all: {} of {held} delivered; p50 {:.1} ms, p99 {:.1} ms, last {:.1} ms",
        one.received,
        one.percentile_us(0.5) as f64 / 1000.0,
        one.percentile_us(0.99) as f64 / 1000.0,
        one.max_us as f64 / 1000.0
    );

    if options.floor.is_some() {
        return Ok(());
    }
    mark_all(&mut clients)?;
    let events = options.rate * options.seconds;
    let sent_again = steady_rate(publisher, options.rate, events).await?;
    let expected = events * held;
    let steady = drained(&mut clients, expected).await?;
    println!(
        "{} events/s for {} s: {} of {expected} delivered, {} lost ({sent_again} refused with 503 and sent again); p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        options.rate,
        options.seconds,
        steady.received,
        expected.saturating_sub(steady.received),
        steady.percentile_us(0.5) as f64 / 1000.0,
        steady.percentile_us(0.99) as f64 / 1000.0,
        steady.max_us as f64 / 1000.0
    );
    drop(clients);
    drop(servers);
    drop(redis);
    Ok(())
}

/// How long the publisher waits for the last answers of the steady phase.
const ANSWERS_WITHIN: Duration = Duration::from_secs(60);

/// Publishes `events` at `rate` a second, each under an idempotency key,
/// as a client that keeps the protocol does: a broadcast answered with 503
/// (the broker did not take it in time; it may or may not be published) is
/// sent again under its key, so that it is published once. Returns how
/// many were sent again, once every broadcast is acknowledged.
async fn steady_rate(
    publisher: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    rate: u64,
    events: u64,
) -> Result<u64, String> {
    let (mut sink, mut stream) = publisher.split();
    let (refused, mut to_resend) = tokio::sync::mpsc::unbounded_channel();
    let (acked, mut acks) = tokio::sync::mpsc::unbounded_channel();
    // The publisher's own copies are dropped; answers are sorted.
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(answer) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let Some(id) = answer["reply_to"].as_u64() else {
                continue;
            };
            let _ = match answer["error"]["code"].as_u64() {
                Some(503) => refused.send(id),
                Some(code) => panic!("broadcast {id} refused with {code}: {answer}"),
                None => acked.send(id),
            };
        }
    });
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    // Each broadcast as first written: its clock stays the first send's.
    let mut unanswered = std::collections::HashMap::new();
    let mut sent_again = 0;
    let mut next = tokio::time::Instant::now();
    let mut id = 2;
    let deadline = || tokio::time::Instant::now() + ANSWERS_WITHIN;
    let mut until = deadline();
    while id < events + 2 || !unanswered.is_empty() {
        while let Ok(answered) = acks.try_recv() {
            unanswered.remove(&answered);
        }
        while let Ok(refused) = to_resend.try_recv() {
            if let Some(text) = unanswered.get(&refused) {
                sent_again += 1;
                sink.send(Message::text(String::clone(text)))
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
            }
        }
        if id < events + 2 {
            let text = format!(
                r#"{{"type":"say","data":{{"text":"{}"}},"id":{id},"idempotency_key":"k{id}"}}"#,
                unix_micros()
            );
            unanswered.insert(id, text.clone());
            sink.send(Message::text(text))
                .await
                .map_err(|e| format!("publish: {e}"))?;
            id += 1;
            next += gap;
            until = deadline();
        } else if tokio::time::Instant::now() > until {
            reader.abort();
            return Err(format!("{} broadcasts unanswered", unanswered.len()));
        } else {
            next = tokio::time::Instant::now() + Duration::from_millis(10);
        }
        tokio::time::sleep_until(next).await;
    }
    reader.abort();
    Ok(sent_again)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for micros in [1, 7, 100, 999, 12_345, 2_000_000] {
            let bucket = bucket_of(micros);
            assert!(bucket_bound(bucket) >= micros, "{micros}");
            assert!(
                bucket == 0 || bucket_bound(bucket - 1) <= micros + 1,
                "{micros}"
            );
        }
    }

    #[test]
    fn reads_the_sent_time() {
        let frame = r#"{"topic":"t","event":{"text":"1733456789000123"}}"#;
        assert_eq!(sent_at(frame), Some(1_733_456_789_000_123));
    }
}
