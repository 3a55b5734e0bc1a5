//! wsroute behind Redis Sentinel (`redis+sentinel://`, docs/protocol.md "Redis URLs"): a primary, one replica and
//! three `redis-sentinel` processes, three nodes. The primary is killed with -9; the sentinels
//! promote the replica; the nodes follow it: their routes are back on the new primary (one that
//! the replica never had included) and cross-node delivery works again within 15 s of the
//! promotion, on the same client connections.

use std::time::{Duration, Instant};

use serde_json::json;
use wsroute_tests::router_cli::{cli, cli_json};
use wsroute_tests::traffic::{Accounting, Endpoint, Traffic, TrafficOpts};
use wsroute_tests::{Client, Cluster, RedisServer, eventually, keys, metric, poll_until, user_id};

/// How soon after the promotion the nodes must be back in business.
const FOLLOW_WITHIN: Duration = Duration::from_secs(15);

/// The route entries (connection ids) `user` has on the server on `port`.
async fn routes_on(port: u16, user: &str) -> Option<Vec<String>> {
    let mut c = RedisServer::conn_to(port).await?;
    redis::cmd("HKEYS")
        .arg(keys::user_conns(&user_id(user)))
        .query_async(&mut c)
        .await
        .ok()
}

/// Sends `from` -> `to` until a send is acked `delivered` (a try while the nodes are still
/// finding the new primary may be rejected `unavailable` or kept in the inbox), then waits for
/// `to` to receive it. Gives up at `deadline`. Returns how many tries it took.
async fn deliver_by(
    from: &mut Client,
    to_user: &str,
    to: &mut Client,
    what: &str,
    deadline: Instant,
) -> u32 {
    let mut tries = 0;
    let mut pause = Duration::from_millis(20);
    loop {
        tries += 1;
        let body = json!(format!("{what} #{tries}"));
        let ack = from.send_and_ack(to_user, body.clone()).await;
        if ack["status"] == "delivered" {
            to.expect(
                |f| f["type"] == "message" && f["body"] == body,
                "the delivered message",
            )
            .await;
            return tries;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no send delivered in time; last ack {ack}"
        );
        // Polling backoff between tries, not a synchronisation.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_failover_without_clients_reconnecting() {
    let redis = RedisServer::start_sentinel().await;
    assert!(
        redis.url().starts_with("redis+sentinel://"),
        "{}",
        redis.url()
    );
    let (primary, replica) = (redis.server_ports()[0], redis.server_ports()[1]);
    let mut c = Cluster::start_on(redis, 3, |_| {}).await;

    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let mut dave = Client::connect(&c.node(3).ws_user("dave")).await;
    let far = Instant::now() + wsroute_tests::patience();
    deliver_by(&mut alice, "bob", &mut bob, "before", far).await;
    deliver_by(&mut bob, "dave", &mut dave, "before", far).await;
    deliver_by(&mut dave, "alice", &mut alice, "before", far).await;

    let users = [
        ("alice", alice.conn_id()),
        ("bob", bob.conn_id()),
        ("dave", dave.conn_id()),
    ];
    for (user, conn) in &users {
        for port in [primary, replica] {
            eventually(&format!("{user}'s route on {port}"), || async move {
                (routes_on(port, user).await? == [conn.clone()]).then_some(())
            })
            .await;
        }
    }

    // A write the replica never got: dave's route goes from the replica only (made writable for
    // this), as if the primary had fallen before replicating it. Only node3 putting its routes
    // back can bring it to the new primary.
    let mut r = RedisServer::conn_to(replica)
        .await
        .expect("replica reachable");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-read-only")
        .arg("no")
        .query_async(&mut r)
        .await
        .expect("CONFIG SET");
    let removed: u64 = redis::cmd("HDEL")
        .arg(keys::user_conns(&user_id("dave")))
        .arg(&users[2].1)
        .query_async(&mut r)
        .await
        .expect("HDEL on the replica");
    assert_eq!(removed, 1);

    c.redis.kill_server(primary);
    let killed = Instant::now();
    eventually("the sentinels promote the replica", || async {
        let named = c.redis.primary_all_sentinels_name().await?;
        let role = RedisServer::role(replica).await?;
        (named == replica && role == "master").then_some(())
    })
    .await;
    let promoted = Instant::now();
    println!(
        "replica promoted {:?} after the primary was killed",
        promoted - killed
    );
    let deadline = promoted + FOLLOW_WITHIN;

    // Every route back on the new primary, under the connection ids of the connections that
    // were open before: nobody reconnected.
    let back = poll_until(FOLLOW_WITHIN, || async {
        for (user, conn) in &users {
            if routes_on(replica, user).await.as_deref() != Some(std::slice::from_ref(conn)) {
                return false;
            }
        }
        true
    })
    .await;
    let mut missing = Vec::new();
    for (user, _) in &users {
        missing.push((user, routes_on(replica, user).await));
    }
    assert!(
        back,
        "routes not all back on the new primary within {FOLLOW_WITHIN:?}: {missing:?}"
    );
    let routes_back = promoted.elapsed();

    // Cross-node delivery, in every direction, on the same WebSocket connections.
    let t1 = deliver_by(&mut alice, "bob", &mut bob, "after", deadline).await;
    let t2 = deliver_by(&mut bob, "dave", &mut dave, "after", deadline).await;
    let t3 = deliver_by(&mut dave, "alice", &mut alice, "after", deadline).await;
    let delivering = promoted.elapsed();
    println!(
        "after the promotion: routes back in {routes_back:?}, delivery in {delivering:?} \
         (tries {t1}, {t2}, {t3})"
    );
    assert!(delivering < FOLLOW_WITHIN, "{delivering:?}");

    // No client reconnected: each node still holds its one connection, and no second hello
    // reached any client.
    for i in 1..=3 {
        let conns = metric(&c.node(i).http("/metrics"), "wsroute_connections ").await;
        assert_eq!(conns, 1.0, "node{i} connections");
    }
    for client in [&mut alice, &mut bob, &mut dave] {
        let frames = client.frames_until_pong().await;
        assert!(
            frames.iter().all(|f| f["type"] != "hello"),
            "a client saw a second hello: {frames:?}"
        );
    }

    // The nodes saw the primary move, and are ready on the new one.
    assert!(
        c.nodes
            .iter()
            .any(|n| n.log_text().contains("the Redis primary moved")),
        "no node logged following the new primary"
    );
    for n in &c.nodes {
        n.wait_ready().await;
    }

    // router-cli reads the route table through the sentinels too.
    let url = c.redis.url();
    let routes = cli_json(&url, &["routes", "get", "bob"]);
    assert_eq!(routes["connections"][0]["node"], "node2", "{routes}");
    let nodes = cli_json(&url, &["nodes", "list"]);
    assert_eq!(nodes.as_array().map(Vec::len), Some(3), "{nodes}");
}

/// The same failover under steady traffic, with a ledger: nothing acked `delivered` or `stored`
/// is lost and no connection gets an id twice. (A message stored on the old primary in the
/// instant before it died, and not yet replicated, would be lost with it: Redis replication is
/// asynchronous. Under this traffic every recipient is online, so messages are delivered live
/// and held by the nodes, not by Redis.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_traffic_loses_nothing_acked() {
    let redis = RedisServer::start_sentinel().await;
    let (primary, replica) = (redis.server_ports()[0], redis.server_ports()[1]);
    let mut c = Cluster::start_on(redis, 3, |_| {}).await;
    let endpoints: Vec<Endpoint> = c
        .nodes
        .iter()
        .map(|n| Endpoint {
            http: n.http(""),
            ws: n.ws(""),
        })
        .collect();
    let t = Traffic::start(endpoints, TrafficOpts::default()).await;
    // Traffic flows (a few hundred messages delivered), then the primary dies and the sentinels
    // promote the replica.
    let delivered = || t.ledger.account().delivered;
    eventually("traffic is delivered before the failover", || async {
        (delivered() >= 200).then_some(())
    })
    .await;
    c.redis.kill_server(primary);
    eventually("the sentinels promote the replica", || async {
        let named = c.redis.primary_all_sentinels_name().await?;
        let role = RedisServer::role(replica).await?;
        (named == replica && role == "master").then_some(())
    })
    .await;
    for n in &c.nodes {
        n.wait_ready().await;
    }
    // Traffic goes on, delivered again, on the new primary.
    let at_promotion = delivered();
    eventually("traffic is delivered after the failover", || async {
        (delivered() >= at_promotion + 300).then_some(())
    })
    .await;
    let a: Accounting = t.finish().await;
    a.print("sentinel failover");
    a.assert_kept("sentinel failover");
    assert!(a.delivered > 0);
}

#[test]
fn a_bad_sentinel_url_is_a_clear_error() {
    let (code, _, err) = cli(
        "redis+sentinel://:secret@127.0.0.1:1",
        &["routes", "get", "bob"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("master"), "{err}");
    assert!(!err.contains("secret"), "the password is not echoed: {err}");
}
