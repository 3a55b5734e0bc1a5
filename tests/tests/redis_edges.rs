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

/// A sweep of a node whose lease ran out, and that node coming back (a long pause, a partition
/// that healed), cannot interleave: the sweep used to read the node's index and delete what it
/// read in separate steps, so a node that re-registered in between lost its fresh routes for
/// good. Driven step by step with the node's own route-table code on a real Redis (a Redis
/// Cluster under `WSROUTE_TEST_REDIS=cluster`): the claim refuses a node whose lease is back,
/// and a node that comes back after the claim writes its routes only once the sweep is over.
#[tokio::test]
async fn a_sweep_and_the_node_coming_back_cannot_interleave() {
    use std::time::Duration;
    use wsroute_core::db::{NODE_HELD_CONNECTIONS, Redis};
    use wsroute_core::ids::ConnId;
    use wsroute_core::nodes::NodeRecord;
    use wsroute_server::metrics::Metrics;
    use wsroute_server::route::Route;
    use wsroute_server::route::membership::Membership;
    use wsroute_server::route::table::{Registration, RouteTable};
    use wsroute_tests::{keys, node_id, user_id};

    let redis = RedisServer::start().await;
    let db = Redis::open(&redis.url(), Duration::from_secs(2), NODE_HELD_CONNECTIONS)
        .expect("a Redis URL");
    let metrics = Metrics::new();
    let lease_ttl = Duration::from_secs(10);
    let ghost = node_id("ghost");
    let node = Membership::new(db.clone(), ghost.clone(), lease_ttl, metrics.clone());
    let table = RouteTable::new(db.clone(), ghost.clone(), metrics.clone());
    let sweeper = Membership::new(db.clone(), node_id("sweeper"), lease_ttl, metrics);
    let record = NodeRecord {
        node: ghost.clone(),
        grpc_addr: "127.0.0.1:1".into(),
        public_url: "ws://127.0.0.1:1/ws".into(),
        started_at_ms: 1,
        connections: 1,
        lease_left_ms: 0,
        draining: false,
        max_connections: 0,
    };
    let bob = Registration {
        user: user_id("bob"),
        route: Route {
            conn: ConnId::parse("c-bob").expect("a valid conn id"),
            node: ghost.clone(),
            device: None,
            connected_at_ms: 1,
        },
    };
    let lease = keys::node_lease(&ghost);
    let cmd = |name: &str, key: &str| {
        let mut c = redis::cmd(name);
        c.arg(key);
        c
    };
    let registered = || async {
        let listed: Option<bool> = redis
            .query(redis::cmd("SISMEMBER").arg(keys::nodes()).arg("ghost"))
            .await;
        let grpc: Option<String> = redis
            .query(redis::cmd("HGET").arg(keys::node_info(&ghost)).arg("grpc"))
            .await;
        (
            redis.routes_of_user("bob").await,
            redis.routes_on_node("ghost").await,
            listed == Some(true) && grpc.as_deref() == Some("127.0.0.1:1"),
        )
    };
    node.register_node(&record).await.expect("registers");
    table
        .register(std::slice::from_ref(&bob))
        .await
        .expect("route");
    assert_eq!(registered().await, (1, 1, true));

    // The lease runs out, and is back before a sweep claims the node: the claim refuses, and
    // takes nothing.
    let _: Option<u64> = redis.query(&cmd("DEL", &lease)).await;
    node.register_node(&record).await.expect("registers again");
    let claim = sweeper.claim_dead(&ghost).await.expect("claim runs");
    assert!(
        claim.is_none(),
        "a node with a lease was claimed: {claim:?}"
    );
    assert_eq!(
        registered().await,
        (1, 1, true),
        "the refused claim removed something"
    );
    let lock: Option<bool> = redis
        .query(&cmd("EXISTS", &keys::node_cleanup_lock(&ghost)))
        .await;
    assert_eq!(lock, Some(false), "a refused claim keeps no lock");

    // The lease runs out and a sweep claims the node; the node comes back while the sweep is
    // still removing what it claimed. Its routes, written again, survive the sweep.
    let _: Option<u64> = redis.query(&cmd("DEL", &lease)).await;
    let claim = sweeper
        .claim_dead(&ghost)
        .await
        .expect("claim runs")
        .expect("the lease is gone: claimed");
    let back = tokio::spawn(async move {
        node.register_node(&record).await?;
        table.register(std::slice::from_ref(&bob)).await
    });
    eventually("the node took its lease again", || async {
        let held: Option<bool> = redis.query(&cmd("EXISTS", &lease)).await;
        (held == Some(true)).then_some(())
    })
    .await;
    let users = sweeper
        .finish_sweep(claim)
        .await
        .expect("the sweep finishes");
    assert_eq!(users, vec![user_id("bob")]);
    back.await
        .expect("the node's task")
        .expect("the node registers again");
    assert_eq!(
        registered().await,
        (1, 1, true),
        "the node came back during a sweep and lost its routes or its record"
    );
}
