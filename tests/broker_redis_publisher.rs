//! A publishing connection that only times out, while the subscriber
//! connection stays healthy (one TCP path cut, the other not): the broker
//! gives the link up and opens a new one, so publishes work again.

mod support;

use std::time::Duration;

use realtime::{Config, RedisBroker};
use support::proxy::Proxy;
use support::{Node, RedisServer, redis_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_only_times_out_is_replaced() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.port()).await;
    let mut settings = redis_config("p10:");
    settings.command_timeout = Duration::from_millis(500);
    let broker = RedisBroker::connect(&proxy.url(), settings)
        .await
        .expect("connect through the proxy");
    // The subscriber connection opens first, then the publisher.
    assert_eq!(proxy.connections(), 2);
    let node = Node::with_broker(broker, Config::default()).await;
    let mut client = node.connect("room:p", "alice").await;
    node.publish("room:p", "before".to_owned()).await;
    assert_eq!(client.recv_event().await["event"]["text"], "before");

    proxy.freeze(1);
    let said = |text: &str| support::Said {
        from: "server".to_owned(),
        text: text.to_owned(),
    };
    assert!(
        node.service.publish("room:p", &said("lost")).await.is_err(),
        "a publish on the frozen connection times out"
    );
    support::wait_until("a publish goes through a new connection", || async {
        node.service.publish("room:p", &said("after")).await.is_ok()
    })
    .await;
    assert!(proxy.connections() >= 4, "a new pair of connections");
    loop {
        let event = client.recv_event().await;
        if event["event"]["text"] == "after" {
            break;
        }
    }
}
