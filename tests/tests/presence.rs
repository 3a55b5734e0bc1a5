//! Presence (docs/protocol.md, presence) against real nodes: `watch`/`unwatch` frames and the `presence`
//! frames that follow a watched user's connections across the cluster, `--max-watch`,
//! `--presence-policy token`, bad input, a watched user's node killed with -9, the HTTP
//! `GET /v1/users/{user}/presence`, and what presence costs per connect and disconnect on 8 nodes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsroute_tests::cluster::{API_KEY, JWT_SECRET};
use wsroute_tests::{Client, Cluster, metric, patience};

/// How long a presence change may take to reach a watcher on another node: one pub/sub hop, one
/// HLEN and a queued frame take milliseconds; the margin is for a loaded CI machine.
const PROMPT: Duration = Duration::from_secs(3);

/// The next `presence` frame about `user` (other frames stay buffered), and how long it took.
async fn presence_of(c: &mut Client, user: &str) -> (bool, u64, Duration) {
    let started = Instant::now();
    let f = c
        .expect(
            |f| f["type"] == "presence" && f["user"] == user,
            &format!("presence of {user}"),
        )
        .await;
    let devices = f["devices"].as_u64().expect("devices is a count");
    let online = f["online"].as_bool().expect("online is a bool");
    assert_eq!(online, devices > 0, "online iff devices > 0: {f}");
    (online, devices, started.elapsed())
}

/// Every `presence` frame that arrived before a ping's pong (none may be on its way: frames for
/// a connection are queued in order, and the pong is queued after any already due).
async fn presence_frames_now(c: &mut Client) -> Vec<Value> {
    c.frames_until_pong()
        .await
        .into_iter()
        .filter(|f| f["type"] == "presence")
        .collect()
}

/// The next `error` frame.
async fn error_of(c: &mut Client) -> Value {
    c.expect_type("error").await
}

async fn watch(c: &mut Client, users: &[&str]) {
    c.send_json(json!({"type":"watch","users":users})).await;
}

async fn unwatch(c: &mut Client, users: &[&str]) {
    c.send_json(json!({"type":"unwatch","users":users})).await;
}

/// A node's `wsroute_presence_watches` gauge: the (connection, user) watches it keeps.
async fn watches_on(c: &Cluster, node: usize) -> f64 {
    metric(&c.node(node).http("/metrics"), "wsroute_presence_watches ").await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// An HS256 client token for `sub` with a `watch` claim.
fn token_watching(sub: &str, watch: Value) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        watch: Value,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub, exp, watch },
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token encodes")
}

#[tokio::test]
async fn a_watcher_follows_a_users_devices_across_nodes_in_order() {
    let c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    watch(&mut alice, &["bob"]).await;
    let (online, devices, _) = presence_of(&mut alice, "bob").await;
    assert_eq!((online, devices), (false, 0), "the answer to watch");

    // Each change timed from the start of the connect or close that makes it.
    let mut timings = Vec::new();
    let started = Instant::now();
    let phone = Client::connect(&c.node(2).ws("?user=bob&device=phone")).await;
    let (online, devices, _) = presence_of(&mut alice, "bob").await;
    assert_eq!((online, devices), (true, 1), "first device on node2");
    timings.push(started.elapsed());

    let started = Instant::now();
    let laptop = Client::connect(&c.node(3).ws("?user=bob&device=laptop")).await;
    let (online, devices, _) = presence_of(&mut alice, "bob").await;
    assert_eq!((online, devices), (true, 2), "second device on node3");
    timings.push(started.elapsed());

    let started = Instant::now();
    phone.close().await;
    let (online, devices, _) = presence_of(&mut alice, "bob").await;
    assert_eq!((online, devices), (true, 1), "node2's device left");
    timings.push(started.elapsed());

    let started = Instant::now();
    laptop.close().await;
    let (online, devices, _) = presence_of(&mut alice, "bob").await;
    assert_eq!((online, devices), (false, 0), "the last device left");
    timings.push(started.elapsed());

    println!(
        "presence changes reached the watcher on node1 after {timings:?} (from the start of each connect or close)"
    );
    for t in &timings {
        assert!(*t < PROMPT, "a change took {t:?}: {timings:?}");
    }
    // Exactly one frame per change: nothing repeated or left over.
    let extra = presence_frames_now(&mut alice).await;
    assert!(extra.is_empty(), "unexpected presence frames: {extra:?}");
}

#[tokio::test]
async fn the_default_max_watch_is_1000_and_past_it_nothing_changes() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let names: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    watch(&mut alice, &refs).await;
    let frames = alice
        .collect_until(patience(), |f| {
            f.iter().filter(|f| f["type"] == "presence").count() >= 1000
        })
        .await;
    let mut told: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "presence")
        .map(|f| f["user"].as_str().expect("user"))
        .collect();
    told.sort_unstable();
    let mut want = refs.clone();
    want.sort_unstable();
    assert_eq!(told, want, "one presence frame per watched user");
    assert_eq!(watches_on(&c, 1).await, 1000.0);

    // One more is past the limit: refused, nothing added.
    watch(&mut alice, &["one-more"]).await;
    let e = error_of(&mut alice).await;
    assert_eq!(e["code"], "too_many", "{e}");
    // A list longer than the limit on its own.
    let long: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    watch(&mut alice, &long).await;
    let e = error_of(&mut alice).await;
    assert_eq!(e["code"], "too_many", "{e}");
    assert_eq!(watches_on(&c, 1).await, 1000.0, "nothing added");

    // Users already watched take no room: watching some again is answered, not refused.
    watch(&mut alice, &["u1", "u2"]).await;
    assert_eq!(presence_of(&mut alice, "u1").await.1, 0);
    assert_eq!(presence_of(&mut alice, "u2").await.1, 0);

    // "one-more" was not watched: its connect is told to a watcher that asked for it (on the
    // same node), not to alice.
    let mut carol = Client::connect(&c.node(1).ws_user("carol")).await;
    watch(&mut carol, &["one-more"]).await;
    assert_eq!(presence_of(&mut carol, "one-more").await.1, 0);
    let _one_more = Client::connect(&c.node(2).ws_user("one-more")).await;
    assert_eq!(presence_of(&mut carol, "one-more").await.1, 1);
    let told = presence_frames_now(&mut alice).await;
    assert!(told.is_empty(), "alice was told {told:?}");

    // Unwatching makes room again.
    unwatch(&mut alice, &["u0"]).await;
    watch(&mut alice, &["one-more"]).await;
    assert_eq!(presence_of(&mut alice, "one-more").await.1, 1);
    assert_eq!(watches_on(&c, 1).await, 1001.0, "alice 1000 and carol 1");
}

#[tokio::test]
async fn unwatch_stops_the_frames_and_a_closed_watcher_leaves_nothing() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut carol = Client::connect(&c.node(1).ws_user("carol")).await;
    watch(&mut alice, &["bob", "dave"]).await;
    watch(&mut carol, &["bob"]).await;
    presence_of(&mut alice, "bob").await;
    presence_of(&mut alice, "dave").await;
    presence_of(&mut carol, "bob").await;
    let url = c.node(1).http("/metrics");
    assert_eq!(watches_on(&c, 1).await, 3.0);
    assert_eq!(metric(&url, "wsroute_presence_watchers ").await, 2.0);
    assert_eq!(metric(&url, "wsroute_presence_watched_users ").await, 2.0);

    unwatch(&mut alice, &["bob", "nobody-watched"]).await;
    let _bob = Client::connect(&c.node(2).ws_user("bob")).await;
    // carol still watches bob: once she hears, alice would have been told too.
    assert_eq!(presence_of(&mut carol, "bob").await.1, 1);
    let told = presence_frames_now(&mut alice).await;
    assert!(told.is_empty(), "alice unwatched bob but was told {told:?}");
    assert_eq!(watches_on(&c, 1).await, 2.0);

    // A watcher that leaves takes its watches with it.
    alice.close().await;
    carol.close().await;
    eventually_metric(&url, "wsroute_presence_watches ", 0.0).await;
    assert_eq!(metric(&url, "wsroute_presence_watchers ").await, 0.0);
    assert_eq!(metric(&url, "wsroute_presence_watched_users ").await, 0.0);
}

async fn eventually_metric(url: &str, name: &str, want: f64) {
    wsroute_tests::eventually(&format!("{name} = {want}"), || async {
        (metric(url, name).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn policy_token_allows_only_the_users_in_the_watch_claim() {
    let c = Cluster::start_with(2, |o| {
        o.extra = vec!["--presence-policy".into(), "token".into()];
    })
    .await;
    let t = token_watching("alice", json!(["bob"]));
    let mut alice = Client::connect(&c.node(1).ws(&format!("?token={t}"))).await;
    watch(&mut alice, &["bob"]).await;
    assert_eq!(
        presence_of(&mut alice, "bob").await.1,
        0,
        "bob is in the claim"
    );
    watch(&mut alice, &["carol"]).await;
    let e = error_of(&mut alice).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("carol")),
        "{e}"
    );
    // All or nothing: bob (allowed, watched already) and carol (not allowed) changes nothing.
    watch(&mut alice, &["bob", "carol"]).await;
    assert_eq!(error_of(&mut alice).await["code"], "forbidden");
    assert_eq!(watches_on(&c, 1).await, 1.0, "only bob is watched");

    // A token without the claim may watch nobody.
    let plain = wsroute_tests::token(JWT_SECRET, "erin", 600);
    let mut erin = Client::connect(&c.node(1).ws(&format!("?token={plain}"))).await;
    watch(&mut erin, &["bob"]).await;
    assert_eq!(error_of(&mut erin).await["code"], "forbidden");

    // Dev auth has no token: its `?watch=` stands for the claim.
    let mut dev = Client::connect(&c.node(1).ws("?user=frank&watch=carol")).await;
    watch(&mut dev, &["carol"]).await;
    assert_eq!(presence_of(&mut dev, "carol").await.1, 0);
    watch(&mut dev, &["bob"]).await;
    assert_eq!(error_of(&mut dev).await["code"], "forbidden");

    // What is allowed is told as under the open policy.
    let _carol = Client::connect(&c.node(2).ws_user("carol")).await;
    assert_eq!(presence_of(&mut dev, "carol").await.1, 1);
    let _bob = Client::connect(&c.node(2).ws_user("bob")).await;
    assert_eq!(presence_of(&mut alice, "bob").await.1, 1);
    assert!(
        presence_frames_now(&mut alice)
            .await
            .iter()
            .all(|f| f["user"] != "carol"),
        "alice was refused carol"
    );

    // A refreshed token's claim is the allowance from then on: bob is dropped, carol allowed.
    let fresh = token_watching("alice", json!(["carol"]));
    alice
        .send_json(json!({"type":"refresh","token":fresh}))
        .await;
    alice.expect_type("refreshed").await;
    assert_eq!(
        watches_on(&c, 1).await,
        1.0,
        "frank's carol; alice's bob ended"
    );
    watch(&mut alice, &["carol"]).await;
    assert_eq!(presence_of(&mut alice, "carol").await.1, 1);
}

#[tokio::test]
async fn bad_watch_frames_get_an_error_and_change_nothing() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-watch".into(), "5".into()];
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    watch(&mut alice, &["bob"]).await;
    presence_of(&mut alice, "bob").await;

    let huge: Vec<String> = (0..3000).map(|i| format!("x{i}")).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type":"watch"}), "bad_field"),
        (json!({"type":"watch","users":"carol"}), "bad_field"),
        (json!({"type":"watch","users":{"carol":true}}), "bad_field"),
        (json!({"type":"watch","users":null}), "bad_field"),
        (json!({"type":"watch","users":["carol", 7]}), "bad_field"),
        (
            json!({"type":"watch","users":["carol", "no spaces"]}),
            "bad_field",
        ),
        (json!({"type":"watch","users":["carol", ""]}), "bad_field"),
        (
            json!({"type":"watch","users":["carol", "x".repeat(200)]}),
            "bad_field",
        ),
        (json!({"type":"watch","users":huge}), "too_many"),
        (
            json!({"type":"watch","users":["a","b","c","d","e"]}),
            "too_many",
        ),
        (json!({"type":"unwatch","users":"bob"}), "bad_field"),
        (
            json!({"type":"unwatch","users":["bob", "bad id"]}),
            "bad_field",
        ),
        (json!({"type":"unwatch"}), "bad_field"),
    ];
    for (frame, code) in &cases {
        alice.send_json(frame.clone()).await;
        let e = error_of(&mut alice).await;
        assert_eq!(e["code"], *code, "{frame} -> {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    assert_eq!(watches_on(&c, 1).await, 1.0, "still bob alone");
    // bob is still watched (the bad unwatches removed nothing), carol never was.
    let _carol = Client::connect(&c.node(1).ws_user("carol")).await;
    let _bob = Client::connect(&c.node(1).ws_user("bob")).await;
    assert_eq!(presence_of(&mut alice, "bob").await.1, 1);
    let told = presence_frames_now(&mut alice).await;
    assert!(told.is_empty(), "told {told:?}");
    let refused = metric(
        &c.node(1).http("/metrics"),
        "wsroute_client_frames_refused_total{code=\"bad_field\"}",
    )
    .await;
    assert_eq!(refused, 11.0);
}

#[tokio::test]
async fn the_http_presence_endpoint_needs_the_api_key() {
    let c = Cluster::start(3).await;
    let get = |path: &str, key: Option<&str>| {
        let url = c.node(1).http(path);
        let key = key.map(str::to_owned);
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let resp = req.send().await.expect("http works");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, v) = get("/v1/users/bob/presence", None).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"], "unauthorized");
    let (status, _) = get("/v1/users/bob/presence", Some("wrong-key")).await;
    assert_eq!(status, 401);
    let (status, v) = get("/v1/users/bad%20user/presence", Some(API_KEY)).await;
    assert_eq!(status, 400, "{v}");

    let (status, v) = get("/v1/users/bob/presence", Some(API_KEY)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"user":"bob","online":false,"devices":[]}));

    let before = now_ms();
    let phone = Client::connect(&c.node(2).ws("?user=bob&device=phone")).await;
    let desk = Client::connect(&c.node(3).ws_user("bob")).await;
    let (status, v) = get("/v1/users/bob/presence", Some(API_KEY)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user"], "bob");
    assert_eq!(v["online"], true);
    let devices = v["devices"].as_array().expect("a list");
    assert_eq!(devices.len(), 2, "{v}");
    let of = |conn: &str| {
        devices
            .iter()
            .find(|d| d["conn_id"] == conn)
            .unwrap_or_else(|| panic!("{conn} not in {v}"))
    };
    let p = of(&phone.conn_id());
    assert_eq!(
        (p["node"].clone(), p["device"].clone()),
        (json!("node2"), json!("phone"))
    );
    let d = of(&desk.conn_id());
    assert_eq!(
        (d["node"].clone(), d["device"].clone()),
        (json!("node3"), Value::Null)
    );
    for dev in devices {
        let at = dev["connected_at"].as_i64().expect("unix ms");
        assert!((before - 1000..=now_ms() + 1000).contains(&at), "{dev}");
    }
    // Oldest first.
    assert!(devices[0]["connected_at"].as_i64() <= devices[1]["connected_at"].as_i64());

    // An API key also works on a node where the user is not connected, and the answer follows.
    phone.close().await;
    desk.close().await;
    let (status, v) = get("/v1/users/bob/presence", Some(API_KEY)).await;
    assert_eq!((status, v["online"].clone()), (200, json!(false)), "{v}");
}

#[tokio::test]
async fn a_watched_users_node_killed_with_9_turns_offline_once_swept() {
    let mut c = Cluster::start(3).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    watch(&mut alice, &["bob"]).await;
    assert_eq!(presence_of(&mut alice, "bob").await.1, 0);
    let _bob = Client::connect(&c.node(2).ws_user("bob")).await;
    assert_eq!(presence_of(&mut alice, "bob").await.1, 1);

    c.nodes[1].kill();
    let (online, devices, took) = presence_of(&mut alice, "bob").await;
    println!("offline reached the watcher {took:?} after node2 was killed with -9");
    assert_eq!((online, devices), (false, 0));
    // The lease runs out within 10 s of the last renewal, and a sweep runs every 2 s.
    assert!(took < Duration::from_secs(15), "{took:?}");
    let extra = presence_frames_now(&mut alice).await;
    assert!(extra.is_empty(), "{extra:?}");
}

/// What one connect and disconnect cost, summed over the cluster.
#[derive(Debug)]
struct Cost {
    /// Redis commands by name (INFO commandstats: commands run inside scripts count too).
    commands: std::collections::BTreeMap<String, u64>,
    /// Route events heard (`inv`), over every node.
    events: f64,
    /// Device counts read for presence (one HLEN each), over every node.
    presence_reads: f64,
    /// Presence read rounds (one pipeline each), over every node.
    presence_rounds: f64,
}

async fn sum_metric(c: &Cluster, name: &str) -> f64 {
    let mut total = 0.0;
    for n in &c.nodes {
        total += metric(&n.http("/metrics"), name).await;
    }
    total
}

const INV_HEARD: &str = "wsroute_route_events_total{kind=\"invalidate\"}";
const PRESENCE_READS: &str = "wsroute_presence_reads_total";
const PRESENCE_ROUNDS: &str = "wsroute_redis_operations_total{op=\"presence\"}";

/// Connects and disconnects `users` one at a time (user i on node i mod 8), waiting after each
/// step until every node heard its event and, with `watchers`, until each watcher was told.
async fn connect_and_leave(c: &Cluster, users: &[String], watchers: &mut [Client]) -> Cost {
    let nodes = c.nodes.len() as f64;
    let before = c.redis.command_calls().await;
    let events0 = sum_metric(c, INV_HEARD).await;
    let reads0 = sum_metric(c, PRESENCE_READS).await;
    let rounds0 = sum_metric(c, PRESENCE_ROUNDS).await;
    let mut heard = events0;
    for (i, user) in users.iter().enumerate() {
        let client = Client::connect(&c.nodes[i % c.nodes.len()].ws_user(user)).await;
        heard += nodes;
        wait_events(c, heard).await;
        for w in watchers.iter_mut() {
            assert_eq!(presence_of(w, user).await.1, 1);
        }
        client.close().await;
        heard += nodes;
        wait_events(c, heard).await;
        for w in watchers.iter_mut() {
            assert_eq!(presence_of(w, user).await.1, 0);
        }
    }
    let after = c.redis.command_calls().await;
    let commands = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    Cost {
        commands,
        events: sum_metric(c, INV_HEARD).await - events0,
        presence_reads: sum_metric(c, PRESENCE_READS).await - reads0,
        presence_rounds: sum_metric(c, PRESENCE_ROUNDS).await - rounds0,
    }
}

async fn wait_events(c: &Cluster, want: f64) {
    wsroute_tests::eventually("every node heard the route event", || async {
        (sum_metric(c, INV_HEARD).await >= want).then_some(())
    })
    .await;
}

/// Per connect + disconnect: `name`'s count in `cost`, divided by `pairs`.
fn per_pair(cost: &Cost, name: &str, pairs: usize) -> f64 {
    cost.commands.get(name).copied().unwrap_or(0) as f64 / pairs as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_presence_costs_per_connect_and_disconnect_on_8_nodes() {
    let c = Cluster::start(8).await;
    let n = 16;
    let names = |prefix: &str| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();

    // The first connect on a fresh Redis loads the register script (its pipeline runs twice):
    // kept out of the figures.
    connect_and_leave(&c, &["warm-up".to_owned()], &mut []).await;
    // Nobody watches anyone.
    let unwatched = connect_and_leave(&c, &names("a"), &mut []).await;

    // A watcher on every node, each watching the next users.
    let watched_users = names("b");
    let refs: Vec<&str> = watched_users.iter().map(String::as_str).collect();
    let mut watchers = Vec::new();
    let heard_before_watchers = sum_metric(&c, INV_HEARD).await;
    for node in &c.nodes {
        let mut w = Client::connect(&node.ws_user(&format!("watcher-{}", node.id))).await;
        watch(&mut w, &refs).await;
        for u in &refs {
            presence_of(&mut w, u).await;
        }
        watchers.push(w);
    }
    // The watchers' own connects are route events too: every node hears them before the count
    // starts, so that a late one is not counted as the watched users' (a race seen under load).
    wait_events(
        &c,
        heard_before_watchers + (c.nodes.len() * c.nodes.len()) as f64,
    )
    .await;
    let watched = connect_and_leave(&c, &watched_users, &mut watchers).await;

    // The watchers stay, but the users coming and going are not among those they watch.
    let others = connect_and_leave(&c, &names("c"), &mut []).await;

    let line = |what: &str, cost: &Cost| {
        format!(
            "{what}: per connect+disconnect: route events heard {:.1}, presence HLEN {:.2} in {:.2} rounds; Redis commands: publish {:.2}, hset {:.2}, hdel {:.2}, evalsha {:.2}, hlen {:.2} (1 of them in the register script), llen {:.2}; all commands {:?}",
            cost.events / n as f64,
            cost.presence_reads / n as f64,
            cost.presence_rounds / n as f64,
            per_pair(cost, "publish", n),
            per_pair(cost, "hset", n),
            per_pair(cost, "hdel", n),
            per_pair(cost, "evalsha", n),
            per_pair(cost, "hlen", n),
            per_pair(cost, "llen", n),
            cost.commands,
        )
    };
    println!("{}", line("no watchers", &unwatched));
    println!("{}", line("a watcher on each of 8 nodes", &watched));
    println!("{}", line("watchers of other users", &others));

    // The route events are what the cluster exchanged before presence: one publish per connect
    // and per disconnect, heard by each of the 8 nodes.
    for cost in [&unwatched, &watched, &others] {
        assert_eq!(cost.events, (2 * n * 8) as f64);
        assert_eq!(per_pair(cost, "publish", n), 2.0);
    }
    // Nobody watching those users: no presence read at all, and Redis sees what it did before
    // (the register script's own HLEN, nothing else).
    for cost in [&unwatched, &others] {
        assert_eq!(cost.presence_reads, 0.0);
        assert_eq!(per_pair(cost, "hlen", n), 1.0);
    }
    // Watched on every node: each node that watches reads the count once per event (no more),
    // and only those reads are added.
    let reads = watched.presence_reads / n as f64;
    assert!(
        (16.0..=17.0).contains(&reads),
        "{reads} reads per connect+disconnect"
    );
    assert_eq!(
        per_pair(&watched, "hlen", n) - 1.0,
        reads,
        "every added HLEN is a presence read"
    );
    for cmd in ["publish", "hset", "hdel", "evalsha", "llen"] {
        assert_eq!(
            per_pair(&watched, cmd, n),
            per_pair(&unwatched, cmd, n),
            "{cmd} is the same with watchers"
        );
    }
}

#[tokio::test]
async fn watched_counts_are_read_again_after_a_lost_subscription_or_a_node_registering() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    watch(&mut alice, &["bob"]).await;
    assert_eq!(presence_of(&mut alice, "bob").await.1, 0);

    // A route of bob's appears with no event (as if its event had been missed).
    let key = wsroute_tests::keys::user_conns(&wsroute_tests::user_id("bob"));
    let mut add = redis::cmd("HSET");
    add.arg(&key).arg("c-unannounced").arg("node2\t\t1");
    let added: Option<u64> = c.redis.query(&add).await;
    assert_eq!(added, Some(1));
    let told = presence_frames_now(&mut alice).await;
    assert!(told.is_empty(), "no event, no read: {told:?}");

    // A node announcing itself (it registers its routes in bulk, with no event per user).
    let mut up = redis::cmd("PUBLISH");
    up.arg(wsroute_tests::keys::events_channel())
        .arg("up node2");
    let _: Option<u64> = c.redis.query(&up).await;
    assert_eq!(presence_of(&mut alice, "bob").await.1, 1);

    // The route goes, again with no event; then every subscription is cut: on resubscribing,
    // node1 reads what it watches again.
    c.redis.hdel(&key, "c-unannounced").await;
    for &port in c.redis.server_ports() {
        let mut conn = wsroute_tests::RedisServer::conn_to(port)
            .await
            .expect("redis reachable");
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL works");
        println!("cut {killed} subscriptions on port {port}");
    }
    let (online, devices, took) = presence_of(&mut alice, "bob").await;
    println!("re-read {took:?} after the subscriptions were cut");
    assert_eq!((online, devices), (false, 0));
}
