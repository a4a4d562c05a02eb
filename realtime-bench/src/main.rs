//! `realtime-bench`: the project's load generator.
//!
//! It speaks protocol v1 over real WebSockets to 127.0.0.1 only, with bounded
//! counts and deadlines. Workloads:
//!
//! - `fanout --url ws://127.0.0.1:3000/ws [--url ...] --subs S --pubs P --messages M [--rate R] [--apart] [--pad BYTES]`:
//!   delivered messages/s, latency p50/p99/max, lost and reordered messages
//!   (`--apart`: subscribers on the first node, publishers on the last;
//!   `--pad`: each event's text padded to that many bytes);
//! - `rpc --url ... --conns C --requests N`: direct round trips;
//! - `idle --url ... --conns C --pid PID [--pid PID]`: the servers' memory per
//!   idle connection, read from /proc;
//! - `matrix [--repeats 3] [--messages 2000] [--idle 5000] [--held 10000] [--only NAME]`: builds
//!   `examples/bench_server` and the floor server, runs every case against
//!   both in turn and prints medians and ratios (see docs/PERFORMANCE.md);
//! - `presence [--members 1000] [--visits 200] [--repeats 3]`: the cost of
//!   presence in a room of that many members, off, quiet and announced
//!   (see docs/PERFORMANCE.md);
//! - `soak [--conns 10000] [--rooms 100] [--rate 100] [--seconds 600] [--restart-redis-at S] [--sample 60]`:
//!   two chat instances on one Redis under a steady load: memory over time,
//!   latency, lost and reordered events, and the `/metrics` matched
//!   against what the generator counted (see docs/PERFORMANCE.md);
//! - `scale [--instances 6] [--conns 100000] [--clients 6] [--idle-secs 40] [--rate 10] [--seconds 60] [--floor timer|sweep] [--watchdog-secs 20] [--text-heartbeat]`:
//!   `examples/bench_server` (release) instances on one private Redis and
//!   client processes (`scale-client`, from 127.0.0.2 and up): memory per
//!   connection, idle CPU per 100,000 connections, one event to all, and
//!   a steady rate to all (see docs/SCALING.md); `--floor timer|sweep`:
//!   the floor server in their place, pinging every 25 s from a timer per
//!   connection or from one sweep, for memory and idle CPU;
//!   `--watchdog-secs`: each client sends a `$ping` after that long without
//!   a text frame, as the TypeScript client does; `--text-heartbeat`: each
//!   asks for the heartbeat as text and answers it, as that client now does;
//! - `storm [--clients 10000] [--rooms 100] [--rate 200] [--backoff-ms 2000]`:
//!   two `bench_server` instances (history on) on one Redis, subscribers
//!   following their rooms' positions on both; one is killed with SIGKILL
//!   and its clients resume on the other: recovered or not, refused, events
//!   missed, the storm's length, its Redis commands and CPU (see
//!   docs/SCALING.md);
//! - `compression [--subs 1000] [--messages 400] [--repeats 3] [--idle 5000]`: two
//!   `bench_server` instances on one Redis and clients that offer
//!   permessage-deflate or not: bytes on the wire per event (a 1 KiB quote,
//!   a chat line) through a counting proxy, and a fan-out burst of quotes
//!   with every subscriber compressed against none, and idle memory per
//!   connection with and without it (see docs/PERFORMANCE.md);
//! - `chaos --seed N --duration D [--cluster] [--durable] [--rooms 4] [--subs 3] [--pubs 2] [--rate 3] [--keep-going] [--trace FILE]`:
//!   a seeded fault checker. Two `chaos-node` instances (`src/bin/chaos-node.rs`)
//!   on a private Redis, or a local Redis Cluster of 3 masters and 3
//!   replicas; publishers that send every `say` with an idempotency key
//!   until it is acknowledged, subscribers that drop and resume with
//!   `since` on the other instance; for D seconds, faults drawn from the
//!   seed (Redis restarts empty, from an older RDB snapshot and from an AOF
//!   with `appendfsync always`, `CLIENT KILL TYPE pubsub` and `normal`,
//!   `SCRIPT FLUSH`, deleted room keys, SIGSTOP/SIGCONT, in a cluster master
//!   restarts, `CLUSTER FAILOVER` and a master killed until its replica
//!   takes over; `--durable`: AOF always, `Durability::Durable`, and only
//!   the faults that lose nothing). It checks that every acknowledged event has one position
//!   and every position one event, that each client receives consecutive
//!   offsets between the points where it is told (`reset`, `recovered:
//!   false`), that a final event per room reaches every client, that
//!   newcomers are not refused while Redis is up, and that presence
//!   converges. Exits non-zero with the seed and a trace on a violation.

use std::process::ExitCode;

mod chaos;
mod compression;
mod matrix;
mod presence;
mod scale;
mod soak;
mod stats;
mod storm;
mod workload;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("realtime-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` pairs after the workload name.
struct Flags<'a>(&'a [String]);

impl Flags<'_> {
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .windows(2)
            .filter(|pair| pair[0] == name)
            .map(|pair| pair[1].clone())
            .collect()
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.all(name).pop() {
            None => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| format!("{name} takes a number, got `{value}`")),
        }
    }
}

async fn run(args: &[String]) -> Result<(), String> {
    let (workload, rest) = args.split_first().ok_or(
        "usage: realtime-bench <fanout|rpc|idle|matrix|presence|soak|scale|storm|compression|chaos> [--flags]; see the crate docs",
    )?;
    let flags = Flags(rest);
    let urls = flags.all("--url");
    match workload.as_str() {
        "fanout" => {
            let rate: u64 = flags.number("--rate", 0)?;
            let report = workload::fanout(&workload::Fanout {
                bases: non_empty(urls)?,
                subscribers: flags.number("--subs", 100)?,
                publishers: flags.number("--pubs", 1)?,
                messages: flags.number("--messages", 2000)?,
                rate: (rate > 0).then_some(rate),
                apart: rest.iter().any(|flag| flag == "--apart"),
                pad: flags.number("--pad", 0)?,
            })
            .await?;
            println!("{report:#?}");
        }
        "rpc" => {
            let report = workload::rpc(
                &non_empty(urls)?,
                flags.number("--conns", 50)?,
                flags.number("--requests", 200)?,
            )
            .await?;
            println!("{report:#?}");
        }
        "idle" => {
            let pids = flags
                .all("--pid")
                .iter()
                .map(|pid| pid.parse().map_err(|_| format!("bad pid `{pid}`")))
                .collect::<Result<Vec<u32>, String>>()?;
            let report =
                workload::idle(&non_empty(urls)?, flags.number("--conns", 5000)?, &pids).await?;
            println!("{report:#?}");
        }
        "matrix" => {
            matrix::run(&matrix::Options {
                repeats: flags.number("--repeats", 3)?,
                messages: flags.number("--messages", 2000)?,
                idle_connections: flags.number("--idle", 5000)?,
                held_connections: flags.number("--held", 10_000)?,
                only: flags.all("--only").pop(),
            })
            .await?;
        }
        "soak" => {
            let restart: u64 = flags.number("--restart-redis-at", 0)?;
            soak::run(&soak::Options {
                connections: flags.number("--conns", 10_000)?,
                rooms: flags.number("--rooms", 100)?,
                rate: flags.number("--rate", 100)?,
                duration: std::time::Duration::from_secs(flags.number("--seconds", 600)?),
                restart_redis_at: (restart > 0).then(|| std::time::Duration::from_secs(restart)),
                sample_every: std::time::Duration::from_secs(flags.number("--sample", 60)?),
            })
            .await?;
        }
        "presence" => {
            presence::run(&presence::Options {
                members: flags.number("--members", 1000)?,
                cycles: flags.number("--visits", 200)?,
                repeats: flags.number("--repeats", 3)?,
            })
            .await?;
        }
        "scale" => {
            scale::run(&scale::Options {
                instances: flags.number("--instances", 6)?,
                connections: flags.number("--conns", 100_000)?,
                clients: flags.number("--clients", 6)?,
                idle: std::time::Duration::from_secs(flags.number("--idle-secs", 40)?),
                rate: flags.number("--rate", 10)?,
                seconds: flags.number("--seconds", 60)?,
                floor: match flags.all("--floor").pop().as_deref() {
                    None => None,
                    Some("timer") => Some(scale::Floor::Timer),
                    Some("sweep") => Some(scale::Floor::Sweep),
                    Some(other) => {
                        return Err(format!("--floor takes timer or sweep, got `{other}`"));
                    }
                },
                watchdog: match flags.number("--watchdog-secs", 0)? {
                    0 => None,
                    secs => Some(std::time::Duration::from_secs(secs)),
                },
                text_heartbeat: rest.iter().any(|flag| flag == "--text-heartbeat"),
            })
            .await?;
        }
        "compression" => {
            compression::run(&compression::Options {
                subscribers: flags.number("--subs", 1000)?,
                messages: flags.number("--messages", 400)?,
                repeats: flags.number("--repeats", 3)?,
                idle: flags.number("--idle", 5000)?,
            })
            .await?;
        }
        "storm" => {
            storm::run(&storm::Options {
                clients: flags.number("--clients", 10_000)?,
                rooms: flags.number("--rooms", 100)?,
                rate: flags.number("--rate", 200)?,
                backoff: std::time::Duration::from_millis(flags.number("--backoff-ms", 2000)?),
            })
            .await?;
        }
        "scale-client" => {
            let source = flags
                .all("--source")
                .pop()
                .ok_or("--source 127.0.0.N")?
                .parse()
                .map_err(|_| "--source takes an IPv4 address".to_owned())?;
            let topic = flags.all("--topic").pop().ok_or("--topic")?;
            scale::client(
                source,
                &non_empty(urls)?,
                &topic,
                flags.number("--conns", 1000)?,
                match flags.number("--watchdog-secs", 0)? {
                    0 => None,
                    secs => Some(std::time::Duration::from_secs(secs)),
                },
                rest.iter().any(|flag| flag == "--text-heartbeat"),
            )
            .await?;
        }
        "chaos" => {
            let flag = |name: &str| rest.iter().any(|flag| flag == name);
            chaos::run(&chaos::Options {
                seed: flags.number("--seed", 1)?,
                duration: std::time::Duration::from_secs(flags.number("--duration", 20)?),
                cluster: flag("--cluster"),
                durable: flag("--durable"),
                rooms: flags.number("--rooms", 4)?,
                subscribers: flags.number("--subs", 3)?,
                publishers: flags.number("--pubs", 2)?,
                rate: flags.number("--rate", 3.0)?,
                keep_going: flag("--keep-going"),
                trace: flags.all("--trace").pop().map(Into::into),
            })
            .await?;
        }
        other => {
            return Err(format!(
                "unknown workload `{other}`; use fanout, rpc, idle, matrix, presence, soak, scale, storm or chaos"
            ));
        }
    }
    Ok(())
}

fn non_empty(urls: Vec<String>) -> Result<Vec<String>, String> {
    if urls.is_empty() {
        return Err("give at least one --url ws://127.0.0.1:PORT/ws".to_owned());
    }
    Ok(urls)
}
