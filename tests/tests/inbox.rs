//! Offline users: `stored`, delivered oldest first on the next connect on any node, removed only
//! after the client's ack, sent again while unacked.

use serde_json::json;
use wsroute_tests::{Client, Cluster};

#[tokio::test]
async fn offline_messages_wait_in_the_inbox_until_acked() {
    let c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let a1 = alice.send_and_ack("dave", json!({"n": 1})).await;
    let a2 = alice.send_and_ack("dave", json!({"n": 2})).await;
    assert_eq!(a1["status"], "stored", "{a1}");
    assert_eq!(a1["devices"], 0);
    assert_eq!(a2["status"], "stored");

    // First connect (node 3): both, oldest first, with their original ids.
    let mut dave = Client::connect(&c.node(3).ws_user("dave"))
        .await
        .manual_ack();
    let got = dave.frames_until_pong().await;
    let ids: Vec<_> = got.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, vec![a1["id"].clone(), a2["id"].clone()], "{got:?}");
    assert_eq!(got[0]["body"], json!({"n": 1}));
    assert_eq!(got[0]["from"], "alice");
    // Ack only the first.
    dave.send_json(json!({"type":"ack","id":a1["id"]})).await;
    assert!(dave.frames_until_pong().await.is_empty());
    dave.close().await;

    // Next connect (node 2): the unacked one comes again, same id.
    let mut dave = Client::connect(&c.node(2).ws_user("dave"))
        .await
        .manual_ack();
    let got = dave.frames_until_pong().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], a2["id"]);
    dave.send_json(json!({"type":"ack","id":a2["id"]})).await;
    assert!(dave.frames_until_pong().await.is_empty());
    dave.close().await;

    // Everything acked: nothing more.
    let mut dave = Client::connect(&c.node(1).ws_user("dave")).await;
    assert!(dave.frames_until_pong().await.is_empty());

    // And now that dave is online, messages are delivered live, not stored.
    let a3 = alice.send_and_ack("dave", json!({"n": 3})).await;
    assert_eq!(a3["status"], "delivered");
    assert_eq!(dave.expect_type("message").await["id"], a3["id"]);
}

/// A message that waited in the inbox gets its `received` receipt when a device acks it, and
/// `read` when the user reads it, on whichever nodes sender and recipient are; once each.
#[tokio::test]
async fn an_inbox_message_acked_later_tells_its_sender_received_and_read() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let stored = alice.send_and_ack("erin", json!({"n": 1})).await;
    assert_eq!(stored["status"], "stored", "{stored}");
    let id = stored["id"].as_str().expect("id").to_owned();

    let mut erin = Client::connect(&format!("{}&device=tablet", c.node(2).ws_user("erin")))
        .await
        .manual_ack();
    let got = erin.expect_type("message").await;
    assert_eq!(got["id"], id.as_str());
    erin.send_json(json!({"type":"ack","id":id})).await;
    erin.send_json(json!({"type":"ack","id":id})).await; // a repeated ack tells nothing more
    let received = alice
        .expect(
            |f| f["type"] == "receipt" && f["status"] == "received",
            "received",
        )
        .await;
    assert_eq!(received["id"], id.as_str(), "{received}");
    assert_eq!(received["to"], "erin");
    assert_eq!(received["device"], "tablet");
    erin.send_json(json!({"type":"read","id":id})).await;
    let read = alice
        .expect(|f| f["type"] == "receipt" && f["status"] == "read", "read")
        .await;
    assert_eq!(read["id"], id.as_str(), "{read}");
    let more: Vec<_> = alice
        .frames_until_pong()
        .await
        .into_iter()
        .filter(|f| f["type"] == "receipt")
        .collect();
    println!("receipts for the inbox message: received, read, then {more:?}");
    assert!(more.is_empty(), "one receipt of each: {more:?}");
}

#[tokio::test]
async fn an_inbox_is_bounded_and_says_so() {
    // One sender's quota (120 a minute) is raised so that alice alone can fill the inbox; the
    // quota and the byte cap have their own tests (tests/tests/quotas.rs).
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-stored-per-minute".into(), "2000".into()];
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    // The default bound is 1000; fill it through the pipeline and check the first refusal.
    for i in 0..1000 {
        alice.send_to("erin", json!(i)).await;
    }
    for i in 1..=1000 {
        let ack = alice.expect_ack(&format!("r{i}")).await;
        assert_eq!(ack["status"], "stored", "{ack}");
    }
    let ack = alice.send_and_ack("erin", json!("one too many")).await;
    assert_eq!(ack["status"], "rejected", "{ack}");
    assert_eq!(ack["error"]["code"], "inbox_full");
}

#[tokio::test]
async fn a_connect_reads_the_inbox_only_when_messages_wait() {
    let c = Cluster::start(1).await;
    let metrics = c.node(1).http("/metrics");
    let fetches = || {
        wsroute_tests::metric(
            &metrics,
            "wsroute_redis_operations_total{op=\"inbox_fetch\"}",
        )
    };

    // Nothing waits for erin: registering told the node so, and it does not read her inbox.
    let mut erin = Client::connect(&c.node(1).ws_user("erin")).await;
    assert!(erin.frames_until_pong().await.is_empty());
    assert_eq!(fetches().await, 0.0);
    erin.close().await;

    // One message waits for frank: his connect reads the inbox and gets it.
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let ack = alice.send_and_ack("frank", json!("hi")).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    // The store announced itself ("inbox frank"); once the node has heard it, only frank's
    // connect can read his inbox (heard after his session starts, it would read it again, and
    // on a loaded machine with Redis Cluster it sometimes was).
    wsroute_tests::eventually("the inbox event heard", || async {
        (wsroute_tests::metric(&metrics, "wsroute_route_events_total{kind=\"inbox\"}").await >= 1.0)
            .then_some(())
    })
    .await;
    let mut frank = Client::connect(&c.node(1).ws_user("frank")).await;
    assert_eq!(frank.expect_type("message").await["id"], ack["id"]);
    assert_eq!(fetches().await, 1.0);
}
