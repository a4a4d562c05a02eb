//! A read of a topic's history reads only what it can use. A resume from
//! another epoch, from before what the history holds, or past what the
//! client's queue takes answers `recovered: false` without drawing the
//! history out of Redis; a handler's history read stays within the reply
//! cap. Measured with Redis's own count of the bytes it sent
//! (`total_net_output_bytes`).

mod support;

use std::time::Duration;

use realtime::history::{HistoryPolicy, Retention};
use realtime::{Config, RedisBroker};
use support::{Node, RedisServer, position, subscribed};

/// Bytes this Redis has sent to its clients so far.
async fn sent(redis: &RedisServer) -> u64 {
    redis.info_number("stats", "total_net_output_bytes").await
}

/// What Redis sent per call of `resume`, over `times` calls.
async fn sent_per<F, Fut>(redis: &RedisServer, times: u64, mut resume: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = sent(redis).await;
    for _ in 0..times {
        resume().await;
    }
    (sent(redis).await - before) / times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_cannot_be_used_are_not_made() {
    let redis = RedisServer::start().await;
    let mut config = Config::default();
    config.outbound_queue_bytes = 256 * 1024;
    config.max_reply_bytes = 64 * 1024;
    let policy =
        HistoryPolicy::none().keep("room:*", Retention::new(1000, Duration::from_secs(600)));
    let broker = RedisBroker::connect(&redis.url(), support::redis_config("budget:"))
        .await
        .expect("connect");
    let node: Node<RedisBroker> = Node::serve(broker, policy, config).await;

    // 1100 lines of 1 KiB: the history holds the last 1000 (101..=1100),
    // about 1.1 MB.
    let line = "x".repeat(1024);
    for n in 0..1100 {
        node.publish("room:a", format!("{n} {line}")).await;
    }
    let now = node.service.position("room:a").await.expect("a position");
    assert_eq!(now.offset, 1100);

    let resume = |since: String| {
        let node = &node;
        async move {
            let mut client = node
                .connect(&format!("room:a?since={since}"), "alice")
                .await;
            let told = subscribed(&mut client).await;
            assert_eq!(told["subscribed"]["recovered"], false, "{told}");
            client.close().await;
        }
    };
    // Another epoch, a gap before the history, and 1000 events that do not
    // fit a 256 KiB queue. Before, each drew the whole history: about
    // 1 MB a resume.
    let epoch = now.epoch.clone();
    for (case, since) in [
        ("another epoch", "500.WRONG".to_owned()),
        ("a gap", format!("5.{epoch}")),
        ("past the queue", format!("200.{epoch}")),
    ] {
        let per = sent_per(&redis, 5, || resume(since.clone())).await;
        assert!(per < 16 * 1024, "{case}: Redis sent {per} bytes a resume");
    }

    // What can be used still is: the last ten lines.
    let mut back = node
        .connect(&format!("room:a?since=1090.{epoch}"), "alice")
        .await;
    for offset in 1091..=1100 {
        assert_eq!(back.recv().await["offset"], offset);
    }
    let told = subscribed(&mut back).await;
    assert_eq!(told["subscribed"]["recovered"], true, "{told}");
    assert_eq!(position(&told, "subscribed"), now);

    // A handler's read of the last 100 lines of 12 KB each: the newest
    // that fit seven eighths of the 64 KiB reply cap (56 KiB), and no more
    // read out of Redis.
    let big = "y".repeat(12_000);
    for n in 0..100 {
        node.publish("room:big", format!("{n} {big}")).await;
    }
    let before = sent(&redis).await;
    let read = node
        .service
        .history("room:big", None, 100)
        .await
        .expect("a read");
    let per = sent(&redis).await - before;
    let bytes: usize = read
        .events
        .iter()
        .map(|event| event.frame.as_str().len())
        .sum();
    assert!(bytes <= 56 * 1024, "{bytes} bytes read");
    assert_eq!(read.events.last().map(|event| event.offset), Some(100));
    let lines = read.events.len();
    assert_eq!(lines, 4, "the newest four of 12 KB fit 56 KiB");
    assert!(per < 80 * 1024, "Redis sent {per} bytes for the read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_broker_keeps_histories_within_its_budget() {
    // 12 KB lines, each into a new room: the histories would grow by the
    // line for as long as their time to live. With a 1 MiB budget, the
    // lines past it are refused (error 503) and nothing more is kept;
    // once the histories expire, lines are taken again.
    let policy = HistoryPolicy::none().keep("room:*", Retention::new(1000, Duration::from_secs(1)));
    let mut config = Config::default();
    config.max_messages_per_sec = 10_000;
    config.rate_burst = 10_000;
    // The broker's budget is under test, not the user's.
    config.max_publish_bytes_per_user_per_sec = 1 << 30;
    config.max_new_topics_per_user_per_min = 10_000;
    let node = Node::serve(
        realtime::MemoryBroker::with_history_budget(1024 * 1024),
        policy,
        config,
    )
    .await;
    let mut client = node.connect("room:0", "alice").await;
    let line = "z".repeat(12_000);
    let mut refused = 0;
    for n in 0..120u64 {
        let topic = format!("room:{n}");
        if n > 0 {
            let joined = client.join(&topic, 1_000 + n).await;
            assert!(joined.get("error").is_none(), "{joined}");
        }
        let said = client
            .call(&serde_json::json!({"type": "say", "data": {"text": line}, "topic": topic, "id": n}), n)
            .await;
        match said["error"]["code"].as_u64() {
            None => {}
            Some(503) => refused += 1,
            Some(other) => panic!("error {other}: {said}"),
        }
        if n > 0 {
            client.leave(&topic, 2_000 + n).await;
        }
    }
    // 1 MiB holds 87 lines of 12 KB; the other 33 were refused.
    assert!(refused >= 30, "{refused} refused");

    // Once the histories expire, there is room again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let said = client
        .call(
            &serde_json::json!({"type": "say", "data": {"text": "again"}, "id": 999}),
            999,
        )
        .await;
    assert!(said.get("error").is_none(), "{said}");
}
