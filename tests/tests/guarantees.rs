//! Delivery you can prove (issue #12): the user stories, run as written. A message acked
//! `delivered` or `stored` reaches its recipient whatever single failure comes between, once per
//! connection, and its sender is told what became of it (`receipt`, docs/protocol.md).

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use wsroute_tests::client::Client;
use wsroute_tests::cluster::Cluster;
use wsroute_tests::patience;

/// What one sender saw and one recipient got, and the promise checked over it.
#[derive(Debug, Default)]
struct Ledger {
    sent: usize,
    delivered: HashSet<String>,
    stored: HashSet<String>,
    rejected: usize,
    /// Ids received, per connection of the recipient, in order.
    received: Vec<Vec<String>>,
}

impl Ledger {
    fn ack(&mut self, ack: &Value) {
        let id = ack["id"].as_str().unwrap_or_default().to_owned();
        match ack["status"].as_str() {
            Some("delivered") => {
                self.delivered.insert(id);
            }
            Some("stored") => {
                self.stored.insert(id);
            }
            _ => self.rejected += 1,
        }
    }

    fn connection(&mut self, frames: &[Value]) {
        self.received.push(
            frames
                .iter()
                .filter(|f| f["type"] == "message")
                .map(|f| f["id"].as_str().unwrap_or_default().to_owned())
                .collect(),
        );
    }

    fn received_unique(&self) -> HashSet<&String> {
        self.received.iter().flatten().collect()
    }

    /// Acked delivered or stored, never received.
    fn lost(&self) -> usize {
        let got = self.received_unique();
        self.delivered
            .iter()
            .chain(&self.stored)
            .filter(|id| !got.contains(id))
            .count()
    }

    /// Copies of one id on one connection, over all connections.
    fn duplicates(&self) -> usize {
        self.received
            .iter()
            .map(|ids| ids.len() - ids.iter().collect::<HashSet<_>>().len())
            .sum()
    }

    fn summary(&self) -> String {
        format!(
            "sent {}, delivered {}, stored {}, rejected {}, received unique {}, lost {}, duplicates {}",
            self.sent,
            self.delivered.len(),
            self.stored.len(),
            self.rejected,
            self.received_unique().len(),
            self.lost(),
            self.duplicates()
        )
    }
}

/// Sends `n` short messages from `from` to `to` back to back, then collects every ack (and
/// whatever else arrived, e.g. receipts, stays buffered).
async fn send_burst(from: &mut Client, to: &str, n: usize, ledger: &mut Ledger) {
    let mut refs = Vec::with_capacity(n);
    for i in 0..n {
        refs.push(from.send_to(to, json!({ "n": i })).await);
        ledger.sent += 1;
    }
    for r in refs {
        let ack = from.expect_ack(&r).await;
        ledger.ack(&ack);
    }
}

/// Receipts of `status` read from `client` until there is one for every id in `ids`.
async fn receipts_for(client: &mut Client, status: &str, ids: &HashSet<String>) -> HashSet<String> {
    let mut seen = HashSet::new();
    let frames = client
        .collect_until(patience(), |frames| {
            seen = frames
                .iter()
                .filter(|f| f["type"] == "receipt" && f["status"] == status)
                .filter_map(|f| f["id"].as_str().map(str::to_owned))
                .collect();
            ids.iter().all(|id| seen.contains(id))
        })
        .await;
    frames
        .iter()
        .filter(|f| f["type"] == "receipt" && f["status"] == status)
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect()
}

/// Reads messages on a fresh connection until every id in `want` came (or patience runs out).
async fn receive_all(client: &mut Client, want: &HashSet<String>) -> Vec<Value> {
    client
        .collect_until(patience(), |frames| {
            let got: HashSet<&str> = frames
                .iter()
                .filter(|f| f["type"] == "message")
                .filter_map(|f| f["id"].as_str())
                .collect();
            want.iter().all(|id| got.contains(id.as_str()))
        })
        .await
}

fn fast_heartbeat(extra: &mut Vec<String>) {
    extra.extend([
        "--heartbeat-ms".into(),
        "1000".into(),
        "--max-msgs-per-sec".into(),
        "100000".into(),
    ]);
}

/// A phone goes into a tunnel: its socket stays open and nothing more is read. Everything its
/// sender saw `delivered` comes back when it reconnects on another node, and the sender hears
/// `stored` for each.
#[tokio::test]
async fn a_recipient_in_a_tunnel_gets_every_delivered_message_on_another_node() {
    let c = Cluster::start_with(3, |o| fast_heartbeat(&mut o.extra)).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    // Bob reads his hello and nothing more: no acks, no pongs, no reads.
    let tunnel = Client::connect(&c.node(2).ws_user("bob"))
        .await
        .manual_ack();

    let mut ledger = Ledger::default();
    send_burst(&mut alice, "bob", 2000, &mut ledger).await;
    assert_eq!(ledger.rejected, 0, "{}", ledger.summary());
    assert!(
        !ledger.delivered.is_empty(),
        "the node took messages for bob while his socket was open: {}",
        ledger.summary()
    );

    // Node 2 closes the silent connection (two heartbeats) and keeps what bob did not ack; the
    // sender hears of each message acked delivered.
    let stored_receipts = receipts_for(&mut alice, "stored", &ledger.delivered).await;
    let missing: Vec<&String> = ledger
        .delivered
        .iter()
        .filter(|id| !stored_receipts.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} delivered messages without a stored receipt ({})",
        missing.len(),
        ledger.summary()
    );
    drop(tunnel);

    let mut bob = Client::connect(&c.node(3).ws_user("bob")).await;
    let all: HashSet<String> = ledger.delivered.union(&ledger.stored).cloned().collect();
    let frames = receive_all(&mut bob, &all).await;
    ledger.connection(&frames);
    eprintln!("tunnel: {}", ledger.summary());
    assert_eq!(ledger.received_unique().len(), 2000, "{}", ledger.summary());
    assert_eq!(ledger.lost(), 0, "{}", ledger.summary());
    assert_eq!(ledger.duplicates(), 0, "{}", ledger.summary());
}

/// Bob's node crashes before his app acks: the sending node held every message it forwarded,
/// and stores them when its stream to the dead node breaks.
#[tokio::test]
async fn messages_held_for_a_recipient_whose_node_is_killed_come_back() {
    let mut c = Cluster::start_with(3, |o| fast_heartbeat(&mut o.extra)).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut phone = Client::connect(&c.node(2).ws_user("bob"))
        .await
        .manual_ack();

    let mut ledger = Ledger::default();
    send_burst(&mut alice, "bob", 100, &mut ledger).await;
    assert_eq!(ledger.delivered.len(), 100, "{}", ledger.summary());
    // The app has every message, and acks none.
    let frames = receive_all(&mut phone, &ledger.delivered).await;
    ledger.connection(&frames);
    assert_eq!(ledger.received_unique().len(), 100);

    c.nodes[1].kill();
    drop(phone);
    let stored = receipts_for(&mut alice, "stored", &ledger.delivered).await;
    assert_eq!(stored.len(), 100, "alice hears each one was stored");

    let mut bob = Client::connect(&c.node(3).ws_user("bob")).await;
    let frames = receive_all(&mut bob, &ledger.delivered).await;
    let again: HashSet<&str> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .filter_map(|f| f["id"].as_str())
        .collect();
    ledger.connection(&frames);
    eprintln!("recipient's node killed: {}", ledger.summary());
    assert_eq!(again.len(), 100, "100 of 100 again after the crash");
    assert_eq!(ledger.lost(), 0);
    assert_eq!(ledger.duplicates(), 0, "{}", ledger.summary());
}

/// Every live connection of the sender hears when a device of the recipient acked a message,
/// across nodes and on one node, with the device's name.
#[tokio::test]
async fn receipts_tell_every_connection_of_the_sender_who_received_a_message() {
    let c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut alice_laptop = Client::connect(&c.node(3).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws("?user=bob&device=phone")).await;
    let mut carol = Client::connect(&c.node(1).ws("?user=carol&device=tablet")).await;

    let to_bob = alice.send_and_ack("bob", json!("across nodes")).await;
    assert_eq!(to_bob["status"], "delivered", "{to_bob}");
    let to_carol = alice.send_and_ack("carol", json!("same node")).await;
    assert_eq!(to_carol["status"], "delivered", "{to_carol}");
    // Both recipients ack (automatically, as they read).
    assert_eq!(bob.expect_type("message").await["id"], to_bob["id"]);
    assert_eq!(carol.expect_type("message").await["id"], to_carol["id"]);

    let mut by_id: HashMap<String, Value> = HashMap::new();
    for client in [&mut alice, &mut alice_laptop] {
        for ack in [&to_bob, &to_carol] {
            let id = ack["id"].clone();
            let r = client
                .expect(
                    |f| f["type"] == "receipt" && f["id"] == id && f["status"] == "received",
                    "received receipt",
                )
                .await;
            by_id.insert(r["id"].as_str().unwrap_or_default().to_owned(), r);
        }
    }
    let r = &by_id[to_bob["id"].as_str().expect("id")];
    assert_eq!(
        (r["to"].clone(), r["device"].clone()),
        (json!("bob"), json!("phone"))
    );
    let r = &by_id[to_carol["id"].as_str().expect("id")];
    assert_eq!(
        (r["to"].clone(), r["device"].clone()),
        (json!("carol"), json!("tablet"))
    );

    // Bob reads it: alice hears so, on every connection. A read of an id bob never got is
    // nobody's business: no receipt.
    bob.send_json(json!({"type":"read","id":"m0000000000000000ff"}))
        .await;
    bob.send_json(json!({"type":"read","id":to_bob["id"]}))
        .await;
    for client in [&mut alice, &mut alice_laptop] {
        let id = to_bob["id"].clone();
        let r = client
            .expect(
                |f| f["type"] == "receipt" && f["id"] == id && f["status"] == "read",
                "read receipt",
            )
            .await;
        assert_eq!(
            (r["to"].clone(), r["device"].clone()),
            (json!("bob"), json!("phone"))
        );
        let rest = client.frames_until_pong().await;
        assert!(
            rest.iter().all(|f| f["type"] != "receipt"),
            "one receipt per event: {rest:?}"
        );
    }

    // The recipient never gets a receipt for what it received.
    let pongs = bob.frames_until_pong().await;
    assert!(
        pongs.iter().all(|f| f["type"] != "receipt"),
        "no receipt to the recipient: {pongs:?}"
    );
}

/// A connection's unacked budget is a window: a client that reads but does not ack gets about
/// `--unacked-bytes` of messages and then nothing more until it acks; then the rest comes, each
/// message once.
#[tokio::test]
async fn unacked_bytes_are_a_window_that_acks_open() {
    let c = Cluster::start_with(1, |o| {
        o.extra.extend([
            "--max-frame-bytes".into(),
            "4096".into(),
            "--unacked-bytes".into(),
            "65536".into(),
            // What waits past the window is stored by its sender: not what this test limits.
            "--max-stored-per-minute".into(),
            "100000".into(),
        ]);
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob"))
        .await
        .manual_ack();
    let pad = "x".repeat(1000);
    let mut ledger = Ledger::default();
    let mut refs = Vec::new();
    for i in 0..200 {
        refs.push(alice.send_to("bob", json!({ "n": i, "pad": pad })).await);
        ledger.sent += 1;
    }
    for r in refs {
        let ack = alice.expect_ack(&r).await;
        ledger.ack(&ack);
    }
    assert_eq!(ledger.rejected, 0, "{}", ledger.summary());
    // Only about 64 KiB went to bob live while he did not ack: the rest waited in his queue
    // until their senders stopped waiting (2 s) and stored them (inbox copies cost the node
    // nothing: they stay in Redis until acked).
    let frame_bytes = 1100;
    assert!(
        !ledger.delivered.is_empty() && ledger.delivered.len() <= 65536 / frame_bytes + 2,
        "{} messages delivered live before any ack (budget 64 KiB, ~{frame_bytes} B each): {}",
        ledger.delivered.len(),
        ledger.summary()
    );
    let first = bob.frames_until_pong().await;
    // He acks: the window opens, and the rest comes (some through the inbox, stored while
    // their senders waited), each once.
    let mut all = first.clone();
    let mut acked: HashSet<String> = HashSet::new();
    let want: HashSet<String> = ledger.delivered.union(&ledger.stored).cloned().collect();
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        let ids: Vec<String> = all
            .iter()
            .filter(|f| f["type"] == "message")
            .filter_map(|f| f["id"].as_str().map(str::to_owned))
            .collect();
        for id in ids {
            if acked.insert(id.clone()) {
                bob.send_json(json!({"type":"ack","id":id})).await;
            }
        }
        if want.iter().all(|id| acked.contains(id)) || tokio::time::Instant::now() > deadline {
            break;
        }
        all.extend(bob.frames_until_pong().await);
    }
    ledger.connection(&all);
    eprintln!("window: {}", ledger.summary());
    assert_eq!(ledger.lost(), 0, "{}", ledger.summary());
    assert_eq!(ledger.duplicates(), 0, "{}", ledger.summary());
}

/// PROTOCOL 7.2: receipts are notifications; one for a sender with no live connection is dropped.
/// Alice's message is delivered, she leaves, bob acks it: when she comes back she gets no late
/// receipt and nothing in her inbox, and the node counted no receipt sent.
#[tokio::test]
async fn a_receipt_for_a_sender_who_left_is_dropped_not_kept() {
    let c = Cluster::start(1).await;
    let metrics = c.node(1).http("/metrics");
    let mut bob = Client::connect(&c.node(1).ws_user("bob"))
        .await
        .manual_ack();
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let ack = alice.send_and_ack("bob", json!("while you are here")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    let msg = bob.expect_type("message").await;
    assert_eq!(msg["id"], ack["id"]);
    alice.close().await;
    wsroute_tests::eventually("alice's route is gone", || async {
        (c.redis.routes_of_user("alice").await == 0).then_some(())
    })
    .await;
    let sent_before = wsroute_tests::metric(&metrics, "wsroute_receipts_total").await;

    // Bob acks; his pong after it says the node has handled the ack (frames of one connection
    // are handled in order), and with it the receipt owed to alice.
    bob.send_json(json!({"type":"ack","id":msg["id"]})).await;
    bob.frames_until_pong().await;

    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let frames = alice.frames_until_pong().await;
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "receipt" && f["type"] != "message"),
        "nothing owed to alice after she left: {frames:?}"
    );
    assert_eq!(
        wsroute_tests::metric(&metrics, "wsroute_receipts_total").await,
        sent_before,
        "no receipt was sent"
    );
}
