//! Direct messages across a real three-node cluster: cross-node, same-node, many devices,
//! a user who moves, and the route cache doing its job without Redis.

use serde_json::json;
use wsroute_tests::cluster::{Node, NodeOpts};
use wsroute_tests::redis_server::RedisServer;
use wsroute_tests::{Client, Cluster, eventually, keys, node_id};

#[tokio::test]
async fn cross_node_and_same_node_messages_are_delivered_with_the_authenticated_sender() {
    let c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let mut carol = Client::connect(&c.node(1).ws_user("carol")).await;
    assert_eq!(alice.hello["user"], "alice");
    assert_eq!(alice.hello["node"], "node1");
    assert!(alice.hello["heartbeat_ms"].as_u64().unwrap_or(0) > 0);

    // Across nodes. The client tries to claim another sender; the server ignores it.
    alice
        .send_json(
            json!({"type":"send","to":"bob","ref":"x1","from":"mallory","body":{"text":"hi bob"}}),
        )
        .await;
    let ack = alice.expect_ack("x1").await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(ack["devices"], 1);
    let m = bob.expect_type("message").await;
    assert_eq!(m["from"], "alice");
    assert_eq!(m["to"], "bob");
    assert_eq!(m["body"], json!({"text":"hi bob"}));
    assert_eq!(m["id"], ack["id"]);
    assert!(m["ts"].as_i64().unwrap_or(0) > 1_600_000_000_000);

    // Same node.
    let ack = alice.send_and_ack("carol", json!([1, 2, 3])).await;
    assert_eq!(ack["status"], "delivered");
    assert_eq!(ack["devices"], 1);
    let m = carol.expect_type("message").await;
    assert_eq!(m["from"], "alice");
    assert_eq!(m["body"], json!([1, 2, 3]));

    // And back, from node 2 to node 1.
    let ack = bob.send_and_ack("alice", json!("pong")).await;
    assert_eq!(ack["status"], "delivered");
    let m = alice.expect_type("message").await;
    assert_eq!(m["from"], "bob");
}

#[tokio::test]
async fn a_user_on_two_nodes_gets_the_message_on_both() {
    let c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut phone = Client::connect(&c.node(2).ws("?user=bob&device=phone")).await;
    let mut laptop = Client::connect(&c.node(3).ws("?user=bob&device=laptop")).await;
    let ack = alice.send_and_ack("bob", json!({"n": 1})).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(ack["devices"], 2);
    let a = phone.expect_type("message").await;
    let b = laptop.expect_type("message").await;
    assert_eq!(a["id"], ack["id"]);
    assert_eq!(b["id"], ack["id"]);
}

#[tokio::test]
async fn a_user_who_moves_to_another_node_gets_the_next_message_there() {
    let c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    // Node 1 now has bob's route to node 2 in its cache.
    let ack = alice.send_and_ack("bob", json!(1)).await;
    assert_eq!(ack["status"], "delivered");
    bob.expect_type("message").await;
    bob.close().await;

    let mut bob = Client::connect(&c.node(3).ws_user("bob")).await;
    let ack = alice.send_and_ack("bob", json!(2)).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(ack["devices"], 1);
    let m = bob.expect_type("message").await;
    assert_eq!(m["body"], json!(2));
    assert_eq!(m["id"], ack["id"]);
}

#[tokio::test]
async fn messages_from_one_sender_arrive_in_order() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let n = 300;
    for i in 0..n {
        alice.send_to("bob", json!(i)).await;
    }
    for i in 0..n {
        let m = bob.expect_type("message").await;
        assert_eq!(m["body"], json!(i), "message {i} out of order");
    }
    for i in 1..=n {
        let ack = alice.expect_ack(&format!("r{i}")).await;
        assert_eq!(ack["status"], "delivered");
    }
}

#[tokio::test]
async fn steady_state_sends_make_no_redis_calls() {
    let c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let mut carol = Client::connect(&c.node(3).ws_user("carol")).await;
    // The three connects each announced themselves (a cache invalidation): wait until node1 has
    // heard all three. On Redis Cluster an event travels over the cluster bus and can arrive
    // after a warm-up read, dropping the entry it cached.
    let metrics = c.node(1).http("/metrics");
    eventually("node1 heard the three connects", || {
        let url = metrics.clone();
        async move {
            let heard =
                wsroute_tests::metric(&url, r#"wsroute_route_events_total{kind="invalidate"}"#)
                    .await;
            (heard >= 3.0).then_some(())
        }
    })
    .await;
    // Warm the caches: the first send to each user reads its route once (again if a connect
    // event raced with that read). Warm until a round of sends misses the cache no more.
    let misses = || wsroute_tests::metric(&metrics, "wsroute_route_cache_misses_total");
    let deadline = tokio::time::Instant::now() + wsroute_tests::patience();
    let mut warm_sent = 0;
    loop {
        let m0 = misses().await;
        for to in ["bob", "carol"] {
            assert_eq!(
                alice.send_and_ack(to, json!("warm")).await["status"],
                "delivered"
            );
            warm_sent += 1;
        }
        bob.expect_type("message").await;
        carol.expect_type("message").await;
        if misses().await == m0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route cache never warmed up"
        );
    }

    let before = c.redis.command_calls().await;
    let n = 500;
    for i in 0..n {
        let to = if i % 2 == 0 { "bob" } else { "carol" };
        alice.send_to(to, json!(i)).await;
    }
    for i in 1..=n {
        let r = format!("r{}", i + warm_sent);
        assert_eq!(alice.expect_ack(&r).await["status"], "delivered");
    }
    for _ in 0..n / 2 {
        bob.expect_type("message").await;
        carol.expect_type("message").await;
    }
    let after = c.redis.command_calls().await;

    let delta = |cmd: &str| after.get(cmd).unwrap_or(&0) - before.get(cmd).unwrap_or(&0);
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    let report: Vec<String> = after
        .keys()
        .filter(|k| delta(k) > 0)
        .map(|k| format!("{k}={}", delta(k)))
        .collect();
    println!(
        "redis calls during {n} sends: total {total} ({})",
        report.join(" ")
    );
    // Route lookups, inbox scripts and events are per-message operations: none may happen.
    for cmd in ["hgetall", "hget", "evalsha", "eval", "publish", "lrange"] {
        assert_eq!(
            delta(cmd),
            0,
            "{cmd} was called during steady-state sends: {report:?}"
        );
    }
    // What remains is the nodes' lease heartbeats (a handful per node per 3 s) and INFO itself,
    // far below one per message.
    assert!(
        total < 60,
        "{total} Redis calls for {n} messages: {report:?}"
    );
}

#[tokio::test]
async fn the_broadcast_baseline_delivers_through_every_node() {
    let c = Cluster::start_with(3, |o| {
        o.extra = vec!["--fanout".into(), "broadcast".into()];
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let ack = alice.send_and_ack("bob", json!("via everyone")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    // A broadcast reaches every node, whether or not it holds bob.
    assert_eq!(ack["devices"], 3);
    let m = bob.expect_type("message").await;
    assert_eq!(m["body"], "via everyone");
    assert_eq!(m["from"], "alice");
}

#[tokio::test]
async fn a_peer_that_does_not_announce_frames_is_sent_envelopes() {
    // node2 registered as a node from before frame pass-through would be: no `mesh` field. It
    // starts first and loses the field before node1 starts, so node1 meets it (at its start, see
    // `upkeep::meet_peers`) as an older node.
    let redis = RedisServer::start().await;
    let node2 = Node::start(&redis, NodeOpts::new("node2")).await;
    redis
        .hdel(&keys::node_info(&node_id("node2")), keys::info::MESH)
        .await;
    let node1 = Node::start(&redis, NodeOpts::new("node1")).await;
    let c = Cluster {
        nodes: vec![node1, node2],
        redis,
    };
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;

    let ack = alice.send_and_ack("bob", json!("to an older node")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    let m = bob.expect_type("message").await;
    assert_eq!(
        (m["id"].clone(), m["from"].clone()),
        (ack["id"].clone(), json!("alice"))
    );
    assert_eq!(m["body"], "to an older node");
    // node1 still announces frames, so node2 sends it frames.
    let ack = bob.send_and_ack("alice", json!("back")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(alice.expect_type("message").await["id"], ack["id"]);

    let received = |node: usize, form: &str| {
        let url = c.node(node).http("/metrics");
        let name = format!("wsroute_mesh_items_received_total{{form=\"{form}\"}}");
        async move { wsroute_tests::metric(&url, &name).await }
    };
    assert_eq!(received(2, "envelope").await, 1.0);
    assert_eq!(received(2, "frame").await, 0.0);
    assert_eq!(received(1, "frame").await, 1.0);
    assert_eq!(received(1, "envelope").await, 0.0);
}
