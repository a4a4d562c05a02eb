//! Authentication and topic authorization happen before the upgrade.

mod support;

use realtime::testing::TestClient;
use support::room::RoomServer;
use support::{http_get, plain_get};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn valid_bearer_token_connects_and_names_the_user() {
    let server = RoomServer::start().await;
    let mut client = server.connect("lobby", "alice").await;
    let answer = client.request("whoami", serde_json::json!({}), 1).await;
    assert_eq!(answer, serde_json::json!({"reply_to": 1, "ok": "alice"}));
}

#[tokio::test]
async fn missing_token_is_401() {
    let server = RoomServer::start().await;
    let request = server.url("lobby").into_client_request().unwrap();
    let error = TestClient::connect_request(request).await.unwrap_err();
    assert_eq!(error.status(), Some(401));
    assert_eq!(server.service.connections(), 0);
}

#[tokio::test]
async fn rejected_token_is_401() {
    let server = RoomServer::start().await;
    let error = TestClient::connect(&server.url("lobby"), "bad")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(401));
}

#[tokio::test]
async fn forbidden_topic_is_403_and_allowed_for_its_user() {
    let server = RoomServer::start().await;
    let error = TestClient::connect(&server.url("forbidden"), "mallory")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403));
    server.connect("forbidden", "admin").await;
}

#[tokio::test]
async fn token_in_query_string_is_accepted() {
    let server = RoomServer::start().await;
    let request = format!("{}?token=bob", server.url("lobby"))
        .into_client_request()
        .unwrap();
    let mut client = TestClient::connect_request(request).await.unwrap();
    let answer = client.request("whoami", serde_json::json!({}), 2).await;
    assert_eq!(answer["ok"], "bob");
}

#[tokio::test]
async fn token_in_subprotocol_is_accepted_and_the_protocol_answered() {
    let server = RoomServer::start().await;
    let mut request = server.url("lobby").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "bearer, carol".parse().unwrap());
    // tungstenite checks that the server answers with one of the offered
    // protocols, as a browser does.
    let mut client = TestClient::connect_request(request).await.unwrap();
    let answer = client.request("whoami", serde_json::json!({}), 3).await;
    assert_eq!(answer["ok"], "carol");
}

#[tokio::test]
async fn plain_request_learns_why_an_upgrade_would_be_refused() {
    let server = RoomServer::start().await;
    assert_eq!(plain_get(server.server.addr(), "/ws/lobby").await, 401);
    assert_eq!(
        plain_get(server.server.addr(), "/ws/lobby?token=bad").await,
        401
    );
    assert_eq!(
        plain_get(server.server.addr(), "/ws/forbidden?token=bob").await,
        403
    );
    assert_eq!(
        plain_get(server.server.addr(), "/ws/lobby?token=bob&since=nope").await,
        400
    );
    // Allowed: the upgrade would be taken, so "use an upgrade" (426), not
    // a 400 that a client would read as a request it must not repeat.
    assert_eq!(
        plain_get(server.server.addr(), "/ws/lobby?token=bob").await,
        426
    );
    assert_eq!(server.service.connections(), 0);
}

#[tokio::test]
async fn ws_auth_guards_plain_http_routes_with_the_same_validator() {
    use axum::routing::get;
    use realtime::auth::HttpAuth;

    async fn me(HttpAuth(user): HttpAuth<String>) -> String {
        user
    }
    let room = RoomServer::start().await;
    let app = axum::Router::new()
        .route("/me", get(me))
        .with_state(room.service.clone());
    let server = realtime::testing::TestServer::start(app).await;

    let bearer = "Authorization: Bearer alice\r\n";
    assert_eq!(
        http_get(server.addr(), "/me", bearer).await,
        (200, "alice".into())
    );
    assert_eq!(
        http_get(server.addr(), "/me?token=bob", "").await,
        (200, "bob".into())
    );
    let (status, body) = http_get(server.addr(), "/me", "").await;
    assert_eq!(status, 401);
    assert!(body.starts_with("missing token"), "{body}");
    let (status, body) = http_get(server.addr(), "/me?token=bad", "").await;
    assert_eq!((status, body.as_str()), (401, "invalid token"));
}

/// Connects `user` to `lobby` with `Origin: origin`, if any; the status
/// of a refusal.
async fn connect_from(
    server: &RoomServer,
    user: &str,
    origin: Option<&str>,
) -> Result<TestClient, u16> {
    let mut request = server.url("lobby").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {user}").parse().unwrap());
    if let Some(origin) = origin {
        headers.insert("origin", origin.parse().unwrap());
    }
    TestClient::connect_request(request)
        .await
        .map_err(|error| error.status().unwrap_or(0))
}

#[tokio::test]
async fn an_upgrade_from_an_origin_not_allowed_is_403() {
    let mut config = realtime::Config::default();
    config.allowed_origins = vec![
        "http://chat.example".to_owned(),
        "https://*.chat.example".to_owned(),
    ];
    let server = RoomServer::with_config(config).await;
    for origin in [
        "http://evil.example",
        "https://chat.example.evil",
        "http://x.chat.example",
    ] {
        let refused = connect_from(&server, "alice", Some(origin)).await.err();
        assert_eq!(refused, Some(403), "{origin}");
    }
    let mut admitted = Vec::new();
    for origin in [
        Some("http://chat.example"),
        Some("https://eu.chat.example"),
        None,
    ] {
        let client = connect_from(&server, "alice", origin).await;
        admitted.push(client.unwrap_or_else(|status| panic!("{origin:?} refused: {status}")));
    }
    // The refused ones never took a place.
    assert_eq!(server.service.connections(), 3);
}

#[tokio::test]
async fn a_user_past_the_per_user_limit_gets_429_and_others_do_not() {
    let mut config = realtime::Config::default();
    config.max_connections_per_user = 2;
    let server = RoomServer::with_config(config).await;
    let first = server.connect("lobby", "alice").await;
    let _second = server.connect("lobby", "alice").await;
    assert_eq!(connect_from(&server, "alice", None).await.err(), Some(429));
    // A page's plain GET learns the same.
    assert_eq!(
        plain_get(server.server.addr(), "/ws/lobby?token=alice").await,
        429
    );
    // Another user is not counted with alice.
    let _bob = server.connect("lobby", "bob").await;
    // A place freed is a place taken again.
    first.close().await;
    support::wait_until("alice's first connection is gone", || async {
        server.service.connections() == 2
    })
    .await;
    assert!(connect_from(&server, "alice", None).await.is_ok());
}
