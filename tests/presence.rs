//! Presence across instances: three chat processes on one Redis count 300
//! clients and 299 users (one user has two tabs); a SIGKILLed instance's
//! 100 clients drop out within the bound, each announced once; a client
//! that moves to another instance causes no leave and join; `$presence`
//! needs the right to subscribe. The memory broker keeps the same rules.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::future::join_all;
use realtime::MemoryBroker;
use realtime::presence::{PresencePolicy, Tracking};
use realtime::testing::TestClient;
use serde_json::{Value, json};
use support::chat::{Process, enter, start_chat_with};
use support::{DEADLINE, Node, RedisServer, free_port, wait_until};
use tokio::time::Instant;

/// The chat's presence time to live in these tests: a dead instance drops
/// out within this and a third.
const TTL: Duration = Duration::from_secs(2);

/// What the bound is checked against beyond its own length: the process
/// and the polls are scheduled on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

fn start(redis_url: &str) -> (Process, u16) {
    let port = free_port();
    let ttl = TTL.as_secs().to_string();
    let process = start_chat_with(redis_url, port, &[("PRESENCE_TTL_SECS", &ttl)]);
    (process, port)
}

/// `$presence` of `topic`, answered to `client`.
async fn presence(client: &mut TestClient, topic: &str, id: u64) -> Value {
    client
        .request("$presence", json!({ "topic": topic }), id)
        .await
}

/// Asks `$presence` of the lobby until it counts `clients`.
async fn until_clients(client: &mut TestClient, clients: usize, id: &mut u64) {
    let start = Instant::now();
    loop {
        *id += 1;
        let answer = presence(client, "lobby", *id).await;
        if answer["ok"]["clients"] == clients {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "never {clients} clients: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `client`'s frames for `window`; the users of its `join` and
/// `leave` frames, in order.
async fn announced(client: &mut TestClient, window: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(frame) = tokio::time::timeout_at(deadline, client.recv()).await {
        for kind in ["join", "leave"] {
            if let Some(user) = frame[kind]["user"].as_str() {
                seen.push((kind.to_owned(), user.to_owned()));
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_count_every_client_and_a_killed_one_drops_out() {
    let redis = RedisServer::start().await;
    let mut nodes: Vec<(Process, u16)> = (0..3).map(|_| start(&redis.url())).collect();
    // Node 0: u0..u99. Node 1: u100..u198 and u0's second tab. Node 2 (to
    // be killed): u199..u298.
    let mut users: Vec<Vec<String>> = vec![
        (0..100).map(|n| format!("u{n}")).collect(),
        (100..199).map(|n| format!("u{n}")).collect(),
        (199..299).map(|n| format!("u{n}")).collect(),
    ];
    users[1].push("u0".to_owned());
    let mut clients: Vec<Vec<TestClient>> = Vec::new();
    for (node, users) in users.iter().enumerate() {
        let port = nodes[node].1;
        let entering = users.iter().map(|user| enter(port, "lobby", user));
        clients.push(join_all(entering).await);
    }

    let mut id = 0;
    for (node, on_node) in clients.iter_mut().enumerate() {
        until_clients(&mut on_node[0], 300, &mut id).await;
        id += 1;
        let answer = presence(&mut on_node[0], "lobby", id).await;
        let users = answer["ok"]["users"].as_object().expect("users");
        assert_eq!(users.len(), 299, "from node {node}");
        assert_eq!(users["u0"], 2);
        assert_eq!(users["u5"], 1);
    }

    let killed = &mut nodes[2].0;
    let killed_at = Instant::now();
    let _ = killed.0.kill();
    let _ = killed.0.wait();
    drop(clients.pop());

    let observer = &mut clients[0][1];
    loop {
        id += 1;
        let answer = presence(observer, "lobby", id).await;
        if answer["ok"]["clients"] == 200 {
            assert_eq!(
                answer["ok"]["users"].as_object().map(|users| users.len()),
                Some(199)
            );
            break;
        }
        assert!(killed_at.elapsed() < DEADLINE, "still {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped_out = killed_at.elapsed();
    let bound = PresencePolicy::none().ttl(TTL).bound();
    println!("the killed node's 100 clients dropped out after {dropped_out:?} (bound {bound:?})");
    assert!(dropped_out <= bound + SLACK, "{dropped_out:?}");

    // Every remaining client hears each killed user leave, once.
    let gone: BTreeSet<String> = users[2].iter().cloned().collect();
    for client in clients.iter_mut().flatten() {
        let seen = announced(client, Duration::from_millis(100)).await;
        let mut more = seen;
        let deadline = Instant::now() + DEADLINE;
        while more.iter().filter(|(kind, _)| kind == "leave").count() < gone.len() {
            assert!(Instant::now() < deadline, "missing leaves: {more:?}");
            more.extend(announced(client, Duration::from_millis(200)).await);
        }
        let leaves: Vec<&String> = more
            .iter()
            .filter(|(kind, _)| kind == "leave")
            .map(|(_, user)| user)
            .collect();
        let distinct: BTreeSet<String> = leaves.iter().map(|user| (*user).clone()).collect();
        assert_eq!(leaves.len(), gone.len(), "a leave came twice");
        assert_eq!(distinct, gone);
    }
    // And no more of them later.
    let late = announced(&mut clients[1][0], bound).await;
    assert!(late.iter().all(|(kind, _)| kind != "leave"), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_another_node_does_not_flap() {
    let redis = RedisServer::start().await;
    let (mut a, port_a) = start(&redis.url());
    let (_b, port_b) = start(&redis.url());
    let mut observer = enter(port_b, "lobby", "observer").await;
    let moving = enter(port_a, "lobby", "mover").await;
    let _crashing = enter(port_a, "lobby", "crasher").await;
    let mut id = 0;
    until_clients(&mut observer, 3, &mut id).await;
    let joins = announced(&mut observer, Duration::from_millis(300)).await;
    assert!(joins.iter().all(|(kind, _)| kind == "join"), "{joins:?}");

    // A clean close, then the same user on the other node (a reload).
    moving.close().await;
    let _moved = enter(port_b, "lobby", "mover").await;
    // A crash, then the same user on the other node (a reconnect).
    let _ = a.0.kill();
    let _ = a.0.wait();
    let _reconnected = enter(port_b, "lobby", "crasher").await;

    let window = PresencePolicy::none().ttl(TTL).bound() + PresencePolicy::DEFAULT_LINGER + SLACK;
    let flaps = announced(&mut observer, window).await;
    assert!(flaps.is_empty(), "{flaps:?}");
    let answer = presence(&mut observer, "lobby", 1000).await;
    assert_eq!(
        answer["ok"],
        json!({"clients": 3, "users": {"crasher": 1, "mover": 1, "observer": 1}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_needs_the_right_to_subscribe() {
    let redis = RedisServer::start().await;
    let (_chat, port) = start(&redis.url());
    let mut bob = enter(port, "lobby", "bob").await;
    let refused = presence(&mut bob, "admin", 1).await;
    assert_eq!(refused["error"]["code"], 403, "{refused}");
    assert_eq!(refused["error"]["message"], "forbidden topic `admin`");
    let mut admin = enter(port, "lobby", "admin").await;
    let allowed = presence(&mut admin, "admin", 2).await;
    assert_eq!(allowed["ok"], json!({"clients": 0, "users": {}}));
    // A topic the connection does not follow, but may: answered.
    let other = presence(&mut bob, "elsewhere", 3).await;
    assert_eq!(other["ok"]["clients"], 0, "{other}");

    let empty = presence(&mut bob, "", 40).await;
    assert_eq!(empty["error"]["code"], 400, "{empty}");
    let missing = bob.request("$presence", json!({}), 4).await;
    assert_eq!(missing["error"]["code"], 400, "{missing}");
    let long = "x".repeat(10_000);
    let too_long = presence(&mut bob, &long, 5).await;
    assert_eq!(too_long["error"]["code"], 400, "{too_long}");
    // Nothing was lost for the connection: it still works.
    let said = bob.request("say", json!({"text": "still here"}), 6).await;
    assert!(said.get("error").is_none(), "{said}");
}

#[tokio::test]
async fn the_memory_broker_keeps_the_same_rules() {
    let policy = PresencePolicy::none()
        .track("room:*", Tracking::Announced)
        .linger(Duration::ZERO);
    let hub = MemoryBroker::new();
    let a = Node::with_presence(hub.clone(), policy.clone()).await;
    let b = Node::with_presence(hub, policy).await;
    let mut observer = a.connect("room:1", "observer").await;
    let tab_1 = a.connect("room:1", "alice").await;
    let tab_2 = b.connect("room:1", "alice").await;
    let bob = b.connect("room:1", "bob").await;
    let node = &a;
    wait_until("four clients", move || async move {
        let presence = node.service.presence("room:1").await;
        presence.is_ok_and(|presence| presence.clients == 4)
    })
    .await;
    let presence = b.service.presence("room:1").await.expect("tracked");
    let counts: HashMap<&str, usize> = presence
        .users
        .iter()
        .map(|(user, count)| (user.as_str(), *count))
        .collect();
    assert_eq!(
        counts,
        HashMap::from([("observer", 1), ("alice", 2), ("bob", 1)])
    );

    tab_1.close().await;
    bob.close().await;
    tab_2.close().await;
    wait_until("only the observer", move || async move {
        let presence = node.service.presence("room:1").await;
        presence.is_ok_and(|presence| presence.clients == 1)
    })
    .await;
    let seen = announced(&mut observer, Duration::from_millis(300)).await;
    let expected = [
        ("join", "observer"),
        ("join", "alice"),
        ("join", "bob"),
        ("leave", "bob"),
        ("leave", "alice"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(kind, user)| ((*kind).to_owned(), (*user).to_owned()))
        .collect();
    // The observer's own join may come before its subscription: either way.
    let seen: Vec<_> = seen
        .into_iter()
        .filter(|(_, user)| user != "observer")
        .collect();
    assert_eq!(seen, expected[1..]);

    let untracked = observer
        .request("$presence", json!({"topic": "lobby"}), 1)
        .await;
    assert_eq!(untracked["error"]["code"], 400, "{untracked}");
    assert_eq!(
        untracked["error"]["message"],
        "presence is not tracked for topic `lobby`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_comes_back_after_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let policy = PresencePolicy::none().track("room:*", Tracking::Quiet);
    let a = Node::with_presence(redis.broker("presence:").await, policy.clone()).await;
    let b = Node::with_presence(redis.broker("presence:").await, policy).await;
    let _clients = [
        a.connect("room:1", "alice").await,
        b.connect("room:1", "bob").await,
        b.connect("room:1", "alice").await,
    ];
    let (a, b) = (&a, &b);
    wait_until("three clients", move || async move {
        let presence = b.service.presence("room:1").await;
        presence.is_ok_and(|presence| presence.clients == 3)
    })
    .await;

    // No persistence: Redis comes back with nothing. Each instance writes
    // its entries again as soon as its link is back, not a refresh later.
    redis.restart().await;
    let took = wait_until("three clients again", move || async move {
        let presence = a.service.presence("room:1").await;
        presence.is_ok_and(|presence| presence.clients == 3 && presence.users.len() == 2)
    })
    .await;
    println!("presence was whole again {took:?} after Redis answered");
    assert!(took < PresencePolicy::DEFAULT_TTL / 3, "{took:?}");
}
