//! The three workloads, over real WebSockets to 127.0.0.1, each bounded in
//! count and time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::percentile;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a subscriber waits for the next event once publishing is done,
/// before it counts the rest as lost.
const DRAIN_IDLE: Duration = Duration::from_secs(5);
/// The longest any one workload may run.
const WORKLOAD_DEADLINE: Duration = Duration::from_secs(120);
/// Connection attempts in flight at once.
const CONNECT_CONCURRENCY: usize = 64;

fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Connects `count` clients to the `{base}/{topic}` URLs in turn.
async fn connect_many(
    bases: &[String],
    topic: &str,
    count: usize,
    tag: &str,
) -> Result<Vec<Socket>, String> {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let url = format!("{}/{topic}?token={tag}{n}", bases[n % bases.len()]);
        let gate = Arc::clone(&gate);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore open");
            let connecting = tokio_tungstenite::connect_async(url);
            match tokio::time::timeout(Duration::from_secs(20), connecting).await {
                Ok(Ok((socket, _))) => Ok(socket),
                Ok(Err(error)) => Err(format!("connect: {error}")),
                Err(_) => Err("connect: timed out".to_owned()),
            }
        }));
    }
    let mut sockets = Vec::with_capacity(count);
    for task in tasks {
        sockets.push(task.await.map_err(|e| e.to_string())??);
    }
    Ok(sockets)
}

/// Parameters of a fan-out run.
#[derive(Debug, Clone)]
pub(crate) struct Fanout {
    pub(crate) bases: Vec<String>,
    pub(crate) subscribers: usize,
    pub(crate) publishers: usize,
    pub(crate) messages: usize,
    /// Messages per second over all publishers; `None`: as fast as possible.
    pub(crate) rate: Option<u64>,
    /// Subscribers on the first node only and publishers on the last, so
    /// that every event crosses the broker; otherwise subscribers go round
    /// the nodes and publishers sit on the first.
    pub(crate) apart: bool,
    /// Each event's text is padded to at least this many bytes (0: no
    /// padding, about 30 bytes): the size of what is fanned out.
    pub(crate) pad: usize,
}

/// What a fan-out run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct FanoutReport {
    pub(crate) delivered: usize,
    pub(crate) expected: usize,
    pub(crate) lost: usize,
    pub(crate) reordered: usize,
    pub(crate) per_sec: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
}

struct SubscriberResult {
    received: usize,
    reordered: usize,
    latencies: Vec<u64>,
    last_at: u64,
}

/// Reads the `text` of an event frame: `"text":"<p>:<seq>:<nanos>"`.
fn parse_event(frame: &str) -> Option<(usize, u64, u64)> {
    let start = frame.find("\"text\":\"")? + 8;
    let rest = &frame[start..];
    let end = rest.find('"')?;
    let mut parts = rest[..end].split(':');
    let publisher = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((publisher, seq, sent))
}

async fn subscribe(
    mut stream: SplitStream<Socket>,
    publishers: usize,
    expected: usize,
    warmed: Arc<AtomicUsize>,
) -> SubscriberResult {
    let mut next_seq = vec![0u64; publishers];
    let mut result = SubscriberResult {
        received: 0,
        reordered: 0,
        latencies: Vec::with_capacity(expected),
        last_at: 0,
    };
    let mut warm = false;
    while result.received < expected {
        let Ok(Some(Ok(next))) = tokio::time::timeout(DRAIN_IDLE, stream.next()).await else {
            break;
        };
        let Message::Text(text) = next else { continue };
        let Some((publisher, seq, sent)) = parse_event(&text) else {
            if !warm && text.contains("warmup") {
                warm = true;
                warmed.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        };
        let now = clock();
        if publisher < publishers {
            if seq != next_seq[publisher] {
                result.reordered += 1;
            }
            next_seq[publisher] = seq + 1;
        }
        result.latencies.push(now.saturating_sub(sent) / 1000);
        result.received += 1;
        result.last_at = now;
    }
    result
}

/// Sends `count` events; returns when it started and the socket, which stays
/// open until the subscribers are done.
async fn publish(
    mut sink: SplitSink<Socket, Message>,
    id: usize,
    count: usize,
    rate: Option<f64>,
    pad: usize,
) -> Result<(u64, SplitSink<Socket, Message>), String> {
    let started = clock();
    let mut ticker = rate.map(|rate| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    for seq in 0..count {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let mut text = format!("{id}:{seq}:{}:", clock());
        while text.len() < pad {
            text.push('x');
        }
        let frame = format!(r#"{{"type":"say","data":{{"text":"{text}"}}}}"#);
        sink.feed(Message::text(frame))
            .await
            .map_err(|e| e.to_string())?;
        if ticker.is_some() || seq % 64 == 63 {
            sink.flush().await.map_err(|e| e.to_string())?;
        }
    }
    sink.flush().await.map_err(|e| e.to_string())?;
    Ok((started, sink))
}

/// S subscribers, P publishers, M messages in all.
pub(crate) async fn fanout(spec: &Fanout) -> Result<FanoutReport, String> {
    tokio::time::timeout(WORKLOAD_DEADLINE, fanout_inner(spec))
        .await
        .map_err(|_| "fan-out run passed its deadline".to_owned())?
}

async fn fanout_inner(spec: &Fanout) -> Result<FanoutReport, String> {
    let topic = format!("bench{}", clock());
    let (sub_bases, pub_bases) = if spec.apart {
        (&spec.bases[..1], &spec.bases[spec.bases.len() - 1..])
    } else {
        (&spec.bases[..], &spec.bases[..1])
    };
    let subscribers = connect_many(sub_bases, &topic, spec.subscribers, "sub").await?;
    let publishers = connect_many(pub_bases, &topic, spec.publishers, "pub").await?;
    let per_publisher = spec.messages / spec.publishers;
    let expected = per_publisher * spec.publishers;

    let warmed = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::with_capacity(subscribers.len());
    // The write halves stay here so the sockets stay open for the run.
    let mut open = Vec::with_capacity(subscribers.len());
    for socket in subscribers {
        let (sink, stream) = socket.split();
        open.push(sink);
        readers.push(tokio::spawn(subscribe(
            stream,
            spec.publishers,
            expected,
            Arc::clone(&warmed),
        )));
    }
    let mut sinks = Vec::new();
    for socket in publishers {
        let (sink, stream) = socket.split();
        // Publishers receive the events too; drain them so they never block.
        tokio::spawn(stream.for_each(|_| async {}));
        sinks.push(sink);
    }
    // Every subscriber (on every node) is ready once it has seen the warm-up.
    let warmup = Message::text(r#"{"type":"say","data":{"text":"warmup"}}"#);
    sinks[0].send(warmup).await.map_err(|e| e.to_string())?;
    let ready_by = Instant::now() + Duration::from_secs(20);
    while warmed.load(Ordering::SeqCst) < spec.subscribers {
        if Instant::now() > ready_by {
            return Err(format!(
                "only {} of {} subscribers saw the warm-up",
                warmed.load(Ordering::SeqCst),
                spec.subscribers
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let rate = spec.rate.map(|rate| rate as f64 / spec.publishers as f64);
    let mut senders = Vec::new();
    for (id, sink) in sinks.into_iter().enumerate() {
        senders.push(tokio::spawn(publish(
            sink,
            id,
            per_publisher,
            rate,
            spec.pad,
        )));
    }
    let mut first_send = u64::MAX;
    for sender in senders {
        let (started, sink) = sender.await.map_err(|e| e.to_string())??;
        first_send = first_send.min(started);
        open.push(sink);
    }
    let mut report = FanoutReport {
        expected: expected * spec.subscribers,
        ..FanoutReport::default()
    };
    let mut latencies = Vec::with_capacity(report.expected);
    let mut last = first_send;
    for reader in readers {
        let result = reader.await.map_err(|e| e.to_string())?;
        report.delivered += result.received;
        report.reordered += result.reordered;
        last = last.max(result.last_at);
        latencies.extend(result.latencies);
    }
    drop(open);
    latencies.sort_unstable();
    report.lost = report.expected - report.delivered;
    let elapsed = (last.saturating_sub(first_send)) as f64 / 1e9;
    report.per_sec = if elapsed > 0.0 {
        report.delivered as f64 / elapsed
    } else {
        0.0
    };
    report.p50_us = percentile(&latencies, 0.50);
    report.p99_us = percentile(&latencies, 0.99);
    report.max_us = latencies.last().copied().unwrap_or(0);
    Ok(report)
}

/// What an rpc run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct RpcReport {
    pub(crate) per_sec: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) failed: usize,
}

/// `connections` clients, each doing `requests` sequential `echo` round trips.
pub(crate) async fn rpc(
    bases: &[String],
    connections: usize,
    requests: usize,
) -> Result<RpcReport, String> {
    tokio::time::timeout(WORKLOAD_DEADLINE, async {
        let topic = format!("rpc{}", clock());
        let sockets = connect_many(bases, &topic, connections, "rpc").await?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for mut socket in sockets {
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(requests);
                let mut failed = 0;
                for id in 0..requests {
                    let sent = Instant::now();
                    let frame = format!(r#"{{"type":"echo","data":{{"text":"x"}},"id":{id}}}"#);
                    if socket.send(Message::text(frame)).await.is_err() {
                        failed += requests - id;
                        break;
                    }
                    loop {
                        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                            Ok(Some(Ok(Message::Text(text)))) if replies_to(&text, id) => {
                                latencies.push(sent.elapsed().as_micros() as u64);
                                break;
                            }
                            Ok(Some(Ok(_))) => {}
                            _ => {
                                failed += 1;
                                break;
                            }
                        }
                    }
                }
                (latencies, failed)
            }));
        }
        let mut all = Vec::new();
        let mut failed = 0;
        for task in tasks {
            let (latencies, lost) = task.await.map_err(|e| e.to_string())?;
            all.extend(latencies);
            failed += lost;
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort_unstable();
        Ok(RpcReport {
            per_sec: all.len() as f64 / elapsed,
            p50_us: percentile(&all, 0.5),
            p99_us: percentile(&all, 0.99),
            failed,
        })
    })
    .await
    .map_err(|_| "rpc run passed its deadline".to_owned())?
}

/// Whether `frame` is the answer to request `id`. Parsed rather than matched
/// as text: the two servers order their keys differently.
fn replies_to(frame: &str, id: usize) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        reply_to: Option<usize>,
    }
    serde_json::from_str::<Answer>(frame).is_ok_and(|answer| answer.reply_to == Some(id))
}

/// What an idle run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdleReport {
    pub(crate) held: usize,
    pub(crate) bytes_per_connection: f64,
}

/// Opens `connections` idle clients and reads the servers' resident memory
/// before and after from /proc.
pub(crate) async fn idle(
    bases: &[String],
    connections: usize,
    pids: &[u32],
) -> Result<IdleReport, String> {
    tokio::time::timeout(WORKLOAD_DEADLINE, async {
        let before: u64 = pids
            .iter()
            .map(|pid| rss_bytes(*pid))
            .sum::<Result<u64, String>>()?;
        let topic = format!("idle{}", clock());
        let sockets = connect_many(bases, &topic, connections, "idle").await?;
        // Let the servers settle: every connection has run its first poll.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after: u64 = pids
            .iter()
            .map(|pid| rss_bytes(*pid))
            .sum::<Result<u64, String>>()?;
        let mut held = 0;
        for mut socket in sockets {
            // A connection is held if it still answers.
            let frame = r#"{"type":"echo","data":{"text":"x"},"id":1}"#;
            if socket.send(Message::text(frame)).await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(10), socket.next()).await,
                    Ok(Some(Ok(Message::Text(_))))
                )
            {
                held += 1;
            }
        }
        Ok(IdleReport {
            held,
            bytes_per_connection: after.saturating_sub(before) as f64 / connections as f64,
        })
    })
    .await
    .map_err(|_| "idle run passed its deadline".to_owned())?
}

/// VmRSS of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or("unreadable VmRSS")?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_event_text() {
        let frame = r#"{"topic":"t","event":{"text":"1:42:99"}}"#;
        assert_eq!(parse_event(frame), Some((1, 42, 99)));
        assert_eq!(
            parse_event(r#"{"topic":"t","event":{"text":"warmup"}}"#),
            None
        );
    }
}
