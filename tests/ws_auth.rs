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
