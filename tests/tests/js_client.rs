//! The JavaScript client package (`clients/js`, `wsroute-client`) under Node.js: its unit tests
//! against a scripted server and its TypeScript types (`tsc --noEmit`).

use std::path::PathBuf;

use serde_json::json;
use wsroute_tests::cluster::JWT_SECRET;
use wsroute_tests::node_js::{finish, node_major, require};
use wsroute_tests::{Cluster, patience, workspace_dir};

fn package_dir() -> PathBuf {
    workspace_dir().join("clients").join("js")
}

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
        // Per test; the file's own run counts as one too. Every wait inside has the patience.
        .arg(format!("--test-timeout={}", (patience() * 5).as_millis()))
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
    let report = finish(cmd, file, patience() * 6).await;
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
