//! The end-to-end harness: a real Redis, real `wsroute-server` processes on loopback ports, and
//! clients that speak the real protocol. Every wait is a condition with a deadline, never a sleep.

pub mod client;
pub mod cluster;
pub mod ledger;
pub mod netns;
pub mod node_js;
pub mod redis_server;
pub mod router_cli;
pub mod standard_grpc;
pub mod tcp_proxy;
pub mod traffic;
pub mod webhook_receiver;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use wsroute_core::ids::{NodeId, UserId};

pub use client::Client;
pub use cluster::{Cluster, Node, NodeOpts};
pub use redis_server::RedisServer;
/// The Redis key layout the nodes use (tests read and alter route entries by it).
pub use wsroute_core::keys;

/// A user id a test names; panics if the test names an invalid one.
pub fn user_id(user: &str) -> UserId {
    UserId::parse(user).expect("a test names a valid user id")
}

/// A node id a test names; panics if the test names an invalid one.
pub fn node_id(node: &str) -> NodeId {
    NodeId::parse(node).expect("a test names a valid node id")
}

/// Patience for conditions; CI can raise it with `WSROUTE_TEST_PATIENCE_MS`.
pub fn patience() -> Duration {
    std::env::var("WSROUTE_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(20))
}

/// Waits until `check` returns `Some`, polling, for at most `patience()`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {:?} waiting for: {what}",
            patience()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Polls `check` until it holds or `limit` passes; true if it held. Unlike [`eventually`] it
/// does not fail the test: for "wait for this, then let the accounting say what happened".
pub async fn poll_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Ports handed out by [`free_port`]: 20000-31999, below the kernel's ephemeral range
/// (32768-60999 on Linux by default).
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A free TCP port on 127.0.0.1 for a server a test starts. Taken below the ephemeral range, so
/// that no outgoing connection (the tests make thousands) can take it as its source port between
/// this check and the server binding it; and never the same twice in one test process. (A port
/// from binding port 0 is an ephemeral one: a node once lost its port that way.)
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    // Test processes started one after another begin at different places.
    let offset = (std::process::id() * 7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (PORTS.start + (offset + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}

/// The workspace's build output directory (`target/`, or `CARGO_TARGET_DIR`).
fn target_root() -> PathBuf {
    match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => workspace_dir().join("target"),
    }
}

/// The workspace's build output directory for this profile.
fn target_dir() -> PathBuf {
    target_root().join("debug")
}

/// The repository root.
pub fn workspace_dir() -> PathBuf {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// Where tests keep what a person may want to look at afterwards (screenshots):
/// `target/test-artifacts/`, created on first use.
pub fn artifacts_dir() -> PathBuf {
    let dir = target_root().join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("the test artifacts directory can be created");
    dir
}

/// A binary of the workspace (`WSROUTE_BIN_DIR` overrides where to look).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var("WSROUTE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| target_dir());
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build --workspace --bins`) or set WSROUTE_BIN_DIR",
        path.display()
    );
    path
}

/// A node's whole `/metrics` page (Prometheus text format).
pub async fn metrics_text(metrics_url: &str) -> String {
    reqwest::get(metrics_url)
        .await
        .expect("the node answers /metrics")
        .text()
        .await
        .expect("metrics are text")
}

/// One sample of a node's Prometheus metric (`name` with its labels, e.g.
/// `wsroute_messages_total{outcome="stored"}`), 0 when absent.
pub async fn metric(metrics_url: &str, name: &str) -> f64 {
    metrics_text(metrics_url)
        .await
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A gRPC request carrying `authorization: Bearer <key>` (API key or mesh secret).
pub fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("keys are ASCII"),
    );
    req
}

/// Mints an HS256 client token.
pub fn token(secret: &str, user: &str, valid_for_secs: i64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: user,
            exp: now + valid_for_secs,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token encodes")
}
