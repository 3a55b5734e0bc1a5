//! The try-it page: every node serves it (and the JavaScript client package it uses) itself, and
//! in a real headless Chromium two pages on two nodes see a message cross through the package,
//! with its receipts, and the sender's page follows its node's drain to another node
//! (`tests/browser/cross.mjs`). The package's own tests: `js_client.rs`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use wsroute_tests::node_js::{finish, require};
use wsroute_tests::{Cluster, artifacts_dir, patience, workspace_dir};

/// GET `url` (optionally with another `Host` header): status, content type, CSP, body.
async fn get(url: &str, host: Option<&str>) -> (u16, String, String, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let r = req.send().await.expect("the node answers");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (ctype, csp) = (header("content-type"), header("content-security-policy"));
    (
        r.status().as_u16(),
        ctype,
        csp,
        r.text().await.expect("a body"),
    )
}

#[tokio::test]
async fn a_node_serves_the_page_and_the_client_with_a_strict_policy() {
    let c = Cluster::start(2).await;
    let node = c.node(1);

    let (status, ctype, csp, html) = get(&node.http("/"), None).await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert!(
        html.contains(r#"<script type="module" src="page.js">"#),
        "{html}"
    );
    // Only this origin's scripts, nothing inline; connections to this host (ws: included) and
    // to the other nodes, where a drain may send the page.
    let host = format!("127.0.0.1:{}", node.ws_port);
    let other = format!("ws://127.0.0.1:{}", c.node(2).ws_port);
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "style-src 'self';",
        "frame-ancestors 'none'",
        &format!("connect-src 'self' ws://{host} wss://{host} {other};"),
    ] {
        assert!(csp.contains(directive), "CSP lacks `{directive}`: {csp}");
    }
    // The same nodes are named in the page: the only hosts besides its own that its client
    // follows a `reconnect` to (clients/js/wsroute-client.js).
    let meta = html
        .lines()
        .find(|l| l.contains(r#"name="wsroute-nodes""#))
        .unwrap_or_else(|| panic!("the page names the nodes: {html}"));
    for n in 1..=2 {
        let origin = format!("ws://127.0.0.1:{}", c.node(n).ws_port);
        assert!(meta.contains(&origin), "{origin} in {meta}");
    }

    // The package's module, as it is in clients/js, at its path and at the old `/wsroute.js`.
    let package = std::fs::read_to_string(
        workspace_dir()
            .join("clients")
            .join("js")
            .join("wsroute-client.js"),
    )
    .expect("the package's module");
    for (path, ctype, marker) in [
        (
            "/wsroute-client.js",
            "text/javascript",
            "export function connect(",
        ),
        ("/wsroute.js", "text/javascript", "export function connect("),
        (
            "/page.js",
            "text/javascript",
            "from \"./wsroute-client.js\"",
        ),
        ("/page.css", "text/css", ".log"),
    ] {
        let (status, got, _, body) = get(&node.http(path), None).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(got, format!("{ctype}; charset=utf-8"), "{path}");
        assert!(body.contains(marker), "{path} lacks {marker}");
        if path.starts_with("/wsroute") {
            assert_eq!(body, package, "{path} is the package's module");
        }
    }

    // A Host header that could smuggle a directive into the policy is not echoed.
    let (status, _, csp, _) = get(&node.http("/"), Some("evil;script-src *")).await;
    assert_eq!(status, 200);
    assert!(csp.contains("connect-src 'self' ws://127.0.0.1:"), "{csp}");
    assert!(!csp.contains("evil"), "{csp}");
}

#[tokio::test]
async fn two_pages_on_two_nodes_in_chromium_see_a_message_cross_and_follow_a_drain() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = workspace_dir().join("tests").join("browser");
    require(Path::new(&chromium), "Debian's chromium");
    require(
        &dir.join("node_modules").join("playwright-core"),
        "npm ci in tests/browser",
    );

    // A third node for alice's page to move to when node1 drains: still across nodes from bob.
    let mut c = Cluster::start(3).await;
    let pid = c.node(1).pid().expect("node1 runs");
    let shot = artifacts_dir().join("browser-cross.png");
    let started = SystemTime::now();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("cross.mjs"))
        .arg(c.node(1).http(""))
        .arg(c.node(2).http(""))
        .arg(&shot)
        .arg(pid.to_string())
        .env("CHROMIUM", &chromium)
        .env(
            "WSROUTE_BROWSER_WAIT_MS",
            patience().as_millis().to_string(),
        )
        .env(
            "WSROUTE_BROWSER_RUN_MS",
            (patience() * 4).as_millis().to_string(),
        );
    let out = finish(cmd, "cross.mjs", patience() * 5).await;
    eprintln!("cross.mjs:\n{out}");

    let png = std::fs::read(&shot).expect("cross.mjs wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );
    let written = std::fs::metadata(&shot)
        .and_then(|m| m.modified())
        .expect("the screenshot has a modification time");
    assert!(
        written + Duration::from_secs(1) >= started,
        "{} is left over from an earlier run",
        shot.display()
    );
    println!("screenshot: {}", shot.display());

    let drained = c.nodes[0].wait_exit(patience()).await;
    assert!(drained.success(), "node1 ended its drain with {drained}");
}
