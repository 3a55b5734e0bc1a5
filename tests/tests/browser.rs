//! The try-it page: every node serves it (and the JavaScript client) itself, and in a real
//! headless Chromium two pages on two nodes see a message cross, and the sender's page follows
//! its node's drain to another node (`tests/browser/cross.mjs`); and the JavaScript client's own
//! tests against a scripted server (`tests/browser/client.test.mjs`).

use std::path::Path;
use std::time::{Duration, SystemTime};

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
    // follows a `reconnect` to (web/wsroute.js).
    let meta = html
        .lines()
        .find(|l| l.contains(r#"name="wsroute-nodes""#))
        .unwrap_or_else(|| panic!("the page names the nodes: {html}"));
    for n in 1..=2 {
        let origin = format!("ws://127.0.0.1:{}", c.node(n).ws_port);
        assert!(meta.contains(&origin), "{origin} in {meta}");
    }

    for (path, ctype, marker) in [
        ("/wsroute.js", "text/javascript", "export function connect("),
        ("/page.js", "text/javascript", "from \"./wsroute.js\""),
        ("/page.css", "text/css", ".log"),
    ] {
        let (status, got, _, body) = get(&node.http(path), None).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(got, format!("{ctype}; charset=utf-8"), "{path}");
        assert!(body.contains(marker), "{path} lacks {marker}");
    }

    // A Host header that could smuggle a directive into the policy is not echoed.
    let (status, _, csp, _) = get(&node.http("/"), Some("evil;script-src *")).await;
    assert_eq!(status, 200);
    assert!(csp.contains("connect-src 'self' ws://127.0.0.1:"), "{csp}");
    assert!(!csp.contains("evil"), "{csp}");
}

/// Runs `cmd` to its end (killed after `limit`), asserts it succeeded, and returns what it printed.
async fn finish(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> String {
    let run = cmd.kill_on_drop(true).output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {limit:?}"))
        .expect("node runs (is Node.js installed?)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{printed}",
        out.status
    );
    printed
}

/// Fails with what to run when the browser test's tools are missing.
fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{} not found ({what}): run `bash scripts/install-deps.sh`",
        path.display()
    );
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

#[tokio::test]
async fn the_javascript_client_passes_its_tests_against_a_scripted_server() {
    let dir = workspace_dir().join("tests").join("browser");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("--test")
        .arg(format!("--test-timeout={}", patience().as_millis()))
        .arg(dir.join("client.test.mjs"));
    let report = finish(cmd, "client.test.mjs", patience() * 2).await;
    assert!(report.contains("# fail 0"), "{report}");
}
