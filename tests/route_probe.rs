//! A plain GET of the WebSocket route answers what an upgrade would get,
//! so that a client that cannot see why its socket failed (a browser) can
//! ask: 503 while the instance would refuse (its broker down, full, or
//! shutting down), 426 once it would upgrade.

mod support;

use std::time::Duration;

use realtime::history::{HistoryPolicy, Retention};
use realtime::{Config, MemoryBroker};
use support::{Node, RedisServer, plain_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_gets_503_while_redis_is_down_and_426_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let policy = HistoryPolicy::none().keep("room:*", Retention::new(100, Duration::from_secs(60)));
    let node = Node::with_history(redis.broker("probe:").await, policy).await;
    let addr = node.server.addr();
    assert_eq!(plain_get(addr, "/ws/room:1?token=alice").await, 426);

    redis.stop();
    support::wait_until("the broker sees Redis go", || async {
        !realtime::Broker::is_connected(node.service.broker())
    })
    .await;
    assert_eq!(plain_get(addr, "/ws/room:1?token=alice").await, 503);
    // A real upgrade gets the same.
    let refused = node.server.ws_url("/ws/room:1");
    let error = realtime::testing::TestClient::connect(&refused, "alice")
        .await
        .expect_err("refused while Redis is down");
    assert_eq!(error.status(), Some(503));

    redis.restart().await;
    support::wait_until("a probe is told to upgrade again", || async {
        plain_get(addr, "/ws/room:1?token=alice").await == 426
    })
    .await;
}

#[tokio::test]
async fn a_probe_gets_503_when_the_instance_is_full_or_shutting_down() {
    let mut config = Config::default();
    config.max_connections = 1;
    let node = Node::serve(MemoryBroker::new(), HistoryPolicy::none(), config).await;
    let addr = node.server.addr();
    let client = node.connect("lobby", "alice").await;
    assert_eq!(plain_get(addr, "/ws/lobby?token=bob").await, 503);
    drop(client);
    support::wait_until("the place is free again", || async {
        node.service.connections() == 0
    })
    .await;
    assert_eq!(plain_get(addr, "/ws/lobby?token=bob").await, 426);
    node.service.shutdown().await;
    assert_eq!(plain_get(addr, "/ws/lobby?token=bob").await, 503);
}

#[tokio::test]
async fn since_is_read_percent_decoded_like_the_token() {
    let node = plain_node().await;
    let addr = node.server.addr();
    // `3.abc`, with the dot encoded as a URL library may write it.
    assert_eq!(
        plain_get(addr, "/ws/room?token=alice&since=3%2Eabc").await,
        426
    );
    assert_eq!(
        plain_get(addr, "/ws/room?token=alice&since=3.abc").await,
        426
    );
    assert_eq!(
        plain_get(addr, "/ws/room?token=alice&since=3%2Ea%2Fc").await,
        400
    );
}

/// The probe reads `heartbeat` as the upgrade does: the TypeScript client
/// asks why its socket failed with the very URL it opened, `heartbeat=text`
/// included.
#[tokio::test]
async fn a_probe_with_the_text_heartbeat_gets_426_and_an_unknown_heartbeat_400() {
    let node = plain_node().await;
    let addr = node.server.addr();
    assert_eq!(
        plain_get(addr, "/ws/room?token=alice&heartbeat=text").await,
        426
    );
    assert_eq!(
        plain_get(addr, "/ws/room?token=alice&heartbeat=ping").await,
        426
    );
    assert_eq!(
        plain_get(addr, "/ws/room?token=alice&heartbeat=loud").await,
        400
    );
}

/// A node on the memory broker, with no history and the default config.
async fn plain_node() -> Node<MemoryBroker> {
    Node::serve(
        MemoryBroker::new(),
        HistoryPolicy::none(),
        Config::default(),
    )
    .await
}
