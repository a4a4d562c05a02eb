//! The processes of a chaos run: a private `redis-server` (or a local
//! Redis Cluster of three masters and three replicas), each in a directory
//! of its own under the run's temporary directory, and two `chaos-node`
//! instances. Every process is ours, killed by its PID when the run ends
//! (or panics).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::matrix::{binaries, free_port, workspace_root};

/// How long a Redis (or a node) may take to answer after a start.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// One admin command's bound: a frozen Redis must not hang the run.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// What a Redis process keeps across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// Nothing (`save ""`, `appendonly no`); the directory's files are
    /// removed before the start.
    None,
    /// The RDB snapshot in its directory, if any (`appendonly no`).
    Snapshot,
    /// The append-only file, `appendfsync always`.
    Aof,
}

/// One `redis-server` process, restartable on its port and directory.
#[derive(Debug)]
pub(crate) struct RedisProcess {
    pub(crate) port: u16,
    /// The cluster bus port, in a cluster.
    bus: Option<u16>,
    pub(crate) dir: PathBuf,
    child: Option<Child>,
    /// What the running process was started with.
    pub(crate) persistence: Persistence,
    /// AOF turned on at run time (`CONFIG SET appendonly yes`).
    pub(crate) aof_on: bool,
}

impl RedisProcess {
    /// Starts a server on a free port, in `dir`.
    pub(crate) async fn start(
        dir: PathBuf,
        cluster: bool,
        persistence: Persistence,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut last = String::new();
        for _ in 0..5 {
            let mut redis = Self {
                port: free_port()?,
                bus: if cluster { Some(free_port()?) } else { None },
                dir: dir.clone(),
                child: None,
                persistence,
                aof_on: persistence == Persistence::Aof,
            };
            match redis.launch(persistence).await {
                Ok(()) => return Ok(redis),
                Err(error) => last = error,
            }
        }
        Err(format!("could not start redis-server: {last}"))
    }

    /// Spawns the process with `persistence` and waits until it answers.
    pub(crate) async fn launch(&mut self, persistence: Persistence) -> Result<(), String> {
        if persistence == Persistence::None {
            let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
            let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        }
        let mut command = Command::new(
            std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned()),
        );
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--dbfilename", "dump.rdb"])
            .args(["--appenddirname", "appendonlydir"])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        match persistence {
            Persistence::Aof => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::None | Persistence::Snapshot => command.args(["--appendonly", "no"]),
        };
        if let Some(bus) = self.bus {
            command
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"))
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", "5000"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server (install it, or set REDIS_SERVER): {e}"))?;
        self.child = Some(child);
        self.persistence = persistence;
        self.aof_on = persistence == Persistence::Aof;
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().map_err(|e| e.to_string())?.is_some()
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited at start (see {})",
                    self.port,
                    self.dir.join("redis.log").display()
                ));
            }
            if let Ok(info) = self.admin(&["INFO", "persistence"]).await
                && info.contains("loading:0")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    /// SIGKILL, by PID, and reaped.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// One command on a new connection, answered as text (bounded).
    pub(crate) async fn admin(&self, args: &[&str]) -> Result<String, String> {
        admin(&self.url(), args).await
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One command on a new connection to `url`, its answer as text.
pub(crate) async fn admin(url: &str, args: &[&str]) -> Result<String, String> {
    let run = async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        let value: redis::Value = command
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(text_of(&value))
    };
    tokio::time::timeout(ADMIN_TIMEOUT, run)
        .await
        .map_err(|_| format!("`{}` timed out", args.join(" ")))?
}

fn text_of(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(text) | redis::Value::VerbatimString { text, .. } => {
            text.clone()
        }
        redis::Value::Okay => "OK".to_owned(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::Nil => String::new(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().map(text_of).collect::<Vec<_>>().join("\n")
        }
        other => format!("{other:?}"),
    }
}

/// Sends a signal by PID with kill(1).
pub(crate) fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill {signal} {pid}: {e}"))?;
    if !status.success() {
        return Err(format!("kill {signal} {pid} failed"));
    }
    Ok(())
}

/// A node of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub(crate) struct ClusterNode {
    pub(crate) id: String,
    pub(crate) port: u16,
    pub(crate) master: bool,
    /// The master's id, for a replica.
    pub(crate) master_id: Option<String>,
    pub(crate) failed: bool,
}

/// The Redis side of a run: one server, or a cluster's nodes.
#[derive(Debug)]
pub(crate) struct Redis {
    pub(crate) servers: Vec<RedisProcess>,
    pub(crate) cluster: bool,
}

impl Redis {
    /// One server, in `dir/redis`.
    pub(crate) async fn single(dir: &Path, persistence: Persistence) -> Result<Self, String> {
        let server = RedisProcess::start(dir.join("redis"), false, persistence).await?;
        Ok(Self {
            servers: vec![server],
            cluster: false,
        })
    }

    /// Three masters and three replicas, `redis-cli --cluster create`.
    pub(crate) async fn cluster(dir: &Path, persistence: Persistence) -> Result<Self, String> {
        let mut last = String::new();
        for attempt in 0..3 {
            let mut servers = Vec::new();
            for n in 0..6 {
                let node_dir = dir.join(format!("cluster{attempt}-node{n}"));
                servers.push(RedisProcess::start(node_dir, true, persistence).await?);
            }
            let addresses: Vec<String> = servers
                .iter()
                .map(|server| format!("127.0.0.1:{}", server.port))
                .collect();
            let created = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addresses)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
            let redis = Self {
                servers,
                cluster: true,
            };
            if !created.status.success() {
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&created.stdout),
                    String::from_utf8_lossy(&created.stderr)
                );
                continue;
            }
            redis.wait_healthy(Duration::from_secs(30)).await?;
            return Ok(redis);
        }
        Err(format!(
            "redis-cli --cluster create failed three times: {last}"
        ))
    }

    /// The URLs the nodes connect to.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisProcess::url).collect()
    }

    pub(crate) fn by_port(&mut self, port: u16) -> Option<&mut RedisProcess> {
        self.servers.iter_mut().find(|server| server.port == port)
    }

    /// `CLUSTER NODES`, from the first server that answers.
    pub(crate) async fn topology(&self) -> Result<Vec<ClusterNode>, String> {
        let mut last = String::new();
        for server in &self.servers {
            match server.admin(&["CLUSTER", "NODES"]).await {
                Ok(text) => return Ok(parse_nodes(&text)),
                Err(error) => last = error,
            }
        }
        Err(format!("no cluster node answers CLUSTER NODES: {last}"))
    }

    /// The masters, by port.
    pub(crate) async fn masters(&self) -> Result<Vec<ClusterNode>, String> {
        let mut masters: Vec<ClusterNode> = self
            .topology()
            .await?
            .into_iter()
            .filter(|node| node.master && !node.failed)
            .collect();
        masters.sort_by_key(|node| node.port);
        Ok(masters)
    }

    /// Every server answers; in a cluster, every node says
    /// `cluster_state:ok` and every replica's link to its master is up.
    pub(crate) async fn wait_healthy(&self, within: Duration) -> Result<Duration, String> {
        self.wait_healthy_noting(within, |_| {}).await
    }

    /// As [`wait_healthy`](Self::wait_healthy), telling `note` each new
    /// reason it is not healthy yet.
    pub(crate) async fn wait_healthy_noting(
        &self,
        within: Duration,
        mut note: impl FnMut(String),
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < within {
            match self.healthy().await {
                Ok(()) => return Ok(start.elapsed()),
                Err(why) => {
                    if why != last {
                        note(format!("  {:.2} s: {why}", start.elapsed().as_secs_f64()));
                    }
                    last = why;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("Redis not healthy within {within:?}: {last}"))
    }

    async fn healthy(&self) -> Result<(), String> {
        for server in &self.servers {
            let info = server.admin(&["INFO", "persistence"]).await?;
            if !info.contains("loading:0") {
                return Err(format!("{} is loading", server.port));
            }
            if !self.cluster {
                continue;
            }
            let state = server.admin(&["CLUSTER", "INFO"]).await?;
            if !state.contains("cluster_state:ok") {
                return Err(format!("{}: cluster state not ok", server.port));
            }
            let replication = server.admin(&["INFO", "replication"]).await?;
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return Err(format!("{}: replica link down", server.port));
            }
        }
        if self.cluster {
            let nodes = self.topology().await?;
            if nodes
                .iter()
                .filter(|node| node.master && !node.failed)
                .count()
                != 3
            {
                return Err("not three masters".to_owned());
            }
            if nodes.iter().any(|node| node.failed) {
                return Err("a node is flagged failed".to_owned());
            }
            // The nodes learn of a failover by gossip: until the one asked
            // for the topology has, the next fault would aim at the old
            // roles (a `CLUSTER FAILOVER` sent to a master).
            for server in &self.servers {
                let role = server.admin(&["ROLE"]).await?;
                let viewed = nodes.iter().find(|node| node.port == server.port);
                if viewed.is_some_and(|node| node.master != role.starts_with("master")) {
                    return Err(format!("{}: the topology has its old role", server.port));
                }
            }
        }
        Ok(())
    }
}

fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split('@').next()?;
            let port = address.rsplit(':').next()?.parse().ok()?;
            let flags = fields[2];
            Some(ClusterNode {
                id: fields[0].to_owned(),
                port,
                master: flags.contains("master"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                failed: flags.contains("fail") && !flags.contains("fail?"),
            })
        })
        .collect()
}

/// The two `chaos-node` processes.
#[derive(Debug)]
pub(crate) struct Nodes {
    children: Vec<Child>,
    pub(crate) ports: Vec<u16>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Builds `chaos-node` in this binary's profile when run by cargo, and
/// returns its path (next to this binary).
pub(crate) fn node_binary() -> Result<PathBuf, String> {
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut command = Command::new(cargo);
        command.args(["build", "-p", "realtime-bench", "--bin", "chaos-node"]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let status = command
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("cargo: {e}"))?;
        if !status.success() {
            return Err("building chaos-node failed".to_owned());
        }
    }
    let binary = binaries()?.join("chaos-node");
    if !binary.exists() {
        return Err(format!(
            "{} is missing: cargo build -p realtime-bench --bin chaos-node",
            binary.display()
        ));
    }
    Ok(binary)
}

impl Nodes {
    /// Starts `count` nodes on `redis`, each logging to `dir/node<n>.log`,
    /// and waits until each answers `/ready`.
    pub(crate) async fn start(
        binary: &Path,
        dir: &Path,
        redis: &Redis,
        count: usize,
        durable: bool,
    ) -> Result<Self, String> {
        let mut nodes = Self {
            children: Vec::new(),
            ports: Vec::new(),
        };
        for n in 0..count {
            let port = free_port()?;
            let log = std::fs::File::create(dir.join(format!("node{n}.log")))
                .map_err(|e| format!("node log: {e}"))?;
            let mut command = Command::new(binary);
            command
                .env("PORT", port.to_string())
                .env("PRESENCE_TTL_MS", "3000")
                .env("PRESENCE_LINGER_MS", "0")
                .env(
                    "RUST_LOG",
                    std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "warn,realtime=info".into()),
                )
                .env_remove("REDIS_URL")
                .env_remove("REDIS_NODES")
                .stdout(Stdio::null())
                .stderr(log);
            if redis.cluster {
                command.env("REDIS_NODES", redis.urls().join(","));
            } else {
                command.env("REDIS_URL", redis.urls()[0].clone());
            }
            if durable {
                command.env("DURABLE", "1");
            }
            let child = command
                .spawn()
                .map_err(|e| format!("start {}: {e}", binary.display()))?;
            nodes.children.push(child);
            nodes.ports.push(port);
        }
        for port in nodes.ports.clone() {
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if matches!(http_status(port, "/ready").await, Ok(200)) {
                    break;
                }
                for child in &mut nodes.children {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "a chaos-node exited at start ({status}); see {}",
                            dir.display()
                        ));
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!("the chaos-node on port {port} is not ready"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(nodes)
    }

    /// Whether every node is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|child| matches!(child.try_wait(), Ok(None)))
    }
}

/// The status of a plain `GET path` (no upgrade), bounded.
pub(crate) async fn http_status(port: u16, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 64];
        let read = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..read]).into_owned();
        line.split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| format!("no status line: {line:?}"))
    };
    tokio::time::timeout(Duration::from_secs(3), get)
        .await
        .map_err(|_| "GET timed out".to_owned())?
}
