//! The matrix: builds both servers, runs every case against each in turn,
//! three times, and prints medians and project ÷ floor ratios.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stats::median;
use crate::workload::{self, Fanout};

/// Round trips per rpc connection: enough for a run of about half a second,
/// so that one scheduling hiccup does not decide the median.
const RPC_REQUESTS: usize = 500;

/// Deliveries a max-rate run aims at: with fewer, a run lasts a fraction of a
/// second and one scheduling hiccup decides it.
const MAX_RATE_DELIVERIES: usize = 2_000_000;

/// The longest burst: within both servers' per-subscriber queue (4096
/// frames), so that neither drops or closes a subscriber by design.
const MAX_BURST: usize = 4000;

/// Messages of one fan-out run: `messages`, or at max rate more, up to
/// [`MAX_BURST`], towards [`MAX_RATE_DELIVERIES`].
fn messages_for(subscribers: usize, rate: Option<u64>, messages: usize) -> usize {
    match rate {
        Some(_) => messages,
        None => (MAX_RATE_DELIVERIES / subscribers.max(1)).clamp(messages, MAX_BURST.max(messages)),
    }
}

/// The two servers under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// `examples/bench_server`, written with `#[realtime_handler]`.
    Project,
    /// `floor-server`: the hand-written minimum.
    Floor,
}

impl Server {
    fn binary(self, dir: &Path) -> PathBuf {
        match self {
            Self::Project => dir.join("examples").join("bench_server"),
            Self::Floor => dir.join("floor-server"),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
enum Case {
    Fanout {
        subscribers: usize,
        rate: Option<u64>,
        redis: bool,
        /// Subscribers on one node, the publisher on the other.
        apart: bool,
    },
    Rpc {
        connections: usize,
    },
    Idle {
        connections: usize,
    },
}

impl Case {
    fn name(&self) -> String {
        match self {
            Self::Fanout {
                subscribers,
                rate,
                redis,
                apart,
            } => format!(
                "fan-out S={subscribers} {}{} {}",
                if *redis { "redis/2 nodes" } else { "memory" },
                if *apart {
                    ", publisher on the other"
                } else {
                    ""
                },
                rate.map_or("max rate".to_owned(), |r| format!("{r} msg/s")),
            ),
            Self::Rpc { connections } => format!("rpc C={connections}"),
            Self::Idle { connections } => format!("idle C={connections}"),
        }
    }
}

/// One measurement: the headline figure, its unit, whether more is better,
/// and the secondary figures.
#[derive(Debug, Clone, Default)]
struct Sample {
    headline: f64,
    p50_us: f64,
    p99_us: f64,
    lost: f64,
    reordered: f64,
}

/// Options of the matrix run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) repeats: usize,
    pub(crate) messages: usize,
    pub(crate) idle_connections: usize,
    pub(crate) held_connections: usize,
    /// Run only the cases whose name contains this.
    pub(crate) only: Option<String>,
}

struct Running {
    children: Vec<Child>,
    bases: Vec<String>,
}

impl Running {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

pub(crate) fn wait_for_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start(server: Server, dir: &Path, nodes: usize, redis: Option<&str>) -> Result<Running, String> {
    let mut running = Running {
        children: Vec::new(),
        bases: Vec::new(),
    };
    for _ in 0..nodes {
        let port = free_port()?;
        let mut command = Command::new(server.binary(dir));
        command
            .env("PORT", port.to_string())
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = redis {
            command.env("REDIS_URL", url);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", server.binary(dir).display()))?;
        running.children.push(child);
        wait_for_port(port)?;
        running.bases.push(format!("ws://127.0.0.1:{port}/ws"));
    }
    Ok(running)
}

/// A private redis-server for the run, stopped on drop.
pub(crate) struct Redis {
    child: Child,
    pub(crate) url: String,
}

impl Redis {
    pub(crate) fn start() -> Result<Self, String> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start redis-server: {e}"))?;
        wait_for_port(port)?;
        Ok(Self {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn measure(
    case: &Case,
    server: Server,
    dir: &Path,
    redis: &Redis,
    options: &Options,
) -> Result<Sample, String> {
    match case {
        Case::Fanout {
            subscribers,
            rate,
            redis: through_redis,
            apart,
        } => {
            let (nodes, url) = if *through_redis {
                (2, Some(redis.url.as_str()))
            } else {
                (1, None)
            };
            let running = start(server, dir, nodes, url)?;
            let report = workload::fanout(&Fanout {
                bases: running.bases.clone(),
                subscribers: *subscribers,
                publishers: 1,
                messages: messages_for(*subscribers, *rate, options.messages),
                rate: *rate,
                apart: *apart,
                pad: 0,
            })
            .await?;
            Ok(Sample {
                headline: report.per_sec,
                p50_us: report.p50_us as f64,
                p99_us: report.p99_us as f64,
                lost: report.lost as f64,
                reordered: report.reordered as f64,
            })
        }
        Case::Rpc { connections } => {
            let running = start(server, dir, 1, None)?;
            let report = workload::rpc(&running.bases, *connections, RPC_REQUESTS).await?;
            Ok(Sample {
                headline: report.per_sec,
                p50_us: report.p50_us as f64,
                p99_us: report.p99_us as f64,
                lost: report.failed as f64,
                reordered: 0.0,
            })
        }
        Case::Idle { connections } => {
            let running = start(server, dir, 1, None)?;
            let report = workload::idle(&running.bases, *connections, &running.pids()).await?;
            Ok(Sample {
                headline: report.bytes_per_connection / 1024.0,
                lost: (*connections - report.held) as f64,
                ..Sample::default()
            })
        }
    }
}

pub(crate) fn build(root: &Path) -> Result<(), String> {
    let steps: [&[&str]; 2] = [
        &[
            "build",
            "--release",
            "-p",
            "realtime-suite",
            "--example",
            "bench_server",
        ],
        &[
            "build",
            "--release",
            "-p",
            "realtime-bench",
            "--bin",
            "floor-server",
        ],
    ];
    for args in steps {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(root)
            .status()
            .map_err(|e| format!("cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo {} failed", args.join(" ")));
        }
    }
    Ok(())
}

/// The workspace's root directory.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bench crate sits in the workspace")
        .to_path_buf()
}

/// The directory of this binary, where cargo put the servers it built
/// (`examples/` beside it).
pub(crate) fn binaries() -> Result<PathBuf, String> {
    Ok(std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .ok_or("no directory for the bench binary")?
        .to_path_buf())
}

/// Runs the whole matrix and prints the table.
pub(crate) async fn run(options: &Options) -> Result<(), String> {
    let root = workspace_root();
    build(&root)?;
    let dir = binaries()?;
    let redis = Redis::start()?;

    let mut cases = Vec::new();
    for redis in [false, true] {
        for rate in [None, Some(1000)] {
            for subscribers in [100, 1000] {
                cases.push(Case::Fanout {
                    subscribers,
                    rate,
                    redis,
                    apart: false,
                });
            }
        }
    }
    // One publisher and one subscriber: what a client that sends a burst
    // gets, bounded by how the server waits for each publish.
    cases.push(Case::Fanout {
        subscribers: 1,
        rate: None,
        redis: true,
        apart: false,
    });
    // Every event crosses Redis.
    cases.push(Case::Fanout {
        subscribers: 100,
        rate: None,
        redis: true,
        apart: true,
    });
    cases.push(Case::Rpc { connections: 50 });
    // The second idle row is the "10 000 connections held" target: its
    // `lost` column counts connections that stopped answering.
    for connections in [options.idle_connections, options.held_connections] {
        cases.push(Case::Idle { connections });
    }

    println!(
        "{} messages per fan-out run (at max rate up to {MAX_BURST}, towards {MAX_RATE_DELIVERIES} deliveries), medians of {} runs; the two servers alternate",
        options.messages, options.repeats
    );
    println!();
    println!(
        "| case | realtime | floor | realtime ÷ floor | p50 µs (rt / floor) | p99 µs (rt / floor) | p99 ÷ floor | lost (rt / floor) | reordered (rt / floor) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let wanted = |case: &&Case| {
        options
            .only
            .as_deref()
            .is_none_or(|only| case.name().contains(only))
    };
    for case in cases.iter().filter(wanted) {
        let mut project = Vec::new();
        let mut floor = Vec::new();
        for _ in 0..options.repeats {
            for server in [Server::Project, Server::Floor] {
                let sample = measure(case, server, &dir, &redis, options).await;
                let sample = sample.map_err(|e| format!("{} on {server:?}: {e}", case.name()))?;
                match server {
                    Server::Project => project.push(sample),
                    Server::Floor => floor.push(sample),
                }
            }
        }
        let pick = |samples: &[Sample], field: fn(&Sample) -> f64| {
            median(&samples.iter().map(field).collect::<Vec<_>>())
        };
        let (rt, fl) = (pick(&project, |s| s.headline), pick(&floor, |s| s.headline));
        let (unit, digits) = match case {
            Case::Fanout { .. } => ("msg/s", 0),
            Case::Rpc { .. } => ("req/s", 0),
            Case::Idle { .. } => ("KiB/conn", 1),
        };
        let (p50r, p50f) = (pick(&project, |s| s.p50_us), pick(&floor, |s| s.p50_us));
        let (p99r, p99f) = (pick(&project, |s| s.p99_us), pick(&floor, |s| s.p99_us));
        let lost: (f64, f64) = (
            project.iter().map(|s| s.lost).sum(),
            floor.iter().map(|s| s.lost).sum(),
        );
        let reordered: (f64, f64) = (
            project.iter().map(|s| s.reordered).sum(),
            floor.iter().map(|s| s.reordered).sum(),
        );
        println!(
            "| {} | {rt:.digits$} {unit} | {fl:.digits$} {unit} | {:.2} | {p50r:.0} / {p50f:.0} | {p99r:.0} / {p99f:.0} | {:.2} | {} / {} | {} / {} |",
            case.name(),
            rt / fl,
            if p99f > 0.0 { p99r / p99f } else { f64::NAN },
            lost.0,
            lost.1,
            reordered.0,
            reordered.1,
        );
    }
    Ok(())
}
