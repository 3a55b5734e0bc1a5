//! Webhooks to the app's backend (docs/protocol.md, webhooks) against a real cluster and a real HTTP receiver:
//! every event a scenario causes arrives signed, once per event id at the receiver, through
//! failures, retries and a node killed mid-retry; events that fail every attempt become dead,
//! `router-cli webhooks dead` lists them and `retry` delivers them; without webhook flags no
//! stream exists.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use wsroute_tests::cluster::API_KEY;
use wsroute_tests::router_cli::{cli, cli_json};
use wsroute_tests::webhook_receiver::{Mode, Receiver, Seen};
use wsroute_tests::{Client, Cluster, Node, RedisServer, eventually, keys, metric};

const SECRET: &str = "test-webhook-secret";

/// The webhook flags for a receiver, with a short back-off (tests wait on it).
fn flags(receiver: &Receiver, extra: &[&str]) -> Vec<String> {
    let mut f: Vec<String> = [
        "--webhook-url",
        &receiver.url(),
        "--webhook-secret",
        SECRET,
        "--webhook-backoff-ms",
        "200",
        "--webhook-backoff-max-ms",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    f.extend(extra.iter().map(|s| s.to_string()));
    f
}

/// What a scenario caused, to compare with what arrived.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Events {
    /// Message ids of `message.stored`.
    stored: BTreeSet<String>,
    /// `user.online` count per user.
    online: BTreeMap<String, u32>,
    /// `user.offline` count per user.
    offline: BTreeMap<String, u32>,
}

impl Events {
    fn total(&self) -> usize {
        self.stored.len()
            + self.online.values().sum::<u32>() as usize
            + self.offline.values().sum::<u32>() as usize
    }

    fn online(&mut self, user: &str) {
        *self.online.entry(user.to_owned()).or_default() += 1;
    }

    fn offline(&mut self, user: &str) {
        *self.offline.entry(user.to_owned()).or_default() += 1;
    }

    /// What the receiver accepted, checking each event's fields on the way.
    fn accepted(seen: &Seen) -> Self {
        let mut e = Self::default();
        for body in seen.accepted.values() {
            match body["type"].as_str() {
                Some("message.stored") => {
                    for f in ["id", "from", "to", "ts", "body"] {
                        assert!(!body[f].is_null(), "message.stored without {f}: {body}");
                    }
                    assert!(
                        e.stored.insert(body["id"].as_str().expect("id").to_owned()),
                        "two events for one stored message: {body}"
                    );
                }
                Some(kind @ ("user.online" | "user.offline")) => {
                    assert!(body["ts"].as_i64().is_some_and(|t| t > 0), "{body}");
                    let user = body["user"].as_str().expect("user").to_owned();
                    if kind == "user.online" {
                        e.online(&user);
                    } else {
                        e.offline(&user);
                    }
                }
                _ => panic!("unknown event: {body}"),
            }
        }
        e
    }
}

/// `POST /v1/users/{user}/messages` on `node`: the message id, which must be `stored`.
async fn push_stored(node: &Node, user: &str, body: Value) -> String {
    let r = reqwest::Client::new()
        .post(node.http(&format!("/v1/users/{user}/messages")))
        .bearer_auth(API_KEY)
        .json(&json!({ "body": body }))
        .send()
        .await
        .expect("push answers");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "stored", "{v}");
    v["id"].as_str().expect("id").to_owned()
}

/// Events in the stream not yet settled, and pending ones (read, not settled).
async fn unsettled(redis: &RedisServer) -> (u64, u64) {
    let waiting: u64 = redis
        .query(redis::cmd("XLEN").arg(keys::webhook_events()))
        .await
        .unwrap_or(0);
    (waiting, pending(redis).await.0)
}

/// The consumer group's pending entries: how many, and how many each consumer (node) holds.
async fn pending(redis: &RedisServer) -> (u64, BTreeMap<String, u64>) {
    let v: redis::Value = redis
        .query(
            redis::cmd("XPENDING")
                .arg(keys::webhook_events())
                .arg(keys::WEBHOOK_GROUP),
        )
        .await
        .unwrap_or(redis::Value::Nil);
    let redis::Value::Array(parts) = v else {
        return (0, BTreeMap::new());
    };
    let mut parts = parts.into_iter();
    let count = parts
        .next()
        .and_then(|n| redis::from_redis_value(n).ok())
        .unwrap_or(0);
    let mut by_node = BTreeMap::new();
    if let Some(redis::Value::Array(consumers)) = parts.nth(2) {
        for c in consumers {
            if let Ok((name, n)) = redis::from_redis_value::<(String, String)>(c) {
                by_node.insert(name, n.parse().unwrap_or(0));
            }
        }
    }
    (count, by_node)
}

/// A counter summed over the nodes' `/metrics`.
async fn total(nodes: &[&Node], name: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += metric(&n.http("/metrics"), name).await;
    }
    sum
}

/// Waits until the receiver accepted `n` distinct events and nothing is left unsettled.
async fn wait_all_settled(receiver: &Receiver, redis: &RedisServer, n: usize) {
    eventually(
        &format!("{n} webhook events accepted and settled"),
        || async {
            let accepted = receiver.seen().accepted.len();
            (accepted >= n && unsettled(redis).await == (0, 0)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn every_event_arrives_signed_once_through_a_failing_first_attempt() {
    let receiver = Receiver::start(SECRET, Mode::FailFirst).await;
    let c = Cluster::start_with(3, |o| o.extra = flags(&receiver, &[])).await;
    let mut caused = Events::default();

    // Users coming online across nodes; bob on two of them (one event: his first).
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    caused.online("alice");
    let bob2 = Client::connect(&c.node(2).ws_user("bob")).await;
    caused.online("bob");
    let bob3 = Client::connect(&c.node(3).ws_user("bob")).await;

    // Messages stored for offline users, from a client and from the push API.
    for i in 0..5 {
        let ack = alice.send_and_ack("carol", json!({ "n": i })).await;
        assert_eq!(ack["status"], "stored", "{ack}");
        caused
            .stored
            .insert(ack["id"].as_str().expect("id").to_owned());
    }
    for (i, n) in [1, 2, 3].into_iter().enumerate() {
        let id = push_stored(c.node(n), "dave", json!({ "push": i })).await;
        caused.stored.insert(id);
    }

    // Bob's second device leaves (no event), then his last (user.offline).
    bob3.close().await;
    bob2.close().await;
    caused.offline("bob");
    // Carol comes online on node 3, reads and acks her inbox, leaves.
    let mut carol = Client::connect(&c.node(3).ws_user("carol")).await;
    caused.online("carol");
    let got = carol
        .collect_until(wsroute_tests::patience(), |f| {
            f.iter().filter(|m| m["type"] == "message").count() >= 5
        })
        .await;
    assert_eq!(got.iter().filter(|m| m["type"] == "message").count(), 5);
    carol.frames_until_pong().await;
    carol.close().await;
    caused.offline("carol");
    alice.close().await;
    caused.offline("alice");

    wait_all_settled(&receiver, &c.redis, caused.total()).await;
    let seen = receiver.seen();
    let arrived = Events::accepted(&seen);
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    let sent = total(&nodes, "wsroute_webhook_sent_total").await;
    let failed = total(&nodes, "wsroute_webhook_failed_total").await;
    let retried = total(&nodes, "wsroute_webhook_retried_total").await;
    let min_attempts = seen.attempts.values().min().copied().unwrap_or(0);
    println!(
        "ledger: caused {} events ({} stored, {} online, {} offline); receiver accepted {} distinct, \
         {} repeats, {} POSTs in all, attempts per event min {min_attempts} max {}, {} bad signatures, \
         {} bad ids; nodes: sent {sent}, failed {failed}, retried {retried}",
        caused.total(),
        caused.stored.len(),
        caused.online.values().sum::<u32>(),
        caused.offline.values().sum::<u32>(),
        seen.accepted.len(),
        seen.repeats,
        seen.attempts.values().sum::<u32>(),
        seen.attempts.values().max().copied().unwrap_or(0),
        seen.bad_signatures,
        seen.bad_ids,
    );
    assert_eq!(arrived, caused, "what arrived is what the scenario caused");
    assert_eq!(seen.accepted.len(), caused.total());
    assert_eq!(seen.repeats, 0, "each event accepted exactly once");
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(seen.bad_ids, 0);
    assert!(min_attempts >= 2, "every event failed once first");
    assert_eq!(sent as usize, caused.total());
    assert!(failed as usize >= caused.total());
    assert!(retried as usize >= caused.total());
}

#[tokio::test]
async fn a_node_killed_mid_retry_leaves_its_events_to_the_others() {
    let receiver = Receiver::start(SECRET, Mode::FailAll).await;
    let mut c = Cluster::start_with(3, |o| {
        o.extra = flags(&receiver, &["--webhook-max-attempts", "100"])
    })
    .await;
    let mut caused = Events::default();
    // Events on every node, by users who are gone again before the kill (so that the kill
    // itself causes no user.offline).
    for i in 1..=3 {
        let user = format!("u{i}");
        let client = Client::connect(&c.node(i).ws_user(&user)).await;
        caused.online(&user);
        client.close().await;
        caused.offline(&user);
        for k in 0..3 {
            let id = push_stored(c.node(i), &format!("off{i}"), json!({ "k": k })).await;
            caused.stored.insert(id);
        }
    }
    // Every event attempted (and refused) at least twice: the nodes are retrying.
    eventually("every event refused twice", || async {
        let seen = receiver.seen();
        (seen.attempts.len() == caused.total() && seen.attempts.values().all(|n| *n >= 2))
            .then_some(())
    })
    .await;
    let held = pending(&c.redis).await.1;
    let (victim, victim_held) = held
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, k)| (n.clone(), *k))
        .expect("some node holds pending events");
    assert!(victim_held > 0, "{held:?}");
    let index = c
        .nodes
        .iter()
        .position(|n| n.id == victim)
        .expect("the victim is a node");
    c.nodes[index].kill();
    let refused_before = receiver.seen().attempts.values().sum::<u32>();
    // The receiver still fails everything while the survivors take the dead node's entries
    // over (so that a POST the dead node had in flight cannot be accepted either).
    eventually(
        "the dead node's pending events claimed by the others",
        || async { (!pending(&c.redis).await.1.contains_key(&victim)).then_some(()) },
    )
    .await;
    let refused_at_takeover = receiver.seen().attempts.values().sum::<u32>();
    receiver.set_mode(Mode::Accept);

    wait_all_settled(&receiver, &c.redis, caused.total()).await;
    let seen = receiver.seen();
    let arrived = Events::accepted(&seen);
    let survivors: Vec<&Node> = c.nodes.iter().filter(|n| n.id != victim).collect();
    let sent = total(&survivors, "wsroute_webhook_sent_total").await;
    println!(
        "ledger: caused {} events; pending per node at the kill {held:?}; killed {victim} holding \
         {victim_held}; {refused_before} POSTs refused before the kill, {refused_at_takeover} when \
         the others had claimed its events; receiver accepted {} distinct, {} repeats; survivors \
         sent {sent}",
        caused.total(),
        seen.accepted.len(),
        seen.repeats,
    );
    assert_eq!(
        arrived, caused,
        "every event arrived, the killed node's too"
    );
    assert_eq!(seen.repeats, 0, "each event accepted exactly once");
    assert_eq!(seen.bad_signatures, 0);
    assert!(
        seen.attempts.values().all(|n| *n >= 3),
        "{:?}",
        seen.attempts
    );
    // Nothing was accepted before the kill: the survivors delivered everything.
    assert_eq!(sent as usize, caused.total());
}

#[tokio::test]
async fn events_that_fail_every_attempt_become_dead_and_can_be_retried() {
    let receiver = Receiver::start(SECRET, Mode::FailAll).await;
    let c = Cluster::start_with(2, |o| {
        o.extra = flags(&receiver, &["--webhook-max-attempts", "3"])
    })
    .await;
    let url = c.redis.url();
    let mut caused = Events::default();
    let erin = Client::connect(&c.node(1).ws_user("erin")).await;
    caused.online("erin");
    erin.close().await;
    caused.offline("erin");
    for k in 0..3 {
        let id = push_stored(c.node(2), "frank", json!({ "k": k })).await;
        caused.stored.insert(id);
    }
    let n = caused.total();
    let dead = eventually("every event dead", || {
        let url = url.clone();
        async move {
            let v = cli_json(&url, &["webhooks", "dead"]);
            (v["total"] == n).then_some(v)
        }
    })
    .await;
    let seen = receiver.seen();
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    let dead_metric = total(&nodes, "wsroute_webhook_dead_total").await;
    println!(
        "ledger: caused {n} events; dead listed {}; receiver attempts per event {:?}; accepted {}; \
         nodes counted dead {dead_metric}",
        dead["total"],
        seen.attempts.values().collect::<Vec<_>>(),
        seen.accepted.len()
    );
    assert!(seen.accepted.is_empty());
    assert_eq!(seen.attempts.len(), n);
    assert!(
        seen.attempts.values().all(|a| *a == 3),
        "exactly --webhook-max-attempts each: {:?}",
        seen.attempts
    );
    assert_eq!(dead_metric as usize, n);
    let listed = dead["events"].as_array().expect("events");
    assert_eq!(listed.len(), n);
    for e in listed {
        assert_eq!(e["attempts"], 3, "{e}");
        assert_eq!(e["error"], "answered HTTP 500", "{e}");
        assert!(
            seen.attempts
                .contains_key(e["event_id"].as_str().expect("id"))
        );
    }
    // The table form names them too.
    let (code, table, _) = cli(&url, &["webhooks", "dead"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("user.offline") && table.contains("answered HTTP 500"),
        "{table}"
    );
    assert_eq!(
        unsettled(&c.redis).await,
        (0, 0),
        "dead events left the events stream"
    );

    // The backend is back: one event by id, then the rest.
    receiver.set_mode(Mode::Accept);
    let (code, _, err) = cli(&url, &["webhooks", "retry", "e-no-such-event"]);
    assert_eq!(code, 1, "an unknown id fails: {err}");
    let (code, _, _) = cli(&url, &["webhooks", "retry"]);
    assert_eq!(code, 2, "retry needs an id or --all");
    let first = listed[0]["event_id"].as_str().expect("id").to_owned();
    assert_eq!(cli_json(&url, &["webhooks", "retry", &first])["retried"], 1);
    eventually("the retried event accepted", || async {
        receiver.seen().accepted.contains_key(&first).then_some(())
    })
    .await;
    assert_eq!(cli_json(&url, &["webhooks", "dead"])["total"], n - 1);
    assert_eq!(
        cli_json(&url, &["webhooks", "retry", "--all"])["retried"],
        n - 1
    );
    wait_all_settled(&receiver, &c.redis, n).await;
    let seen = receiver.seen();
    println!(
        "ledger after retry: accepted {} distinct of {n}, {} repeats, dead left {}",
        seen.accepted.len(),
        seen.repeats,
        cli_json(&url, &["webhooks", "dead"])["total"]
    );
    assert_eq!(Events::accepted(&seen), caused);
    assert_eq!(seen.repeats, 0);
    assert_eq!(cli_json(&url, &["webhooks", "dead"])["total"], 0);
}

#[tokio::test]
async fn without_webhook_flags_no_stream_is_written() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let mut stored = 0;
    for i in 0..5 {
        let ack = alice.send_and_ack("nobody", json!(i)).await;
        stored += usize::from(ack["status"] == "stored");
    }
    let ack = alice.send_and_ack("bob", json!("hi")).await;
    assert_eq!(ack["status"], "delivered");
    bob.close().await;
    alice.close().await;
    eventually("routes removed", || async {
        (c.redis.routes_of_user("alice").await == 0 && c.redis.routes_of_user("bob").await == 0)
            .then_some(())
    })
    .await;
    let mut exists = 0u64;
    for key in [keys::webhook_events(), keys::webhook_dead()] {
        exists += c
            .redis
            .query::<u64>(redis::cmd("EXISTS").arg(key))
            .await
            .expect("Redis answers");
    }
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    let emitted = total(&nodes, "wsroute_webhook_events_total").await;
    println!(
        "ledger: 2 connects, 2 disconnects, {stored} stored, 1 delivered; webhook keys in Redis {exists}; events emitted {emitted}"
    );
    assert_eq!(stored, 5);
    assert_eq!(exists, 0);
    assert_eq!(emitted, 0.0);
}

#[tokio::test]
async fn events_reach_an_https_backend_whose_certificate_is_checked() {
    let fixture = |f: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(f)
    };
    let receiver = Receiver::start_tls(
        SECRET,
        Mode::Accept,
        &fixture("node.pem"),
        &fixture("node-key.pem"),
    )
    .await;
    assert!(receiver.url().starts_with("https://127.0.0.1:"));

    // A node that trusts the receiver's issuer (SSL_CERT_FILE) delivers.
    let ca = fixture("ca.pem").display().to_string();
    let trusting = Cluster::start_with(1, |o| {
        o.extra = flags(&receiver, &[]);
        o.env.push(("SSL_CERT_FILE".into(), ca.clone()));
    })
    .await;
    let mut alice = Client::connect(&trusting.node(1).ws_user("alice")).await;
    let ack = alice.send_and_ack("carol", json!({"n": 1})).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    let id = ack["id"].as_str().expect("id").to_owned();
    eventually("the stored event accepted over https", || async {
        receiver
            .seen()
            .accepted
            .values()
            .any(|e| e["type"] == "message.stored" && e["id"] == id.as_str())
            .then_some(())
    })
    .await;
    // The node counts a POST as sent once it has read the 2xx, just after the receiver kept it.
    let trusted = trusting.node(1).http("/metrics");
    eventually("both events counted as sent", || async {
        (metric(&trusted, "wsroute_webhook_sent_total").await >= 2.0).then_some(())
    })
    .await;
    let sent = metric(&trusted, "wsroute_webhook_sent_total").await;

    // One that knows only the system's roots refuses the certificate: nothing is sent, the
    // attempt fails and counts.
    let doubting = Cluster::start_with(1, |o| o.extra = flags(&receiver, &[])).await;
    let mut dave = Client::connect(&doubting.node(1).ws_user("dave")).await;
    let ack = dave.send_and_ack("erin", json!({"n": 2})).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    let untrusted = doubting.node(1).http("/metrics");
    eventually("the untrusted attempt failed", || async {
        (metric(&untrusted, "wsroute_webhook_failed_total").await >= 1.0).then_some(())
    })
    .await;
    let seen = receiver.seen();
    let sent_untrusted = metric(&untrusted, "wsroute_webhook_sent_total").await;
    let failed_untrusted = metric(&untrusted, "wsroute_webhook_failed_total").await;
    println!(
        "ledger: https receiver accepted {} events, {} POSTs, {} bad signatures; trusting node sent {sent}; \
         untrusting node sent {sent_untrusted}, failed {failed_untrusted}",
        seen.accepted.len(),
        seen.attempts.values().sum::<u32>(),
        seen.bad_signatures
    );
    assert!(sent >= 2.0, "user.online and message.stored");
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(seen.repeats, 0);
    assert_eq!(sent_untrusted, 0.0, "an untrusted certificate is refused");
    assert!(
        seen.accepted
            .values()
            .all(|e| e["user"] != "dave" && e["from"] != "dave"),
        "nothing of the untrusting node's reached the receiver"
    );
    alice.close().await;
    dave.close().await;
}

#[tokio::test]
async fn a_user_whose_node_dies_goes_offline_when_the_node_is_swept() {
    let receiver = Receiver::start(SECRET, Mode::Accept).await;
    let mut c = Cluster::start_with(2, |o| o.extra = flags(&receiver, &[])).await;
    let mut caused = Events::default();
    // gina only on node 2; hal on both: the sweep leaves him online.
    let _gina = Client::connect(&c.node(2).ws_user("gina")).await;
    caused.online("gina");
    let _hal1 = Client::connect(&c.node(1).ws_user("hal")).await;
    caused.online("hal");
    let _hal2 = Client::connect(&c.node(2).ws_user("hal")).await;
    wait_all_settled(&receiver, &c.redis, caused.total()).await;
    c.nodes[1].kill();
    // node 1 sweeps node 2's routes once its lease runs out: gina's last connection goes.
    caused.offline("gina");
    eventually("node2's routes swept", || async {
        (c.redis.routes_on_node("node2").await == 0).then_some(())
    })
    .await;
    // The sweep wrote its events before it removed the index: all are in the stream now.
    wait_all_settled(&receiver, &c.redis, caused.total()).await;
    let seen = receiver.seen();
    println!(
        "ledger: caused {} events (gina online, hal online, gina offline by the sweep); accepted {} \
         distinct, {} repeats; hal's routes left {}",
        caused.total(),
        seen.accepted.len(),
        seen.repeats,
        c.redis.routes_of_user("hal").await
    );
    assert_eq!(Events::accepted(&seen), caused);
    assert_eq!(seen.repeats, 0);
    assert_eq!(c.redis.routes_of_user("hal").await, 1);
}

/// PROTOCOL 7.4: an attempt with no answer within 5 s counts as failed and is retried (with
/// back-off). The backend hangs on the first attempt of each event: the node gives up after 5 s,
/// tries again, and the event is accepted once.
#[tokio::test]
async fn an_attempt_unanswered_for_5_s_is_retried() {
    let receiver = Receiver::start(SECRET, Mode::HangFirst).await;
    let c = Cluster::start_with(1, |o| o.extra = flags(&receiver, &[])).await;
    let id = push_stored(c.node(1), "erin", json!("while the backend hangs")).await;
    wait_all_settled(&receiver, &c.redis, 1).await;
    let seen = receiver.seen();
    let (event, arrivals) = seen
        .arrivals
        .iter()
        .find(|(event, _)| {
            seen.accepted
                .get(*event)
                .is_some_and(|b| b["type"] == "message.stored" && b["id"] == id.as_str())
        })
        .expect("the message.stored event was accepted");
    assert_eq!(arrivals.len(), 2, "{event}: one hung attempt, one retry");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(15),
        "retried {waited:?} after the hung attempt (5 s timeout, then the back-off)"
    );
    assert_eq!(seen.repeats, 0);
    let nodes = [c.node(1)];
    assert!(total(&nodes, "wsroute_webhook_failed_total").await >= 1.0);
}
