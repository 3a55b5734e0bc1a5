//! Heartbeats: the `heartbeat_ms` in `hello` is what the server enforces. A client silent for two
//! heartbeats is closed and its route removed; a client that keeps talking stays.

use std::time::Duration;

use serde_json::json;
use wsroute_client::raw::Message;
use wsroute_tests::{Client, Cluster};

async fn routes_of_user(c: &Cluster, user: &str) -> usize {
    c.redis.routes_of_user(user).await
}

#[tokio::test]
async fn a_silent_client_is_closed_and_its_route_removed() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--heartbeat-ms".into(), "300".into()];
    })
    .await;
    // A client that reads its hello and then neither reads nor writes (a dead peer).
    let ghost = wsroute_client::Connection::connect(&wsroute_client::ConnectOptions::new(
        c.node(1).ws_user("ghost"),
    ))
    .await
    .expect("connects");
    assert_eq!(ghost.hello().heartbeat_ms, 300);
    assert_eq!(routes_of_user(&c, "ghost").await, 1);

    // A client that pings keeps its connection meanwhile.
    let mut alive = Client::connect(&c.node(1).ws_user("alive")).await;
    let silent_since = std::time::Instant::now();
    let deadline = silent_since + wsroute_tests::patience();
    // Polled every 50 ms: often enough to keep `alive` alive (heartbeat 300 ms), rarely enough
    // to stay far under the flood limit (a ping's round trip alone is well under 1 ms).
    let mut every = tokio::time::interval(Duration::from_millis(50));
    while routes_of_user(&c, "ghost").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the silent client was never closed"
        );
        every.tick().await;
        alive.send_json(json!({"type":"ping"})).await;
        alive.expect_type("pong").await;
    }
    let took = silent_since.elapsed();
    println!("silent client removed after {took:?} (heartbeat 300 ms)");
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );
    assert_eq!(routes_of_user(&c, "alive").await, 1);
    assert_eq!(
        alive.send_and_ack("alive", json!("me")).await["status"],
        "delivered"
    );
}

/// A WebSocket ping frame from the client is answered with a pong carrying its payload
/// (PROTOCOL 2: "WebSocket ping frames are answered too"), beside the JSON `ping`/`pong`.
#[tokio::test]
async fn a_websocket_ping_frame_is_answered_with_its_payload() {
    let c = Cluster::start(1).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    alice
        .send_raw(Message::Ping(b"are you there".to_vec().into()))
        .await;
    assert_eq!(alice.expect_pong().await, b"are you there");
    // The connection goes on as before.
    alice.send_json(json!({"type":"ping"})).await;
    alice.expect_type("pong").await;
}
