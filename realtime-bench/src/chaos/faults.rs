//! The faults: a schedule drawn from the run's seed, and the injector that
//! carries it out against the Redis processes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

use super::check::{Checker, Who};
use super::setup::{Persistence, Redis, signal};

/// The broker's channel prefix (`RedisConfig::channel_prefix`'s default).
const PREFIX: &str = "realtime:";

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `CLIENT KILL TYPE pubsub` on every server: the nodes' subscriber
    /// connections drop.
    ClientKill,
    /// `CLIENT KILL TYPE normal` on every server: the nodes' publishing
    /// connections drop, with publishes in flight whose answers are lost.
    ClientKillNormal,
    /// `SCRIPT FLUSH` on every server.
    ScriptFlush,
    /// `DEL` of a room's meta and history keys: what expiry does.
    DelRoom(usize),
    /// SIGSTOP of a server (a master in a cluster, by index), SIGCONT
    /// after `ms`.
    Freeze { master: usize, ms: u64 },
    /// `SAVE`: an RDB snapshot, which a later restart loads.
    Snapshot,
    /// kill -9, and a start without any persistence: everything is lost.
    RestartEmpty,
    /// kill -9, and a start that loads the last snapshot (older data).
    RestartSnapshot,
    /// AOF with `appendfsync always` (turned on at run time if it is not),
    /// `traffic_ms` of traffic, kill -9, and a start from the AOF.
    RestartAof { traffic_ms: u64 },
    /// A cluster master (by index among the masters, by port) killed and
    /// started again at once, with the cluster's persistence.
    MasterRestart { master: usize },
    /// `CLUSTER FAILOVER` on a replica of a master (by index).
    Failover { master: usize },
    /// A cluster master killed and left down until its replica takes
    /// over (the cluster's node timeout, 5 s), then started again, empty:
    /// it comes back as a replica.
    MasterCrash { master: usize },
}

impl Fault {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::ClientKill => "client-kill-pubsub",
            Self::ClientKillNormal => "client-kill-normal",
            Self::ScriptFlush => "script-flush",
            Self::DelRoom(_) => "del-room-keys",
            Self::Freeze { .. } => "sigstop",
            Self::Snapshot => "save",
            Self::RestartEmpty => "restart-empty",
            Self::RestartSnapshot => "restart-from-rdb",
            Self::RestartAof { .. } => "restart-aof-always",
            Self::MasterRestart { .. } => "master-restart",
            Self::Failover { .. } => "cluster-failover",
            Self::MasterCrash { .. } => "master-crash-failover",
        }
    }
}

/// What kind of Redis the faults are drawn for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    pub(crate) cluster: bool,
    pub(crate) durable: bool,
    pub(crate) rooms: usize,
}

/// The schedule: when (from the start of the chaos) and what.
pub(crate) fn schedule(
    rng: &mut StdRng,
    duration: Duration,
    setting: Setting,
) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::new();
    let mut at = Duration::from_secs_f64(rng.random_range(1.0..2.5));
    // Whether a snapshot is on disk for a restart to load.
    let mut snapshot = false;
    let end = duration.saturating_sub(Duration::from_secs(1));
    while at < end {
        let fault = draw(rng, setting, &mut snapshot);
        faults.push((at, fault));
        at += Duration::from_secs_f64(rng.random_range(1.5..4.0));
    }
    faults
}

/// The kinds a schedule draws from, before their parameters.
#[derive(Debug, Clone, Copy)]
enum Draw {
    ClientKill,
    ClientKillNormal,
    Freeze,
    DelRoom,
    ScriptFlush,
    Snapshot,
    RestartEmpty,
    RestartSnapshot,
    RestartAof,
    MasterRestart,
    MasterCrash,
    Failover,
}

fn draw(rng: &mut StdRng, setting: Setting, snapshot: &mut bool) -> Fault {
    use Draw::*;
    let mut table: Vec<(u32, Draw)> = vec![
        (3, ClientKill),
        (2, ClientKillNormal),
        (2, Freeze),
        (2, DelRoom),
        (2, ScriptFlush),
    ];
    table.extend(match (setting.cluster, setting.durable) {
        (false, false) => vec![
            (1, Snapshot),
            (1, RestartEmpty),
            (1, RestartSnapshot),
            (1, RestartAof),
        ],
        (false, true) => vec![(2, RestartAof)],
        (true, false) => vec![(2, MasterRestart), (2, Failover), (1, MasterCrash)],
        // A durable Redis never fails over (replication is asynchronous).
        (true, true) => vec![(2, MasterRestart)],
    });
    let total: u32 = table.iter().map(|(weight, _)| weight).sum();
    let mut pick = rng.random_range(0..total);
    let mut kind = table[0].1;
    for (weight, candidate) in &table {
        if pick < *weight {
            kind = *candidate;
            break;
        }
        pick -= weight;
    }
    match kind {
        ClientKill => Fault::ClientKill,
        ClientKillNormal => Fault::ClientKillNormal,
        Freeze => Fault::Freeze {
            master: rng.random_range(0..3),
            ms: rng.random_range(300..=3000),
        },
        DelRoom => Fault::DelRoom(rng.random_range(0..setting.rooms)),
        ScriptFlush => Fault::ScriptFlush,
        // A restart from a snapshot needs one on disk: the first draw of
        // either takes it.
        Snapshot | RestartSnapshot if !*snapshot => {
            *snapshot = true;
            Fault::Snapshot
        }
        Snapshot => Fault::ClientKill,
        RestartSnapshot => Fault::RestartSnapshot,
        RestartEmpty => {
            *snapshot = false;
            Fault::RestartEmpty
        }
        RestartAof => Fault::RestartAof {
            traffic_ms: rng.random_range(300..1500),
        },
        MasterRestart => Fault::MasterRestart {
            master: rng.random_range(0..3),
        },
        MasterCrash => Fault::MasterCrash {
            master: rng.random_range(0..3),
        },
        Failover => Fault::Failover {
            master: rng.random_range(0..3),
        },
    }
}

/// Carries out the schedule; returns once it is done or `stop` is set.
pub(crate) async fn inject(
    schedule: Vec<(Duration, Fault)>,
    redis: Arc<tokio::sync::Mutex<Redis>>,
    checker: Arc<Mutex<Checker>>,
    started: Instant,
    durable: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), String> {
    for (at, fault) in schedule {
        let due = started + at;
        while Instant::now() < due {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut redis = redis.lock().await;
        let outcome = apply(&fault, &mut redis, &checker, durable).await;
        let note = match &outcome {
            Ok(note) => note.clone(),
            Err(error) => format!("{} failed: {error}", fault.kind()),
        };
        checker.lock().expect("checker lock").fault_ended(&note);
        if let Err(error) = outcome {
            return Err(format!("fault {fault:?}: {error}"));
        }
    }
    Ok(())
}

/// Redis is about to lose writes: idempotency keys and histories.
fn lost_data(checker: &Mutex<Checker>) {
    let mut checker = checker.lock().expect("checker lock");
    checker.lost_data();
    checker.epochs_may_change(None);
}

fn log(checker: &Mutex<Checker>, text: String) {
    checker.lock().expect("checker lock").log(Who::Fault, text);
}

/// One fault; returns a note for the trace once it is over.
async fn apply(
    fault: &Fault,
    redis: &mut Redis,
    checker: &Mutex<Checker>,
    durable: bool,
) -> Result<String, String> {
    let started = |detail: String| {
        checker
            .lock()
            .expect("checker lock")
            .fault_started(fault.kind(), &detail);
    };
    match fault {
        Fault::ClientKill => {
            started("CLIENT KILL TYPE pubsub on every server".to_owned());
            let mut killed = Vec::new();
            for server in &redis.servers {
                killed.push(
                    server
                        .admin(&["CLIENT", "KILL", "TYPE", "pubsub"])
                        .await
                        .unwrap_or_else(|error| error),
                );
            }
            Ok(format!("  clients killed: {}", killed.join(", ")))
        }
        Fault::ClientKillNormal => {
            started("CLIENT KILL TYPE normal on every server".to_owned());
            let mut killed = Vec::new();
            for server in &redis.servers {
                killed.push(
                    server
                        .admin(&["CLIENT", "KILL", "TYPE", "normal"])
                        .await
                        .unwrap_or_else(|error| error),
                );
            }
            Ok(format!("  clients killed: {}", killed.join(", ")))
        }
        Fault::MasterCrash { master } => {
            let masters = redis.masters().await?;
            let master = masters.get(*master).ok_or("fewer masters than expected")?;
            let (port, id) = (master.port, master.id.clone());
            started(format!(
                "kill -9 master :{port}, leave it down until a replica takes over, start it again empty"
            ));
            lost_data(checker);
            redis.by_port(port).ok_or("no such server")?.kill();
            let deadline = Instant::now() + Duration::from_secs(30);
            let promoted = loop {
                if let Ok(nodes) = redis.topology().await
                    && let Some(promoted) = nodes.iter().find(|node| {
                        // A master now that was not one before: the dead
                        // master's replica.
                        node.master
                            && !node.failed
                            && !masters.iter().any(|before| before.id == node.id)
                    })
                {
                    break promoted.port;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "no replica of :{port} ({id}) took over within 30 s"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            log(checker, format!("  replica :{promoted} took over"));
            let server = redis.by_port(port).ok_or("no such server")?;
            server.launch(Persistence::None).await?;
            let took = redis
                .wait_healthy_noting(Duration::from_secs(30), |why| log(checker, why))
                .await?;
            Ok(format!(
                "  :{port} is back as a replica; cluster healthy after {took:.2?}; masters {}",
                masters_of(redis).await
            ))
        }
        Fault::ScriptFlush => {
            started("SCRIPT FLUSH on every server".to_owned());
            for server in &redis.servers {
                server.admin(&["SCRIPT", "FLUSH"]).await?;
            }
            Ok(String::new())
        }
        Fault::DelRoom(room) => {
            let meta = format!("{PREFIX}{{room:{room}}}:meta");
            let history = format!("{PREFIX}{{room:{room}}}:history");
            started(format!("DEL {meta} {history}"));
            checker
                .lock()
                .expect("checker lock")
                .epochs_may_change(Some(*room));
            let mut deleted = None;
            // In a cluster only the slot's master takes it; the others
            // answer MOVED.
            for server in &redis.servers {
                if let Ok(count) = server.admin(&["DEL", &meta, &history]).await {
                    deleted = Some(count);
                }
            }
            let deleted = deleted.ok_or("no server took the DEL")?;
            Ok(format!("  {deleted} keys deleted"))
        }
        Fault::Freeze { master, ms } => {
            let port = target_port(redis, *master).await?;
            let server = redis.by_port(port).ok_or("no such server")?;
            let pid = server.pid().ok_or("the server is not running")?;
            started(format!("SIGSTOP redis :{port} (pid {pid}) for {ms} ms"));
            signal(pid, "-STOP")?;
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            signal(pid, "-CONT")?;
            Ok(format!("  SIGCONT redis :{port}"))
        }
        Fault::Snapshot => {
            started("SAVE (an RDB snapshot a later restart loads)".to_owned());
            for server in &redis.servers {
                server.admin(&["SAVE"]).await?;
            }
            Ok(String::new())
        }
        Fault::RestartEmpty => {
            let server = &mut redis.servers[0];
            started(format!(
                "kill -9 redis :{}, start it empty (no persistence)",
                server.port
            ));
            lost_data(checker);
            server.kill();
            server.launch(Persistence::None).await?;
            Ok(format!("  redis :{} is back, empty", server.port))
        }
        Fault::RestartSnapshot => {
            let server = &mut redis.servers[0];
            started(format!(
                "kill -9 redis :{}, start it from its last RDB snapshot",
                server.port
            ));
            lost_data(checker);
            server.kill();
            server.launch(Persistence::Snapshot).await?;
            let keys = server.admin(&["DBSIZE"]).await.unwrap_or_default();
            Ok(format!(
                "  redis :{} is back from the snapshot ({keys} keys)",
                server.port
            ))
        }
        Fault::RestartAof { traffic_ms } => {
            let server = &mut redis.servers[0];
            started(format!(
                "AOF appendfsync always on redis :{}, {traffic_ms} ms of traffic, kill -9, start from the AOF",
                server.port
            ));
            if !server.aof_on {
                server
                    .admin(&["CONFIG", "SET", "appendfsync", "always"])
                    .await?;
                server
                    .admin(&["CONFIG", "SET", "appendonly", "yes"])
                    .await?;
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let info = server.admin(&["INFO", "persistence"]).await?;
                    if info.contains("aof_enabled:1")
                        && info.contains("aof_rewrite_in_progress:0")
                        && info.contains("aof_rewrite_scheduled:0")
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err("the AOF rewrite did not finish within 10 s".to_owned());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                server.aof_on = true;
                log(checker, format!("  AOF on (redis :{})", server.port));
            }
            tokio::time::sleep(Duration::from_millis(*traffic_ms)).await;
            if !durable {
                // A new run_id: new epochs, though nothing was lost.
                checker
                    .lock()
                    .expect("checker lock")
                    .epochs_may_change(None);
            }
            server.kill();
            server.launch(Persistence::Aof).await?;
            let keys = server.admin(&["DBSIZE"]).await.unwrap_or_default();
            Ok(format!(
                "  redis :{} is back from its AOF ({keys} keys)",
                server.port
            ))
        }
        Fault::MasterRestart { master } => {
            let port = target_port(redis, *master).await?;
            let persistence = if durable {
                Persistence::Aof
            } else {
                Persistence::None
            };
            started(format!(
                "kill -9 master :{port}, start it again ({})",
                if durable { "from its AOF" } else { "empty" }
            ));
            if !durable {
                lost_data(checker);
            }
            let server = redis.by_port(port).ok_or("no such server")?;
            server.kill();
            server.launch(persistence).await?;
            let took = redis
                .wait_healthy_noting(Duration::from_secs(20), |why| log(checker, why))
                .await?;
            Ok(format!(
                "  master :{port} is back; cluster healthy after {took:.2?}; masters {}",
                masters_of(redis).await
            ))
        }
        Fault::Failover { master } => {
            let masters = redis.masters().await?;
            let master = masters.get(*master).ok_or("fewer masters than expected")?;
            // Right after a failover, the node asked may not list the
            // demoted master as the new one's replica yet: look again.
            let deadline = Instant::now() + Duration::from_secs(10);
            let replica = loop {
                let nodes = redis.topology().await?;
                let replica = nodes
                    .into_iter()
                    .find(|node| node.master_id.as_deref() == Some(&master.id) && !node.failed);
                match replica {
                    Some(replica) => break replica,
                    None if Instant::now() > deadline => {
                        return Err(format!("master :{} has no replica", master.port));
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            started(format!(
                "CLUSTER FAILOVER on replica :{} of master :{}",
                replica.port, master.port
            ));
            // The promoted replica has another run_id: new epochs there.
            checker
                .lock()
                .expect("checker lock")
                .epochs_may_change(None);
            let server = redis.by_port(replica.port).ok_or("no such server")?;
            // A replica that won an election less than four node timeouts
            // ago (20 s) refuses to start another ("Failover attempt
            // expired"), and the manual failover times out after 5 s: so
            // ask again each time it lapses, until that window has passed.
            let deadline = Instant::now() + Duration::from_secs(30);
            'promoted: loop {
                server.admin(&["CLUSTER", "FAILOVER"]).await?;
                let lapsed = Instant::now() + Duration::from_secs(6);
                while Instant::now() < lapsed {
                    let role = server.admin(&["ROLE"]).await.unwrap_or_default();
                    if role.starts_with("master") {
                        break 'promoted;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if Instant::now() > deadline {
                    return Err(format!("replica :{} was not promoted", replica.port));
                }
                log(
                    checker,
                    format!(
                        "  the manual failover lapsed; asking :{} again",
                        replica.port
                    ),
                );
            }
            let took = redis
                .wait_healthy_noting(Duration::from_secs(20), |why| log(checker, why))
                .await?;
            Ok(format!(
                "  :{} is master, :{} its replica; cluster healthy after {took:.2?}; masters {}",
                replica.port,
                master.port,
                masters_of(redis).await
            ))
        }
    }
}

/// The masters' ports, for the trace.
async fn masters_of(redis: &Redis) -> String {
    match redis.masters().await {
        Ok(masters) => masters
            .iter()
            .map(|node| format!(":{}", node.port))
            .collect::<Vec<_>>()
            .join(" "),
        Err(error) => error,
    }
}

/// The port of the server a fault aims at: the one server, or a master by
/// index among the masters (sorted by port).
async fn target_port(redis: &Redis, master: usize) -> Result<u16, String> {
    if !redis.cluster {
        return Ok(redis.servers[0].port);
    }
    let masters = redis.masters().await?;
    masters
        .get(master % masters.len().max(1))
        .map(|node| node.port)
        .ok_or_else(|| "no master".to_owned())
}

/// Puts every server back: SIGCONT (a freeze cut short), and starts any
/// that is not running.
pub(crate) async fn heal(redis: &mut Redis) {
    for server in &mut redis.servers {
        if let Some(pid) = server.pid() {
            let _ = signal(pid, "-CONT");
        }
    }
}
