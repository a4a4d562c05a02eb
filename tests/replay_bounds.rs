//! What clients that resume a long history and never read it can make the
//! server hold: the kernel's send buffer of each socket is bounded
//! (`Serve::send_buffer`), and the bytes queued for replays across the
//! instance are (`Config::max_replay_bytes`): past it a resume is refused
//! with 503 and comes back later with its position intact.

mod support;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use realtime::auth::validate_with;
use realtime::history::{HistoryPolicy, Retention};
use realtime::testing::TestClient;
use realtime::{Config, MemoryBroker, Service};
use support::room::{Hooks, Room, Said};
use support::{DEADLINE, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A `Room` whose `room:*` topics keep 1000 events, served by
/// `realtime::serve` with `send_buffer`, and `lines` lines of 1 KiB said in
/// `room:a` already.
async fn serve(
    config: Config,
    send_buffer: Option<usize>,
    lines: usize,
) -> (Service<Room, MemoryBroker>, std::net::SocketAddr) {
    let policy =
        HistoryPolicy::none().keep("room:*", Retention::new(1000, Duration::from_secs(600)));
    let service = Service::builder(
        Room,
        Arc::new(Hooks::default()),
        validate_with(|t: &str| Ok(t.to_owned())),
    )
    .history(policy)
    .config(config)
    .build()
    .expect("a valid config");
    let text = "x".repeat(1024);
    for n in 0..lines {
        let said = Said {
            from: "server".to_owned(),
            text: format!("{n} {text}"),
        };
        service.publish("room:a", &said).await.expect("publish");
    }
    let app = realtime::route::router(service.clone(), "/ws/{topic}");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(
        realtime::serve(listener, app)
            .send_buffer(send_buffer)
            .into_future(),
    );
    (service, addr)
}

/// A client that resumes `room:a` from `since` and never reads past the
/// response head; the status it got.
async fn stuck_resume(addr: std::net::SocketAddr, since: &str) -> (u16, TcpStream) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws/room:a?token=stuck&since={since} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        socket.read_exact(&mut byte).await.expect("a response");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("a status");
    (status, socket)
}

/// The bytes waiting in the send queues of the server's sockets on `port`
/// (the `tx_queue` of `/proc/net/tcp`), one entry per socket.
fn send_queues(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
            let listening = fields[3] == "0A";
            if local_port != port || listening {
                return None;
            }
            u64::from_str_radix(fields[4].split(':').next()?, 16).ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_pins_a_bounded_send_buffer() {
    let (service, addr) = serve(Config::default(), Some(64 * 1024), 900).await;
    let epoch = service.position("room:a").await.expect("a position").epoch;
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let (status, socket) = stuck_resume(addr, &format!("0.{epoch}")).await;
        assert_eq!(status, 101);
        stuck.push(socket);
    }
    // Each was sent about 950 KB; what the kernel holds of it per socket
    // stops at the send buffer (doubled by Linux, with its overhead).
    let mut queues = Vec::new();
    wait_until("the send queues are full", || {
        queues = send_queues(addr.port());
        let full = queues.len() == 20 && queues.iter().all(|queue| *queue > 32 * 1024);
        async move { full }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queues = send_queues(addr.port());
    let most = queues.iter().max().copied().unwrap_or(0);
    assert!(
        most <= 256 * 1024,
        "a send queue of {most} bytes: {queues:?}"
    );
    // The rest waits in the connections' own queues, which the instance
    // counts.
    assert!(service.metrics().queued_bytes > 0);
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_past_the_replay_budget_are_refused_and_come_back_later() {
    let mut config = Config::default();
    config.max_replay_bytes = 2 * 1024 * 1024;
    let (service, addr) = serve(config, Some(64 * 1024), 900).await;
    let epoch = service.position("room:a").await.expect("a position").epoch;
    let since = format!("0.{epoch}");

    // Clients that resume 950 KB each and never read: the queue of each
    // keeps what its socket does not take, until the budget is spent.
    let mut stuck = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let (status, socket) = stuck_resume(addr, &since).await;
        match status {
            101 => stuck.push(socket),
            503 => refused += 1,
            other => panic!("status {other}"),
        }
        // The write tasks hand what they can to the sockets first.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused > 0, "no resume refused");
    assert!(stuck.len() >= 2, "{} resumes got in", stuck.len());
    let queued = service.metrics().queued_bytes;
    assert!(
        queued <= 3 * 1024 * 1024,
        "{queued} bytes queued past a 2 MiB budget"
    );

    // Once they are gone, a resume gets in again, and recovers.
    drop(stuck);
    wait_until("the queues are freed", || async {
        service.metrics().queued_bytes == 0
    })
    .await;
    let url = format!("ws://{addr}/ws/room:a?since={since}");
    let mut back = TestClient::connect(&url, "back").await.expect("resume");
    let mut last = serde_json::Value::Null;
    tokio::time::timeout(DEADLINE, async {
        loop {
            last = back.recv().await;
            if last.get("subscribed").is_some() {
                break;
            }
        }
    })
    .await
    .expect("subscribed within the deadline");
    assert_eq!(last["subscribed"]["recovered"], true, "{last}");
}
