//! What the integration tests share, included the same way by each
//! (`mod support;`): one deadline, one `wait_until`, private `redis-server`
//! processes and clusters on free ports, nodes (a service with its own
//! broker behind its own server) running the hand-written [`Room`] handler
//! (`room`), one way to connect a client, the chat example as a process
//! (`chat`), and a TCP proxy that can freeze (`proxy`).
// Each test binary uses a part of this module.
#![allow(dead_code)]

pub(crate) mod chat;
pub(crate) mod proxy;
pub(crate) mod room;

#[allow(unused_imports)] // Not every test file names every type.
pub(crate) use room::{Hooks, Room, Said};

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use realtime::RedisConfig;
use realtime::auth::validate_with;
use realtime::broker::Broker;
use realtime::broker::redis::RedisMetrics;
use realtime::history::{HistoryPolicy, Position};
use realtime::presence::PresencePolicy;
use realtime::testing::{TestClient, TestServer};
use realtime::{Config, MemoryBroker, RedisBroker, Service};
use serde_json::{Value, json};
use tokio::time::Instant;

/// How long any wait lasts before the test fails, naming what it waited
/// for: the test client's own bound, so that the suite has one.
pub(crate) use realtime::testing::DEADLINE;

/// How long a browser page's waits last: [`DEADLINE`] and 5 s more, because
/// headless Chromium lays out and runs the page slowly on a loaded machine.
pub(crate) const BROWSER_DEADLINE: Duration = DEADLINE.saturating_add(Duration::from_secs(5));

/// The `redis-server` binary: `$REDIS_SERVER`, else the one on `PATH`.
fn redis_server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// Polls `condition` until it holds; panics after [`DEADLINE`] with `what`.
/// Returns how long it took.
pub(crate) async fn wait_until<F, Fut>(what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A private `redis-server` on 127.0.0.1 (no persistence), killed on drop.
#[derive(Debug)]
pub(crate) struct RedisServer {
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A `RedisBroker` on this server, with its keys under `prefix`.
    pub(crate) async fn broker(&self, prefix: &str) -> RedisBroker {
        RedisBroker::connect(&self.url(), redis_config(prefix))
            .await
            .expect("connect to the test Redis")
    }

    /// Starts a server on a free port and waits until it answers `PING`.
    pub(crate) async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments.
    pub(crate) async fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        // Another process may take the port between `free_port` and the
        // server's bind: then try another one.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                extra: extra.clone(),
                child: None,
            };
            if server.launch().await {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts a server on `port` with extra arguments; `None` if the port
    /// (or another one in `extra`) was taken.
    pub(crate) async fn try_start_on(port: u16, extra: &[&str]) -> Option<Self> {
        let mut server = Self {
            port,
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
        };
        server.launch().await.then_some(server)
    }

    /// Spawns the process on `self.port` and waits until it answers; false
    /// if it exited (its port was taken).
    async fn launch(&mut self) -> bool {
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (install it, or set REDIS_SERVER)");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().expect("poll redis-server").is_some()
            {
                self.child = None;
                return false;
            }
            if self.answers().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Whether the server answers `PING` now.
    async fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let attempt = async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(_))
        )
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// Kills the server (SIGKILL, by PID) and waits for the process to end.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub(crate) async fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        // The port was just released; retry if something else holds it.
        while !self.launch().await {
            assert!(
                start.elapsed() < DEADLINE,
                "could not restart redis-server on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process without closing its sockets (SIGSTOP): a frozen
    /// Redis, as in a network partition.
    pub(crate) fn freeze(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub(crate) fn thaw(&self) {
        signal(self.pid(), "-CONT");
    }

    /// The text of `INFO <section>`.
    pub(crate) async fn info(&self, section: &str) -> String {
        let mut admin = self.admin().await;
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut admin)
            .await
            .unwrap_or_else(|error| panic!("INFO {section}: {error}"))
    }

    /// The number after `<field>:` in `INFO <section>`.
    pub(crate) async fn info_number(&self, section: &str, field: &str) -> u64 {
        let prefix = format!("{field}:");
        self.info(section)
            .await
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO {section} has no number `{field}`"))
    }

    /// Calls of `EVALSHA` (the broker's scripts: publishes with history,
    /// history reads, presence) this Redis has served so far.
    pub(crate) async fn script_calls(&self) -> u64 {
        self.info("commandstats")
            .await
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// A new connection for the test's own commands.
    pub(crate) async fn admin(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        tokio::time::timeout(DEADLINE, client.get_multiplexed_async_connection())
            .await
            .expect("connect to the test Redis within the deadline")
            .expect("connect to the test Redis")
    }

    /// A new connection, or `None` if the server does not answer now.
    pub(crate) async fn try_admin(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }

    /// `PUBSUB NUMSUB channel`: how many connections subscribe to it.
    pub(crate) async fn numsub(&self, channel: &str) -> usize {
        let mut admin = self.admin().await;
        numsub(&mut admin, channel).await
    }

    /// Waits until `PUBSUB NUMSUB channel` is `expected`; returns how long.
    pub(crate) async fn wait_numsub(&self, channel: &str, expected: usize) -> Duration {
        let admin = self.admin().await;
        wait_until(&format!("PUBSUB NUMSUB {channel} == {expected}"), || {
            let mut admin = admin.clone();
            async move { numsub(&mut admin, channel).await == expected }
        })
        .await
    }

    /// `PUBSUB SHARDNUMSUB channel` on this server alone.
    pub(crate) async fn shardnumsub_here(&self, channel: &str) -> usize {
        let Some(mut admin) = self.try_admin().await else {
            return 0;
        };
        let counted: Result<(String, usize), _> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query_async(&mut admin)
            .await;
        counted.map_or(0, |(_, count)| count)
    }
}

async fn numsub(admin: &mut redis::aio::MultiplexedConnection, channel: &str) -> usize {
    let (_, count): (String, usize) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(admin)
        .await
        .expect("PUBSUB NUMSUB");
    count
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Redis Cluster of three masters (no replicas) on free ports,
/// with its nodes' cluster state kept in a temporary directory so that a
/// restarted node rejoins with its slots.
#[derive(Debug)]
pub(crate) struct RedisCluster {
    /// The masters, in the order given to `redis-cli --cluster create`.
    pub(crate) nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// A `RedisBroker` on this cluster, with its keys under `prefix`.
    pub(crate) async fn broker(&self, prefix: &str) -> RedisBroker {
        RedisBroker::connect_cluster(self.urls(), redis_config(prefix))
            .await
            .expect("connect to the test cluster")
    }

    /// Starts three nodes, creates the cluster, and waits until every node
    /// reports `cluster_state:ok`.
    pub(crate) async fn start() -> Self {
        Self::start_with(false).await
    }

    /// As [`start`](Self::start); with `persistent`, every node writes each
    /// command to its append-only file before answering (`appendfsync
    /// always`), so a restarted master comes back with its data.
    pub(crate) async fn start_with(persistent: bool) -> Self {
        // `redis-cli --cluster create` has failed now and then on a loaded
        // machine; three fresh attempts, and the last one's output if all
        // fail.
        let mut failure = String::new();
        for _ in 0..3 {
            match Self::try_start(persistent).await {
                Ok(cluster) => return cluster,
                Err(output) => failure = output,
            }
        }
        panic!("redis-cli --cluster create failed three times: {failure}");
    }

    async fn try_start(persistent: bool) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "realtime-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let port = free_port();
            let config = dir.join(format!("nodes-{port}.conf"));
            let config = config.to_str().expect("a UTF-8 temp path").to_owned();
            // The bus port defaults to port + 10000, which may not exist for
            // a high ephemeral port: pick a free one too.
            let bus = free_port().to_string();
            let node_dir = dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&node_dir).expect("create a node's directory");
            let node_dir = node_dir.to_str().expect("a UTF-8 temp path").to_owned();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config,
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "5000",
            ];
            if persistent {
                args.extend([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    &node_dir,
                ]);
            }
            if let Some(node) = RedisServer::try_start_on(port, &args).await {
                nodes.push(node);
            }
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        let cluster = Self { nodes, dir };
        if !created.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            ));
        }
        cluster.wait_ok().await;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every node answers and reports `cluster_state:ok`.
    pub(crate) async fn wait_ok(&self) -> Duration {
        wait_until("every cluster node reports cluster_state:ok", || async {
            for node in &self.nodes {
                let Some(mut admin) = node.try_admin().await else {
                    return false;
                };
                let info: Result<String, _> = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut admin)
                    .await;
                if !info.is_ok_and(|info| info.contains("cluster_state:ok")) {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// `PUBSUB SHARDNUMSUB channel`, summed over the nodes (only the
    /// channel's owner has subscribers).
    pub(crate) async fn shardnumsub(&self, channel: &str) -> usize {
        let mut total = 0;
        for node in &self.nodes {
            total += node.shardnumsub_here(channel).await;
        }
        total
    }

    /// Waits until `PUBSUB SHARDNUMSUB channel` is `expected`.
    pub(crate) async fn wait_shardnumsub(&self, channel: &str, expected: usize) -> Duration {
        wait_until(
            &format!("PUBSUB SHARDNUMSUB {channel} == {expected}"),
            || async { self.shardnumsub(channel).await == expected },
        )
        .await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The default broker settings with this test's own channel prefix.
pub(crate) fn redis_config(prefix: &str) -> RedisConfig {
    let mut config = RedisConfig::default();
    config.channel_prefix = prefix.to_owned();
    config
}

/// One server instance: a [`Service`] running [`Room`] on a broker (its own
/// [`RedisBroker`] unless said otherwise), served on its own port.
#[derive(Debug)]
pub(crate) struct Node<B: Broker = RedisBroker> {
    /// The service, to publish from the server side or read its broker.
    pub(crate) service: Service<Room, B>,
    /// Where clients connect.
    pub(crate) server: TestServer,
}

impl Node {
    /// A node on the Redis at `url` with the default broker settings and
    /// channel prefix `prefix`.
    pub(crate) async fn start(url: &str, prefix: &str) -> Self {
        Self::start_with(url, redis_config(prefix), Config::default()).await
    }

    /// A node with explicit broker and service settings.
    pub(crate) async fn start_with(url: &str, redis: RedisConfig, config: Config) -> Self {
        let broker = RedisBroker::connect(url, redis)
            .await
            .expect("connect the broker to the test Redis");
        Self::with_broker(broker, config).await
    }

    /// A node around a broker the test connected itself.
    pub(crate) async fn with_broker(broker: RedisBroker, config: Config) -> Self {
        Self::serve(broker, HistoryPolicy::none(), config).await
    }

    /// The broker's counters.
    pub(crate) fn metrics(&self) -> RedisMetrics {
        self.service.broker().metrics()
    }
}

impl<B: Broker> Node<B> {
    /// Serves a service on `broker` with the defaults.
    pub(crate) async fn with_broker_of(broker: B) -> Self {
        Self::serve(broker, HistoryPolicy::none(), Config::default()).await
    }

    /// Serves a service on `broker` that keeps history as `policy` says.
    pub(crate) async fn with_history(broker: B, policy: HistoryPolicy) -> Self {
        Self::serve(broker, policy, Config::default()).await
    }

    /// Serves a service on `broker` with `policy` and `config`.
    pub(crate) async fn serve(broker: B, policy: HistoryPolicy, config: Config) -> Self {
        Self::serve_all(broker, policy, PresencePolicy::none(), config).await
    }

    /// Serves a service on `broker` that tracks presence as `policy` says.
    pub(crate) async fn with_presence(broker: B, policy: PresencePolicy) -> Self {
        Self::serve_all(broker, HistoryPolicy::none(), policy, Config::default()).await
    }

    pub(crate) async fn serve_all(
        broker: B,
        history: HistoryPolicy,
        presence: PresencePolicy,
        config: Config,
    ) -> Self {
        let hooks = std::sync::Arc::new(Hooks::default());
        let service = Service::builder(Room, hooks, validate_with(|t: &str| Ok(t.to_owned())))
            .with_broker(broker)
            .history(history)
            .presence(presence)
            .config(config)
            .build()
            .expect("a valid config");
        let server =
            TestServer::start(realtime::route::router(service.clone(), "/ws/{topic}")).await;
        Self { service, server }
    }

    /// A client of `user` on `path` (a topic, and maybe a query string).
    pub(crate) async fn connect(&self, path: &str, user: &str) -> TestClient {
        connect(&self.server, path, user).await
    }

    /// Publishes `text` from the server side; panics if it fails.
    pub(crate) async fn publish(&self, topic: &str, text: String) {
        let said = Said {
            from: "server".to_owned(),
            text,
        };
        self.service.publish(topic, &said).await.expect("publish");
    }
}

/// Two nodes on one in-process broker, keeping history as `policy` says.
pub(crate) async fn memory_nodes(
    policy: HistoryPolicy,
) -> (Node<MemoryBroker>, Node<MemoryBroker>) {
    let hub = MemoryBroker::new();
    (
        Node::with_history(hub.clone(), policy.clone()).await,
        Node::with_history(hub, policy).await,
    )
}

/// Two nodes on `redis`, each with its own broker under `prefix`, keeping
/// history as `policy` says.
pub(crate) async fn redis_nodes(
    redis: &RedisServer,
    prefix: &str,
    policy: HistoryPolicy,
) -> (Node<RedisBroker>, Node<RedisBroker>) {
    let broker = || redis.broker(prefix);
    (
        Node::with_history(broker().await, policy.clone()).await,
        Node::with_history(broker().await, policy).await,
    )
}

/// A client of `user` on `path` (a topic, and maybe a query string) of an
/// app served with its WebSocket route at `/ws/{topic}`.
pub(crate) async fn connect(server: &TestServer, path: &str, user: &str) -> TestClient {
    TestClient::connect(&server.ws_url(&format!("/ws/{path}")), user)
        .await
        .unwrap_or_else(|error| panic!("connect {user} to {path}: {error}"))
}

/// `{"type": "say", "data": {"text": text}, "id": id}`.
pub(crate) fn say(id: u64, text: &str) -> Value {
    json!({"type": "say", "data": {"text": text}, "id": id})
}

/// The answer to request `id` when the handler answered nothing.
pub(crate) fn ack(id: u64) -> Value {
    json!({"reply_to": id, "ok": null})
}

/// The event frame `from` saying `text` on `topic`.
pub(crate) fn said(topic: &str, from: &str, text: &str) -> Value {
    json!({"topic": topic, "event": {"from": from, "text": text}})
}

/// The next event frame; answers (acks, errors) before it are skipped.
pub(crate) async fn recv_event(client: &mut TestClient) -> Value {
    loop {
        let frame = client.recv().await;
        if frame.get("topic").is_some() {
            return frame;
        }
    }
}

/// The answer to request `id`; event frames before it are skipped.
pub(crate) async fn recv_reply(client: &mut TestClient, id: u64) -> Value {
    loop {
        let frame = client.recv().await;
        if frame.get("reply_to") == Some(&Value::from(id)) {
            return frame;
        }
    }
}

/// The `subscribed` frame, which comes before any live event.
pub(crate) async fn subscribed(client: &mut TestClient) -> Value {
    let frame = client.recv().await;
    assert!(
        frame.get("subscribed").is_some(),
        "expected `subscribed`, got {frame}"
    );
    frame
}

/// The position (`{"offset": .., "epoch": ..}`) under `key` in `frame`.
pub(crate) fn position(frame: &Value, key: &str) -> Position {
    serde_json::from_value(frame[key].clone()).expect("a position")
}

/// A WebSocket upgrade of a raw socket to `addr`, by hand: `GET
/// path_and_query` with `headers` (each line ending in `\r\n`) besides the
/// handshake's; asserts the 101 and returns the socket, positioned at the
/// first frame, and the response's head.
pub(crate) async fn raw_upgrade(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &str,
) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    // Byte by byte, so that nothing after the head is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        socket.read_exact(&mut byte).await.expect("the response");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("an HTTP head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (socket, head)
}

/// A client frame as RFC 6455 has a client send it, for tests that write
/// bytes a client library would not: `first` (FIN, RSV bits, opcode) and
/// `payload` of any length, masked with a fixed key.
pub(crate) fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
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

/// A plain HTTP/1.1 GET of `path` at `addr` over a real socket, with
/// `header` (each line ending in `\r\n`, or empty): the status and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str, header: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{header}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response[9..12].parse().expect("a status");
    let body = response
        .split_once("\r\n\r\n")
        .expect("a head and a body")
        .1
        .to_owned();
    (status, body)
}

/// The status of a plain HTTP GET of `path` at `addr`, as a browser page
/// sends it with `fetch`.
pub(crate) async fn plain_get(addr: SocketAddr, path: &str) -> u16 {
    http_get(addr, path, "").await.0
}
