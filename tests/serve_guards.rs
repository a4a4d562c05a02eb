//! `realtime::serve`: what guards the server before any socket is upgraded
//! (a deadline for request heads, a bound on connections not yet upgraded,
//! a pause on accept errors) and one deadline for the whole shutdown.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realtime::auth::validate_with;
use realtime::testing::TestClient;
use realtime::{Config, Service};
use support::chat::{Process, chat_binary, wait_for_port};
use support::room::{Hooks, Room};
use support::{DEADLINE, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A served `Room` and what to stop it with.
struct Served {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn serve(header_timeout: Duration, max_pending: usize, shutdown_timeout: Duration) -> Served {
    let service = Service::builder(
        Room,
        Arc::new(Hooks::default()),
        validate_with(|t: &str| Ok(t.to_owned())),
    )
    .config(Config::default())
    .build()
    .expect("a valid config");
    let app = realtime::route::router(service.clone(), "/ws/{topic}");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        realtime::serve(listener, app)
            .header_timeout(header_timeout)
            .max_pending(max_pending)
            .shutdown_timeout(shutdown_timeout)
            .with_service(service)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    Served { addr, stop, task }
}

async fn connect(addr: std::net::SocketAddr, user: &str) -> TestClient {
    TestClient::connect(&format!("ws://{addr}/ws/lobby"), user)
        .await
        .expect("connect")
}

/// Reads until the server closes `socket`; how long that took.
async fn closed_after(mut socket: TcpStream) -> Duration {
    let start = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut sink))
        .await
        .expect("closed by the server within the deadline")
        .ok();
    start.elapsed()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let served = serve(Duration::from_millis(300), 1024, Duration::from_secs(1)).await;
    let silent = TcpStream::connect(served.addr).await.expect("connect");
    let took = closed_after(silent).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // A client that talks is served all along.
    let mut alice = connect(served.addr, "alice").await;
    let echo = alice
        .request("echo", serde_json::json!({"text": "hi"}), 1)
        .await;
    assert_eq!(echo["ok"], "hi");
}

#[tokio::test]
async fn connections_past_the_pending_bound_wait_and_then_get_in() {
    // Two places for connections not yet upgraded, and ten silent sockets
    // that take them: a real client waits in the backlog until the silent
    // ones time out, then gets in.
    let served = serve(Duration::from_millis(300), 2, Duration::from_secs(1)).await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(served.addr).await.expect("connect"));
    }
    let start = Instant::now();
    let mut alice = tokio::time::timeout(DEADLINE, connect(served.addr, "alice"))
        .await
        .expect("in within the deadline");
    // Ten silent sockets two at a time, 300 ms each: about 1.5 s of waiting.
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    let echo = alice
        .request("echo", serde_json::json!({"text": "hi"}), 1)
        .await;
    assert_eq!(echo["ok"], "hi");
}

#[tokio::test]
async fn shutdown_ends_within_its_deadline_despite_a_half_sent_request() {
    // The head timeout is far away: only the shutdown deadline can end the
    // half-sent request.
    let served = serve(Duration::from_secs(60), 1024, Duration::from_secs(1)).await;
    let mut half = TcpStream::connect(served.addr).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut alice = connect(served.addr, "alice").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let start = Instant::now();
    served
        .stop
        .send(())
        .expect("the server listens for the signal");
    assert_eq!(alice.recv_close().await.code(), Some(1001));
    let result = tokio::time::timeout(Duration::from_secs(5), served.task)
        .await
        .expect("serve returned within the deadline and a margin");
    assert!(result.expect("no panic").is_ok());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // The half-sent request was dropped with the rest.
    let took = closed_after(half).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// Seconds of CPU the process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command's closing parenthesis; utime and stime are
    // the 12th and 13th of them.
    let rest = &stat[stat.rfind(')').expect("a command") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[tokio::test]
async fn silent_connections_past_the_file_limit_do_not_lock_clients_out() {
    let port = free_port();
    let child = Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(chat_binary())
        .env("PORT", port.to_string())
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the chat under prlimit (util-linux)");
    let chat = Process(child);
    wait_for_port(port, "the chat");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // 100 connections that send nothing: more than the process may open
    // (about 50 descriptors are left to it).
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let cpu_before = cpu_seconds(chat.0.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_seconds(chat.0.id()) - cpu_before;
    // Out of descriptors, accept fails at once each time: without a pause
    // that is a core spinning. With it, a few milliseconds.
    assert!(spent < 1.0, "the chat spent {spent} s of CPU in 3 s");

    // A real client gets in once the silent ones ahead of it time out:
    // 10 s for each round of about 50, while they all stay connected from
    // the client's side.
    let mut alice = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            match TestClient::connect(&format!("ws://{addr}/ws/lobby"), "alice").await {
                Ok(client) => return client,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("a real client got in");
    let history = alice
        .request("history", serde_json::json!({"limit": 1}), 1)
        .await;
    assert_eq!(history["reply_to"], 1);
    drop(silent);
}
