//! wsroute on a real three-master Redis Cluster (`redis+cluster://`): what only a cluster can
//! show. (The foundation suites also run whole against a cluster: `scripts/test.sh` runs them again
//! with `WSROUTE_TEST_REDIS=cluster`.)

use std::collections::HashSet;

use serde_json::json;
use wsroute_tests::{Client, Cluster, RedisServer, eventually, keys, user_id};

async fn cluster_of(nodes: usize) -> Cluster {
    Cluster::start_on(RedisServer::start_cluster(3).await, nodes, |_| {}).await
}

#[tokio::test]
async fn routes_and_inboxes_spread_over_the_masters_and_each_users_keys_share_one() {
    let c = cluster_of(2).await;
    assert!(c.redis.url().starts_with("redis+cluster://"));
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(Client::connect(&c.node(1 + i % 2).ws_user(u)).await);
    }

    // Every user's route entry is somewhere, and together they use more than one master.
    let mut masters = HashSet::new();
    for u in &users {
        assert_eq!(c.redis.routes_of_user(u).await, 1, "{u}");
        masters.insert(c.redis.server_of(&keys::user_conns(&user_id(u))).await);
    }
    assert!(masters.len() > 1, "all 12 users on one master: {masters:?}");
    assert_eq!(c.redis.routes_on_node("node1").await, 6);
    assert_eq!(c.redis.routes_on_node("node2").await, 6);

    // Cross-node sends through the cluster-backed route table.
    let ack = clients[0].send_and_ack("user1", json!("hi")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(clients[1].expect_type("message").await["from"], "user0");

    // A stored message: the inbox's list and hash sit on the user's master (one slot), and it is
    // delivered on connect.
    let ack = clients[0].send_and_ack("offline", json!({"n": 1})).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    let offline_user = user_id("offline");
    let ids = c.redis.server_of(&keys::inbox_ids(&offline_user)).await;
    let msgs = c.redis.server_of(&keys::inbox_msgs(&offline_user)).await;
    assert_eq!(ids, msgs);
    let mut offline = Client::connect(&c.node(2).ws_user("offline")).await;
    let m = offline.expect_type("message").await;
    assert_eq!(m["id"], ack["id"]);
}

#[tokio::test]
async fn a_killed_nodes_routes_are_removed_and_its_users_messages_stored() {
    let mut c = cluster_of(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let _bob = Client::connect(&c.node(2).ws_user("bob")).await;
    assert_eq!(
        alice.send_and_ack("bob", json!(1)).await["status"],
        "delivered"
    );
    c.nodes[1].kill();
    // The survivor sweeps node2's routes once its lease runs out (within 15 s).
    let redis = &c.redis;
    eventually("node2's routes are removed", || async {
        (redis.routes_on_node("node2").await == 0 && redis.routes_of_user("bob").await == 0)
            .then_some(())
    })
    .await;
    let ack = alice.send_and_ack("bob", json!(2)).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    // No Redis error on the way: the node stays ready.
    let r = reqwest::get(c.node(1).http("/readyz")).await.expect("http");
    assert_eq!(r.status(), 200);
}
