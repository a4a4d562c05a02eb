//! History and recovery on subscribe: a client that comes back with the
//! last position it saw gets exactly what it missed, in order, then live
//! events, then `subscribed` with `recovered`; or `recovered: false` when
//! the history cannot give it all. The same cases run on the memory broker
//! and on a real Redis.

mod support;

use std::time::Duration;

use realtime::MemoryBroker;
use realtime::broker::Broker;
use realtime::history::{HistoryPolicy, Position, Retention};
use realtime::testing::TestClient;
use serde_json::{Value, json};
use support::{Node, RedisServer, memory_nodes, position, redis_nodes, subscribed};

/// Events published while the client is away.
const MISSED: u64 = 1000;
/// History kept per topic in these tests.
const SIZE: usize = 2000;

fn policy(ttl: Duration) -> HistoryPolicy {
    HistoryPolicy::none().keep("room:*", Retention::new(SIZE, ttl))
}

/// (a) A client away while 1,000 events are published on another node comes
/// back with `since` and gets exactly those, in order, then `subscribed`
/// with `recovered: true`, then live events.
async fn recovers_what_it_missed<B: Broker>(a: &Node<B>, b: &Node<B>) {
    let mut client = a.connect("room:a", "alice").await;
    let first = subscribed(&mut client).await;
    assert_eq!(
        first["subscribed"].get("recovered"),
        None,
        "no `since`, no `recovered`"
    );
    b.publish("room:a", "before".to_owned()).await;
    let event = client.recv_event().await;
    assert_eq!(event["event"]["text"], "before");
    let seen = Position {
        offset: event["offset"].as_u64().expect("an offset"),
        epoch: position(&first, "subscribed").epoch,
    };
    client.close().await;

    for n in 0..MISSED {
        b.publish("room:a", format!("missed {n}")).await;
    }
    let mut back = a.connect(&format!("room:a?since={seen}"), "alice").await;
    for n in 0..MISSED {
        let event = back.recv().await;
        assert_eq!(
            event["offset"].as_u64(),
            Some(seen.offset + 1 + n),
            "{event}"
        );
        assert_eq!(event["event"]["text"], format!("missed {n}"));
    }
    let done = subscribed(&mut back).await;
    assert_eq!(done["subscribed"]["recovered"], true);
    assert_eq!(
        done["subscribed"]["offset"].as_u64(),
        Some(seen.offset + MISSED)
    );
    assert!(a.service.metrics().recovered >= 1);
    b.publish("room:a", "live".to_owned()).await;
    let live = back.recv().await;
    assert_eq!(live["event"]["text"], "live");
    assert_eq!(live["offset"].as_u64(), Some(seen.offset + MISSED + 1));
}

/// `$join` with `since` resumes a topic like the URL's `?since=`.
async fn join_resumes<B: Broker>(a: &Node<B>, b: &Node<B>) {
    let mut client = a.connect("lobby", "alice").await;
    client
        .send(json!({"type": "$join", "data": {"topic": "room:j"}, "id": 1}))
        .await;
    let answer = client.recv_reply().await;
    assert_eq!(answer["ok"], Value::Null, "{answer}");
    let since = position(&subscribed(&mut client).await, "subscribed");
    client.close().await;
    for n in 0..20 {
        b.publish("room:j", format!("j {n}")).await;
    }
    let mut back = a.connect("lobby", "alice").await;
    back.send(json!({"type": "$join", "data": {"topic": "room:j", "since": since}, "id": 2}))
        .await;
    let mut texts = Vec::new();
    let done = loop {
        let frame = back.recv().await;
        if frame.get("subscribed").is_some() {
            break frame;
        }
        if frame.get("event").is_some() {
            texts.push(frame["event"]["text"].as_str().expect("text").to_owned());
        }
    };
    assert_eq!(done["subscribed"]["recovered"], true);
    assert_eq!(texts, (0..20).map(|n| format!("j {n}")).collect::<Vec<_>>());
}

/// (c) A gap older than the history: `recovered: false`, nothing replayed.
async fn gap_past_the_history<B: Broker>(a: &Node<B>, b: &Node<B>) {
    let mut client = a.connect("room:c", "alice").await;
    let since = position(&subscribed(&mut client).await, "subscribed");
    client.close().await;
    for n in 0..SIZE + 5 {
        b.publish("room:c", format!("c {n}")).await;
    }
    let mut back = a.connect(&format!("room:c?since={since}"), "alice").await;
    let done = subscribed(&mut back).await;
    assert_eq!(done["subscribed"]["recovered"], false, "{done}");
    assert!(a.service.metrics().not_recovered >= 1);
    assert_eq!(done["subscribed"]["epoch"].as_str(), Some(&*since.epoch));
    assert_eq!(
        done["subscribed"]["offset"].as_u64(),
        Some(since.offset + SIZE as u64 + 5)
    );
    b.publish("room:c", "live".to_owned()).await;
    assert_eq!(back.recv().await["event"]["text"], "live");
}

/// A `since` from another epoch, or from the future: `recovered: false`.
async fn foreign_positions<B: Broker>(a: &Node<B>) {
    a.publish("room:f", "one".to_owned()).await;
    let mut back = a.connect("room:f?since=0.other", "alice").await;
    let done = subscribed(&mut back).await;
    assert_eq!(done["subscribed"]["recovered"], false);
    let epoch = done["subscribed"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    let mut ahead = a
        .connect(&format!("room:f?since=99.{epoch}"), "alice")
        .await;
    assert_eq!(
        subscribed(&mut ahead).await["subscribed"]["recovered"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_broker_recovers() {
    let (a, b) = memory_nodes(policy(Duration::from_secs(600))).await;
    recovers_what_it_missed(&a, &b).await;
    join_resumes(&a, &b).await;
    gap_past_the_history(&a, &b).await;
    foreign_positions(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_recovers() {
    let redis = RedisServer::start().await;
    let (a, b) = redis_nodes(&redis, "recover:", policy(Duration::from_secs(600))).await;
    recovers_what_it_missed(&a, &b).await;
    join_resumes(&a, &b).await;
    gap_past_the_history(&a, &b).await;
    foreign_positions(&a).await;
}

/// (b) History lost (expired on the memory broker): a new epoch,
/// `recovered: false`, and none of the old events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_history_expires() {
    let (a, b) = memory_nodes(policy(Duration::from_secs(1))).await;
    let mut client = a.connect("room:x", "alice").await;
    let old = position(&subscribed(&mut client).await, "subscribed");
    client.close().await;
    b.publish("room:x", "old".to_owned()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut back = a.connect(&format!("room:x?since={old}"), "alice").await;
    let done = subscribed(&mut back).await;
    assert_eq!(done["subscribed"]["recovered"], false);
    assert_ne!(done["subscribed"]["epoch"].as_str(), Some(&*old.epoch));
    b.publish("room:x", "new".to_owned()).await;
    let event = back.recv().await;
    assert_eq!(event["event"]["text"], "new", "no stale event: {event}");
    assert_eq!(event["offset"], 1);
}

/// (b) Redis restarted empty, and the meta key deleted: a new epoch,
/// `recovered: false`, and no stale events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_history_lost() {
    let mut redis = RedisServer::start().await;
    let (a, b) = redis_nodes(&redis, "lost:", policy(Duration::from_secs(600))).await;
    let mut client = a.connect("room:l", "alice").await;
    let old = position(&subscribed(&mut client).await, "subscribed");
    client.close().await;
    b.publish("room:l", "old".to_owned()).await;

    // The meta key deleted: the history restarts with a new epoch.
    let mut admin = redis.admin().await;
    let _: () = redis::cmd("DEL")
        .arg("lost:{room:l}:meta")
        .query_async(&mut admin)
        .await
        .expect("DEL");
    // Scripts flushed from Redis: the next publish is refused (it did not
    // run, and running it again could put it behind a later publish of
    // the same connection), and the scripts are loaded again for the
    // publishes after it.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .expect("SCRIPT FLUSH");
    let said = support::Said {
        from: "server".to_owned(),
        text: "after delete".to_owned(),
    };
    let refused = b.service.publish("room:l", &said).await;
    assert!(format!("{refused:?}").contains("NoScript"), "{refused:?}");
    support::wait_until("a publish goes through again", || async {
        b.service.publish("room:l", &said).await.is_ok()
    })
    .await;
    let mut back = a.connect(&format!("room:l?since={old}"), "alice").await;
    let done = subscribed(&mut back).await;
    assert_eq!(done["subscribed"]["recovered"], false);
    let deleted = position(&done, "subscribed");
    assert_ne!(deleted.epoch, old.epoch);
    assert_eq!(deleted.offset, 1);
    back.close().await;

    // Redis restarted empty.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while !(a.service.broker().metrics().connected && b.service.broker().metrics().connected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the brokers reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The application's own commands go through the broker's connection,
    // which survived the restart.
    let visits: i64 = a
        .service
        .broker()
        .query(redis::cmd("INCR").arg("lost:visits"))
        .await
        .expect("the broker's connection works after the restart");
    assert_eq!(visits, 1);
    let mut back = a.connect(&format!("room:l?since={deleted}"), "alice").await;
    let done = subscribed(&mut back).await;
    assert_eq!(done["subscribed"]["recovered"], false);
    assert_ne!(position(&done, "subscribed").epoch, deleted.epoch);
    b.publish("room:l", "fresh".to_owned()).await;
    let event = back.recv().await;
    assert_eq!(event["event"]["text"], "fresh", "no stale event: {event}");
}

/// The server API reads the history and the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reads_history() {
    let (a, _b) = memory_nodes(policy(Duration::from_secs(600))).await;
    for n in 0..10 {
        a.publish("room:s", format!("s {n}")).await;
    }
    let position = a.service.position("room:s").await.expect("position");
    assert_eq!(position.offset, 10);
    let last = a.service.history("room:s", None, 3).await.expect("history");
    let texts: Vec<String> = last
        .events
        .iter()
        .map(|event| {
            event.event::<Value>().expect("event")["text"]
                .as_str()
                .expect("text")
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["s 7", "s 8", "s 9"]);
    let since = a
        .service
        .history("room:s", Some(8), 100)
        .await
        .expect("history");
    assert_eq!(
        since.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [9, 10]
    );
    assert!(matches!(
        a.service.history("lobby", None, 1).await,
        Err(realtime::history::HistoryError::NotKept(_))
    ));
}

/// A malformed `since` is refused: 400 on the URL, an error frame on `$join`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_positions_are_refused() {
    let (a, _b) = memory_nodes(policy(Duration::from_secs(600))).await;
    let refused = TestClient::connect(&a.server.ws_url("/ws/room:b?since=banana"), "alice")
        .await
        .expect_err("a bad since is refused");
    assert_eq!(refused.status(), Some(400));
    let mut client = a.connect("lobby", "alice").await;
    client
        .send(json!({"type": "$join", "data": {"topic": "room:b", "since": {"offset": 1, "epoch": "no such"}}, "id": 1}))
        .await;
    let answer = client.recv_reply().await;
    assert_eq!(answer["error"]["code"], 400, "{answer}");
    client
        .send(json!({"type": "$join", "data": {"topic": "room:b", "since": {"offset": -1, "epoch": "x"}}, "id": 2}))
        .await;
    assert_eq!(client.recv_reply().await["error"]["code"], 400);
}

/// A resumption never makes the server hold more for a client than its
/// outbound byte bound: past it, `recovered: false` and nothing replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_stays_within_the_outbound_byte_bound() {
    let mut config = realtime::Config::default();
    config.outbound_queue_bytes = 8 * 1024;
    config.max_reply_bytes = 4 * 1024;
    let hub = MemoryBroker::new();
    let a = Node::serve(hub, policy(Duration::from_secs(600)), config).await;
    let mut client = a.connect("room:m", "alice").await;
    let since = position(&subscribed(&mut client).await, "subscribed");
    client.close().await;
    // About 100 bytes a frame: 30 fit, 200 do not.
    for n in 0..30 {
        a.publish("room:m", format!("{n:0>40}")).await;
    }
    let mut back = a.connect(&format!("room:m?since={since}"), "alice").await;
    for _ in 0..30 {
        assert!(back.recv().await.get("event").is_some());
    }
    assert_eq!(subscribed(&mut back).await["subscribed"]["recovered"], true);
    back.close().await;
    for n in 0..200 {
        a.publish("room:m", format!("{n:0>40}")).await;
    }
    let mut late = a.connect(&format!("room:m?since={since}"), "alice").await;
    let done = subscribed(&mut late).await;
    assert_eq!(done["subscribed"]["recovered"], false, "{done}");
    assert_eq!(done["subscribed"]["offset"], 230);
}

/// A broker without history: a service with a history policy refuses to
/// build on it, instead of failing every publish at run time.
#[test]
fn a_broker_without_history_is_refused() {
    struct Plain;
    impl Broker for Plain {
        fn attach(&self, _: realtime::broker::Incoming) {}
        async fn publish(
            &self,
            _: &str,
            _: realtime::protocol::Frame,
            _: Option<realtime::broker::Idempotency<'_>>,
        ) -> Result<(), realtime::BrokerError> {
            Ok(())
        }
        async fn subscribe(&self, _: &str) -> Result<(), realtime::BrokerError> {
            Ok(())
        }
        async fn unsubscribe(&self, _: &str) -> Result<(), realtime::BrokerError> {
            Ok(())
        }
    }
    let built = realtime::Service::builder(
        support::Room,
        std::sync::Arc::new(support::Hooks::default()),
        realtime::auth::validate_with(|t: &str| Ok(t.to_owned())),
    )
    .with_broker(Plain)
    .history(policy(Duration::from_secs(60)))
    .build();
    assert!(matches!(
        built,
        Err(realtime::service::BuildError::HistoryUnsupported)
    ));
}

/// Clients resuming one topic at once, as after an instance's crash.
const RESUMERS: usize = 50;

/// Events the resumes below missed: more than an instance keeps of a
/// topic's last events (64), so that each must read the history.
const FAR_BEHIND: u64 = 100;

/// Resumes of one topic that arrive while its history is being read share
/// the next read: a reconnect storm costs each instance a read or two per
/// topic, not one per client. Redis is held still (SIGSTOP) while the
/// first read is under way, so that every other resume arrives during it;
/// then the first read and one more serve all 50, each with exactly what it
/// missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_of_one_topic_share_one_read() {
    let redis = RedisServer::start().await;
    let mut redis_config = support::redis_config("shared:");
    // Longer than Redis is held still below.
    redis_config.command_timeout = Duration::from_secs(20);
    let broker = realtime::RedisBroker::connect(&redis.url(), redis_config)
        .await
        .expect("connects");
    let a = Node::serve(
        broker,
        policy(Duration::from_secs(60)),
        realtime::Config::default(),
    )
    .await;
    // A member that stays: the instance holds the topic throughout, so the
    // resumes need nothing from Redis but the history.
    let mut stays = a.connect("room:storm", "stays").await;
    let start = position(&subscribed(&mut stays).await, "subscribed");
    for n in 0..FAR_BEHIND {
        a.publish("room:storm", format!("missed {n}")).await;
    }
    for _ in 0..FAR_BEHIND {
        stays.recv_event().await;
    }
    let reads = a.service.metrics().resume_reads;
    let scripts = redis.script_calls().await;

    redis.freeze();
    let url = a.server.ws_url(&format!("/ws/room:storm?since={start}"));
    let resumes: Vec<_> = (0..RESUMERS)
        .map(|n| {
            let url = url.clone();
            tokio::spawn(async move {
                TestClient::connect(&url, &format!("back{n}"))
                    .await
                    .expect("resumes")
            })
        })
        .collect();
    support::wait_until("every resume waits for the history", || async {
        a.service.metrics().resumes_waiting == RESUMERS
    })
    .await;
    redis.thaw();

    for resume in resumes {
        let mut back = resume.await.expect("a resume");
        for n in 0..FAR_BEHIND {
            let event = back.recv().await;
            assert_eq!(event["offset"].as_u64(), Some(start.offset + 1 + n));
        }
        let done = subscribed(&mut back).await;
        assert_eq!(done["subscribed"]["recovered"], true, "{done}");
    }
    assert_eq!(a.service.metrics().resume_reads - reads, 2);
    assert_eq!(redis.script_calls().await - scripts, 2);
    assert_eq!(a.service.metrics().resumes_waiting, 0);
}

/// A resume from among the last events the instance delivered on its topic
/// is answered from them, with no read of the history, exactly as a read
/// would have answered it; one from further back reads as before. Every
/// event is sent once: the ones it missed, then `subscribed`, then live
/// ones, with none between the two lost or repeated while events keep
/// coming. (30 missed and 30 published while it resumes: within the 64
/// whichever comes first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_among_the_recent_events_reads_nothing() {
    let redis = RedisServer::start().await;
    let broker = redis.broker("recent:").await;
    let a = Node::serve(
        broker,
        policy(Duration::from_secs(60)),
        realtime::Config::default(),
    )
    .await;
    let mut stays = a.connect("room:r", "stays").await;
    let start = position(&subscribed(&mut stays).await, "subscribed");
    for n in 0..30 {
        a.publish("room:r", format!("missed {n}")).await;
    }
    for _ in 0..30 {
        stays.recv_event().await;
    }
    let before = a.service.metrics();
    let scripts = redis.script_calls().await;
    // Events keep coming while it resumes, from another task.
    let publisher = {
        let service = a.service.clone();
        tokio::spawn(async move {
            for n in 0..30 {
                let said = support::Said {
                    from: "server".to_owned(),
                    text: format!("live {n}"),
                };
                service.publish("room:r", &said).await.expect("published");
            }
        })
    };
    let mut back = a.connect(&format!("room:r?since={start}"), "back").await;
    publisher.await.expect("the publisher");
    let mut offsets = Vec::new();
    let mut recovered = None;
    while offsets.len() < 60 {
        let frame = back.recv().await;
        if let Some(offset) = frame["offset"].as_u64() {
            offsets.push(offset);
        } else if frame.get("subscribed").is_some() {
            recovered = Some(frame["subscribed"]["recovered"].clone());
        }
    }
    assert_eq!(recovered, Some(Value::Bool(true)));
    let expected: Vec<u64> = (start.offset + 1..=start.offset + 60).collect();
    assert_eq!(offsets, expected, "each offset once, in order");
    let after = a.service.metrics();
    assert_eq!(after.resumes_here - before.resumes_here, 1);
    assert_eq!(after.resume_reads, before.resume_reads);
    // The 30 publishes are scripts; no read is.
    assert_eq!(redis.script_calls().await - scripts, 30);

    // 70 behind, from before the last 64: the history is read.
    for n in 0..10 {
        a.publish("room:r", format!("later {n}")).await;
    }
    let mut far = a.connect(&format!("room:r?since={start}"), "far").await;
    let mut count = 0;
    loop {
        let frame = far.recv().await;
        if frame.get("subscribed").is_some() {
            assert_eq!(frame["subscribed"]["recovered"], true, "{frame}");
            break;
        }
        count += 1;
    }
    assert_eq!(count, 70);
    assert_eq!(a.service.metrics().resume_reads - after.resume_reads, 1);
}
