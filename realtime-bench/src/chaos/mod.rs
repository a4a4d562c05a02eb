//! `chaos`: a seeded fault checker. Two `chaos-node` instances on one
//! private Redis (or a local Redis Cluster), publishers and subscribers in
//! a few rooms, and faults drawn from the seed: Redis restarts (empty, from
//! an older RDB snapshot, from an AOF with `appendfsync always`), `CLIENT
//! KILL TYPE pubsub` and `normal`, `SCRIPT FLUSH`, deleted room keys,
//! SIGSTOP/SIGCONT, and in a cluster master restarts, manual failovers and
//! a master killed until its replica takes over. Everything a client
//! receives or is acknowledged is checked as it comes (see [`check`]); at
//! the end the faults stop, the run settles, each room gets one final
//! event that every client must receive, and each room's presence must
//! match who is connected.
//!
//! The parts: [`setup`] (processes), [`faults`] (the schedule and the
//! injector), [`clients`] (publishers and subscribers), [`check`] (the
//! checker and the trace).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

mod check;
mod clients;
mod faults;
mod setup;

use check::{Checker, Pos, View, Who};
use clients::{Ctx, Phase, Spec};
use setup::{Nodes, Persistence, Redis, http_status};

/// Parameters of a chaos run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) seed: u64,
    pub(crate) duration: Duration,
    pub(crate) cluster: bool,
    /// Redis keeps every write (AOF, `appendfsync always`), the nodes run
    /// with `Durability::Durable`, and no fault loses data.
    pub(crate) durable: bool,
    pub(crate) rooms: usize,
    pub(crate) subscribers: usize,
    pub(crate) publishers: usize,
    /// Events per second of each publisher.
    pub(crate) rate: f64,
    /// Go on after the first violation (the default stops there).
    pub(crate) keep_going: bool,
    /// Where to write the whole trace.
    pub(crate) trace: Option<std::path::PathBuf>,
}

/// How long the presence keys take to converge after the last change:
/// the nodes' time to live (3 s) plus a third, plus a margin.
const PRESENCE_BOUND: Duration = Duration::from_millis(3000 + 1000 + 2000);

fn say(checker: &Mutex<Checker>, text: String) {
    eprintln!("chaos: {text}");
    checker.lock().expect("checker lock").log(Who::Run, text);
}

/// Runs the checker; `Err` on a violation (after printing its trace) or
/// when the run itself could not be carried out.
pub(crate) async fn run(options: &Options) -> Result<(), String> {
    if options.rooms == 0 || options.publishers == 0 {
        return Err("--rooms and --pubs must be at least 1".to_owned());
    }
    let binary = setup::node_binary()?;
    let dir = std::env::temp_dir().join(format!(
        "realtime-chaos-{}-{}",
        std::process::id(),
        options.seed
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let outcome = run_in(options, &binary, &dir).await;
    match &outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!(
            "chaos: the nodes' and Redis's logs are kept in {}",
            dir.display()
        ),
    }
    outcome
}

async fn run_in(
    options: &Options,
    binary: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let setting = faults::Setting {
        cluster: options.cluster,
        durable: options.durable,
        rooms: options.rooms,
    };
    let schedule = faults::schedule(&mut rng, options.duration, setting);
    let mut specs = Vec::new();
    for room in 0..options.rooms {
        for index in 0..options.publishers {
            specs.push((room, format!("p{room}.{index}"), Some(index)));
        }
        for index in 0..options.subscribers {
            specs.push((room, format!("s{room}.{index}"), None));
        }
    }
    let specs: Vec<Spec> = specs
        .into_iter()
        .enumerate()
        .map(|(id, (room, name, publisher))| Spec {
            id,
            room,
            name,
            publisher,
            seed: rng.random(),
        })
        .collect();
    let quiet_room = rng.random_range(0..options.rooms);

    let persistence = if options.durable {
        Persistence::Aof
    } else {
        Persistence::None
    };
    let mode = format!(
        "{}, {}",
        if options.cluster {
            "Redis Cluster (3 masters, 3 replicas)"
        } else {
            "one Redis"
        },
        if options.durable {
            "AOF always, Durability::Durable"
        } else {
            "Durability::Volatile"
        }
    );
    eprintln!(
        "chaos: seed {}, {} s, {mode}; {} rooms × ({} publishers at {}/s, {} subscribers)",
        options.seed,
        options.duration.as_secs(),
        options.rooms,
        options.publishers,
        options.rate,
        options.subscribers
    );
    let redis = if options.cluster {
        Redis::cluster(dir, persistence).await?
    } else {
        Redis::single(dir, persistence).await?
    };
    let mut nodes = Nodes::start(binary, dir, &redis, 2, options.durable).await?;
    let redis = Arc::new(tokio::sync::Mutex::new(redis));

    let start = Instant::now();
    let views = specs
        .iter()
        .map(|spec| View {
            name: spec.name.clone(),
            room: spec.room,
            idle: true,
            ..View::default()
        })
        .collect();
    let checker = Arc::new(Checker::new(start, views));
    let names: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
    let urls = redis.lock().await.urls();
    {
        let mut checker = checker.lock().expect("checker lock");
        checker.log(
            Who::Run,
            format!("redis {urls:?}, nodes on ports {:?}", nodes.ports),
        );
        for (at, fault) in &schedule {
            checker.log(
                Who::Run,
                format!("scheduled at {:.1} s: {fault:?}", at.as_secs_f64()),
            );
        }
    }
    let (phase_tx, phase) = watch::channel(Phase::Chaos);
    let abort = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Ctx {
        checker: Arc::clone(&checker),
        ports: nodes.ports.clone(),
        phase,
        abort: Arc::clone(&abort),
        rate: options.rate,
    });
    let tasks: Vec<_> = specs
        .iter()
        .cloned()
        .map(|spec| tokio::spawn(clients::run(spec, Arc::clone(&ctx))))
        .collect();

    let outcome = drive(
        options, &checker, &redis, &mut nodes, schedule, &phase_tx, &abort, quiet_room,
    )
    .await;
    let _ = phase_tx.send(Phase::Done);
    let ending = Instant::now() + Duration::from_secs(5);
    for task in tasks {
        let left = ending.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, task).await.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
    }
    faults::heal(&mut *redis.lock().await).await;
    drop(nodes);
    let checker = checker.lock().expect("checker lock");
    if let Some(path) = &options.trace {
        std::fs::write(path, checker.dump(&names))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if let Some(first) = checker.violations.first() {
        eprintln!();
        eprintln!(
            "chaos: VIOLATION (seed {}) at {:.3} s: {}",
            options.seed,
            first.at.as_secs_f64(),
            first.message
        );
        eprint!("{}", checker.report(first, &names));
        if checker.violations.len() > 1 {
            eprintln!("all violations ({}):", checker.violations.len());
            for violation in checker.violations.iter().take(30) {
                eprintln!(
                    "  {:>9.3} s  {}",
                    violation.at.as_secs_f64(),
                    violation.message
                );
            }
        }
        eprintln!(
            "replay: realtime-bench chaos --seed {} --duration {}{}{} --rooms {} --subs {} --pubs {}",
            options.seed,
            options.duration.as_secs(),
            if options.cluster { " --cluster" } else { "" },
            if options.durable { " --durable" } else { "" },
            options.rooms,
            options.subscribers,
            options.publishers
        );
        println!("{}", summary(options, &checker, &mode));
        return Err(format!(
            "{} violation(s); seed {}",
            checker.violations.len(),
            options.seed
        ));
    }
    outcome?;
    println!("{}", summary(options, &checker, &mode));
    Ok(())
}

fn summary(options: &Options, checker: &Checker, mode: &str) -> String {
    let counts = &checker.counts;
    let faults: u64 = counts.faults.values().sum();
    let list = |map: &std::collections::BTreeMap<&'static str, u64>| {
        map.iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "chaos: seed {} ({} s, {mode}): faults {faults} [{}]; events acknowledged {} (sent again after their ack: {}, refused then sent again: {}, published again after Redis lost their key: {}); events checked {}; told [{}] (needless: {}); upgrades refused with 503: {}; server closes {:?}; sessions {}; violations {}",
        options.seed,
        options.duration.as_secs(),
        list(&counts.faults),
        counts.acked,
        counts.duplicate_probes,
        counts.publish_errors,
        counts.republished_after_loss,
        counts.checked,
        list(&counts.told),
        counts.needless_tells,
        counts.refused_503,
        counts.server_closes,
        counts.sessions,
        checker.violations.len()
    )
}

/// Waits until `condition` holds, at most `within`; whether it did.
async fn wait_for(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run's phases, from the first connections to the presence check.
#[allow(clippy::too_many_arguments)]
async fn drive(
    options: &Options,
    checker: &Arc<Mutex<Checker>>,
    redis: &Arc<tokio::sync::Mutex<Redis>>,
    nodes: &mut Nodes,
    schedule: Vec<(Duration, faults::Fault)>,
    phase: &watch::Sender<Phase>,
    abort: &Arc<AtomicBool>,
    quiet_room: usize,
) -> Result<(), String> {
    let stopped = |checker: &Mutex<Checker>| {
        !options.keep_going && !checker.lock().expect("checker lock").violations.is_empty()
    };
    let all_connected = || {
        let checker = checker.lock().expect("checker lock");
        checker.views.iter().all(|view| view.connected)
    };
    if !wait_for(Duration::from_secs(15), all_connected).await {
        return Err("the clients did not all connect within 15 s".to_owned());
    }
    say(checker, "every client is in; faults start".to_owned());

    let chaos_start = Instant::now();
    let stop_faults = Arc::new(AtomicBool::new(false));
    let mut injector = Some(tokio::spawn(faults::inject(
        schedule,
        Arc::clone(redis),
        Arc::clone(checker),
        chaos_start,
        options.durable,
        Arc::clone(&stop_faults),
    )));
    while chaos_start.elapsed() < options.duration {
        if stopped(checker) {
            break;
        }
        if injector
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
            && let Some(done) = injector.take()
        {
            // The schedule is over (or failed): the clients go on to the end.
            done.await.map_err(|e| e.to_string())??;
        }
        if !nodes.alive() {
            return Err("a chaos-node exited".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_faults.store(true, Ordering::Relaxed);
    if let Some(injector) = injector {
        injector.await.map_err(|e| e.to_string())??;
    }
    if stopped(checker) {
        abort.store(true, Ordering::Relaxed);
        return Ok(());
    }

    // Settle: no more faults or churn; every client in, every publish
    // acknowledged.
    say(checker, "faults over; settling".to_owned());
    let _ = phase.send(Phase::Settle);
    {
        let mut redis = redis.lock().await;
        faults::heal(&mut redis).await;
        redis.wait_healthy(Duration::from_secs(30)).await?;
    }
    let ready = async {
        for port in &nodes.ports {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !matches!(http_status(*port, "/ready").await, Ok(200)) {
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        true
    };
    if !ready.await {
        checker.lock().expect("checker lock").violation(
            Vec::new(),
            "a node's /ready is not 200 20 s after the faults",
        );
    }
    let settled = || {
        let checker = checker.lock().expect("checker lock");
        checker.views.iter().all(|view| view.connected && view.idle)
    };
    if !wait_for(Duration::from_secs(30), settled).await {
        let mut checker = checker.lock().expect("checker lock");
        let late: Vec<usize> = (0..checker.views.len())
            .filter(|n| !(checker.views[*n].connected && checker.views[*n].idle))
            .collect();
        let names: Vec<String> = late
            .iter()
            .map(|n| {
                let view = &checker.views[*n];
                format!(
                    "{}{}",
                    view.name,
                    if view.connected {
                        " (a publish never acknowledged)"
                    } else {
                        " (not connected)"
                    }
                )
            })
            .collect();
        checker.violation(
            late,
            format!(
                "30 s after the faults, with Redis up, not settled: {}",
                names.join(", ")
            ),
        );
    }
    if stopped(checker) {
        abort.store(true, Ordering::Relaxed);
        return Ok(());
    }

    // A room goes quiet and its keys expire (deleted here) while its
    // members stay; newcomers must get in, not 503.
    {
        let redis = redis.lock().await;
        checker
            .lock()
            .expect("checker lock")
            .epochs_may_change(Some(quiet_room));
        let meta = format!("realtime:{{room:{quiet_room}}}:meta");
        let history = format!("realtime:{{room:{quiet_room}}}:history");
        for server in &redis.servers {
            let _ = server.admin(&["DEL", &meta, &history]).await;
        }
        say(
            checker,
            format!(
                "room {quiet_room} went quiet: DEL {meta} {history}; newcomers probe every room"
            ),
        );
    }
    for room in 0..options.rooms {
        for (n, port) in nodes.ports.iter().enumerate() {
            probe(checker, *port, room, n).await;
        }
    }
    let probed = Instant::now();
    if stopped(checker) {
        abort.store(true, Ordering::Relaxed);
        return Ok(());
    }

    // One final event per room: every client must receive it.
    say(checker, "final events".to_owned());
    let _ = phase.send(Phase::Final);
    let publishers_done = || {
        let checker = checker.lock().expect("checker lock");
        checker.views.iter().all(|view| view.idle)
    };
    if !wait_for(Duration::from_secs(20), publishers_done).await {
        checker.lock().expect("checker lock").violation(
            Vec::new(),
            "a final event was not acknowledged within 20 s, with Redis up",
        );
    }
    let all_final = || {
        let checker = checker.lock().expect("checker lock");
        checker.views.iter().all(|view| view.final_seen.is_some())
    };
    if !wait_for(Duration::from_secs(10), all_final).await {
        let mut checker = checker.lock().expect("checker lock");
        let missing: Vec<usize> = (0..checker.views.len())
            .filter(|n| checker.views[*n].final_seen.is_none())
            .collect();
        for n in missing {
            let view = &checker.views[n];
            let message = format!(
                "{} (room {}, {}) did not receive its room's final event within 10 s; it was given up to {}",
                view.name,
                view.room,
                if view.connected {
                    "connected"
                } else {
                    "not connected"
                },
                view.at
                    .as_ref()
                    .map_or("nothing".to_owned(), ToString::to_string)
            );
            checker.violation(vec![n], message);
        }
    }
    let finals: Vec<Option<Pos>> = {
        let checker = checker.lock().expect("checker lock");
        (0..options.rooms)
            .map(|room| {
                checker
                    .views
                    .iter()
                    .find(|view| view.room == room && view.final_seen.is_some())
                    .and_then(|view| view.final_seen.clone())
            })
            .collect()
    };
    say(
        checker,
        format!(
            "final events at {}",
            finals
                .iter()
                .map(|pos| pos.as_ref().map_or("-".to_owned(), ToString::to_string))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    if stopped(checker) {
        abort.store(true, Ordering::Relaxed);
        return Ok(());
    }

    // Presence: after the bound, every room lists exactly its clients, in
    // Redis and in every client's own list.
    let wait = (probed + PRESENCE_BOUND).saturating_duration_since(Instant::now());
    say(
        checker,
        format!("presence check in {:.1} s", wait.as_secs_f64()),
    );
    tokio::time::sleep(wait).await;
    let _ = phase.send(Phase::Check);
    let answered = || {
        let checker = checker.lock().expect("checker lock");
        checker
            .views
            .iter()
            .all(|view| view.presence_answer.is_some())
    };
    if !wait_for(Duration::from_secs(10), answered).await {
        checker.lock().expect("checker lock").violation(
            Vec::new(),
            "not every client's last `$presence` was answered within 10 s",
        );
    }
    let mut checker = checker.lock().expect("checker lock");
    for room in 0..options.rooms {
        let members: Vec<usize> = (0..checker.views.len())
            .filter(|n| checker.views[*n].room == room)
            .collect();
        let expected: BTreeSet<String> = members
            .iter()
            .map(|n| checker.views[*n].name.clone())
            .collect();
        for n in &members {
            let view = &checker.views[*n];
            let mut problems = Vec::new();
            match &view.presence_answer {
                Some(answer) => match answer.get("ok") {
                    Some(ok) => {
                        let users: BTreeSet<String> = ok["users"]
                            .as_object()
                            .map(|users| users.keys().cloned().collect())
                            .unwrap_or_default();
                        if users != expected {
                            problems.push(format!(
                                "`$presence` answers users {users:?} where {expected:?} are connected"
                            ));
                        }
                        let clients = ok["clients"].as_u64().unwrap_or(0);
                        if clients != expected.len() as u64 {
                            problems.push(format!(
                                "`$presence` counts {clients} clients where {} are connected: {ok}",
                                expected.len()
                            ));
                        }
                    }
                    None => problems.push(format!("`$presence` failed: {answer}")),
                },
                None => problems.push("no answer to `$presence`".to_owned()),
            }
            match &view.presence {
                Some(list) if *list == expected => {}
                Some(list) => problems.push(format!(
                    "its list built from the presence frames is {list:?} where {expected:?} are connected{}",
                    if view.presence_overtaken.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (its last `$presence` answer left out or kept users whose frames had come before it: {}; the events overtook the answer)",
                            view.presence_overtaken.join(", ")
                        )
                    }
                )),
                None => problems.push("it never got a presence list".to_owned()),
            }
            if !problems.is_empty() {
                let message = format!(
                    "presence of room {room} {:.1} s after the last change, seen by {}: {}",
                    probed.elapsed().as_secs_f64(),
                    view.name,
                    problems.join("; ")
                );
                checker.violation(vec![*n], message);
            }
        }
    }
    checker.log(Who::Run, "done".to_owned());
    Ok(())
}

/// A newcomer on `room` through the node at `port`: a plain GET must say
/// 426 (it would be let in), an upgrade must succeed and say `subscribed`;
/// then a resume from the position it got must succeed too.
async fn probe(checker: &Mutex<Checker>, port: u16, room: usize, node: usize) {
    let user = format!("probe{room}.{node}");
    let path = format!("/ws/room:{room}?token={user}");
    let violation = |message: String| {
        checker
            .lock()
            .expect("checker lock")
            .violation(Vec::new(), message);
    };
    match http_status(port, &path).await {
        Ok(426) => {}
        Ok(status) => violation(format!(
            "a plain GET of {path} on node{node} answers {status} with Redis up (426 expected)"
        )),
        Err(error) => violation(format!(
            "a plain GET of {path} on node{node} failed: {error}"
        )),
    }
    let mut since: Option<Pos> = None;
    for attempt in 0..2 {
        let mut url = format!("ws://127.0.0.1:{port}{path}");
        if let Some(since) = &since {
            url.push_str(&format!("&since={}.{}", since.offset, since.epoch));
        }
        let connecting = tokio_tungstenite::connect_async(url.as_str());
        let mut socket = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                violation(format!(
                    "a newcomer to room {room} on node{node} was refused with {} while Redis was up: {url}",
                    response.status()
                ));
                return;
            }
            Ok(Err(error)) => {
                violation(format!("a newcomer to room {room} on node{node}: {error}"));
                return;
            }
            Err(_) => {
                violation(format!(
                    "a newcomer to room {room} on node{node}: connect timed out"
                ));
                return;
            }
        };
        let subscribed = async {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message
                    && let Ok(frame) = serde_json::from_str::<serde_json::Value>(text.as_str())
                    && let Some(subscribed) = frame.get("subscribed")
                {
                    return Pos::from_json(subscribed).map(|pos| (pos, subscribed.clone()));
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
            Ok(Some((pos, frame))) => {
                checker.lock().expect("checker lock").log(
                    Who::Run,
                    format!("probe room {room} node{node} (try {attempt}): subscribed {frame}"),
                );
                since = Some(pos);
            }
            _ => violation(format!(
                "a newcomer to room {room} on node{node} got no `subscribed` frame within 5 s"
            )),
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), socket.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}
