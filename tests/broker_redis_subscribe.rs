//! The subscriber connection changes its channel set while messages flow:
//! subscribing and unsubscribing other topics loses, duplicates and reorders
//! nothing on a busy topic.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use realtime::Config;
use support::{Node, RedisServer, Said, recv_event, said, say};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_subscriptions_loses_nothing_on_a_busy_topic() {
    let redis = RedisServer::start().await;
    // A deep ring: the test's reader shares two cores with everything else
    // and must not be closed as a slow client.
    let mut config = Config::default();
    config.topic_backlog = 1 << 16;
    let a = Node::start_with(&redis.url(), support::redis_config("churn:"), config).await;
    let b = Node::start(&redis.url(), "churn:").await;
    let mut steady = a.connect("steady", "reader").await;

    // Node B publishes numbered events until the churn is over, then "end".
    let churning = Arc::new(AtomicBool::new(true));
    let publisher = {
        let churning = Arc::clone(&churning);
        let service = b.service.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while churning.load(Ordering::Relaxed) || sent < 500 {
                let event = Said {
                    from: "b".to_owned(),
                    text: sent.to_string(),
                };
                service.publish("steady", &event).await.expect("publish");
                sent += 1;
            }
            let end = Said {
                from: "b".to_owned(),
                text: "end".to_owned(),
            };
            service.publish("steady", &end).await.expect("publish");
            sent
        })
    };
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        loop {
            let frame = recv_event(&mut steady).await;
            let text = frame["event"]["text"].as_str().expect("a text").to_owned();
            if text == "end" {
                // Handed back so that the topic keeps its subscriber.
                return (next, steady);
            }
            assert_eq!(text, next.to_string(), "lost, repeated or reordered");
            next += 1;
        }
    });

    // Meanwhile node A subscribes to new topics and leaves them again; each
    // new subscription is used at once.
    for k in 0..30 {
        let topic = format!("churn-{k}");
        let mut client = a.connect(&topic, "visitor").await;
        client.send(say(1, "here")).await;
        assert_eq!(
            recv_event(&mut client).await,
            said(&topic, "visitor", "here")
        );
        client.close().await;
    }
    churning.store(false, Ordering::Relaxed);

    let sent = publisher.await.unwrap();
    let (received, _steady) = reader.await.unwrap();
    assert_eq!(received, sent);
    for k in 0..30 {
        redis.wait_numsub(&format!("churn:churn-{k}"), 0).await;
    }
    let metrics = a.metrics();
    // The reader's topic, and the service's control topic.
    assert_eq!(metrics.subscribed_topics, 2);
    assert_eq!(metrics.subscribe_errors, 0);
    assert_eq!(metrics.disconnects, 0);
    assert!(metrics.received > sent);
}
