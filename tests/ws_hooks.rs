//! The `$join` and `$leave` hooks, and the list of topics with local
//! subscribers: an application that counts the members of each board sees
//! every subscription come and go, however it ends.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use realtime::auth::validate_with;
use realtime::prelude::*;
use realtime::testing::TestServer;
use realtime::{MemoryBroker, Service};
use serde_json::json;
use support::{ack, connect, wait_until};

/// Members per `$join`ed topic, as the hooks count them.
#[derive(Debug, Default)]
struct Members(Mutex<HashMap<String, i64>>);

impl Members {
    fn add(&self, topic: &str, by: i64) {
        let mut members = self.0.lock().expect("members lock");
        *members.entry(topic.to_owned()).or_default() += by;
    }

    fn of(&self, topic: &str) -> i64 {
        let members = self.0.lock().expect("members lock");
        members.get(topic).copied().unwrap_or(0)
    }
}

struct Board;

#[realtime_handler(state = Members, user = String)]
impl Board {
    /// Answers the members of the topic the frame is about.
    #[direct]
    async fn members(&self, ctx: &Context<Members, String>) -> Result<i64, HandlerError> {
        Ok(ctx.state().of(ctx.topic()))
    }

    #[on_join]
    async fn joined(&self, ctx: &Context<Members, String>, topic: &str) {
        ctx.state().add(topic, 1);
    }

    #[on_leave]
    async fn left(&self, ctx: &Context<Members, String>, topic: &str) {
        ctx.state().add(topic, -1);
    }
}

async fn start() -> (Service<Board, MemoryBroker>, TestServer) {
    let service = Service::builder(
        Board,
        Members::default(),
        validate_with(|t: &str| Ok(t.to_owned())),
    )
    .build()
    .expect("the default config is valid");
    let server = TestServer::start(Board::router(service.clone())).await;
    (service, server)
}

fn sorted(mut topics: Vec<Arc<str>>) -> Vec<String> {
    topics.sort();
    topics.iter().map(|topic| topic.to_string()).collect()
}

#[tokio::test]
async fn join_and_leave_run_their_hooks_before_the_acknowledgement() {
    let (service, server) = start().await;
    let mut alice = connect(&server, "home", "alice").await;
    let mut bob = connect(&server, "home", "bob").await;

    assert_eq!(alice.join("board:1", 1).await, ack(1));
    // The hook ran before the acknowledgement: the count is there already.
    assert_eq!(service.state().of("board:1"), 1);
    assert_eq!(bob.join("board:1", 1).await, ack(1));
    let members = json!({"type": "members", "data": {}, "topic": "board:1", "id": 2});
    bob.send(members).await;
    assert_eq!(bob.recv_reply().await, json!({"reply_to": 2, "ok": 2}));

    assert_eq!(alice.leave("board:1", 3).await, ack(3));
    assert_eq!(service.state().of("board:1"), 1);
    // A repeated join of a topic already joined is acknowledged and counted once.
    assert_eq!(bob.join("board:1", 4).await, ack(4));
    assert_eq!(service.state().of("board:1"), 1);
    // The URL's topic is not a `$join`: `on_connect` covers it.
    assert_eq!(service.state().of("home"), 0);
}

#[tokio::test]
async fn a_connection_that_ends_while_joined_runs_on_leave() {
    let (service, server) = start().await;
    let mut alice = connect(&server, "home", "alice").await;
    let mut bob = connect(&server, "home", "bob").await;
    assert_eq!(alice.join("board:1", 1).await, ack(1));
    assert_eq!(alice.join("board:2", 2).await, ack(2));
    assert_eq!(bob.join("board:2", 1).await, ack(1));
    assert_eq!(service.state().of("board:2"), 2);

    // One closes properly, the other's TCP connection just goes away.
    alice.close().await;
    drop(bob);
    // Once both connections are gone every hook has run; then the counts
    // show each on_leave ran exactly once.
    wait_until("both connections ended", || async {
        service.connections() == 0
    })
    .await;
    assert_eq!(service.state().of("board:1"), 0);
    assert_eq!(service.state().of("board:2"), 0);
}

#[tokio::test]
async fn the_service_lists_the_topics_with_local_subscribers() {
    let (service, server) = start().await;
    assert!(service.topics().is_empty());

    let mut alice = connect(&server, "home", "alice").await;
    assert_eq!(alice.join("board:1", 1).await, ack(1));
    assert_eq!(sorted(service.topics()), ["board:1", "home"]);

    assert_eq!(alice.leave("board:1", 2).await, ack(2));
    assert_eq!(sorted(service.topics()), ["home"]);

    alice.close().await;
    wait_until("the last subscriber's topics are gone", || async {
        service.topics().is_empty()
    })
    .await;
}
