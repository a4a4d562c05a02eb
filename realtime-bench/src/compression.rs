//! `compression`: what permessage-deflate saves on the wire and costs a
//! fan-out.
//!
//! Two release `bench_server` instances on one private Redis. The clients
//! here speak WebSocket over raw sockets (the test client library knows no
//! extension), offering permessage-deflate or not, and inflate what comes
//! compressed, as a browser does.
//!
//! 1. Bytes on the wire: subscribers connect through a loopback proxy that
//!    counts the bytes the server sends them; a publisher sends events of
//!    one shape; the bytes per delivered event, with and without the offer.
//!    Shapes: a 1 KiB quote (an order book's levels, keys repeated), and the
//!    chat's short lines.
//! 2. Fan-out: `--subs` subscribers over both instances, all offering or
//!    none, a burst of `--messages` quotes published on the first; events
//!    delivered per second, `--repeats` runs of each side by side, medians
//!    and the ratio, and the servers' CPU per delivered event.
//! 3. Idle memory: `--idle` connections to a fresh instance, with and
//!    without the extension, each after one compressed exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::matrix::Redis;
use crate::scale::{bench_server, cpu_seconds};
use crate::stats::median;
use crate::workload::rss_bytes;

/// Parameters of a `compression` run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) subscribers: usize,
    pub(crate) messages: usize,
    pub(crate) repeats: usize,
    pub(crate) idle: usize,
}

/// How long a subscriber waits for its next event before the run fails.
const STALL: Duration = Duration::from_secs(20);

/// Subscribers of a bytes-on-the-wire run.
const WIRE_SUBSCRIBERS: usize = 10;

/// Events of a bytes-on-the-wire run.
const WIRE_EVENTS: usize = 500;

/// What the publisher sends.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A quote with eight levels a side: about 1 KiB of JSON.
    Quote,
    /// A chat line of a few words.
    Chat,
}

impl Shape {
    /// The request that publishes event `seq`; its numbers drawn from `seq`.
    fn request(self, seq: usize) -> String {
        // A small deterministic generator: the same figures each run.
        let mut state = (seq as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move |range: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % range
        };
        match self {
            Self::Quote => {
                let mid = 10_000 + next(500);
                let level = |side: i64, n: i64, next: &mut dyn FnMut(u64) -> u64| {
                    let cents = mid as i64 + side * (n + 1) * 3 + next(3) as i64;
                    format!(
                        r#"{{"price":{}.{:02},"size":{},"orders":{},"venue":"XNAS"}}"#,
                        cents / 100,
                        cents % 100,
                        100 * (1 + next(40)),
                        1 + next(12)
                    )
                };
                let bids: Vec<String> = (0..8).map(|n| level(-1, n, &mut next)).collect();
                let asks: Vec<String> = (0..8).map(|n| level(1, n, &mut next)).collect();
                format!(
                    r#"{{"type":"tick","data":{{"quote":{{"seq":{seq},"symbol":"ACME","currency":"USD","exchange":"NASDAQ","status":"open","bids":[{}],"asks":[{}]}}}}}}"#,
                    bids.join(","),
                    asks.join(",")
                )
            }
            Self::Chat => {
                const WORDS: [&str; 12] = [
                    "hello", "anyone", "here", "lunch", "at", "noon", "sounds", "good", "see",
                    "you", "there", "thanks",
                ];
                let words: Vec<&str> = (0..4 + next(5))
                    .map(|_| WORDS[next(WORDS.len() as u64) as usize])
                    .collect();
                format!(
                    r#"{{"type":"say","data":{{"text":"{seq}: {}"}}}}"#,
                    words.join(" ")
                )
            }
        }
    }
}

/// A masked text frame from a client (RFC 6455: clients mask).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    masked(0x81, payload)
}

/// `payload` compressed as a client sends it (RFC 7692: a sync flush
/// without its last four bytes), in a frame with RSV1 set.
fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compress
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .expect("compressing into memory");
    out.truncate(out.len().saturating_sub(4));
    masked(0xC1, &out)
}

/// A masked client frame whose first byte is `first`.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x1c, 0x93, 0x07];
    let mut bytes = vec![first];
    match payload.len() {
        len @ 0..=125 => bytes.push(0x80 | len as u8),
        len @ 126..=65535 => {
            bytes.push(0x80 | 126);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            bytes.push(0x80 | 127);
            bytes.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    bytes.extend_from_slice(&key);
    bytes.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    bytes
}

/// Opens a WebSocket to `addr` for `path`, offering permessage-deflate if
/// `offer`; returns the socket and whether the server took the offer.
async fn connect(addr: SocketAddr, path: &str, offer: bool) -> Result<(TcpStream, bool), String> {
    let mut socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = socket.set_nodelay(true);
    let extensions = match offer {
        true => "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        false => "",
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extensions}\r\n"
    );
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        socket
            .read_exact(&mut byte)
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101") {
        return Err(format!("upgrade refused: {head}"));
    }
    Ok((socket, head.contains("permessage-deflate")))
}

/// Reads a socket's messages, inflating the compressed ones.
struct Reader {
    socket: BufReader<TcpStream>,
    inflater: Decompress,
    payload: Vec<u8>,
    text: Vec<u8>,
    /// Compressed messages are inflated one in this many (the others are
    /// counted, not read): 1 reads them all, as a browser does.
    every: usize,
    compressed: usize,
}

impl Reader {
    fn new(socket: TcpStream, every: usize) -> Self {
        Self {
            socket: BufReader::with_capacity(64 * 1024, socket),
            inflater: Decompress::new(false),
            payload: Vec::new(),
            text: Vec::with_capacity(64 * 1024),
            every: every.max(1),
            compressed: 0,
        }
    }

    /// The next text message (pings skipped), and whether it came
    /// compressed; `None` for a compressed message counted but not read.
    async fn next(&mut self) -> Result<(Option<&[u8]>, bool), String> {
        loop {
            let mut head = [0u8; 2];
            self.socket
                .read_exact(&mut head)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let len = match head[1] & 0x7F {
                126 => u64::from(self.socket.read_u16().await.map_err(|e| e.to_string())?),
                127 => self.socket.read_u64().await.map_err(|e| e.to_string())?,
                len => u64::from(len),
            };
            self.payload.resize(len as usize, 0);
            self.socket
                .read_exact(&mut self.payload)
                .await
                .map_err(|e| format!("read: {e}"))?;
            match head[0] & 0x0F {
                0x1 if head[0] & 0x40 != 0 => {
                    self.compressed += 1;
                    if !self.compressed.is_multiple_of(self.every) {
                        return Ok((None, true));
                    }
                    self.payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    // No reset: each message ends at a block boundary and
                    // refers to nothing before it (the server takes no
                    // context over), so one stream reads them all; a reset
                    // per message costs more than the inflate.
                    self.text.clear();
                    self.inflater
                        .decompress_vec(&self.payload, &mut self.text, FlushDecompress::Sync)
                        .map_err(|e| format!("inflate: {e}"))?;
                    return Ok((Some(&self.text), true));
                }
                0x1 => return Ok((Some(&self.payload), false)),
                0x8 => return Err("closed by the server".to_owned()),
                _ => continue,
            }
        }
    }
}

/// The `"seq":N` of a quote or the `N:` of a chat line.
fn seq_of(text: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(text).ok()?;
    let start = match text.find(r#""seq":"#) {
        Some(at) => at + 6,
        None => text.find(r#""text":""#)? + 8,
    };
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads `count` events in order; returns when the last came and whether
/// they came compressed.
async fn subscriber(mut reader: Reader, count: usize) -> Result<(Instant, bool), String> {
    let mut next = 0;
    let mut compressed = false;
    while next < count {
        let (text, deflated) = tokio::time::timeout(STALL, reader.next())
            .await
            .map_err(|_| format!("stalled at event {next} of {count}"))??;
        // Counted unread: the publisher sends nothing else on the topic.
        if let Some(text) = text {
            let Some(seq) = seq_of(text) else { continue };
            if seq != next {
                return Err(format!("event {seq} where {next} was due"));
            }
        }
        compressed |= deflated;
        next += 1;
    }
    Ok((Instant::now(), compressed))
}

/// A loopback proxy that counts the bytes going down (server to client).
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let down = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&down);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(read) = server_read.read(&mut buf).await {
                        if read == 0 || client_write.write_all(&buf[..read]).await.is_err() {
                            break;
                        }
                        counter.fetch_add(read as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Self { addr, down, task })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The socket address of a `ws://127.0.0.1:port/ws` URL.
fn addr_of(url: &str) -> Result<SocketAddr, String> {
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .ok_or("a URL without a host")?;
    host.parse().map_err(|e| format!("{url}: {e}"))
}

/// Publishes `count` events of `shape` on `topic` as fast as the socket
/// takes them, from a client that offers nothing.
async fn publish(
    server: SocketAddr,
    topic: &str,
    shape: Shape,
    count: usize,
) -> Result<TcpStream, String> {
    let path = format!("/ws/{topic}?token=pub-{topic}");
    let (mut socket, _) = connect(server, &path, false).await?;
    let mut batch = Vec::new();
    for seq in 0..count {
        batch.extend(client_frame(shape.request(seq).as_bytes()));
        if batch.len() > 32 * 1024 || seq + 1 == count {
            socket
                .write_all(&batch)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            batch.clear();
        }
    }
    Ok(socket)
}

/// Bytes on the wire per delivered event.
async fn wire(server: SocketAddr, shape: Shape, offer: bool) -> Result<f64, String> {
    let proxy = Proxy::start(server).await?;
    let topic = format!("wire{:010}", rand::random::<u32>());
    let mut readers = Vec::new();
    for n in 0..WIRE_SUBSCRIBERS {
        let path = format!("/ws/{topic}?token=sub{n}");
        let (socket, negotiated) = connect(proxy.addr, &path, offer).await?;
        if negotiated != offer {
            return Err(format!("offered {offer}, negotiated {negotiated}"));
        }
        readers.push(Reader::new(socket, 1));
    }
    // Let the subscriptions settle, then count from here: the upgrades'
    // bytes are not the events'.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = proxy.down.load(Ordering::Relaxed);
    let subscribers: Vec<_> = readers
        .into_iter()
        .map(|reader| tokio::spawn(subscriber(reader, WIRE_EVENTS)))
        .collect();
    let publisher = publish(server, &topic, shape, WIRE_EVENTS).await?;
    for subscriber in subscribers {
        subscriber.await.map_err(|e| e.to_string())??;
    }
    let bytes = proxy.down.load(Ordering::Relaxed) - before;
    drop(publisher);
    Ok(bytes as f64 / (WIRE_SUBSCRIBERS * WIRE_EVENTS) as f64)
}

/// What one fan-out burst measured.
struct Burst {
    /// Events delivered per second to every subscriber, clients inflating
    /// on the same machine.
    per_sec: f64,
    /// The servers' CPU time per delivered event, in microseconds.
    server_us: f64,
}

/// One fan-out burst.
async fn fanout(
    urls: &[String],
    pids: &[u32],
    subscribers: usize,
    messages: usize,
    offer: bool,
    every: usize,
) -> Result<Burst, String> {
    let topic = format!("fan{:010}", rand::random::<u32>());
    let servers: Vec<SocketAddr> = urls
        .iter()
        .map(|url| addr_of(url))
        .collect::<Result<_, _>>()?;
    let mut readers = Vec::new();
    for n in 0..subscribers {
        let path = format!("/ws/{topic}?token=sub{n}");
        let (socket, negotiated) = connect(servers[n % servers.len()], &path, offer).await?;
        if negotiated != offer {
            return Err(format!("offered {offer}, negotiated {negotiated}"));
        }
        readers.push(Reader::new(socket, every));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = || -> Result<f64, String> { pids.iter().map(|pid| cpu_seconds(*pid)).sum() };
    let cpu_before = cpu()?;
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|reader| tokio::spawn(subscriber(reader, messages)))
        .collect();
    let started = Instant::now();
    let publisher = publish(servers[0], &topic, Shape::Quote, messages).await?;
    let mut last = started;
    for task in tasks {
        let (at, compressed) = task.await.map_err(|e| e.to_string())??;
        if compressed != offer {
            return Err(format!("offered {offer}, compressed {compressed}"));
        }
        last = last.max(at);
    }
    let server = cpu()? - cpu_before;
    drop(publisher);
    let deliveries = (subscribers * messages) as f64;
    Ok(Burst {
        per_sec: deliveries / (last - started).as_secs_f64(),
        server_us: server * 1e6 / deliveries,
    })
}

/// Resident memory per idle connection, in KiB: `count` connections to a
/// fresh instance, offering permessage-deflate or not; with `echo`, each
/// sent one long `echo` (compressed if negotiated) and read its answer
/// (long enough to come compressed) before going idle.
async fn idle(redis_url: &str, count: usize, offer: bool, echo: bool) -> Result<f64, String> {
    let (server, url) = bench_server(redis_url, &[])?;
    let addr = addr_of(&url)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_bytes(server.0.id())?;
    let text = "an idle client says this once and then nothing more; ".repeat(4);
    let request = format!(r#"{{"type":"echo","data":{{"text":"{text}"}},"id":1}}"#);
    let mut held = Vec::with_capacity(count);
    for n in 0..count {
        let path = format!("/ws/idle?token=idle{n}");
        let (socket, negotiated) = connect(addr, &path, offer).await?;
        if negotiated != offer {
            return Err(format!("offered {offer}, negotiated {negotiated}"));
        }
        let mut reader = Reader::new(socket, 1);
        if !echo {
            held.push(reader);
            continue;
        }
        let frame = match offer {
            true => compressed_frame(request.as_bytes()),
            false => client_frame(request.as_bytes()),
        };
        reader
            .socket
            .get_mut()
            .write_all(&frame)
            .await
            .map_err(|e| e.to_string())?;
        let (answer, compressed) = tokio::time::timeout(STALL, reader.next())
            .await
            .map_err(|_| "no answer to echo".to_owned())??;
        if !answer.is_some_and(|answer| answer.ends_with(b"\"}")) || compressed != offer {
            return Err(format!("a wrong answer (compressed: {compressed})"));
        }
        held.push(reader);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes(server.0.id())?;
    drop(held);
    Ok((after.saturating_sub(before)) as f64 / count as f64 / 1024.0)
}

/// Runs the measurements and prints their report.
pub(crate) async fn run(options: &Options) -> Result<(), String> {
    let redis = Redis::start()?;
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let (server, url) = bench_server(&redis.url, &[])?;
        servers.push(server);
        urls.push(url);
    }
    let first = addr_of(&urls[0])?;
    // One more that compresses every frame, however short.
    let (every_frame, every_url) = bench_server(&redis.url, &[("COMPRESSION_MIN_BYTES", "0")])?;
    let every_frame_addr = addr_of(&every_url)?;
    println!(
        "bytes on the wire per delivered event ({WIRE_SUBSCRIBERS} subscribers x {WIRE_EVENTS} events, through a counting proxy):"
    );
    for (name, shape, server) in [
        ("quote, about 1 KiB", Shape::Quote, first),
        ("chat line", Shape::Chat, first),
        ("chat line, min 0 B", Shape::Chat, every_frame_addr),
    ] {
        let plain = wire(server, shape, false).await?;
        let deflated = wire(server, shape, true).await?;
        println!(
            "  {name:<20} plain {plain:>7.1} B, deflate {deflated:>7.1} B = {:.1} %",
            100.0 * deflated / plain
        );
    }
    drop(every_frame);
    println!(
        "fan-out: {} subscribers over 2 instances on Redis, {} quotes in a burst, {} runs each:",
        options.subscribers, options.messages, options.repeats
    );
    let pids: Vec<u32> = servers.iter().map(|server| server.0.id()).collect();
    // Plain; deflate with every event inflated by its client (as a
    // browser, on the same two cores as the servers); deflate with one in
    // 16 inflated, the rest counted, which leaves the cores to the servers.
    let sides = [(false, 1), (true, 1), (true, 16)];
    let mut runs: [Vec<Burst>; 3] = Default::default();
    for _ in 0..options.repeats {
        for (&(offer, every), runs) in sides.iter().zip(runs.iter_mut()) {
            let burst = fanout(
                &urls,
                &pids,
                options.subscribers,
                options.messages,
                offer,
                every,
            );
            runs.push(burst.await?);
        }
    }
    let rate = |runs: &[Burst]| median(&runs.iter().map(|run| run.per_sec).collect::<Vec<_>>());
    let cost = |runs: &[Burst]| median(&runs.iter().map(|run| run.server_us).collect::<Vec<_>>());
    let [plain, all, sampled] = &runs;
    println!(
        "  events/s: plain {:>9.0}; deflate, clients inflating all {:>9.0} ({:.2}x), one in 16 {:>9.0} ({:.2}x)",
        rate(plain),
        rate(all),
        rate(all) / rate(plain),
        rate(sampled),
        rate(sampled) / rate(plain)
    );
    println!(
        "  server CPU per delivered event: plain {:.2} us; deflate {:.2} us ({:.2}x), {:.2} us ({:.2}x)",
        cost(plain),
        cost(all),
        cost(all) / cost(plain),
        cost(sampled),
        cost(sampled) / cost(plain)
    );
    drop(servers);
    println!(
        "idle memory: {} connections to a fresh instance, {} runs each:",
        options.idle, options.repeats
    );
    let sides = [(false, false), (true, false), (false, true), (true, true)];
    let mut kib: [Vec<f64>; 4] = Default::default();
    for _ in 0..options.repeats {
        for (&(offer, echo), kib) in sides.iter().zip(kib.iter_mut()) {
            kib.push(idle(&redis.url, options.idle, offer, echo).await?);
        }
    }
    println!(
        "  KiB per connection, connected only: plain {:.2}, deflate negotiated {:.2}",
        median(&kib[0]),
        median(&kib[1])
    );
    println!(
        "  KiB per connection, after one long echo: plain {:.2}, deflate negotiated and used {:.2}",
        median(&kib[2]),
        median(&kib[3])
    );
    Ok(())
}
