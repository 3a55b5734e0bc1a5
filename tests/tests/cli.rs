//! `router-cli stats`, `watch` and `completions` against a live cluster, and the exit-code
//! contract for bad usage.

use serde_json::{Value, json};
use wsroute_tests::cluster::MESH_SECRET;
use wsroute_tests::router_cli::{cli, cli_json};
use wsroute_tests::{Client, Cluster, eventually};

fn stats(redis_url: &str, node: &str) -> Value {
    cli_json(redis_url, &["stats", node, "--mesh-secret", MESH_SECRET])
}

#[tokio::test]
async fn stats_move_with_traffic() {
    let mut c = Cluster::start(2).await;
    let url = c.redis.url();
    let before = stats(&url, "node1");
    assert_eq!(before["node"], "node1");
    assert_eq!(before["connections"], 0);
    assert_eq!(before["accepting"], true);
    assert_eq!(before["messages"]["total"], 0);

    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let _alice_tablet = Client::connect(&c.node(1).ws("?user=alice&device=tablet")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    for i in 0..3 {
        assert_eq!(
            alice.send_and_ack("bob", json!(i)).await["status"],
            "delivered"
        );
    }
    for _ in 0..3 {
        bob.expect_type("message").await;
    }
    assert_eq!(
        alice.send_and_ack("nobody", json!("later")).await["status"],
        "stored"
    );
    // The counters move once the sends are accounted for.
    let after = eventually("node1's stats count the sends", || {
        let v = stats(&url, "node1");
        async move {
            (v["messages"]["delivered_remote"] == 3 && v["messages"]["stored"] == 1).then_some(v)
        }
    })
    .await;
    assert_eq!(after["connections"], 2, "{after}");
    assert_eq!(after["users"], 1, "{after}");
    assert_eq!(after["messages"]["rejected"], 0, "{after}");
    assert_eq!(after["messages"]["total"], 4, "{after}");
    assert!(
        after["uptime_ms"].as_i64().is_some_and(|u| u > 0),
        "{after}"
    );
    let peers = after["peers"].as_array().expect("peers array");
    assert_eq!(peers.len(), 1, "{after}");
    assert_eq!(peers[0]["node"], "node2");
    assert_eq!(peers[0]["stream_up"], true);
    assert_eq!(peers[0]["suspect"], false);
    assert!(
        after["mesh"]["batched_messages"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "{after}"
    );
    // The receiving side: node2 holds bob and delivered nothing itself.
    let node2 = stats(&url, "node2");
    assert_eq!(node2["connections"], 1, "{node2}");
    assert_eq!(node2["messages"]["total"], 0, "{node2}");

    // The table says the same to a human.
    let (code, out, err) = cli(&url, &["stats", "node1", "--mesh-secret", MESH_SECRET]);
    assert_eq!(code, 0, "{err}");
    for want in ["node1", "live", "delivered_remote 3", "stored 1", "node2"] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }

    // A node that is not registered: exit 1 with one line saying so.
    let (code, _, err) = cli(&url, &["stats", "ghost", "--mesh-secret", MESH_SECRET]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not registered"), "{err}");
    // Without the mesh secret the node refuses.
    let (code, _, err) = cli(&url, &["stats", "node1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mesh secret"), "{err}");
    // Registered (its lease has not run out) but not answering: exit 1.
    c.nodes[1].kill();
    let (code, _, err) = cli(&url, &["stats", "node2", "--mesh-secret", MESH_SECRET]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `watch --count N --json`: N lines, each one JSON object with the live nodes.
fn watch_json(url: &str, count: &str) -> Vec<Value> {
    let (code, out, err) = cli(
        url,
        &[
            "--json",
            "watch",
            "--count",
            count,
            "--interval",
            "200ms",
            "--mesh-secret",
            MESH_SECRET,
        ],
    );
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

fn node_figure(refresh: &Value, node: &str, key: &str) -> Value {
    refresh["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node"] == node))
        .map(|n| n[key].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn watch_shows_live_counts() {
    let c = Cluster::start(2).await;
    let url = c.redis.url();
    let mut held = Vec::new();
    for u in ["ann", "ben"] {
        held.push(Client::connect(&c.node(1).ws_user(u)).await);
    }
    held.push(Client::connect(&c.node(2).ws_user("cat")).await);
    held[0].send_and_ack("cat", json!("hi")).await;
    held[0].send_and_ack("dan", json!("offline")).await;

    let lines = eventually("watch counts the sends", || {
        let lines = watch_json(&url, "2");
        async move { (node_figure(&lines[0], "node1", "messages") == 2).then_some(lines) }
    })
    .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for refresh in &lines {
        assert_eq!(
            refresh["nodes"].as_array().map(Vec::len),
            Some(2),
            "{refresh}"
        );
        assert_eq!(node_figure(refresh, "node1", "connections"), 2, "{refresh}");
        assert_eq!(node_figure(refresh, "node2", "connections"), 1, "{refresh}");
        assert_eq!(node_figure(refresh, "node1", "delivered"), 1, "{refresh}");
        assert_eq!(node_figure(refresh, "node1", "stored"), 1, "{refresh}");
        assert_eq!(node_figure(refresh, "node1", "state"), "live", "{refresh}");
        assert_eq!(refresh["totals"]["connections"], 3, "{refresh}");
        assert_eq!(refresh["totals"]["reachable"], 2, "{refresh}");
    }
    // A rate needs two samples: none on the first refresh, a number on the second.
    assert_eq!(
        node_figure(&lines[0], "node1", "messages_per_s"),
        Value::Null
    );
    assert!(
        node_figure(&lines[1], "node1", "messages_per_s").is_f64(),
        "{}",
        lines[1]
    );

    // One connection leaves: the next watch shows it.
    held.pop();
    eventually("watch sees cat leave", || {
        let lines = watch_json(&url, "1");
        async move { (node_figure(&lines[0], "node2", "connections") == 0).then_some(()) }
    })
    .await;

    // Not a terminal: plain tables, one per refresh, with totals.
    let (code, out, err) = cli(
        &url,
        &[
            "watch",
            "--count",
            "2",
            "--interval",
            "100ms",
            "--mesh-secret",
            MESH_SECRET,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("TOTAL").count(), 2, "{out}");
    assert!(
        !out.contains('\x1b'),
        "no terminal codes when not a TTY: {out:?}"
    );
}

#[test]
fn completions_name_the_subcommands() {
    let (code, out, err) = cli("redis://127.0.0.1:1", &["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    for sub in [
        "nodes", "routes", "send", "drain", "stats", "watch", "inbox",
    ] {
        assert!(out.contains(sub), "{sub} missing from the bash script");
    }
    assert!(out.contains("complete -F"), "not a bash completion script");
    for shell in ["zsh", "fish"] {
        let (code, out, err) = cli("redis://127.0.0.1:1", &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("watch"), "{shell}");
    }
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    for args in [
        &["frobnicate"][..],
        &["stats"],
        &["stats", "bad node"],
        &["watch", "--count", "0"],
        &["watch", "--interval", "1ms"],
        &["completions", "tcsh"],
        &["drain", "bad node"],
        &["routes", "get"],
    ] {
        let (code, _, err) = cli("redis://127.0.0.1:1", args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("router-cli: "), "{args:?}: {err}");
    }
}
