//! The mesh's edges, on real nodes: frames near the size limit crossing nodes in batches, and a
//! peer that stops reading (frozen with SIGSTOP) while messages keep coming for it and for others.
//! Each test keeps a ledger of what the clients saw (sent, acked, received) and checks that every
//! message acked `delivered` or `stored` reached its recipient exactly once per connection.
//! Also: every node opens its streams to its peers before the first message needs them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsroute_tests::cluster::{MESH_SECRET, Node, NodeOpts};
use wsroute_tests::router_cli::cli_json;
use wsroute_tests::{Client, Cluster, eventually, metric, patience, poll_until};

/// What one recipient connection read.
#[derive(Default)]
struct Inbox {
    ids: Vec<String>,
}

impl Inbox {
    fn unique(&self) -> HashSet<&str> {
        self.ids.iter().map(String::as_str).collect()
    }

    fn duplicates(&self) -> usize {
        self.ids.len() - self.unique().len()
    }
}

/// 300 messages of 60 KiB (under the 64 KiB frame limit) from a user on node 1 to a user on
/// node 2. Node 2 pauses for a moment (SIGSTOP, well under the mesh timeout) while they are
/// sent, as a busy node does, so that they queue on node 1 and leave in big batches when it
/// reads again: tonic's default 4 MiB decode limit used to fail the stream once a batch grew past
/// it, and most came back `stored` though the recipient was online. Every one must be
/// `delivered`, and received once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_frames_across_nodes_are_all_delivered() {
    const SENDS: usize = 300;
    const SENDERS: usize = 4;
    let c = Cluster::start(2).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let pad = "x".repeat(60 * 1024);
    let mut alices = Vec::new();
    for d in 0..SENDERS {
        alices.push(Client::connect(&c.node(1).ws(&format!("?user=alice&device=d{d}"))).await);
    }
    // Node 1 learns bob's route and opens its stream to node 2.
    let ack = alices[0].send_and_ack("bob", json!("warm-up")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    bob.expect_type("message").await;
    let metrics = c.node(1).http("/metrics");
    let hits = "wsroute_route_cache_hits_total";
    let hits_before = wsroute_tests::metric(&metrics, hits).await;

    c.node(2).freeze();
    let mut senders = Vec::new();
    for (d, mut alice) in alices.into_iter().enumerate() {
        let pad = pad.clone();
        senders.push(tokio::spawn(async move {
            let mut refs = Vec::new();
            for n in (d..SENDS).step_by(SENDERS) {
                let frame = json!({"type":"send","to":"bob","ref":format!("b{n}"),"body":{"n":n,"pad":pad}})
                    .to_string();
                assert!(frame.len() < 65536, "the frame is under the limit");
                alice.send_text(frame).await;
                refs.push(format!("b{n}"));
            }
            (alice, refs)
        }));
    }
    let mut sent = Vec::new();
    for s in senders {
        sent.push(s.await.expect("sender task"));
    }
    // Every send has been resolved (from the cache) and queued for node 2.
    eventually("node 1 queued every message for node 2", || async {
        let hits = wsroute_tests::metric(&metrics, hits).await;
        (hits >= hits_before + SENDS as f64).then_some(())
    })
    .await;
    c.node(2).resume();

    // Bob reads while the acks come back (his socket buffers hold a few frames of this size).
    let reader = tokio::spawn(async move {
        let mut got = Inbox::default();
        let deadline = tokio::time::Instant::now() + patience();
        while got.ids.len() < SENDS {
            match tokio::time::timeout_at(deadline, bob.expect_type("message")).await {
                Ok(f) => got
                    .ids
                    .push(f["id"].as_str().unwrap_or_default().to_owned()),
                Err(_) => break,
            }
        }
        got
    });
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut acked = HashSet::new();
    for (mut alice, refs) in sent {
        for r in &refs {
            let ack = alice.expect_ack(r).await;
            let status = ack["status"].as_str().unwrap_or_default().to_owned();
            *statuses.entry(status.clone()).or_default() += 1;
            if status == "delivered" || status == "stored" {
                acked.insert(ack["id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    let got = reader.await.expect("reader task");
    let unique = got.unique();
    let lost = acked
        .iter()
        .filter(|id| !unique.contains(id.as_str()))
        .count();
    let delivered = statuses.get("delivered").copied().unwrap_or(0);
    println!(
        "LEDGER big frames: sent={SENDS} delivered={delivered} stored={} rejected={} received={} (unique {}) lost={lost} duplicates={}",
        statuses.get("stored").copied().unwrap_or(0),
        statuses.get("rejected").copied().unwrap_or(0),
        got.ids.len(),
        unique.len(),
        got.duplicates(),
    );
    assert_eq!(delivered, SENDS, "every ack delivered: {statuses:?}");
    assert_eq!(lost, 0);
    assert_eq!(got.duplicates(), 0);
    assert_eq!(unique.len(), SENDS);
    // The node really batched (else this would prove nothing about batches).
    let batches = wsroute_tests::metric(&metrics, "wsroute_mesh_batch_size_count").await;
    let batched = wsroute_tests::metric(&metrics, "wsroute_mesh_batch_size_sum").await;
    println!("node1 sent {batched} messages in {batches} mesh batches");
    assert!(
        batches < SENDS as f64,
        "{batches} mesh batches for {SENDS} messages: nothing was batched"
    );
}

/// One send as the sender's connection saw it.
struct SendRecord {
    to: String,
    at: Instant,
    /// The ack: status, message id, how long it took.
    ack: Option<(String, String, Duration)>,
}

/// A user on node 1 sends to two users on node 2 and two on node 3 while node 2 is frozen
/// (SIGSTOP) for 10 s: its sockets stay open, it reads nothing. Sends to node 3 stay `delivered`
/// at once; sends to node 2 are answered (`stored` or `delivered`, never `rejected`) within about
/// one mesh call timeout, well inside the send deadline: no message waits behind the frozen
/// peer's failures one batch after another (it took twice the call timeout before, and longer
/// under more load). After SIGCONT every message acked `delivered`
/// or `stored` reaches its recipient, once per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_holds_no_send_past_its_deadline_and_blocks_no_other_peer() {
    use std::sync::{Arc, Mutex};
    use wsroute_client::{ConnectOptions, Connection};

    const FREEZE: Duration = Duration::from_secs(10);
    /// The mesh's call timeout (3 s), plus room to store the message and answer; the server's
    /// send deadline (8 s) is further still.
    const ANSWERED_WITHIN: Duration = Duration::from_secs(5);
    /// Far under the mesh's call timeout (3 s): a send to node 3 that waited on node 2 shows.
    const PROMPT: Duration = Duration::from_millis(1500);

    let c = Cluster::start(3).await;
    let recipients = [("b1", 2), ("b2", 2), ("c1", 3), ("c2", 3)];
    // Each recipient reads (and acks) everything that comes, into a shared list.
    let mut received: HashMap<&str, Arc<Mutex<Vec<String>>>> = HashMap::new();
    let mut readers = Vec::new();
    for (user, node) in recipients {
        let mut client = Client::connect(&c.node(node).ws_user(user)).await;
        let got = Arc::new(Mutex::new(Vec::new()));
        received.insert(user, got.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let m = client.expect_type("message").await;
                let id = m["id"].as_str().unwrap_or_default().to_owned();
                got.lock().expect("lock").push(id);
            }
        }));
    }

    // Alice writes from one task and reads her acks in another.
    let (mut tx, mut rx) = Connection::connect(&ConnectOptions::new(c.node(1).ws_user("alice")))
        .await
        .expect("alice connects")
        .split();
    let sends: Arc<Mutex<HashMap<String, SendRecord>>> = Arc::default();
    let acks = {
        let sends = sends.clone();
        tokio::spawn(async move {
            while let Ok(t) = rx.recv_text().await {
                let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                if v["type"] != "ack" {
                    continue;
                }
                let mut sends = sends.lock().expect("lock");
                if let Some(s) = sends.get_mut(v["ref"].as_str().unwrap_or_default()) {
                    let status = v["status"].as_str().unwrap_or_default().to_owned();
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    s.ack = Some((status, id, s.at.elapsed()));
                }
            }
        })
    };
    let mut n = 0;
    let mut send = |to: &'static str| {
        n += 1;
        let r = format!("s{n}");
        sends.lock().expect("lock").insert(
            r.clone(),
            SendRecord {
                to: to.to_owned(),
                at: Instant::now(),
                ack: None,
            },
        );
        json!({"type":"send","to":to,"ref":r,"body":{"n":n}}).to_string()
    };
    // Before the freeze: every route cached, every stream open.
    for (user, _) in recipients {
        tx.send_text(send(user)).await.expect("send");
    }
    let all_answered = |sends: &Mutex<HashMap<String, SendRecord>>| {
        sends
            .lock()
            .expect("lock")
            .values()
            .all(|s| s.ack.is_some())
    };
    eventually("the first sends answered", || async {
        all_answered(&sends).then_some(())
    })
    .await;

    c.node(2).freeze();
    let frozen = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut k = 0;
    // The load's duration, not a synchronisation: one send to each side every 100 ms.
    while frozen.elapsed() < FREEZE {
        tick.tick().await;
        k += 1;
        for user in [
            if k % 2 == 0 { "b1" } else { "b2" },
            if k % 2 == 0 { "c1" } else { "c2" },
        ] {
            tx.send_text(send(user)).await.expect("send");
        }
    }
    // Every send made during the freeze is answered while node 2 is still frozen.
    let answered =
        wsroute_tests::poll_until(ANSWERED_WITHIN, || async { all_answered(&sends) }).await;
    c.node(2).resume();
    let thawed = Instant::now();

    // Every message acked delivered or stored reaches its recipient.
    let missing = || {
        let sends = sends.lock().expect("lock");
        sends
            .values()
            .filter_map(|s| s.ack.as_ref().map(|a| (s, a)))
            .filter(|(_, (status, _, _))| status == "delivered" || status == "stored")
            .filter(|(s, (_, id, _))| !received[s.to.as_str()].lock().expect("lock").contains(id))
            .count()
    };
    wsroute_tests::poll_until(patience(), || async { missing() == 0 }).await;
    let caught_up = thawed.elapsed();
    for r in readers {
        r.abort();
    }
    acks.abort();

    let sends = sends.lock().expect("lock");
    let mut failures = Vec::new();
    for (side, users) in [("node2", ["b1", "b2"]), ("node3", ["c1", "c2"])] {
        let mine: Vec<&SendRecord> = sends
            .values()
            .filter(|s| users.contains(&s.to.as_str()))
            .collect();
        let count = |st: &str| {
            mine.iter()
                .filter(|s| s.ack.as_ref().is_some_and(|a| a.0 == st))
                .count()
        };
        let slowest = mine
            .iter()
            .filter_map(|s| s.ack.as_ref().map(|a| a.2))
            .max()
            .unwrap_or_default();
        let unanswered = mine.iter().filter(|s| s.ack.is_none()).count();
        for user in users {
            let got = received[user].lock().expect("lock");
            let unique: HashSet<&String> = got.iter().collect();
            let acked: Vec<&String> = mine
                .iter()
                .filter(|s| s.to == user)
                .filter_map(|s| s.ack.as_ref())
                .filter(|a| a.0 == "delivered" || a.0 == "stored")
                .map(|a| &a.1)
                .collect();
            let lost = acked.iter().filter(|id| !unique.contains(*id)).count();
            println!(
                "LEDGER frozen peer, {user} on {side}: acked delivered/stored={} received={} (unique {}) lost={lost} duplicates={}",
                acked.len(),
                got.len(),
                unique.len(),
                got.len() - unique.len()
            );
            if lost > 0 || got.len() != unique.len() {
                failures.push(format!(
                    "{user}: lost {lost}, duplicates {}",
                    got.len() - unique.len()
                ));
            }
        }
        println!(
            "LEDGER frozen peer, sends to {side}: sent={} delivered={} stored={} rejected={} unanswered={unanswered} slowest ack={slowest:?}",
            mine.len(),
            count("delivered"),
            count("stored"),
            count("rejected"),
        );
        if count("rejected") > 0 || unanswered > 0 {
            failures.push(format!(
                "{side}: {} rejected, {unanswered} unanswered",
                count("rejected")
            ));
        }
        let limit = if side == "node3" {
            PROMPT
        } else {
            ANSWERED_WITHIN
        };
        if slowest > limit {
            failures.push(format!("{side}: slowest ack {slowest:?}, over {limit:?}"));
        }
        if side == "node3" && count("delivered") != mine.len() {
            failures.push("node3: a send was not delivered".into());
        }
    }
    println!(
        "all answered during the freeze: {answered}; recipients caught up {caught_up:?} after SIGCONT"
    );
    assert!(answered, "sends left unanswered while node 2 was frozen");
    assert!(failures.is_empty(), "{failures:?}");
}

/// Every node opens a stream to each peer before any message needs one (a first message would
/// otherwise wait for it, and under load be stored instead of delivered), and a node that joins
/// later is met by the others within a few seconds. No client connects until the streams are
/// up; then a first message crosses and is `delivered`.
#[tokio::test]
async fn every_node_opens_its_mesh_streams_before_the_first_message() {
    let mut c = Cluster::start(2).await;
    let url = c.redis.url();
    let streams_up = |node: &'static str, peers: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let v = cli_json(&url, &["stats", node, "--mesh-secret", MESH_SECRET]);
            let up: Vec<String> = v["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["stream_up"] == true)
                .filter_map(|p| p["node"].as_str().map(str::to_owned))
                .collect();
            peers.iter().all(|p| up.iter().any(|u| u == p)).then_some(v)
        }
    };
    eventually("node1's stream to node2 opens without traffic", || {
        streams_up("node1", &["node2"])
    })
    .await;
    eventually("node2's stream to node1 opens without traffic", || {
        streams_up("node2", &["node1"])
    })
    .await;
    let third = Node::start(&c.redis, NodeOpts::new("node3")).await;
    c.nodes.push(third);
    for (node, peers) in [
        ("node1", &["node2", "node3"][..]),
        ("node2", &["node1", "node3"][..]),
        ("node3", &["node1", "node2"][..]),
    ] {
        eventually(&format!("{node} meets every peer"), || {
            streams_up(node, peers)
        })
        .await;
    }
    let mut bob = Client::connect(&c.node(3).ws_user("bob")).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let ack = alice.send_and_ack("bob", json!("first")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.expect_type("message").await["body"], "first");
}

/// The peers a node's `stats` lists (its mesh workers), by node id.
fn listed_peers(redis_url: &str, node: &str) -> Vec<String> {
    let v = cli_json(redis_url, &["stats", node, "--mesh-secret", MESH_SECRET]);
    v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["node"].as_str().map(str::to_owned))
        .collect()
}

/// A node that leaves is forgotten by its peers: their mesh workers for it end and `stats` stops
/// listing it, whether it stopped gracefully (it says so as it leaves) or was killed (the node
/// that sweeps its expired lease says so). Before, every node kept an idle worker (and a `suspect`
/// line in `stats`) for every node that ever left, one more per restart of a node whose id is not
/// reused. A node that comes back under the same id is met again and messages cross to it.
/// The three start together: each meets the other two without traffic (two nodes that listed
/// the table before either was in it used to miss each other: 2 runs in 8 of this file).
#[tokio::test]
async fn a_node_that_leaves_is_forgotten_by_its_peers() {
    let mut c = Cluster::start(3).await;
    let url = c.redis.url();
    let lists =
        |node: &'static str, want: &'static [&'static str], not: &'static [&'static str]| {
            let url = url.clone();
            async move {
                let peers = listed_peers(&url, node);
                (want.iter().all(|w| peers.iter().any(|p| p == w))
                    && not.iter().all(|n| peers.iter().all(|p| p != n)))
                .then_some(peers)
            }
        };
    for (node, peers) in [
        ("node1", &["node2", "node3"][..]),
        ("node2", &["node1", "node3"][..]),
    ] {
        eventually(&format!("{node} meets every peer"), || {
            lists(node, peers, &[])
        })
        .await;
    }

    // A graceful stop: both peers forget node3.
    c.nodes[2].terminate();
    let status = c.nodes[2].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "node3 exits cleanly: {status:?}");
    eventually("node1 forgets node3 after it stopped", || {
        lists("node1", &["node2"], &["node3"])
    })
    .await;
    eventually("node2 forgets node3 after it stopped", || {
        lists("node2", &["node1"], &["node3"])
    })
    .await;
    let gone = metric(
        &c.node(1).http("/metrics"),
        "wsroute_route_events_total{kind=\"node_gone\"}",
    )
    .await;
    assert!(gone >= 1.0, "node1 counted the node_gone event: {gone}");

    // node3 comes back under its id: met again, and a message crosses to it.
    c.nodes[2].restart(&c.redis).await;
    eventually("node1 meets node3 again", || {
        lists("node1", &["node2", "node3"], &[])
    })
    .await;
    let mut bob = Client::connect(&c.node(3).ws_user("bob")).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let ack = alice.send_and_ack("bob", json!("again")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.expect_type("message").await["body"], "again");

    // A kill: the lease runs out (10 s), a sweep removes node2 and tells the others.
    c.nodes[1].kill();
    let forgotten = poll_until(Duration::from_secs(10) + patience(), || {
        let url = url.clone();
        async move { listed_peers(&url, "node1").iter().all(|p| p != "node2") }
    })
    .await;
    assert!(
        forgotten,
        "node1 still lists the killed node2 after its lease ran out: {:?}",
        listed_peers(&url, "node1")
    );
}
