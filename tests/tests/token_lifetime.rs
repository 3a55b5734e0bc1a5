//! A session lasts as long as its token (docs/protocol.md, "Token lifetime"), tried as a client whose token runs
//! out would: it ends with `token_expired` and close 4001, unless a `refresh` with a valid token
//! for the same user came first; a refresh with anyone else's token, or a forged or expired one,
//! is refused and changes nothing.

use serde_json::{Value, json};
use wsroute_tests::cluster::JWT_SECRET;
use wsroute_tests::{Client, Cluster, token};

/// Nodes that take tokens with no leeway, so that a session ends at its token's `exp`.
async fn cluster() -> Cluster {
    Cluster::start_with(1, |o| {
        o.extra = vec!["--jwt-leeway-secs".into(), "0".into()];
    })
    .await
}

async fn connect(c: &Cluster, token: &str) -> Client {
    Client::connect(&c.node(1).ws(&format!("?token={token}"))).await
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Waits (deadline-bound) for the server to close; asserts it was for the expired token.
async fn expect_expired(client: &mut Client) {
    let (frames, close) = client.expect_close().await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "token_expired"),
        "no token_expired error before the close: {frames:?}"
    );
    let close = close.expect("a close frame");
    assert_eq!(close.code, 4001, "{close:?}");
}

fn refresh(token: &str) -> Value {
    json!({"type":"refresh","token":token})
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires() {
    let c = cluster().await;
    let started = now();
    let mut alice = connect(&c, &token(JWT_SECRET, "alice", 3)).await;
    assert!(
        alice.frames_until_pong().await.is_empty(),
        "served until then"
    );
    expect_expired(&mut alice).await;
    // Not before its `exp` (whole seconds: at least 2 s after a token minted for 3).
    assert!(
        now() >= started + 2,
        "closed {} s after connecting",
        now() - started
    );
    // A fresh token connects again.
    let mut again = connect(&c, &token(JWT_SECRET, "alice", 60)).await;
    assert!(again.frames_until_pong().await.is_empty());
}

#[tokio::test]
async fn a_refresh_keeps_the_session_past_its_first_expiry() {
    let c = cluster().await;
    let first = token(JWT_SECRET, "alice", 3);
    let mut refreshed = connect(&c, &first).await;
    // A second session on the same token, never refreshed: its close marks the first expiry.
    let mut witness = connect(&c, &first).await;

    let fresh = token(JWT_SECRET, "alice", 60);
    let fresh_exp = now() + 60;
    refreshed.send_json(refresh(&fresh)).await;
    let r = refreshed.expect_type("refreshed").await;
    let exp = r["exp"].as_i64().expect("exp is a number");
    assert!(
        (fresh_exp - 1..=fresh_exp).contains(&exp),
        "refreshed with the new token's exp: {r}"
    );

    expect_expired(&mut witness).await;
    // Past the first expiry, the refreshed session is still served.
    let frames = refreshed.frames_until_pong().await;
    assert!(frames.is_empty(), "{frames:?}");
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;
    let ack = refreshed.send_and_ack("bob", json!("still here")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.expect_type("message").await["body"], "still here");
}

#[tokio::test]
async fn a_refresh_with_anyone_elses_or_a_forged_token_is_refused_and_the_session_still_ends() {
    let c = cluster().await;
    let mut alice = connect(&c, &token(JWT_SECRET, "alice", 3)).await;
    let refused = [
        ("another sub", token(JWT_SECRET, "mallory", 60)),
        ("a forged signature", token("not-the-secret", "alice", 60)),
        ("an expired token", token(JWT_SECRET, "alice", -10)),
        ("not a token", "not.a.jwt".to_owned()),
    ];
    for (what, t) in &refused {
        alice.send_json(refresh(t)).await;
        let e = alice.expect_type("error").await;
        assert_eq!(e["code"], "unauthorized", "{what}: {e}");
    }
    // None of them moved the end.
    expect_expired(&mut alice).await;
}
