//! The ready JWT validator (feature `jwt`) on real sockets: HS256, RS256
//! and ES256 tokens get in, `sub` is the user, a connection is closed with
//! 3000 at `exp`, and one refreshed with short tokens outlives them all on
//! two instances over a real Redis, missing no event.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realtime::auth::jwt::JwtValidator;
use realtime::history::HistoryPolicy;
use realtime::testing::{Closed, TestClient, TestServer};
use realtime::{Config, Service, TokenValidator};
use serde_json::{Value, json};
use support::{Hooks, Node, RedisServer, Room, Said};

const SECRET: &[u8] = b"the chat's secret, 32 bytes long";

/// A node of [`Room`] on `broker` whose tokens `validator` checks.
async fn node<B, V>(broker: B, validator: V) -> Node<B>
where
    B: realtime::broker::Broker,
    V: TokenValidator<UserId = String>,
{
    let mut config = Config::default();
    config.token_notice = Duration::from_millis(800);
    let service = Service::builder(Room, Arc::new(Hooks::default()), validator)
        .with_broker(broker)
        .history(HistoryPolicy::none())
        .config(config)
        .build()
        .expect("a valid config");
    let server = TestServer::start(realtime::route::router(service.clone(), "/ws/{topic}")).await;
    Node { service, server }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A token of `user` with `exp` in whole seconds.
fn sign(key: &EncodingKey, algorithm: Algorithm, user: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &json!({"sub": user, "exp": exp, "iat": unix_now()}),
        key,
    )
    .expect("signs")
}

fn hs256(user: &str, exp: u64) -> String {
    let key = EncodingKey::from_secret(SECRET).expect("a secret");
    sign(&key, Algorithm::HS256, user, exp)
}

/// A fresh private key made by `openssl genpkey` with `args`, and its
/// public key, both PEM.
fn key_pair(dir: &Path, name: &str, args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let made = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&private)
        .output()
        .expect("run openssl genpkey");
    assert!(made.status.success(), "{made:?}");
    let made = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .expect("run openssl pkey");
    assert!(made.status.success(), "{made:?}");
    (
        std::fs::read(&private).expect("the private key"),
        std::fs::read(&public).expect("the public key"),
    )
}

async fn whoami(node: &Node<realtime::MemoryBroker>, token: &str) -> Result<Value, u16> {
    match TestClient::connect(&node.server.ws_url("/ws/lobby"), token).await {
        Ok(mut client) => Ok(client.request("whoami", json!({}), 1).await["ok"].clone()),
        Err(refused) => Err(refused.status().unwrap_or(0)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_rs256_and_es256_tokens_get_in_and_others_are_refused() {
    let dir = std::env::temp_dir().join(format!("realtime-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let exp = unix_now() + 600;

    let hs = node(
        realtime::MemoryBroker::new(),
        JwtValidator::hs256(SECRET).expect("a long secret"),
    )
    .await;
    assert_eq!(whoami(&hs, &hs256("alice", exp)).await, Ok(json!("alice")));
    assert_eq!(whoami(&hs, &hs256("alice", unix_now() - 5)).await, Err(401));
    assert_eq!(whoami(&hs, "alice").await, Err(401));

    let (rsa_private, rsa_public) = key_pair(
        &dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec_private, ec_public) = key_pair(
        &dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let rsa_key = EncodingKey::from_rsa_pem(&rsa_private).expect("an RSA key");
    let ec_key = EncodingKey::from_ec_pem(&ec_private).expect("an EC key");

    let rs = node(
        realtime::MemoryBroker::new(),
        JwtValidator::rs256(&rsa_public).expect("an RSA public key"),
    )
    .await;
    let token = sign(&rsa_key, Algorithm::RS256, "bob", exp);
    assert_eq!(whoami(&rs, &token).await, Ok(json!("bob")));
    // Not the algorithm the validator was made for, nor its key.
    assert_eq!(whoami(&rs, &hs256("bob", exp)).await, Err(401));
    let es_token = sign(&ec_key, Algorithm::ES256, "bob", exp);
    assert_eq!(whoami(&rs, &es_token).await, Err(401));

    let es = node(
        realtime::MemoryBroker::new(),
        JwtValidator::es256(&ec_public).expect("an EC public key"),
    )
    .await;
    assert_eq!(whoami(&es, &es_token).await, Ok(json!("bob")));
    assert_eq!(whoami(&es, &token).await, Err(401));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_connection_is_closed_with_3000_within_a_second_of_exp() {
    let node = node(
        realtime::MemoryBroker::new(),
        JwtValidator::hs256(SECRET).expect("a long secret"),
    )
    .await;
    let exp = unix_now() + 2;
    let mut client = TestClient::connect(&node.server.ws_url("/ws/lobby"), &hs256("alice", exp))
        .await
        .expect("a token with time left gets in");
    let closed = client.recv_close().await;
    let at = UNIX_EPOCH + Duration::from_secs(exp);
    let late = SystemTime::now()
        .duration_since(at)
        .expect("not closed before exp");
    let Closed::Frame(code, reason) = closed else {
        panic!("dropped without a close frame");
    };
    assert_eq!(code, 3000, "{reason}");
    assert!(reason.contains("token expired"), "{reason}");
    assert!(late < Duration::from_secs(1), "closed {late:?} after exp");
}

/// Tokens of 3 s, each replaced after 2 s with `$refresh`, for 20 s: the
/// socket on one instance stays open and gets every event published on the
/// other, through a real Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshing_3s_tokens_every_2s_keeps_the_socket_for_20s_on_redis() {
    let redis = RedisServer::start().await;
    let validator = || JwtValidator::hs256(SECRET).expect("a long secret");
    let a = node(redis.broker("jwt:").await, validator()).await;
    let b = node(redis.broker("jwt:").await, validator()).await;
    let mut client = TestClient::connect(
        &a.server.ws_url("/ws/lobby"),
        &hs256("alice", unix_now() + 3),
    )
    .await
    .expect("connect");
    // The instance follows the topic once the client is in: events from b
    // reach it from then on.
    let echoed = client.request("echo", json!({"text": "in"}), 0).await;
    assert_eq!(echoed["ok"], "in", "{echoed}");

    let publisher = {
        let service = b.service.clone();
        tokio::spawn(async move {
            let mut sent = 0_u64;
            let end = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < end {
                let said = Said {
                    from: "b".to_owned(),
                    text: sent.to_string(),
                };
                service.publish("lobby", &said).await.expect("published");
                sent += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        })
    };
    for round in 1..=10_u64 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let token = hs256("alice", unix_now() + 3);
        let answer = client
            .request("$refresh", json!({"token": token}), round)
            .await;
        let left = answer["ok"]["expires_in"].as_u64();
        assert!(matches!(left, Some(1..=3)), "round {round}: {answer}");
    }
    let sent = publisher.await.expect("the publisher ran");
    assert!(sent > 100, "{sent} events published");
    let mut heard = Vec::new();
    while heard.len() < usize::try_from(sent).expect("small") {
        let event = client.recv_event().await;
        heard.push(event["event"]["text"].as_str().expect("text").to_owned());
    }
    let expected: Vec<String> = (0..sent).map(|n| n.to_string()).collect();
    assert_eq!(heard, expected, "every event, once, in order");
    let echoed = client
        .request("echo", json!({"text": "still open"}), 99)
        .await;
    assert_eq!(echoed["ok"], "still open", "{echoed}");
}
