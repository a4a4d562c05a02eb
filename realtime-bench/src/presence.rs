//! `presence`: what tracking who is in a room costs, in a room of many
//! members (1000 by default) on two `bench_server` nodes and one private
//! Redis, with presence off, quiet and announced in turn.
//!
//! Per mode and run:
//!
//! - **join**: the members connect (64 at a time, round-robin over the
//!   nodes) until `$presence` counts every one. Reported: joins/s, and the
//!   presence script's calls (`EVALSHA`) and every Redis command (those the
//!   script runs included) per join, from `INFO commandstats`.
//! - **churn**: with the members in the room, other users connect and close
//!   again, 8 at a time. Reported: cycles/s (until `$presence` is back to
//!   the members alone), and with announced presence the `join` and `leave`
//!   frames the members received per second (each cycle is one of each to
//!   every member), and the visits not announced: a visitor whose join and
//!   leave went to the broker in one batch was never in the room for
//!   anyone, and is announced neither.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::matrix::{Redis, binaries, build, free_port, wait_for_port, workspace_root};
use crate::stats::median;

/// The longest one phase may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// Parameters of the run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) members: usize,
    pub(crate) cycles: usize,
    pub(crate) repeats: usize,
}

/// One run of one mode.
#[derive(Debug, Default, Clone)]
struct Run {
    joins_per_sec: f64,
    scripts_per_join: f64,
    commands_per_join: f64,
    cycles_per_sec: f64,
    frames_per_sec: f64,
    /// Visits whose join and leave the members did not all receive: a
    /// visit shorter than one write of the instance's batch is neither
    /// (by design, as a reload within the linger is neither).
    visits_unannounced: usize,
}

/// Two bench servers with `PRESENCE=<mode>`, killed on drop.
struct Nodes {
    children: Vec<Child>,
    bases: Vec<String>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(dir: &Path, redis: &str, mode: &str) -> Result<Nodes, String> {
    let mut nodes = Nodes {
        children: Vec::new(),
        bases: Vec::new(),
    };
    for _ in 0..2 {
        let port = free_port()?;
        let child = Command::new(dir.join("examples").join("bench_server"))
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis)
            .env("PRESENCE", mode)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start bench_server: {e}"))?;
        nodes.children.push(child);
        wait_for_port(port)?;
        nodes.bases.push(format!("ws://127.0.0.1:{port}/ws"));
    }
    Ok(nodes)
}

/// Calls of every command, and of `EVALSHA`, that Redis has counted.
async fn command_counts(
    redis: &mut redis::aio::MultiplexedConnection,
) -> Result<(u64, u64), String> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .map_err(|e| e.to_string())?;
    let (mut all, mut scripts) = (0, 0);
    for line in info.lines() {
        let Some((name, stats)) = line.split_once(':') else {
            continue;
        };
        let calls: u64 = stats
            .split(',')
            .find_map(|field| field.strip_prefix("calls="))
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0);
        all += calls;
        if name == "cmdstat_evalsha" {
            scripts += calls;
        }
    }
    Ok((all, scripts))
}

/// Asks `$presence` of the room from a probe client until it counts
/// `clients` besides the probe; how many times it asked.
async fn until_clients(base: &str, clients: usize) -> Result<u64, String> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{base}/room?token=probe"))
        .await
        .map_err(|e| format!("connect the probe: {e}"))?;
    let start = Instant::now();
    let mut id = 0;
    // The probe counts itself.
    let want = clients + 1;
    loop {
        id += 1;
        let ask = format!(r#"{{"type":"$presence","data":{{"topic":"room"}},"id":{id}}}"#);
        socket
            .send(Message::text(ask))
            .await
            .map_err(|e| e.to_string())?;
        let reply = format!(r#""reply_to":{id},"#);
        loop {
            let text = match socket.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                _ => return Err("the probe lost its connection".to_owned()),
            };
            if text.contains(&reply) {
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if value["ok"]["clients"] == want {
                    return Ok(id);
                }
                break;
            }
        }
        if start.elapsed() > DEADLINE {
            return Err(format!("presence never reached {clients} clients"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn one_run(
    bases: &[String],
    redis: &mut redis::aio::MultiplexedConnection,
    options: &Options,
    mode: &str,
) -> Result<Run, String> {
    let (tracked, announced) = (mode != "off", mode == "announced");
    let frames = Arc::new(AtomicUsize::new(0));
    // When the last join or leave frame came, in ns since `epoch`.
    let epoch = Instant::now();
    let last_frame = Arc::new(AtomicU64::new(0));
    let (before, scripts_before) = command_counts(redis).await?;
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for n in 0..options.members {
        let url = format!("{}/room?token=m{n}", bases[n % bases.len()]);
        let (gate, frames) = (Arc::clone(&gate), Arc::clone(&frames));
        let last_frame = Arc::clone(&last_frame);
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("open");
            let (socket, _) = tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| format!("connect a member: {e}"))?;
            drop(permit);
            Ok::<_, String>(tokio::spawn(async move {
                let (_sink, mut stream) = socket.split();
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = message
                        && (text.contains(r#""join":"#) || text.contains(r#""leave":"#))
                    {
                        frames.fetch_add(1, Ordering::Relaxed);
                        let now = epoch.elapsed().as_nanos() as u64;
                        last_frame.fetch_max(now, Ordering::Relaxed);
                    }
                }
            }))
        }));
    }
    let mut readers = Vec::new();
    for task in tasks {
        readers.push(task.await.map_err(|e| e.to_string())??);
    }
    // Without presence, the joins are done when the sockets are.
    let asks = match tracked {
        true => until_clients(&bases[0], options.members).await?,
        false => 0,
    };
    let joined = start.elapsed();
    let (after, scripts_after) = command_counts(redis).await?;
    // Each of the probe's reads is one script call of four commands
    // (EVALSHA, TIME, ZRANGEBYSCORE, HGETALL), and INFO is one more.
    let scripts = scripts_after - scripts_before - asks;
    let commands = after - before - 4 * asks - 1;

    // The members' own joins may still be on their way: wait until none
    // has come for a while, so that they are not counted as the visits'.
    let mut last = usize::MAX;
    while frames.load(Ordering::Relaxed) != last {
        last = frames.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Churn: other users come and go.
    frames.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(8));
    let mut cycles = Vec::new();
    for n in 0..options.cycles {
        let url = format!("{}/room?token=c{n}", bases[n % bases.len()]);
        let gate = Arc::clone(&gate);
        cycles.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("open");
            let (mut socket, _) = tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| format!("connect a visitor: {e}"))?;
            // An echo's answer: the visitor is subscribed (and its join is
            // on its way) before it leaves.
            let echo = r#"{"type":"echo","data":{"text":"x"},"id":1}"#;
            socket
                .send(Message::text(echo))
                .await
                .map_err(|e| e.to_string())?;
            while let Some(Ok(message)) = socket.next().await {
                if matches!(&message, Message::Text(text) if text.contains(r#""reply_to":1"#)) {
                    break;
                }
            }
            let _ = socket.close(None).await;
            Ok::<(), String>(())
        }));
    }
    for cycle in cycles {
        cycle.await.map_err(|e| e.to_string())??;
    }
    if tracked {
        until_clients(&bases[0], options.members).await?;
    }
    let churned = start.elapsed();
    let expected = if announced {
        2 * options.cycles * options.members
    } else {
        0
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while frames.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Until the last frame: a visit that was never announced must not
    // count the wait for it.
    let last = Duration::from_nanos(last_frame.load(Ordering::Relaxed));
    let delivered = last
        .saturating_sub(start - epoch)
        .max(Duration::from_millis(1));
    let received = frames.load(Ordering::Relaxed);
    for reader in readers {
        reader.abort();
    }
    let joins = options.members as f64;
    Ok(Run {
        joins_per_sec: joins / joined.as_secs_f64(),
        scripts_per_join: scripts as f64 / joins,
        commands_per_join: commands as f64 / joins,
        cycles_per_sec: options.cycles as f64 / churned.as_secs_f64(),
        frames_per_sec: received as f64 / delivered.as_secs_f64(),
        visits_unannounced: match announced {
            true => options
                .cycles
                .saturating_sub(received / (2 * options.members)),
            false => 0,
        },
    })
}

/// Runs every mode `repeats` times and prints medians.
pub(crate) async fn run(options: &Options) -> Result<(), String> {
    build(&workspace_root())?;
    let dir = binaries()?;
    let redis = Redis::start()?;
    let client = redis::Client::open(redis.url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let modes = ["off", "quiet", "announced"];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); modes.len()];
    for repeat in 0..options.repeats {
        // The modes alternate, so that a slow moment of the machine falls on
        // each of them alike.
        for (at, mode) in modes.iter().enumerate() {
            redis::cmd("FLUSHALL")
                .exec_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let nodes = start(&dir, &redis.url, mode)?;
            let run = tokio::time::timeout(
                DEADLINE * 3,
                one_run(&nodes.bases, &mut conn, options, mode),
            )
            .await
            .map_err(|_| format!("the {mode} run timed out"))??;
            eprintln!("run {} {mode}: {run:?}", repeat + 1);
            runs[at].push(run);
        }
    }
    println!(
        "| presence ({} members, {} visitors) | joins/s | EVALSHA per join | Redis commands per join | visits/s | join+leave frames/s | visits not announced |",
        options.members, options.cycles
    );
    println!("|---|---|---|---|---|---|---|");
    for (mode, runs) in modes.iter().zip(&runs) {
        let pick = |field: fn(&Run) -> f64| median(&runs.iter().map(field).collect::<Vec<_>>());
        println!(
            "| {mode} | {:.0} | {:.3} | {:.2} | {:.0} | {:.0} | {} |",
            pick(|run| run.joins_per_sec),
            pick(|run| run.scripts_per_join),
            pick(|run| run.commands_per_join),
            pick(|run| run.cycles_per_sec),
            pick(|run| run.frames_per_sec),
            runs.iter()
                .map(|run| run.visits_unannounced)
                .max()
                .unwrap_or(0),
        );
    }
    Ok(())
}
