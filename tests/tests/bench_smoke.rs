//! The load generator stays honest: a short `router-cli bench messages` run against two real
//! nodes accounts for every message (none lost, duplicated or out of order), `bench connections`
//! reports what it held and the node's memory, and non-loopback targets are refused.

use serde_json::Value;
use wsroute_tests::{Cluster, binary};

/// Runs `router-cli --json bench ARGS`: (exit code, the JSON printed, stderr).
async fn bench(args: &[&str]) -> (i32, Value, String) {
    let out = tokio::process::Command::new(binary("router-cli"))
        .arg("--json")
        .arg("bench")
        .args(args)
        .output()
        .await
        .expect("router-cli runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` is not a count in {report:#}"))
}

#[tokio::test]
async fn bench_messages_accounts_for_every_message() {
    let c = Cluster::start(2).await;
    let (url1, url2) = (c.node(1).ws(""), c.node(2).ws(""));
    let (code, report, err) = bench(&[
        "messages",
        "--url",
        &url1,
        "--url",
        &url2,
        "--users",
        "20",
        "--duration",
        "2s",
        "--rate",
        "200",
    ])
    .await;
    assert_eq!(code, 0, "bench failed: {err}\n{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    let sent = count(&report, "sent");
    assert!(sent > 0, "{report:#}");
    assert!(count(&report, "sent_cross") > 0, "{report:#}");
    assert_eq!(count(&report, "acked_delivered"), sent, "{report:#}");
    assert_eq!(count(&report, "received"), sent, "{report:#}");
    for field in [
        "lost",
        "duplicates",
        "out_of_order",
        "acked_rejected",
        "unacked",
        "errors",
    ] {
        assert_eq!(count(&report, field), 0, "{field}: {report:#}");
    }
    assert!(
        count(&report["latency_us"]["end_to_end"], "count") > 0,
        "{report:#}"
    );
    assert!(
        count(&report["latency_us"]["ack"], "p99") >= count(&report["latency_us"]["ack"], "p50"),
        "{report:#}"
    );
}

#[tokio::test]
async fn bench_connections_reports_memory_per_connection() {
    let c = Cluster::start(1).await;
    let pid = c.node(1).pid().expect("the node runs").to_string();
    let url = c.node(1).ws("");
    let (code, report, err) = bench(&[
        "connections",
        "--url",
        &url,
        "--count",
        "50",
        "--hold",
        "1s",
        "--pid",
        &pid,
    ])
    .await;
    assert_eq!(code, 0, "bench failed: {err}\n{report:#}");
    assert_eq!(count(&report, "connections"), 50, "{report:#}");
    assert_eq!(count(&report, "dropped"), 0, "{report:#}");
    assert!(
        report["rss_per_connection_bytes"]
            .as_f64()
            .is_some_and(|b| b > 0.0),
        "{report:#}"
    );
    assert!(
        report["connect"]["per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{report:#}"
    );
}

#[tokio::test]
async fn bench_refuses_targets_off_this_machine() {
    for url in [
        "ws://10.1.2.3:8081/ws",
        "ws://[2001:db8::1]:8081/ws",
        "ws://example.com/ws",
    ] {
        let (code, _, err) = bench(&["messages", "--url", url, "--users", "2"]).await;
        assert_eq!(code, 2, "{url}: {err}");
        assert!(err.contains("loopback"), "{url}: {err}");
    }
}
