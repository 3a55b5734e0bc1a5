//! The chaos suite: traffic between users spread over three nodes while something breaks, then
//! an accounting of what every client saw. The promise checked each time: every message acked
//! `delivered` or `stored` reaches its recipient, no connection sees an id twice, nothing
//! arrives that was never sent. Loads are bounded in count and time, on loopback only.

use std::time::{Duration, Instant};

use wsroute_tests::traffic::{Endpoint, Traffic, TrafficOpts};
use wsroute_tests::{Cluster, eventually};

fn endpoints(c: &Cluster) -> Vec<Endpoint> {
    c.nodes
        .iter()
        .map(|n| Endpoint {
            http: n.http(""),
            ws: n.ws(""),
        })
        .collect()
}

/// Lets traffic run for a while (this is the load's duration, not a synchronisation).
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

async fn routes_of(c: &Cluster, node: &str) -> usize {
    c.redis.routes_on_node(node).await
}

/// Waits until the route table lists exactly `users` connections over the three nodes.
async fn all_routes_back(c: &Cluster, users: usize) {
    eventually("every route back in Redis", || async {
        let mut total = 0;
        for n in ["node1", "node2", "node3"] {
            total += routes_of(c, n).await;
        }
        (total == users).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_node_mid_traffic() {
    let mut c = Cluster::start(3).await;
    let t = Traffic::start(endpoints(&c), TrafficOpts::default()).await;
    run_for(Duration::from_secs(2)).await;
    assert!(routes_of(&c, "node2").await > 0);
    c.nodes[1].kill();
    let killed = Instant::now();
    // Its routes are removed within 15 s of its last lease renewal.
    eventually("node2's routes removed", || async {
        (routes_of(&c, "node2").await == 0).then_some(())
    })
    .await;
    let cleaned = killed.elapsed();
    println!("node2 routes removed {cleaned:?} after kill -9");
    assert!(cleaned < Duration::from_secs(15), "{cleaned:?}");
    run_for(Duration::from_secs(2)).await;
    let a = t.finish().await;
    a.assert_kept("kill -9 node2");
    assert!(a.delivered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_empty_mid_traffic() {
    let mut c = Cluster::start(3).await;
    let t = Traffic::start(endpoints(&c), TrafficOpts::default()).await;
    run_for(Duration::from_secs(2)).await;
    let users = t.users.len();
    c.redis.stop();
    c.redis.start_again().await;
    let restarted = Instant::now();
    all_routes_back(&c, users).await;
    let back = restarted.elapsed();
    println!("all {users} routes back {back:?} after Redis restarted empty");
    assert!(back < Duration::from_secs(15), "{back:?}");
    run_for(Duration::from_secs(2)).await;
    let a = t.finish().await;
    a.assert_kept("redis restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_for_5_seconds() {
    let mut c = Cluster::start(3).await;
    let t = Traffic::start(endpoints(&c), TrafficOpts::default()).await;
    run_for(Duration::from_secs(2)).await;
    c.redis.stop();
    run_for(Duration::from_secs(5)).await;
    // Cached routes keep working while Redis is away: readiness says the truth meanwhile.
    let r = reqwest::get(c.node(1).http("/readyz")).await.expect("http");
    assert_eq!(r.status(), 503);
    c.redis.start_again().await;
    all_routes_back(&c, t.users.len()).await;
    run_for(Duration::from_secs(2)).await;
    let a = t.finish().await;
    a.assert_kept("redis away 5 s");
    // What could not be decided while Redis was away was rejected as `unavailable`, never
    // anything else.
    assert!(
        a.rejections.iter().all(|(code, _)| code == "unavailable"),
        "{:?}",
        a.rejections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_one_node_then_rolling_restart_under_traffic() {
    let mut c = Cluster::start(3).await;
    let t = Traffic::start(endpoints(&c), TrafficOpts::default()).await;
    run_for(Duration::from_secs(1)).await;

    c.node(2).terminate();
    let status = c.nodes[1].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "drained node exit: {status}");
    assert_eq!(routes_of(&c, "node2").await, 0);
    let redis = &c.redis;
    c.nodes[1].restart(redis).await;
    run_for(Duration::from_secs(1)).await;

    for i in 0..3 {
        c.nodes[i].terminate();
        let status = c.nodes[i].wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "node{} exit: {status}", i + 1);
        c.nodes[i].restart(&c.redis).await;
        run_for(Duration::from_millis(500)).await;
    }
    run_for(Duration::from_secs(1)).await;
    let a = t.finish().await;
    a.assert_kept("drain + rolling restart");
    assert_eq!(a.rejected, 0, "a drain must not reject anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_dropping_tcp_without_a_close_frame() {
    let c = Cluster::start(3).await;
    let opts = TrafficOpts {
        abrupt_drop_every: Some(7),
        ..TrafficOpts::default()
    };
    let t = Traffic::start(endpoints(&c), opts).await;
    run_for(Duration::from_secs(4)).await;
    let a = t.finish().await;
    a.assert_kept("abrupt TCP drops");
    assert!(a.connects > 24, "the users did reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_while_others_flood_it() {
    use serde_json::json;
    use std::collections::HashSet;
    use wsroute_client::{ConnError, ConnectOptions, Connection};
    use wsroute_tests::Client;

    // Room in the sloth's inbox (and the flooders' quotas) for all the flood can store: this
    // is about evicting a slow consumer, not about the inbox limits (tests/tests/quotas.rs).
    let c = Cluster::start_with(2, |o| {
        o.extra = [
            "--session-queue",
            "64",
            "--inbox-max-bytes",
            "268435456",
            "--max-stored-per-minute",
            "100000",
        ]
        .map(String::from)
        .to_vec();
    })
    .await;
    // The sloth reads its hello, then nothing.
    let mut sloth = Connection::connect(&ConnectOptions::new(c.node(2).ws_user("sloth")))
        .await
        .expect("connects");
    assert_eq!(sloth.hello().user, "sloth");
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let mut floods: Vec<Client> = Vec::new();
    for i in 0..3 {
        floods.push(Client::connect(&c.node(1).ws_user(&format!("flood{i}"))).await);
    }

    // Flood in rounds until the node gives up on the sloth (bounded: at most 4000 messages).
    let pad = "x".repeat(32 * 1024);
    let mut acked: Vec<(String, String)> = Vec::new();
    let metrics = c.node(2).http("/metrics");
    let mut sent = 0;
    while wsroute_tests::metric(&metrics, "wsroute_slow_consumers_total").await < 1.0 {
        assert!(sent < 4000, "no eviction after {sent} messages");
        for f in floods.iter_mut() {
            let mut refs = Vec::new();
            for _ in 0..20 {
                refs.push(f.send_to("sloth", json!({"pad": pad})).await);
                sent += 1;
            }
            for r in refs {
                let ack = f.expect_ack(&r).await;
                let status = ack["status"].as_str().unwrap_or_default().to_owned();
                assert!(status == "delivered" || status == "stored", "{ack}");
                acked.push((ack["id"].as_str().unwrap_or_default().to_owned(), status));
            }
        }
    }
    // Others on the same node are unaffected.
    assert_eq!(
        floods[0].send_and_ack("bob", json!("still here")).await["status"],
        "delivered"
    );
    bob.expect_type("message").await;

    // The sloth wakes up: it reads what reached its socket, then the connection ends.
    let mut first = Vec::new();
    let deadline = tokio::time::Instant::now() + wsroute_tests::patience();
    let mut close_code = None;
    loop {
        let m = tokio::time::timeout_at(deadline, sloth.recv_text())
            .await
            .expect("the evicted connection ends");
        match m {
            Ok(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "message" {
                    first.push(v["id"].as_str().unwrap_or_default().to_owned());
                }
            }
            Err(ConnError::Closed(f)) => {
                close_code = f.map(|f| f.code);
                break;
            }
            Err(_) => break,
        }
    }
    // Then reconnects and gets the rest from its inbox.
    let mut again = Client::connect(&c.node(1).ws_user("sloth")).await;
    let second: Vec<String> = again
        .frames_until_pong()
        .await
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["id"].as_str().unwrap_or_default().to_owned())
        .collect();

    let unique_first: HashSet<&String> = first.iter().collect();
    let unique_second: HashSet<&String> = second.iter().collect();
    assert_eq!(
        unique_first.len(),
        first.len(),
        "an id twice on the first connection"
    );
    assert_eq!(
        unique_second.len(),
        second.len(),
        "an id twice on the second connection"
    );
    let lost: Vec<&(String, String)> = acked
        .iter()
        .filter(|(id, _)| !unique_first.contains(id) && !unique_second.contains(id))
        .collect();
    let stored = acked.iter().filter(|(_, s)| s == "stored").count();
    println!(
        "ACCOUNTING slow consumer: sent={sent} acked={} (stored {stored}) read_before_eviction={} from_inbox={} lost={} close={close_code:?}",
        acked.len(),
        first.len(),
        second.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    if let Some(code) = close_code {
        assert_eq!(code, 1013);
    }
}

/// Looking for dead nodes is one node's job per interval (the `keys::sweep_turn` key), not every
/// node's: otherwise each node reads the node list and every lease every 2 s, and Redis's
/// background load grows with the square of the cluster. With three nodes, about one attempt in
/// three takes the turn and reads the node list; every attempt reading it would mean no turns.
#[tokio::test]
async fn one_node_at_a_time_looks_for_dead_nodes() {
    let c = Cluster::start(3).await;
    let attempts = || async {
        let mut sum = 0.0;
        for n in &c.nodes {
            sum += wsroute_tests::metric(
                &n.http("/metrics"),
                r#"wsroute_redis_operations_total{op="sweep"}"#,
            )
            .await;
        }
        sum
    };
    let tried_before = attempts().await;
    let calls_before = c.redis.command_calls().await;
    // Each node tries every 2 s: wait for fifteen attempts over the three (about 10 s).
    eventually("fifteen sweep attempts", || async {
        (attempts().await >= tried_before + 15.0).then_some(())
    })
    .await;
    let tried = attempts().await - tried_before;
    let calls_after = c.redis.command_calls().await;
    let delta = |cmd: &str| {
        calls_after.get(cmd).copied().unwrap_or(0) - calls_before.get(cmd).copied().unwrap_or(0)
    };
    // Only a sweep with the turn reads the node list (nothing else runs SMEMBERS here).
    let swept = delta("smembers") as f64;
    assert!(swept >= 1.0, "no node took the turn in {tried} attempts");
    assert!(
        swept <= tried * 0.6,
        "{swept} of {tried} sweep attempts read the node list: the nodes do not take turns"
    );
    // And the lease reads are those of the turns only: two other nodes' leases per sweep.
    assert!(
        (delta("exists") as f64) <= swept * 2.0,
        "{} lease reads for {swept} sweeps",
        delta("exists")
    );
}

/// A node cut off from Redis but not from its clients (a partition, in network namespaces):
/// node3 runs in a namespace of its own and reaches Redis over a link that is taken down for
/// 18 s, longer than its 10 s lease, while its clients and peers still reach it. Once its lease
/// runs out the others count it dead and store for its users, so it must not keep them: it turns
/// not ready, sends every client to another node (`reconnect`, close 1001) and takes none until
/// Redis answers; their
/// unacked messages wait for Redis on it, or are held by the senders' nodes. Then it registers
/// again and takes clients. Needs root (network namespaces), as CI has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_but_not_from_its_clients() {
    use serde_json::json;
    use wsroute_tests::netns::NetNs;
    use wsroute_tests::{Client, NodeOpts, RedisServer};

    // Declared first, dropped last: the nodes stop before their namespace goes.
    let ns = NetNs::create();
    let redis = RedisServer::start_also_on(&ns.redis_host()).await;
    let mut opts: Vec<NodeOpts> = ["node1", "node2"]
        .iter()
        .map(|id| NodeOpts {
            host: ns.outside(),
            ..NodeOpts::new(id)
        })
        .collect();
    opts.push(NodeOpts {
        host: ns.inside(),
        prefix: ns.prefix(),
        redis_url: Some(redis.url_via(&ns.redis_host())),
        ..NodeOpts::new("node3")
    });
    let c = Cluster::start_nodes(redis, opts).await;
    let x = c.node(3);
    let t = Traffic::start(endpoints(&c), TrafficOpts::default()).await;
    // A phone on node3 that has read ten messages and acked none yet: five from a user on
    // node1 (held there until node3 confirms them) and five from a user on node3 (held by no
    // other node). Nothing tells node3 to forget them before the cut.
    let mut phone = Client::connect(&x.ws_user("phone")).await.manual_ack();
    let mut near = Client::connect(&x.ws_user("near")).await;
    let mut far = Client::connect(&c.node(1).ws_user("far")).await;
    let mut unacked = std::collections::HashSet::new();
    for i in 0..5 {
        for sender in [&mut near, &mut far] {
            let ack = sender.send_and_ack("phone", json!({ "n": i })).await;
            assert_eq!(ack["status"], "delivered", "{ack}");
            unacked.insert(ack["id"].as_str().expect("an id").to_owned());
        }
    }
    for _ in 0..unacked.len() {
        phone.expect_type("message").await;
    }
    run_for(Duration::from_secs(2)).await;
    assert!(routes_of(&c, "node3").await > 0, "users on node3");

    ns.cut_redis();
    let cut = Instant::now();
    let ready = || async {
        reqwest::get(x.http("/readyz"))
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };
    eventually("node3 not ready once cut off", || async {
        (ready().await == Some(503)).then_some(())
    })
    .await;
    // Once its lease runs out, while the other nodes take clients, it sends its clients to one
    // of them (`reconnect`, then close 1001), as a drain does.
    let (frames, close) = phone.expect_close().await;
    let code = close.map(|f| f.code);
    assert_eq!(code, Some(1001), "node3 closed its clients with {code:?}");
    let others = [c.node(1).ws(""), c.node(2).ws("")];
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "reconnect" && others.iter().any(|u| f["url"] == u.as_str())),
        "no reconnect to node1 or node2 before the close: {frames:?}"
    );
    let metrics = x.http("/metrics");
    eventually("node3 has sent its clients away", || async {
        (wsroute_tests::metric(&metrics, "wsroute_connections ").await == 0.0).then_some(())
    })
    .await;
    let away = cut.elapsed();
    eventually("node3's routes removed by the other nodes", || async {
        (routes_of(&c, "node3").await == 0).then_some(())
    })
    .await;
    let swept = cut.elapsed();
    println!("node3 cut off: clients sent away after {away:?}, routes swept after {swept:?}");
    // Not before its lease could run out (10 s after the last renewal, every 3 s), and soon
    // after: the lease, asking the peers (1 s), the hand-over's waves (2 s), the close handshakes.
    assert!(
        away > Duration::from_secs(6),
        "clients sent away after {away:?}"
    );
    assert!(
        away < Duration::from_secs(18),
        "clients sent away after {away:?}"
    );
    // It takes no client while cut off.
    assert!(
        wsroute_client::Connection::connect(&wsroute_client::ConnectOptions::new(
            x.ws_user("latecomer")
        ))
        .await
        .is_err(),
        "a node cut off from Redis accepted a client"
    );

    // The cut lasts 18 s in all, traffic going on between the users now on node1 and node2.
    run_for(Duration::from_secs(18).saturating_sub(cut.elapsed())).await;
    ns.restore_redis();
    let restored = Instant::now();
    x.wait_ready().await;
    println!(
        "node3 ready again {:?} after the link came back",
        restored.elapsed()
    );
    // It takes clients again, and routes to and from them.
    let mut late = Client::connect(&x.ws_user("latecomer")).await;
    let mut there = Client::connect(&c.node(1).ws_user("elsewhere")).await;
    assert_eq!(
        late.send_and_ack("elsewhere", json!("back")).await["status"],
        "delivered"
    );
    there.expect_type("message").await;
    assert_eq!(
        there.send_and_ack("latecomer", json!("welcome")).await["status"],
        "delivered"
    );
    late.expect_type("message").await;

    // The phone, now on node1, gets the ten messages it had not acked (node3 kept them until
    // Redis answered, then put them in its inbox), once each; the sender on node1 hears they
    // were stored.
    let mut phone = Client::connect(&c.node(1).ws_user("phone")).await;
    let mut got = Vec::new();
    let frames = phone
        .collect_until(wsroute_tests::patience(), |frames| {
            let ids: std::collections::HashSet<&str> = frames
                .iter()
                .filter(|f| f["type"] == "message")
                .filter_map(|f| f["id"].as_str())
                .collect();
            unacked.iter().all(|id| ids.contains(id.as_str()))
        })
        .await;
    for f in frames.iter().filter(|f| f["type"] == "message") {
        got.push(f["id"].as_str().unwrap_or_default().to_owned());
    }
    let missing: Vec<&String> = unacked.iter().filter(|id| !got.contains(id)).collect();
    assert!(missing.is_empty(), "the phone never got {missing:?}");
    let unique: std::collections::HashSet<&String> = got.iter().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "an id twice on one connection: {got:?}"
    );
    for _ in 0..5 {
        far.expect(
            |f| f["type"] == "receipt" && f["status"] == "stored",
            "stored receipt",
        )
        .await;
    }

    run_for(Duration::from_secs(2)).await;
    let users = t.users.len() as u64;
    let a = t.finish().await;
    a.assert_kept("node cut off from Redis");
    assert!(a.delivered > 0);
    assert!(a.connects > users, "node3's users reconnected elsewhere");
    let waited = wsroute_tests::metric(&metrics, r#"wsroute_kept_total{by="backlog"}"#).await;
    println!("node3 kept {waited} unacked messages until Redis answered, then in the inbox");
    assert!(
        waited >= unacked.len() as f64,
        "the phone's messages did not wait on node3"
    );
    assert_eq!(
        wsroute_tests::metric(&metrics, "wsroute_delivered_lost_total").await,
        0.0,
        "node3 dropped messages it should have kept"
    );
}

/// Redis away for every node for longer than a lease: no node can take another's clients, so
/// each keeps its own (not ready meanwhile), and they go on, on the same connections, once Redis
/// is back. (A node whose lease ran out sends its clients away only to nodes that take them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_for_every_node_past_the_lease_keeps_the_clients() {
    use serde_json::json;
    use wsroute_tests::Client;

    let mut c = Cluster::start(2).await;
    let mut ann = Client::connect(&c.node(1).ws_user("ann")).await;
    let mut ben = Client::connect(&c.node(2).ws_user("ben")).await;
    // Each node has dialled the other (a node asks the peers it knows whether they take clients).
    for (from, to) in [(&mut ann, "ben"), (&mut ben, "ann")] {
        assert_eq!(
            from.send_and_ack(to, json!("hi")).await["status"],
            "delivered"
        );
    }
    ben.expect_type("message").await;
    ann.expect_type("message").await;

    c.redis.stop();
    // Past the lease (10 s after the last renewal, every 3 s) and the peers' check (about 2 s).
    run_for(Duration::from_secs(15)).await;
    for n in &c.nodes {
        let metrics = n.http("/metrics");
        assert_eq!(
            wsroute_tests::metric(&metrics, "wsroute_connections ").await,
            1.0,
            "{} sent its client away with nowhere to go",
            n.id
        );
        let r = reqwest::get(n.http("/readyz")).await.expect("http");
        assert_eq!(r.status(), 503, "{} ready without Redis", n.id);
    }
    c.redis.start_again().await;
    all_routes_back(&c, 2).await;
    for n in &c.nodes {
        n.wait_ready().await;
    }
    assert_eq!(
        ann.send_and_ack("ben", json!("still here")).await["status"],
        "delivered"
    );
    assert_eq!(ben.expect_type("message").await["body"], "still here");
}
