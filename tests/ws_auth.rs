//! Authentication and topic authorization happen before the upgrade.

#[path = "common/room.rs"]
mod room;

use realtime::testing::TestClient;
use room::RoomServer;
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
