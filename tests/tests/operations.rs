//! What an operator sees and does: `router-cli`, `/gateway`, `/readyz`, `/metrics`, and a node
//! stopped with SIGTERM leaving no routes behind.

use std::time::Duration;

use serde_json::{Value, json};
use wsroute_tests::router_cli::{cli, cli_json};
use wsroute_tests::{Client, Cluster, eventually};

#[tokio::test]
async fn router_cli_shows_nodes_and_routes() {
    let c = Cluster::start(3).await;
    let url = c.redis.url();
    let _bob1 = Client::connect(&c.node(2).ws("?user=bob&device=phone")).await;
    let _bob2 = Client::connect(&c.node(3).ws_user("bob")).await;

    let (code, out, _) = cli(&url, &["nodes", "list"]);
    assert_eq!(code, 0);
    for n in ["node1", "node2", "node3"] {
        assert!(out.contains(n), "{out}");
    }
    assert!(out.contains("live"), "{out}");
    let nodes = cli_json(&url, &["nodes", "list"]);
    assert_eq!(nodes.as_array().map(Vec::len), Some(3));
    assert!(
        nodes
            .as_array()
            .expect("array")
            .iter()
            .all(|n| n["alive"] == true)
    );

    let (code, out, _) = cli(&url, &["routes", "get", "bob"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("node2") && out.contains("node3") && out.contains("phone"),
        "{out}"
    );
    let routes = cli_json(&url, &["routes", "get", "bob"]);
    let mut on: Vec<String> = routes["connections"]
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["node"].as_str().unwrap_or_default().to_owned())
        .collect();
    on.sort();
    assert_eq!(on, ["node2", "node3"]);

    let (code, out, _) = cli(&url, &["routes", "get", "nobody"]);
    assert_eq!(code, 0);
    assert!(out.contains("no live connections"), "{out}");

    let listed = cli_json(&url, &["routes", "list", "--node", "node2"]);
    assert_eq!(listed["connections"][0]["user"], "bob");

    // Bad usage: exit 2 with a reason.
    let (code, _, err) = cli(&url, &["routes", "get", "bad user"]);
    assert_eq!(code, 2, "{err}");
    assert!(!err.is_empty());
    let (code, _, _) = cli(&url, &["frobnicate"]);
    assert_eq!(code, 2);
    // A failed operation: exit 1 with a one-line reason.
    let (code, _, err) = cli("redis://127.0.0.1:1", &["nodes", "list"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn router_cli_send_reaches_the_user() {
    let c = Cluster::start(2).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let (code, out, err) = cli(
        &c.redis.url(),
        &[
            "send",
            "bob",
            r#"{"text":"from the cli"}"#,
            "--api-key",
            wsroute_tests::cluster::API_KEY,
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("delivered"), "{out}");
    let m = bob.expect_type("message").await;
    assert_eq!(m["body"]["text"], "from the cli");

    let (code, _, err) = cli(&c.redis.url(), &["send", "bob", "{oops", "--api-key", "k"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = cli(&c.redis.url(), &["send", "bob", "1", "--api-key", "wrong"]);
    assert_eq!(code, 1);
}

#[tokio::test]
async fn sigterm_drains_the_node_and_leaves_no_routes() {
    let mut c = Cluster::start(2).await;
    let url = c.redis.url();
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let _carol = Client::connect(&c.node(2).ws_user("carol")).await;
    let listed = cli_json(&url, &["routes", "list", "--node", "node2"]);
    assert_eq!(listed["connections"].as_array().map(Vec::len), Some(2));

    c.node(2).terminate();
    // Bob is told where to go: the other node.
    let r = bob.expect_type("reconnect").await;
    assert_eq!(r["url"], c.node(1).ws(""));
    assert!(
        r["reason"].as_str().is_some_and(|why| !why.is_empty()),
        "a reconnect says why: {r}"
    );
    let (_, close) = bob.expect_close().await;
    assert_eq!(close.map(|f| f.code), Some(1001));

    let status = c.nodes[1].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
    let listed = cli_json(&url, &["routes", "list", "--node", "node2"]);
    assert_eq!(listed["connections"], json!([]));
    let routes = cli_json(&url, &["routes", "get", "bob"]);
    assert_eq!(routes["connections"], json!([]));
    let nodes = cli_json(&url, &["nodes", "list"]);
    let ids: Vec<_> = nodes
        .as_array()
        .expect("array")
        .iter()
        .map(|n| n["node"].clone())
        .collect();
    assert_eq!(ids, [json!("node1")]);

    // Bob reconnects where he was sent, and messages for him flow again.
    let mut bob = Client::connect(&format!("{}?user=bob", r["url"].as_str().expect("url"))).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    assert_eq!(
        alice.send_and_ack("bob", json!(1)).await["status"],
        "delivered"
    );
    bob.expect_type("message").await;
}

/// SIGINT (Ctrl-C in a terminal) drains like SIGTERM: the clients are sent to another node, the
/// node leaves the table and exits 0.
#[tokio::test]
async fn sigint_drains_like_sigterm() {
    let mut c = Cluster::start(2).await;
    let url = c.redis.url();
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    c.node(2).interrupt();
    let r = bob.expect_type("reconnect").await;
    assert_eq!(r["url"], c.node(1).ws(""));
    let (_, close) = bob.expect_close().await;
    assert_eq!(close.map(|f| f.code), Some(1001));
    let status = c.nodes[1].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
    let nodes = cli_json(&url, &["nodes", "list"]);
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    assert_eq!(
        cli_json(&url, &["routes", "get", "bob"])["connections"],
        json!([])
    );
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("http");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_node_that_cannot_hear_route_events_takes_no_clients() {
    // A Redis that refuses SUBSCRIBE: the node registers (its lease is there) but can never
    // listen for cache invalidations, so it must not say it is ready or accept a client.
    let redis =
        wsroute_tests::RedisServer::start_with_args(&["--rename-command", "SUBSCRIBE", ""]).await;
    let node = wsroute_tests::Node::spawn(&redis, &wsroute_tests::NodeOpts::new("deaf"));
    let readyz = node.http("/readyz");
    let (status, body) = eventually("readyz names the missing subscription", || {
        let url = readyz.clone();
        async move {
            // Not listening yet is not an answer: poll until the node says why it is not ready.
            let r = reqwest::get(url).await.ok()?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.ok()?;
            (body["reason"] == "not subscribed to route events").then_some((status, body))
        }
    })
    .await;
    assert_eq!(status, 503, "{body}");
    match Client::try_connect(&node.ws_user("alice")).await {
        Ok(_) => panic!("a node without route events accepted a client"),
        Err(r) => assert_eq!(r.status, 503, "{:?}", r.body),
    }
    assert_eq!(redis.routes_of_user("alice").await, 0);
}

#[tokio::test]
async fn gateway_names_the_live_node_with_fewest_connections() {
    let c = Cluster::start(3).await;
    let mut held = Vec::new();
    for (node, users) in [(1, 3), (2, 1), (3, 2)] {
        for u in 0..users {
            held.push(Client::connect(&c.node(node).ws_user(&format!("u{node}-{u}"))).await);
        }
    }
    // Every node answers the same, once the counts have reached Redis (lease heartbeat).
    for asked in 1..=3 {
        let url = c.node(asked).http("/gateway");
        let v = eventually("gateway points at node2", || {
            let url = url.clone();
            async move {
                let (s, v) = get_json(&url).await;
                (s == 200 && v["node"] == "node2").then_some(v)
            }
        })
        .await;
        assert_eq!(v["url"], c.node(2).ws(""));
    }
}

/// Equal counts go to the node answering: the one node surely alive. Before this, ties went to
/// the first name, and a node killed before its record counted its clients was named by every
/// gateway until its lease ran out (15 s), sending reconnecting clients to a dead address; a CI
/// run lost the JS outbox test's recipient to it for those 15 s.
#[tokio::test]
async fn a_gateway_names_itself_among_equals() {
    let c = Cluster::start(3).await;
    for asked in [2, 3] {
        for _ in 0..10 {
            let (s, v) = get_json(&c.node(asked).http("/gateway")).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["node"], format!("node{asked}"), "{v}");
            assert_eq!(v["url"], c.node(asked).ws(""));
        }
    }
}

/// A node whose mesh link to a peer just failed does not send clients there, though the peer's
/// lease (and so its record with a low count) runs on for seconds.
#[tokio::test]
async fn a_gateway_does_not_name_a_peer_it_just_failed_to_reach() {
    let mut c = Cluster::start(3).await;
    let mut held = Vec::new();
    for (node, users) in [(2, 1), (3, 2)] {
        for u in 0..users {
            held.push(Client::connect(&c.node(node).ws_user(&format!("u{node}-{u}"))).await);
        }
    }
    let _alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    // node1 holds 1, node2 2, node3 2: once the counts reach Redis, node2 names node1.
    let url = c.node(2).http("/gateway");
    eventually("node2's gateway names node1", || {
        let url = url.clone();
        async move {
            let (s, v) = get_json(&url).await;
            (s == 200 && v["node"] == "node1").then_some(())
        }
    })
    .await;
    c.nodes[0].kill();
    // Bob's message to alice finds node1 gone: stored, and node2 now knows node1 is unreachable.
    assert_eq!(
        bob.send_and_ack("alice", json!(1)).await["status"],
        "stored"
    );
    for _ in 0..10 {
        let (s, v) = get_json(&url).await;
        assert_eq!(s, 200, "{v}");
        assert_ne!(
            v["node"], "node1",
            "named the node it just failed to reach: {v}"
        );
    }
}

#[tokio::test]
async fn probes_and_metrics_tell_the_truth() {
    let c = Cluster::start(2).await;
    let (s, _) = get_json(&c.node(1).http("/healthz")).await;
    assert_eq!(s, 200);
    let (s, v) = get_json(&c.node(1).http("/readyz")).await;
    assert_eq!(s, 200, "{v}");

    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let _bob = Client::connect(&c.node(2).ws_user("bob")).await;
    assert_eq!(
        alice.send_and_ack("bob", json!(1)).await["status"],
        "delivered"
    );
    assert_eq!(
        alice.send_and_ack("zed", json!(1)).await["status"],
        "stored"
    );
    let text = reqwest::get(c.node(1).http("/metrics"))
        .await
        .expect("http")
        .text()
        .await
        .expect("text");
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert_eq!(value("wsroute_connections "), 1.0);
    assert_eq!(
        value("wsroute_messages_total{outcome=\"delivered_remote\"}"),
        1.0
    );
    assert_eq!(value("wsroute_messages_total{outcome=\"stored\"}"), 1.0);
    // The operational histograms saw the same traffic: a cross-node batch and its round trip,
    // the Redis registration, the stored message's inbox depth; the node says who it is.
    assert!(value("wsroute_mesh_forward_duration_seconds_count ") >= 1.0);
    assert!(value("wsroute_mesh_batch_size_count ") >= 1.0);
    assert!(value("wsroute_redis_command_duration_seconds_count{op=\"register\"}") >= 1.0);
    assert!(value("wsroute_redis_command_duration_seconds_count{op=\"inbox_store\"}") >= 1.0);
    assert_eq!(value("wsroute_inbox_depth_count "), 1.0);
    assert_eq!(value("wsroute_inbox_depth_sum "), 1.0);
    assert_eq!(value("wsroute_draining "), 0.0);
    assert!(
        text.contains(&format!(
            "wsroute_node_info{{node=\"node1\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );

    // Bob's node measured the delivery end to end; zed's node replays the stored message.
    let node2 = c.node(2).http("/metrics");
    let delivered = || wsroute_tests::metric(&node2, "wsroute_delivery_latency_seconds_count");
    eventually("bob's node records the delivery latency", || async {
        (delivered().await == 1.0).then_some(())
    })
    .await;
    let mut zed = Client::connect(&c.node(2).ws_user("zed")).await;
    let m = zed.expect_type("message").await;
    assert_eq!(m["from"], "alice");
    let replayed = || wsroute_tests::metric(&node2, "wsroute_inbox_replayed_total");
    eventually("zed's node counts the inbox replay", || async {
        (replayed().await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn router_cli_drain_moves_clients_and_the_node_exits() {
    let mut c = Cluster::start(2).await;
    let url = c.redis.url();
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;

    // Without the mesh secret the node refuses.
    let (code, _, err) = cli(&url, &["drain", "node2", "--no-wait"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mesh secret"), "{err}");

    let (code, out, err) = cli(
        &url,
        &[
            "drain",
            "node2",
            "--mesh-secret",
            wsroute_tests::cluster::MESH_SECRET,
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("drained"), "{out}");
    let r = bob.expect_type("reconnect").await;
    assert_eq!(r["url"], c.node(1).ws(""));
    let status = c.nodes[1].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    let nodes = cli_json(&url, &["nodes", "list"]);
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_drain_ends_within_its_grace_period_even_if_clients_do_not_leave() {
    let mut c = Cluster::start_with(1, |o| {
        o.extra = vec!["--drain-grace-ms".into(), "3000".into()];
    })
    .await;
    // A client that never reads, so it never acts on its reconnect frame.
    let _stubborn = wsroute_client::Connection::connect(&wsroute_client::ConnectOptions::new(
        c.node(1).ws_user("stubborn"),
    ))
    .await
    .expect("connects");
    let _other = Client::connect(&c.node(1).ws_user("other")).await;
    let started = std::time::Instant::now();
    c.node(1).terminate();
    // While it drains: not ready, and no new clients.
    let readyz = c.node(1).http("/readyz");
    eventually("readyz says 503 while draining", || {
        let url = readyz.clone();
        async move {
            let r = reqwest::get(url).await.ok()?;
            (r.status() == 503).then_some(())
        }
    })
    .await;
    match Client::try_connect(&c.node(1).ws_user("latecomer")).await {
        Ok(_) => panic!("a draining node accepted a new client"),
        Err(r) => assert_eq!(r.status, 503, "{:?}", r.body),
    }
    let status = c.nodes[0].wait_exit(Duration::from_secs(20)).await;
    let took = started.elapsed();
    println!("drain with a stubborn client took {took:?} (grace 3 s)");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    let listed = cli_json(&c.redis.url(), &["routes", "list", "--node", "node1"]);
    assert_eq!(listed["connections"], json!([]));
}

#[tokio::test]
async fn router_cli_inbox_shows_what_waits_for_a_user() {
    let c = Cluster::start(1).await;
    let url = c.redis.url();
    let (code, out, _) = cli(&url, &["inbox", "gina"]);
    assert_eq!(code, 0);
    assert!(out.contains("inbox empty"), "{out}");
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let first = alice.send_and_ack("gina", json!("one")).await;
    alice.send_and_ack("gina", json!("two")).await;
    let v = cli_json(&url, &["inbox", "gina"]);
    assert_eq!(v["depth"], 2);
    assert!(v["oldest_age_ms"].as_i64().is_some_and(|a| a >= 0), "{v}");
    assert_eq!(v["messages"][0]["id"], first["id"]);
    assert_eq!(v["messages"][0]["from"], "alice");
    let (code, out, _) = cli(&url, &["inbox", "gina"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("2 message(s) waiting") && out.contains("from alice"),
        "{out}"
    );
    let (code, _, _) = cli(&url, &["inbox", "not a user"]);
    assert_eq!(code, 2);
}

#[tokio::test]
async fn json_logs_carry_node_user_conn_and_message_ids() {
    let c = Cluster::start_with(1, |o| {
        o.env = vec![("WSROUTE_LOG_FORMAT".into(), "json".into())];
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let conn_id = alice.hello["conn_id"].as_str().expect("conn_id").to_owned();
    let ack = alice.send_and_ack("bob", json!("hi")).await;
    assert_eq!(ack["status"], "stored");
    let msg_id = ack["id"].as_str().expect("id").to_owned();
    alice.close().await;

    let lines = eventually("the node logs the disconnect", || async {
        let text = c.nodes[0].log_text();
        text.contains("client disconnected").then_some(text)
    })
    .await;
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let disconnect = records
        .iter()
        .find(|r| r["fields"]["message"] == "client disconnected")
        .expect("a disconnect record");
    assert_eq!(disconnect["span"]["name"], "conn", "{disconnect}");
    assert_eq!(disconnect["span"]["node"], "node1", "{disconnect}");
    assert_eq!(disconnect["span"]["user"], "alice", "{disconnect}");
    assert_eq!(
        disconnect["span"]["conn_id"],
        conn_id.as_str(),
        "{disconnect}"
    );
    let answered = records
        .iter()
        .find(|r| r["fields"]["message"] == "send answered")
        .expect("a record of the send");
    assert_eq!(answered["span"]["msg_id"], msg_id.as_str(), "{answered}");
    assert_eq!(answered["fields"]["status"], "stored", "{answered}");
    let outer = &answered["spans"][0];
    assert_eq!(outer["user"], "alice", "{answered}");
    assert_eq!(outer["conn_id"], conn_id.as_str(), "{answered}");
}

/// The routes of a node that died are announced to the other nodes' route caches in one Redis
/// round trip, not one per user, the news that the node is gone in the same pipeline (the sweep
/// after `kill -9`; a drain and a reconcile announce through the same call).
#[tokio::test]
async fn a_dead_nodes_users_are_announced_in_one_round_trip() {
    let mut c = Cluster::start(3).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(Client::connect(&c.node(3).ws_user(&format!("leaving{i}"))).await);
    }
    let survivors = [c.node(1).http("/metrics"), c.node(2).http("/metrics")];
    let heard = |i: usize| {
        wsroute_tests::metric(
            &survivors[i],
            r#"wsroute_route_events_total{kind="invalidate"}"#,
        )
    };
    let published = || async {
        let mut sum = 0.0;
        for url in &survivors {
            sum +=
                wsroute_tests::metric(url, r#"wsroute_redis_operations_total{op="publish"}"#).await;
        }
        sum
    };
    // The five connects announced themselves first.
    eventually("both survivors heard the five connects", || async {
        (heard(0).await >= 5.0 && heard(1).await >= 5.0).then_some(())
    })
    .await;
    let before = [heard(0).await, heard(1).await];
    let published_before = published().await;
    c.nodes[2].kill();
    let redis = &c.redis;
    eventually(
        "node3's routes removed and announced to both survivors",
        || async {
            (redis.routes_on_node("node3").await == 0
                && heard(0).await >= before[0] + 5.0
                && heard(1).await >= before[1] + 5.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        published().await - published_before,
        1.0,
        "five users announced in one pipeline"
    );
}

/// What anyone can ask without credentials (`/gateway`, the page at `/`) is answered from a node
/// list read at most once a second: a flood of such requests costs Redis next to nothing.
#[tokio::test]
async fn unauthenticated_requests_cost_redis_nothing() {
    let c = Cluster::start(2).await;
    let gateway = c.node(1).http("/gateway");
    let page = c.node(1).http("/");
    // Both answer (and the node list is known) before counting.
    let first: serde_json::Value = reqwest::get(&gateway)
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert!(first["url"].as_str().is_some(), "{first}");
    let sum = |m: std::collections::HashMap<String, u64>| m.values().sum::<u64>();
    let before = sum(c.redis.command_calls().await);
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let r = reqwest::get(&gateway).await.expect("http");
        assert_eq!(r.status(), 200);
    }
    for _ in 0..50 {
        let r = reqwest::get(&page).await.expect("http");
        assert_eq!(r.status(), 200);
    }
    let took = started.elapsed();
    let calls = sum(c.redis.command_calls().await) - before;
    // The node list is read at most once a second, and the two nodes' heartbeats run meanwhile
    // (a handful of calls every 3 s each); a request that read Redis would cost at least 250.
    let heartbeats = 2 * (took.as_secs() + 1);
    println!("250 unauthenticated requests in {took:?}: {calls} Redis calls");
    assert!(
        calls <= heartbeats * 12,
        "{calls} Redis calls for 250 unauthenticated requests in {took:?}"
    );
}

/// PROTOCOL 1: every flag has an environment variable, and the flag wins. An environment value
/// the node would refuse (`WSROUTE_MAX_FRAME_BYTES=5`) stops the start on its own; beside a flag
/// with a good value it is not even looked at (the start then stops at the next missing piece,
/// the token key, which shows the frame size passed).
#[test]
fn a_flag_wins_over_its_environment_variable() {
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(wsroute_tests::binary("wsroute-server"))
            .env("WSROUTE_MAX_FRAME_BYTES", "5")
            .env_remove("WSROUTE_JWT_SECRET")
            .env_remove("WSROUTE_DEV_AUTH")
            .args(["--node-id", "flagwins"])
            .args(extra)
            .output()
            .expect("the server runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--max-frame-bytes must be between 256"),
        "{err}"
    );
    let (code, err) = run(&["--max-frame-bytes", "1000"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("max-frame-bytes"),
        "the flag's value was used: {err}"
    );
    assert!(err.contains("no client authentication configured"), "{err}");
}

/// PROTOCOL 1: `--node-id` defaults to the hostname; and `--dev-auth` is logged loudly.
#[tokio::test]
async fn the_node_id_defaults_to_the_hostname_and_dev_auth_is_announced() {
    let redis = wsroute_tests::RedisServer::start().await;
    let ws = wsroute_tests::free_port();
    let grpc = wsroute_tests::free_port();
    let log = std::env::temp_dir().join(format!("wsroute-hostname-{ws}.log"));
    let mut child = std::process::Command::new(wsroute_tests::binary("wsroute-server"))
        .env("HOSTNAME", "pod-7f9c")
        .env("WSROUTE_LOG", "info")
        .args(["--dev-auth", "--redis-url", &redis.url()])
        .args(["--ws-listen", &format!("127.0.0.1:{ws}")])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("the server starts");
    let url = redis.url();
    let listed = eventually("the node is in the table under the hostname", || {
        let url = url.clone();
        async move {
            let nodes = cli_json(&url, &["nodes", "list"]);
            nodes
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["node"] == "pod-7f9c"))
                .then_some(nodes)
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(
        text.contains("--dev-auth is ON") && text.contains("WARN"),
        "dev auth is announced as a warning: {text}"
    );
}

/// PROTOCOL 5: a drain hands its clients over in waves, so that they do not all reconnect at the
/// same instant: 20 clients get their `reconnect` spread over the ten waves, 200 ms apart
/// (about 1.8 s from the first to the last), not in one burst.
#[tokio::test]
async fn a_drain_hands_clients_over_in_waves() {
    let c = Cluster::start(2).await;
    let mut waiting = Vec::new();
    for i in 0..20 {
        let mut client = Client::connect(&c.node(2).ws_user(&format!("wave{i}"))).await;
        client.frames_until_pong().await;
        waiting.push(tokio::spawn(async move {
            client.expect_type("reconnect").await;
            std::time::Instant::now()
        }));
    }
    c.node(2).terminate();
    let mut at = Vec::new();
    for w in waiting {
        at.push(w.await.expect("the reader ends"));
    }
    at.sort();
    let spread = at[at.len() - 1] - at[0];
    // Groups: arrivals more than 100 ms after the one before start a new group.
    let groups = 1 + at
        .windows(2)
        .filter(|w| w[1] - w[0] > Duration::from_millis(100))
        .count();
    assert!(
        // (A busy test machine can merge neighbouring waves as read here; one burst would be
        // one group within milliseconds.)
        spread >= Duration::from_secs(1) && groups >= 3,
        "reconnects spread over {spread:?} in {groups} groups"
    );
}
