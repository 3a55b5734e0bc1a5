//! The JavaScript client package (`clients/js`, `wsroute-client`) under Node.js: its unit tests
//! against a scripted server and its TypeScript types (`tsc --noEmit`), then its tests against
//! real clusters started here, one cluster per scenario (`clients/js/test/*.test.mjs`, which get
//! the nodes' addresses and process ids in `WSROUTE_TEST_CLUSTER`, and kill or drain nodes
//! themselves where their scenario says so).
//!
//! Presence has its own test (`the_js_client_watches_presence`), so that it can be run alone:
//! `cargo test -p wsroute-tests --test js_client presence`.

use std::path::PathBuf;

use serde_json::json;
use wsroute_tests::cluster::JWT_SECRET;
use wsroute_tests::node_js::{finish, node_major, require};
use wsroute_tests::{Cluster, NodeOpts, patience, workspace_dir};

fn package_dir() -> PathBuf {
    workspace_dir().join("clients").join("js")
}

/// The window of `--max-stored-per-minute`, which a test's resends may have to wait out.
const QUOTA_MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

/// `node --test FILE` in the package's directory, with the cluster (if any) in the environment;
/// asserts every test passed and returns the report.
async fn node_test(file: &str, cluster: Option<&Cluster>) -> String {
    let dir = package_dir();
    require(&dir.join("node_modules").join("ws"), "npm ci in clients/js");
    let mut cmd = tokio::process::Command::new("node");
    // Node.js 20 has a global WebSocket behind a flag; 22 and later have it on.
    if node_major() < 22 {
        cmd.arg("--experimental-websocket");
    }
    cmd.current_dir(&dir)
        .arg("--test")
        // Per test; the file's own run counts as one too. Every wait inside has the patience,
        // and the outbox test may wait out a minute of --max-stored-per-minute on top (its
        // resends to an inbox are refused with quota_exceeded and tried again): without that
        // minute here the run was cancelled before it could end, and said nothing of why.
        .arg(format!(
            "--test-timeout={}",
            (patience() * 5 + QUOTA_MINUTE).as_millis()
        ))
        .arg(dir.join("test").join(file));
    if let Some(c) = cluster {
        let nodes: Vec<_> = c
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id,
                    "ws": n.ws(""),
                    "http": n.http(""),
                    "pid": n.pid(),
                })
            })
            .collect();
        let env = json!({
            "nodes": nodes,
            "jwtSecret": JWT_SECRET,
            "patienceMs": patience().as_millis() as u64,
        });
        cmd.env("WSROUTE_TEST_CLUSTER", env.to_string());
    }
    let report = finish(cmd, file, patience() * 6 + QUOTA_MINUTE).await;
    eprintln!("{file}:\n{report}");
    assert!(report.contains("# fail 0"), "{report}");
    assert!(
        !report.contains("# pass 0"),
        "{file} ran no test:\n{report}"
    );
    report
}

#[tokio::test]
async fn the_js_client_passes_its_unit_tests_and_its_types_check() {
    node_test("unit.test.mjs", None).await;

    let dir = package_dir();
    let tsc = dir
        .join("node_modules")
        .join("typescript")
        .join("bin")
        .join("tsc");
    require(&tsc, "npm ci in clients/js");
    let mut cmd = tokio::process::Command::new("node");
    cmd.current_dir(&dir)
        .arg(&tsc)
        .args(["--noEmit", "-p", "."]);
    finish(cmd, "tsc --noEmit", patience() * 3).await;
}

/// Nodes that take tokens with no leeway, so that a session ends at its token's `exp`.
fn no_leeway(o: &mut NodeOpts) {
    o.extra.extend(["--jwt-leeway-secs".into(), "0".into()]);
}

#[tokio::test]
async fn the_js_client_sends_acks_gets_receipts_reconnects_and_refreshes_its_token() {
    let c = Cluster::start_with(2, no_leeway).await;
    node_test("cluster.test.mjs", Some(&c)).await;
}

#[tokio::test]
async fn the_js_client_loses_nothing_when_the_node_holding_both_ends_is_killed() {
    let c = Cluster::start(3).await;
    let report = node_test("outbox.test.mjs", Some(&c)).await;
    assert!(report.contains("lost 0"), "{report}");
}

#[tokio::test]
async fn the_js_client_follows_a_drain_to_a_node_it_knows() {
    let mut c = Cluster::start(2).await;
    node_test("drain.test.mjs", Some(&c)).await;
    let drained = c.nodes[0].wait_exit(patience()).await;
    assert!(drained.success(), "node1 ended its drain with {drained}");
}

/// Presence through the JS client (`watch`, `unwatch`, `presence`; docs/protocol.md).
#[tokio::test]
async fn the_js_client_watches_presence() {
    let c = Cluster::start(2).await;
    node_test("presence.test.mjs", Some(&c)).await;
}
