//! wsroute-client's `Client` against a real cluster (issue #14, point 1): it reconnects through
//! `/gateway` when its node is killed and keeps receiving; its outbox sends again what had no
//! receipt when the one node holding both ends dies (kill -9), with 0 lost and 0 shown twice;
//! receipts (`received`, `read`) reach the sender's client; it follows a draining node's
//! `reconnect`; it refreshes its token through the callback before the token expires; a
//! reconnect refused `429` (the user's limit, filled by its own route on a dead node) is tried
//! again rather than stopping the client.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use wsroute_client::{
    AckStatus, Client, ClientConfig, Event, Events, Message, ReceiptStatus, TokenSource,
};
use wsroute_tests::cluster::JWT_SECRET;
use wsroute_tests::ledger::StreamLedger;
use wsroute_tests::{Cluster, eventually, patience, token};

/// Streams here send faster than the default flood limit (200 a second).
fn fast_senders(extra: &mut Vec<String>) {
    extra.extend(["--max-msgs-per-sec".into(), "100000".into()]);
}

/// Next event within patience.
async fn next_event(events: &mut Events, who: &str) -> Event {
    match tokio::time::timeout(patience(), events.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("{who}: the client stopped"),
        Err(_) => panic!("{who}: no event within {:?}", patience()),
    }
}

/// Reads events until `done` holds for the messages taken so far; returns every event read.
async fn events_until(
    events: &mut Events,
    who: &str,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut got = Vec::new();
    while !done(&got) {
        got.push(next_event(events, who).await);
    }
    got
}

fn messages(events: &[Event]) -> Vec<&Message> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Waits for the client's next `Connected` and returns the node it is on.
async fn reconnected(events: &mut Events, who: &str) -> String {
    let got = events_until(events, who, |e| {
        e.last().is_some_and(|e| matches!(e, Event::Connected(_)))
    })
    .await;
    match got.last() {
        Some(Event::Connected(h)) => h.node.clone(),
        _ => unreachable!("events_until stops at a Connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_through_the_gateway_when_its_node_is_killed_and_keeps_receiving() {
    let mut c = Cluster::start(3).await;
    let gateways: Vec<String> = (1..=3).map(|i| c.node(i).http("")).collect();
    let (bob, mut bob_events) = Client::connect(ClientConfig::gateways(gateways).dev_user("bob"))
        .await
        .expect("bob connects through the gateway");
    let first = bob.hello().expect("connected").node;
    let k: usize = first[4..].parse().expect("nodes are named nodeN");
    let other = if k == 1 { 2 } else { 1 };
    let (alice, _alice_events) =
        Client::connect(ClientConfig::url(c.node(other).ws("")).dev_user("alice"))
            .await
            .expect("alice connects");
    assert!(matches!(
        next_event(&mut bob_events, "bob").await,
        Event::Connected(_)
    ));

    let mut sent = Vec::new();
    for n in 0..10 {
        sent.push(alice.send("bob", json!({"n": n})).expect("room"));
    }
    let got = events_until(&mut bob_events, "bob", |e| messages(e).len() >= 10).await;
    assert_eq!(messages(&got).len(), 10);

    c.nodes[k - 1].kill();
    let now_on = reconnected(&mut bob_events, "bob").await;
    println!("bob was on {first}, killed; the gateway sent him to {now_on}");
    assert_ne!(now_on, first, "reconnected to a live node");

    for n in 10..20 {
        sent.push(alice.send("bob", json!({"n": n})).expect("room"));
    }
    let got = events_until(&mut bob_events, "bob", |e| messages(e).len() >= 10).await;
    let ns: Vec<u64> = messages(&got)
        .iter()
        .filter_map(|m| m.body["n"].as_u64())
        .collect();
    assert_eq!(
        ns,
        (10..20).collect::<Vec<u64>>(),
        "every later message, in order"
    );
    // Every send is answered honestly: `delivered`, or `stored` where the sender's node could
    // not hand it to bob's node in time (a stale cached route to the killed node, or, under a
    // loaded machine, a mesh stream still opening) and it reached bob from his inbox, in order,
    // as the lists above show. A rejection or a lost ack fails the test.
    let (mut delivered, mut stored) = (0, 0);
    for (i, p) in sent.into_iter().enumerate() {
        let ack = p.await.expect("acked");
        match ack.status {
            AckStatus::Delivered => delivered += 1,
            AckStatus::Stored => stored += 1,
            _ => panic!("send {i}: {ack:?}"),
        }
    }
    println!("acks: {delivered} delivered, {stored} stored, 20 received in order");
    alice.close().await;
    bob.close().await;
}

/// A cluster of one node, restarted: both clients come back to it on their own, and a send
/// made while it was down waits in the outbox and is delivered after the restart.
#[tokio::test]
async fn reconnects_to_its_node_after_a_restart_and_sends_what_was_queued_meanwhile() {
    let mut c = Cluster::start(1).await;
    let url = c.node(1).ws("");
    let (alice, mut alice_events) =
        Client::connect(ClientConfig::url(url.as_str()).dev_user("alice"))
            .await
            .expect("alice connects");
    let (_bob, mut bob_events) = Client::connect(ClientConfig::url(url.as_str()).dev_user("bob"))
        .await
        .expect("bob connects");
    let first = alice.hello().expect("up").conn_id;
    assert!(matches!(
        next_event(&mut alice_events, "alice").await,
        Event::Connected(_)
    ));
    assert!(matches!(
        next_event(&mut bob_events, "bob").await,
        Event::Connected(_)
    ));

    c.nodes[0].kill();
    assert!(matches!(
        next_event(&mut alice_events, "alice").await,
        Event::Disconnected { .. }
    ));
    let queued = alice
        .send("bob", json!("sent while the node was down"))
        .expect("room");
    assert_eq!(alice.unconfirmed(), 1);
    c.nodes[0].restart(&c.redis).await;

    reconnected(&mut alice_events, "alice").await;
    reconnected(&mut bob_events, "bob").await;
    assert_ne!(
        alice.hello().expect("up").conn_id,
        first,
        "a new connection"
    );
    let ack = queued.await.expect("acked after the restart");
    assert!(
        matches!(ack.status, AckStatus::Delivered | AckStatus::Stored),
        "{ack:?}"
    );
    let got = events_until(&mut bob_events, "bob", |e| !messages(e).is_empty()).await;
    let got = messages(&got);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, json!("sent while the node was down"));
    assert_eq!(Some(&got[0].id), ack.id.as_ref());
}

/// The "node holding both ends" scenario: alice and bob both on node 1, bob's app slow (its
/// client takes 10 events ahead and acks only what the app was handed), 100 sends all acked
/// `delivered`, then kill -9 of node 1. Only alice's outbox still holds the ones bob's client
/// never acked; both clients reconnect elsewhere, the outbox sends them again with their cids,
/// and bob's app gets every one of the 100 exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_resends_what_had_no_receipt_when_the_node_holding_both_ends_dies() {
    const N: usize = 100;
    let mut c = Cluster::start_with(3, |o| fast_senders(&mut o.extra)).await;
    let ws = |i: usize| c.node(i).ws("");
    let (alice, mut alice_events) =
        Client::connect(ClientConfig::urls([ws(1), ws(2), ws(3)]).dev_user("alice"))
            .await
            .expect("alice connects");
    let (bob, mut bob_events) = Client::connect(
        ClientConfig::urls([ws(1), ws(3), ws(2)])
            .dev_user("bob")
            .events_capacity(10),
    )
    .await
    .expect("bob connects");
    assert_eq!(alice.hello().expect("up").node, "node1");
    assert_eq!(bob.hello().expect("up").node, "node1");

    let mut ledger = StreamLedger::default();
    let mut pending = Vec::new();
    for n in 0..N {
        pending.push(alice.send("bob", json!({"n": n})).expect("room"));
        ledger.sent(n);
    }
    for (n, p) in pending.into_iter().enumerate() {
        let ack = p.await.expect("acked before the kill");
        ledger.ack(n, serde_json::to_value(&ack).expect("an ack serializes"));
    }
    assert_eq!(ledger.ids("delivered").len(), N, "{}", ledger.summary());
    let unconfirmed = alice.unconfirmed();
    println!("[both ends killed] alice's outbox at the kill: {unconfirmed} of {N} unconfirmed");
    assert!(
        unconfirmed >= N - 20,
        "bob's client took at most ~11 ahead of his app, so most had no receipt: {unconfirmed}"
    );

    c.nodes[0].kill();
    // Bob's app now reads: everything, once, wherever the two reconnect.
    let promised = ledger.promised();
    let got = events_until(&mut bob_events, "bob", |e| {
        let ids: HashSet<&str> = messages(e).iter().map(|m| m.id.as_str()).collect();
        promised.iter().all(|id| ids.contains(id.as_str()))
    })
    .await;
    let mut frames: Vec<Value> = got
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => {
                Some(json!({"type":"message","id":m.id,"from":m.from,"body":m.body}))
            }
            _ => None,
        })
        .collect();
    // Every resend confirmed; then whatever else the app was handed is counted too (a copy
    // shown twice would be a duplicate in the ledger).
    eventually(
        "alice's outbox empties (every resend confirmed)",
        || async { (alice.unconfirmed() == 0).then_some(()) },
    )
    .await;
    while let Some(e) = bob_events.try_recv() {
        if let Event::Message(m) = e {
            frames.push(json!({"type":"message","id":m.id,"from":m.from,"body":m.body}));
        }
    }
    ledger.connection("alice", &frames);
    eprintln!(
        "[node holding both ends killed, client library] {}",
        ledger.summary()
    );
    let alice_node = alice.hello().map(|h| h.node).unwrap_or_default();
    let bob_node = bob.hello().map(|h| h.node).unwrap_or_default();
    println!("alice reconnected to {alice_node}, bob to {bob_node}");
    assert_ne!(alice_node, "node1");
    assert_ne!(bob_node, "node1");
    ledger.assert_kept("node holding both ends killed");
    assert_eq!(ledger.lost(), 0);
    assert_eq!(ledger.duplicates(), 0);
    assert_eq!(ledger.received_unique().len(), N, "{}", ledger.summary());
    assert_eq!(frames.len(), N, "the app was shown each message once");
    // Alice heard of it: a disconnect, a new connection, receipts for the resent ones.
    let seen = events_until(&mut alice_events, "alice", |e| {
        e.iter()
            .any(|e| matches!(e, Event::Connected(h) if h.node != "node1"))
    })
    .await;
    assert!(seen.iter().any(|e| matches!(e, Event::Disconnected { .. })));
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn receipts_received_and_read_reach_the_senders_client() {
    let c = Cluster::start(2).await;
    let (alice, mut alice_events) =
        Client::connect(ClientConfig::url(c.node(1).ws("")).dev_user("alice"))
            .await
            .expect("alice connects");
    let (bob, mut bob_events) = Client::connect(
        ClientConfig::url(c.node(2).ws(""))
            .dev_user("bob")
            .device("phone"),
    )
    .await
    .expect("bob connects");
    let mut ids = Vec::new();
    for n in 0..5 {
        let ack = alice
            .send("bob", json!({"n": n}))
            .expect("room")
            .await
            .expect("acked");
        assert_eq!(ack.status, AckStatus::Delivered);
        ids.push(ack.id.expect("a delivered ack has an id"));
    }
    let got = events_until(&mut bob_events, "bob", |e| messages(e).len() >= 5).await;
    let read: Vec<String> = messages(&got)
        .iter()
        .take(2)
        .map(|m| m.id.clone())
        .collect();
    for id in &read {
        bob.read(id).await.expect("read sent");
    }
    let receipts = events_until(&mut alice_events, "alice", |e| {
        let count = |s: ReceiptStatus| {
            e.iter()
                .filter(|e| matches!(e, Event::Receipt(r) if r.status == s))
                .count()
        };
        count(ReceiptStatus::Received) >= 5 && count(ReceiptStatus::Read) >= 2
    })
    .await;
    let of = |s: ReceiptStatus| -> HashSet<String> {
        receipts
            .iter()
            .filter_map(|e| match e {
                Event::Receipt(r) if r.status == s => {
                    assert_eq!(r.to, "bob");
                    Some(r.id.clone())
                }
                _ => None,
            })
            .collect()
    };
    println!(
        "alice's receipts: received {}, read {}",
        of(ReceiptStatus::Received).len(),
        of(ReceiptStatus::Read).len()
    );
    assert_eq!(of(ReceiptStatus::Received), ids.iter().cloned().collect());
    assert_eq!(of(ReceiptStatus::Read), read.into_iter().collect());
    assert_eq!(alice.unconfirmed(), 0, "receipts empty the outbox");
}

#[tokio::test]
async fn follows_a_draining_nodes_reconnect_to_another_node() {
    let mut c = Cluster::start(2).await;
    // Bob knows node 1 only: reaching node 2 means he followed the reconnect.
    let (_bob, mut bob_events) =
        Client::connect(ClientConfig::url(c.node(1).ws("")).dev_user("bob"))
            .await
            .expect("bob connects");
    assert!(matches!(
        next_event(&mut bob_events, "bob").await,
        Event::Connected(h) if h.node == "node1"
    ));
    c.node(1).terminate();
    let got = events_until(&mut bob_events, "bob", |e| {
        e.last().is_some_and(|e| matches!(e, Event::Connected(_)))
    })
    .await;
    let close = got.iter().find_map(|e| match e {
        Event::Disconnected { close } => Some(close.clone()),
        _ => None,
    });
    println!("bob's events during the drain: {got:?}");
    assert_eq!(
        close.flatten().map(|c| c.code),
        Some(1001),
        "the drain closes with 1001"
    );
    assert!(matches!(got.last(), Some(Event::Connected(h)) if h.node == "node2"));
    let status = c.nodes[0].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");

    let (alice, _a) = Client::connect(ClientConfig::url(c.node(2).ws("")).dev_user("alice"))
        .await
        .expect("alice connects");
    let ack = alice
        .send("bob", json!("after the drain"))
        .expect("room")
        .await
        .expect("acked");
    assert_eq!(ack.status, AckStatus::Delivered);
    let got = events_until(&mut bob_events, "bob", |e| !messages(e).is_empty()).await;
    assert_eq!(messages(&got)[0].body, json!("after the drain"));
}

#[tokio::test]
async fn the_token_callback_refreshes_the_session_before_its_token_expires() {
    const LIFETIME: i64 = 4;
    let c = Cluster::start_with(1, |o| {
        o.dev_auth = false;
        o.extra = vec!["--jwt-leeway-secs".into(), "0".into()];
    })
    .await;
    let minted = Arc::new(AtomicUsize::new(0));
    let source = {
        let minted = Arc::clone(&minted);
        TokenSource::new(move || {
            minted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(token(JWT_SECRET, "alice", LIFETIME)) }
        })
    };
    let started = std::time::Instant::now();
    let (alice, mut events) =
        Client::connect(ClientConfig::url(c.node(1).ws("")).token_source(source))
            .await
            .expect("alice connects with a minted token");
    let conn_id = alice.hello().expect("up").conn_id;
    // Past three lifetimes of one token, on one connection: each refresh came before expiry.
    let got = events_until(&mut events, "alice", |e| {
        e.iter()
            .filter(|e| matches!(e, Event::Refreshed { .. }))
            .count()
            >= 3
    })
    .await;
    let lived = started.elapsed();
    println!(
        "tokens minted: {}, refreshed {} times over {lived:?}; events {got:?}",
        minted.load(Ordering::SeqCst),
        got.iter()
            .filter(|e| matches!(e, Event::Refreshed { .. }))
            .count()
    );
    assert!(
        !got.iter().any(|e| matches!(e, Event::Disconnected { .. })),
        "the session never ended: {got:?}"
    );
    assert!(lived > Duration::from_secs(LIFETIME as u64), "{lived:?}");
    assert_eq!(
        alice.hello().expect("up").conn_id,
        conn_id,
        "the same connection"
    );
    assert!(
        minted.load(Ordering::SeqCst) >= 4,
        "one token per connect and per refresh"
    );
    let ack = alice
        .send("alice", json!("still here"))
        .expect("room")
        .await
        .expect("acked");
    assert_eq!(ack.status, AckStatus::Delivered);
}

/// A user at `--max-conns-per-user` only because its own previous connection sat on a node that
/// died: that route counts until the cluster sweeps the dead node's routes, so the reconnect is
/// refused `429` for a while. The client backs off and tries again instead of stopping for good,
/// and what the app sent meanwhile goes out once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_refused_by_the_connection_limit_is_tried_again() {
    let mut c = Cluster::start_with(2, |o| {
        o.extra = vec!["--max-conns-per-user".into(), "2".into()];
    })
    .await;
    let gateways: Vec<String> = (1..=2).map(|i| c.node(i).http("")).collect();
    let (bob, mut bob_events) = Client::connect(
        ClientConfig::gateways(gateways)
            .dev_user("bob")
            .backoff(Duration::from_millis(100), Duration::from_millis(500)),
    )
    .await
    .expect("bob connects through the gateway");
    assert!(matches!(
        next_event(&mut bob_events, "bob").await,
        Event::Connected(_)
    ));
    let first = bob.hello().expect("connected").node;
    let k: usize = first[4..].parse().expect("nodes are named nodeN");
    let other = 3 - k;
    // Bob's second device holds his other connection, on the node that stays up.
    let _second = wsroute_tests::Client::connect(&c.node(other).ws_user("bob")).await;
    let mut alice = wsroute_tests::Client::connect(&c.node(other).ws_user("alice")).await;

    c.nodes[k - 1].kill();
    assert!(matches!(
        next_event(&mut bob_events, "bob").await,
        Event::Disconnected { .. }
    ));
    // The dead node's route still counts: a connection for bob is refused for now.
    let refused = match wsroute_tests::Client::try_connect(&c.node(other).ws_user("bob")).await {
        Ok(_) => panic!("the dead node's route no longer counted; nothing was tested"),
        Err(r) => r,
    };
    assert_eq!(refused.status, 429, "{refused:?}");
    let queued = bob
        .send("alice", json!("sent while refused"))
        .expect("room");

    let got = events_until(&mut bob_events, "bob", |e| {
        e.last()
            .is_some_and(|e| matches!(e, Event::Connected(_) | Event::Stopped { .. }))
    })
    .await;
    println!("bob's events after the kill: {got:?}");
    assert!(
        matches!(got.last(), Some(Event::Connected(h)) if h.node == format!("node{other}")),
        "bob is back, on the node that stayed up"
    );
    let ack = queued.await.expect("acked once bob is back");
    assert_eq!(ack.status, AckStatus::Delivered, "{ack:?}");
    let m = alice.expect_type("message").await;
    assert_eq!(m["body"], json!("sent while refused"));
    assert_eq!(m["from"], "bob");
}
