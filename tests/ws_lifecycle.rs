//! `on_connect` and `on_disconnect` run exactly once per connection, however
//! it ends.

mod support;

use std::sync::atomic::Ordering;

use serde_json::json;
use support::room::RoomServer;
use support::wait_until;

#[tokio::test]
async fn hooks_run_once_per_connection_for_every_way_it_ends() {
    let server = RoomServer::start().await;
    let hooks = std::sync::Arc::clone(&server.hooks);

    // Closed with a close frame.
    let polite = server.connect("lobby", "polite").await;
    // TCP dropped without a close frame.
    let mut rude = server.connect("lobby", "rude").await;
    // Closed by the server (a binary frame).
    let mut offender = server.connect("lobby", "offender").await;

    // A round trip each proves on_connect has run for all three.
    assert_eq!(
        rude.request("echo", json!({"text": "x"}), 1).await["ok"],
        "x"
    );
    assert_eq!(
        offender.request("echo", json!({"text": "x"}), 1).await["ok"],
        "x"
    );
    assert_eq!(hooks.connects.load(Ordering::SeqCst), 3);

    polite.close().await;
    drop(rude.into_inner());
    offender
        .send_message(tokio_tungstenite::tungstenite::Message::binary(vec![0]))
        .await;
    assert_eq!(offender.recv_close().await.code(), Some(1003));

    // A connection is counted until after its on_disconnect has returned.
    wait_until("every connection has ended", || async {
        server.service.connections() == 0
    })
    .await;
    assert_eq!(hooks.connects.load(Ordering::SeqCst), 3);
    assert_eq!(hooks.disconnects.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn refused_upgrade_runs_no_hook() {
    let server = RoomServer::start().await;
    let error = realtime::testing::TestClient::connect(&server.url("forbidden"), "mallory")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403));
    assert_eq!(server.hooks.connects.load(Ordering::SeqCst), 0);
    assert_eq!(server.hooks.disconnects.load(Ordering::SeqCst), 0);
}
