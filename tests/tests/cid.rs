//! Idempotent sends (docs/protocol.md, "Idempotent sends"): a `send` with a `cid` gets an id derived from its sender
//! and the cid, the same on every resend from any node; the inbox holds it once; a cid outside
//! its rules is rejected with `bad_field`.

use serde_json::{Value, json};
use wsroute_tests::router_cli::cli_json;
use wsroute_tests::{Client, Cluster, eventually};

/// Sends `body` to `to` with `cid` and `reference`; returns the ack.
async fn send_cid(c: &mut Client, to: &str, cid: &str, reference: &str, body: Value) -> Value {
    c.send_json(json!({"type":"send","to":to,"ref":reference,"cid":cid,"body":body}))
        .await;
    c.expect_ack(reference).await
}

fn id_of(ack: &Value) -> String {
    match ack["id"].as_str() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => panic!("an ack without an id: {ack}"),
    }
}

#[tokio::test]
async fn a_resent_cid_keeps_its_id_across_nodes_and_reconnects() {
    let c = Cluster::start(3).await;
    let mut bob = Client::connect(&c.node(3).ws_user("bob")).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;

    // Twice on node 1 (as after a lost ack), then from node 2 after a reconnect.
    let first = send_cid(&mut alice, "bob", "chat-1:msg.7", "a1", json!("hi")).await;
    let again = send_cid(&mut alice, "bob", "chat-1:msg.7", "a2", json!("hi")).await;
    alice.close().await;
    let mut alice = Client::connect(&c.node(2).ws_user("alice")).await;
    let third = send_cid(&mut alice, "bob", "chat-1:msg.7", "a3", json!("hi")).await;
    let id = id_of(&first);
    for ack in [&first, &again, &third] {
        assert_eq!(ack["status"], "delivered", "{ack}");
        assert_eq!(ack["devices"], 1, "{ack}");
        assert_eq!(ack["id"], id.as_str(), "one cid, one id: {ack}");
    }

    // Another cid of the same sender, and the same cid of another sender: other ids.
    let other_cid = send_cid(&mut alice, "bob", "chat-1:msg.8", "a4", json!("next")).await;
    let mut carol = Client::connect(&c.node(1).ws_user("carol")).await;
    let other_sender = send_cid(&mut carol, "bob", "chat-1:msg.7", "c1", json!("me")).await;
    let ids = [id.clone(), id_of(&other_cid), id_of(&other_sender)];
    assert!(
        ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2],
        "{ids:?}"
    );
    // A send without a cid still gets a generated id, which no cid can give.
    let plain = alice.send_and_ack("bob", json!("plain")).await;
    assert_eq!(plain["status"], "delivered", "{plain}");
    assert!(!ids.contains(&id_of(&plain)), "{plain}");

    // Bob got each message once (a connection never gets one id twice: the resends were
    // acked delivered, as the message is there), in the order each sender sent them.
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = bob.expect_type("message").await;
        got.push((m["from"].clone(), m["id"].clone(), m["body"].clone()));
    }
    let from_alice: Vec<_> = got.iter().filter(|(from, ..)| from == "alice").collect();
    let alice_ids: Vec<_> = from_alice.iter().map(|(_, id, _)| id.clone()).collect();
    assert_eq!(
        alice_ids,
        [json!(id), json!(ids[1]), plain["id"].clone()],
        "{got:?}"
    );
    let from_carol: Vec<_> = got.iter().filter(|(from, ..)| from == "carol").collect();
    assert_eq!(from_carol.len(), 1, "{got:?}");
    assert_eq!(from_carol[0].1, json!(ids[2]));
    assert_eq!(from_carol[0].2, json!("me"));
    let more = bob.frames_until_pong().await;
    assert!(
        more.iter().all(|f| f["type"] != "message"),
        "no copy: {more:?}"
    );
}

#[tokio::test]
async fn an_offline_user_gets_a_resent_cid_once() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut acks = Vec::new();
    for r in ["s1", "s2"] {
        acks.push(send_cid(&mut alice, "dave", "once", r, json!({"n": 1})).await);
    }
    alice.close().await;
    let mut alice = Client::connect(&c.node(2).ws_user("alice")).await;
    acks.push(send_cid(&mut alice, "dave", "once", "s3", json!({"n": 1})).await);
    let id = id_of(&acks[0]);
    for ack in &acks {
        assert_eq!(ack["status"], "stored", "a resend is still stored: {ack}");
        assert_eq!(ack["id"], id.as_str(), "{ack}");
    }

    // The inbox holds the id once (router-cli lists the inbox's id list, duplicates included).
    let inbox = cli_json(&c.redis.url(), &["inbox", "dave"]);
    assert_eq!(inbox["depth"], 1, "{inbox}");
    assert_eq!(inbox["messages"][0]["id"], id.as_str(), "{inbox}");

    // And dave gets it once on connect.
    let mut dave = Client::connect(&c.node(2).ws_user("dave")).await;
    let got = dave.frames_until_pong().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(got[0]["body"], json!({"n": 1}));
}

#[tokio::test]
async fn a_cid_outside_its_rules_is_rejected_and_the_connection_stays_open() {
    let c = Cluster::start(1).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;

    let too_long = "x".repeat(65);
    for (what, cid) in [
        ("too long", too_long.as_str()),
        ("a space", "a b"),
        ("an @", "a@b"),
        ("a slash", "a/b"),
        ("empty", ""),
        ("not ASCII", "é"),
    ] {
        let reference = format!("bad {what}");
        let ack = send_cid(&mut alice, "bob", cid, &reference, json!(1)).await;
        assert_eq!(ack["status"], "rejected", "{what}: {ack}");
        assert_eq!(ack["error"]["code"], "bad_field", "{what}: {ack}");
        assert_eq!(ack["ref"], reference.as_str(), "{what}: {ack}");
        assert!(
            ack["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cid")),
            "{what}: {ack}"
        );
    }
    // A cid that is not a string at all is a field of the wrong kind: an error frame, with ref.
    alice
        .send_json(json!({"type":"send","to":"bob","ref":"num","cid":7,"body":1}))
        .await;
    let e = alice.expect_type("error").await;
    assert_eq!(e["code"], "bad_field", "{e}");
    assert_eq!(e["ref"], "num", "{e}");

    // Still connected; the longest cid allowed is accepted; bob got nothing of the refused.
    let longest = "y".repeat(64);
    let ack = send_cid(&mut alice, "bob", &longest, "ok", json!("ok")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    let got = bob.frames_until_pong().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["body"], "ok");
    assert_eq!(got[0]["id"], ack["id"]);
}

#[tokio::test]
async fn a_resent_cid_reaches_a_connection_once_and_one_ack_settles_it() {
    let c = Cluster::start(2).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob"))
        .await
        .manual_ack();
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    for r in ["d1", "d2", "d3"] {
        let ack = send_cid(&mut alice, "bob", "dup", r, json!("once")).await;
        assert_eq!(ack["status"], "delivered", "{ack}");
    }
    // Bob's connection gets the message once, and acks it once.
    let id = bob.expect_type("message").await["id"].clone();
    let more = bob.frames_until_pong().await;
    assert!(
        more.iter().all(|f| f["type"] != "message"),
        "no copy: {more:?}"
    );
    bob.send_json(json!({"type":"ack","id":id})).await;
    assert!(bob.frames_until_pong().await.is_empty());
    bob.close().await;

    // The connection's unacked messages are kept before its route goes: once the route is
    // gone, nothing of this message may be in the inbox.
    eventually("bob's route is removed", || async {
        (c.redis.routes_of_user("bob").await == 0).then_some(())
    })
    .await;
    let inbox = cli_json(&c.redis.url(), &["inbox", "bob"]);
    assert_eq!(inbox["depth"], 0, "an acked message came back: {inbox}");
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;
    let got = bob.frames_until_pong().await;
    assert!(got.is_empty(), "{got:?}");
}

/// A resend of a message the recipient's device acked already (a sender that reconnected and
/// sent its outbox again): the connection does not get it twice, and the sender hears
/// `received` for it at once, as it did for the first copy, rather than `stored` when the
/// resend's hold expires (which also put a second copy in the recipient's inbox).
#[tokio::test]
async fn a_resend_of_a_message_acked_already_is_answered_received() {
    let c = Cluster::start(2).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let first = send_cid(&mut alice, "bob", "out-1", "s1", json!("once")).await;
    assert_eq!(first["status"], "delivered", "{first}");
    let id = id_of(&first);
    let m = bob.expect_type("message").await;
    assert_eq!(m["id"], id.as_str());
    let is_receipt = |f: &Value| f["type"] == "receipt" && f["id"] == id.as_str();
    let receipt = alice.expect(is_receipt, "the first receipt").await;
    assert_eq!(receipt["status"], "received", "{receipt}");

    // The same send again, on a new connection of alice's on the same node.
    alice.close().await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let again = send_cid(&mut alice, "bob", "out-1", "s2", json!("once")).await;
    assert_eq!(again["status"], "delivered", "{again}");
    assert_eq!(id_of(&again), id);
    let receipt = alice.expect(is_receipt, "a receipt for the resend").await;
    assert_eq!(receipt["status"], "received", "{receipt}");
    assert_eq!(receipt["to"], "bob");
    let more = bob.frames_until_pong().await;
    assert!(
        more.iter().all(|f| f["type"] != "message"),
        "no second copy: {more:?}"
    );
}
