//! Redis edges on real nodes: a route-event subscription that goes silent (half-open) is noticed
//! and replaced, and nothing it missed leaves a stale route in the cache.

use std::time::Instant;

use serde_json::{Value, json};
use wsroute_tests::tcp_proxy::TcpProxy;
use wsroute_tests::{Client, Cluster, RedisServer, eventually};

/// `/readyz`: the status and, when not ready, the reason.
async fn readiness(url: &str) -> (u16, String) {
    let Ok(r) = reqwest::get(url).await else {
        return (0, "no answer".into());
    };
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Node 1 reaches Redis through a proxy that makes its route-event subscription go silent: the
/// connection stays open and nothing passes (a dead middlebox, a frozen primary). Meanwhile Bob,
/// online on node 2, opens a second device on node 3: node 1 misses that event. Node 1 must
/// notice within a few seconds (its `/readyz` says why), resubscribe, and drop its cache, so
/// that the next message to Bob reaches both devices rather than the one node 1 had cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_route_event_subscription_is_noticed_and_replaced() {
    let redis = RedisServer::start_with_args(&[]).await;
    let proxy = TcpProxy::start(redis.server_ports()[0]).await;
    let proxied = proxy.url();
    let c = Cluster::start_on(redis, 3, |o| {
        if o.id == "node1" {
            o.redis_url = Some(proxied.clone());
        }
    })
    .await;
    let ready_url = c.node(1).http("/readyz");

    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut phone = Client::connect(&c.node(2).ws("?user=bob&device=phone")).await;
    // Node 1 caches Bob's one route.
    let ack = alice.send_and_ack("bob", json!(1)).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(ack["devices"], 1);
    phone.expect_type("message").await;

    // The subscribers Redis sees that came through the proxy: node 1's.
    let mut conn = c.redis.conn().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    let silenced = list
        .lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("addr=")))
        .filter(|addr| proxy.silence(addr))
        .count();
    assert_eq!(silenced, 1, "node 1's subscription among: {list}");
    // Until the test has seen node 1 notice, it cannot resubscribe.
    proxy.refuse_new(true);
    let silent_since = Instant::now();

    // Bob's second device: the invalidation node 1 does not hear.
    let mut laptop = Client::connect(&c.node(3).ws("?user=bob&device=laptop")).await;

    let reason = eventually("node 1 notices its subscription is dead", || async {
        let (status, reason) = readiness(&ready_url).await;
        (status == 503).then_some(reason)
    })
    .await;
    let noticed = silent_since.elapsed();
    println!("node 1 not ready {noticed:?} after its subscription went silent: {reason}");
    assert_eq!(reason, "not subscribed to route events");
    assert!(noticed.as_secs() < 5, "noticed only after {noticed:?}");

    proxy.refuse_new(false);
    eventually("node 1 subscribed and ready again", || async {
        (readiness(&ready_url).await.0 == 200).then_some(())
    })
    .await;
    println!(
        "node 1 ready again {:?} after its subscription went silent",
        silent_since.elapsed()
    );

    // The cache was dropped: both of Bob's devices get the next message.
    let ack = alice.send_and_ack("bob", json!(2)).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(ack["devices"], 2, "a stale cached route: {ack}");
    let on_laptop = laptop.expect_type("message").await;
    assert_eq!(on_laptop["id"], ack["id"]);
    let on_phone = phone.expect_type("message").await;
    assert_eq!(on_phone["id"], ack["id"]);
}
