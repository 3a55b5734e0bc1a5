//! What one user (or one API key) can make the cluster keep, tried as an attacker with an account
//! would (docs/protocol.md, "Limits"): sends to inboxes are held to a quota per sender (`quota_exceeded`),
//! an inbox to a byte cap (`inbox_full`), the push API and Router to their own quota; acks and
//! WebSocket pings count toward the flood limit, and an inbox ack costs one Redis call, once.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};
use wsroute_client::raw::Message;
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::router_client::RouterClient;
use wsroute_tests::cluster::API_KEY;
use wsroute_tests::{Client, Cluster, RedisServer, authed, keys, metric, user_id};

/// The default quota: 120 sends to inboxes a minute per sender, with a minute's worth as burst.
const QUOTA_PER_MINUTE: f64 = 120.0;

async fn used_memory(redis: &RedisServer) -> u64 {
    let mut c = redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .expect("INFO memory works");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

/// `status` or `rejected:<code>` of an ack.
fn outcome(ack: &Value) -> String {
    match ack["status"].as_str() {
        Some("rejected") => format!("rejected:{}", ack["error"]["code"].as_str().unwrap_or("")),
        Some(s) => s.to_owned(),
        None => panic!("an ack without a status: {ack}"),
    }
}

/// Sends `n` messages with `body`, to the users `to(i)`, keeping at most 64 unanswered (as a
/// pipelining client does); returns how many acks had each outcome.
async fn send_many(
    client: &mut Client,
    n: usize,
    to: impl Fn(usize) -> String,
    body: &Value,
) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    let (mut sent, mut answered) = (0, 0);
    while answered < n {
        while sent < n && sent - answered < 64 {
            client.send_to(&to(sent), body.clone()).await;
            sent += 1;
        }
        let ack = client.expect_type("ack").await;
        *tally.entry(outcome(&ack)).or_insert(0) += 1;
        answered += 1;
    }
    tally
}

#[tokio::test]
async fn one_user_sending_to_3000_invented_ids_is_held_to_the_quota() {
    // The flood limit is raised so that only the inbox quota stands between the attacker and
    // Redis.
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-msgs-per-sec".into(), "100000".into()];
    })
    .await;
    let node = c.node(1);
    let mut attacker = Client::connect(&node.ws_user("mallory")).await;
    let mut bob = Client::connect(&node.ws_user("bob")).await;
    let before = used_memory(&c.redis).await;

    let body = json!("x".repeat(60 * 1024));
    let started = Instant::now();
    let tally = send_many(&mut attacker, 3000, |i| format!("ghost{i}"), &body).await;
    let secs = started.elapsed().as_secs_f64();
    let after = used_memory(&c.redis).await;
    let stored = tally.get("stored").copied().unwrap_or(0);
    let refused = tally.get("rejected:quota_exceeded").copied().unwrap_or(0);
    let growth = after.saturating_sub(before);
    println!(
        "3000 sends of 60 KiB in {secs:.1} s: {tally:?}; Redis used_memory {before} -> {after} \
         (+{:.1} MiB)",
        growth as f64 / 1048576.0
    );

    // The burst (a minute's worth) and what refilled while the attack ran, nothing more.
    let allowed = QUOTA_PER_MINUTE + secs * QUOTA_PER_MINUTE / 60.0;
    assert!(
        stored as f64 >= QUOTA_PER_MINUTE && stored as f64 <= allowed + 1.0,
        "stored {stored}, the quota allows {allowed:.0}"
    );
    assert_eq!(
        stored + refused,
        3000,
        "every other send is refused quota_exceeded: {tally:?}"
    );
    // Each stored message costs Redis about its frame (60 KiB); without the quota the same
    // attack kept 3000 of them (about 180 MiB).
    let bound = stored as u64 * 80 * 1024 + (2 << 20);
    assert!(
        growth <= bound,
        "Redis grew {growth} bytes for {stored} stored messages (bound {bound})"
    );
    assert_eq!(
        metric(
            &node.http("/metrics"),
            "wsroute_messages_rejected_total{code=\"quota_exceeded\"}"
        )
        .await,
        refused as f64
    );

    // The attacker's connection still works, and sends to a live user are not charged.
    let ack = attacker.send_and_ack("bob", json!("hi")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.expect_type("message").await["body"], "hi");
    // Another user's quota is untouched.
    let mut alice = Client::connect(&node.ws_user("alice")).await;
    let ack = alice.send_and_ack("carol", json!("offline hello")).await;
    assert_eq!(ack["status"], "stored", "{ack}");
}

#[tokio::test]
async fn a_real_users_inbox_stops_at_its_byte_cap_and_frees_on_ack() {
    let c = Cluster::start(1).await;
    let node = c.node(1);
    let mut attacker = Client::connect(&node.ws_user("mallory")).await;
    let body = json!("x".repeat(60 * 1024));

    // 1 MiB holds 17 frames of about 61.5 KiB: the 18th and after are refused.
    let tally = send_many(&mut attacker, 30, |_| "victim".into(), &body).await;
    println!("30 sends of 60 KiB to an offline user: {tally:?}");
    let stored = tally.get("stored").copied().unwrap_or(0);
    assert_eq!(stored, 17, "{tally:?}");
    assert_eq!(
        tally.get("rejected:inbox_full").copied(),
        Some(13),
        "{tally:?}"
    );

    // The byte counter beside the inbox matches what the inbox holds.
    let victim = user_id("victim");
    let mut r = c.redis.conn().await;
    let frames: Vec<String> = redis::cmd("HVALS")
        .arg(keys::inbox_msgs(&victim))
        .query_async(&mut r)
        .await
        .expect("HVALS works");
    let counted: u64 = redis::cmd("GET")
        .arg(keys::inbox_bytes(&victim))
        .query_async(&mut r)
        .await
        .expect("GET works");
    let held: usize = frames.iter().map(String::len).sum();
    assert_eq!(frames.len(), 17);
    assert_eq!(counted as usize, held);
    assert!(held <= 1 << 20, "{held} bytes held");

    // The victim reads and acks everything: the counter goes with the messages, and the
    // inbox takes messages again.
    let mut v = Client::connect(&node.ws_user("victim")).await;
    let got = v
        .collect_until(wsroute_tests::patience(), |f| {
            f.iter().filter(|m| m["type"] == "message").count() == 17
        })
        .await;
    assert_eq!(got.iter().filter(|m| m["type"] == "message").count(), 17);
    v.frames_until_pong().await; // the acks went before the ping: all processed
    v.close().await;
    let left: Option<u64> = redis::cmd("GET")
        .arg(keys::inbox_bytes(&victim))
        .query_async(&mut r)
        .await
        .expect("GET works");
    assert_eq!(left, None, "the counter is gone with the last message");
    let ack = attacker.send_and_ack("victim", body).await;
    assert_eq!(ack["status"], "stored", "{ack}");
}

async fn push(url: &str, body: &str) -> Value {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("http works")
        .json()
        .await
        .expect("a JSON answer")
}

#[tokio::test]
async fn the_push_api_and_router_share_their_own_quota() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--api-stored-per-minute".into(), "5".into()];
    })
    .await;
    let node = c.node(1);
    let mut statuses = BTreeMap::new();
    for i in 0..10 {
        let v = push(
            &node.http(&format!("/v1/users/away{i}/messages")),
            r#"{"body":"news"}"#,
        )
        .await;
        *statuses.entry(outcome(&v)).or_insert(0) += 1;
    }
    // Five, and perhaps one more refilled (5 a minute) while the calls ran.
    let stored = statuses.get("stored").copied().unwrap_or(0);
    assert!((5..=6).contains(&stored), "{statuses:?}");
    assert_eq!(
        stored
            + statuses
                .get("rejected:quota_exceeded")
                .copied()
                .unwrap_or(0),
        10,
        "{statuses:?}"
    );
    // The Router pays from the same bucket, whatever `from` it names.
    let mut router = RouterClient::connect(node.grpc()).await.expect("grpc");
    let r = router
        .send_to_user(authed(
            pb::SendToUserRequest {
                to: "away99".into(),
                from: "billing".into(),
                body_json: "1".into(),
                cid: None,
            },
            API_KEY,
        ))
        .await
        .expect("the call is answered")
        .into_inner();
    assert_eq!(
        (r.status.as_str(), r.error_code.as_str()),
        ("rejected", "quota_exceeded")
    );
    // A live recipient costs no quota; users keep their own.
    let mut bob = Client::connect(&node.ws_user("bob")).await;
    let v = push(&node.http("/v1/users/bob/messages"), r#"{"body":"live"}"#).await;
    assert_eq!(v["status"], "delivered", "{v}");
    assert_eq!(bob.expect_type("message").await["body"], "live");
    let ack = bob.send_and_ack("away0", json!("from a user")).await;
    assert_eq!(ack["status"], "stored", "{ack}");
}

/// Waits for the close of a flooding client: at least a second's worth (5) of frames refused
/// `rate_limited` first, then 1008.
async fn refused_then_closed(client: &mut Client) {
    let (frames, close) = client.expect_close().await;
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert!(
        limited >= 5,
        "{limited} refused before the close: {frames:?}"
    );
    assert_eq!(close.expect("a close frame").code, 1008);
}

#[tokio::test]
async fn a_flood_of_acks_or_pings_is_refused_then_closed() {
    // 5 frames a second, a burst of 50.
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-msgs-per-sec".into(), "5".into()];
    })
    .await;
    let node = c.node(1);

    // Acks of ids nothing waits for (repeats, inventions) are frames like any other.
    let mut acker = Client::connect(&node.ws_user("acker")).await;
    for _ in 0..60 {
        acker
            .send_json(json!({"type":"ack","id":"m-invented"}))
            .await;
    }
    refused_then_closed(&mut acker).await;

    // WebSocket ping frames too: refused (no pong), then closed.
    let mut pinger = Client::connect(&node.ws_user("pinger")).await;
    for _ in 0..60 {
        pinger.try_send_raw(Message::Ping(vec![1].into())).await;
    }
    refused_then_closed(&mut pinger).await;

    // Acks of messages that wait for them are not counted: a receiver acking more messages
    // than the burst keeps its connection. (The 60 sends come from a push, which the client
    // flood limit does not cover.)
    let mut reader = Client::connect(&node.ws_user("reader")).await;
    for i in 0..60 {
        let v = push(
            &node.http("/v1/users/reader/messages"),
            &format!(r#"{{"body":{i}}}"#),
        )
        .await;
        assert_eq!(v["status"], "delivered", "{v}");
    }
    let got = reader
        .collect_until(wsroute_tests::patience(), |f| {
            f.iter().filter(|m| m["type"] == "message").count() == 60
        })
        .await;
    assert_eq!(got.iter().filter(|m| m["type"] == "message").count(), 60);
    assert!(
        reader.frames_until_pong().await.is_empty(),
        "60 acks and a ping: nothing refused"
    );
}

#[tokio::test]
async fn an_inbox_ack_costs_one_redis_call_however_often_it_is_repeated() {
    let c = Cluster::start(1).await;
    let node = c.node(1);
    let mut sender = Client::connect(&node.ws_user("sender")).await;
    let ack = sender.send_and_ack("offline", json!("kept")).await;
    assert_eq!(ack["status"], "stored");
    let mut reader = Client::connect(&node.ws_user("offline")).await.manual_ack();
    let m = reader.expect_type("message").await;
    let lrem = |calls: std::collections::HashMap<String, u64>| calls.get("lrem").copied();
    let before = lrem(c.redis.command_calls().await).unwrap_or(0);
    for _ in 0..20 {
        reader.send_json(json!({"type":"ack","id":m["id"]})).await;
    }
    assert!(reader.frames_until_pong().await.is_empty());
    let after = lrem(c.redis.command_calls().await).unwrap_or(0);
    assert_eq!(
        after - before,
        1,
        "20 acks of one inbox id: one removal in Redis"
    );
    let depth: usize = redis::cmd("LLEN")
        .arg(keys::inbox_ids(&user_id("offline")))
        .query_async(&mut c.redis.conn().await)
        .await
        .expect("LLEN works");
    assert_eq!(depth, 0);
}

/// A resend of a message the inbox holds already (a client sending its outbox again after a lost
/// ack, with the same `cid`) costs the sender nothing: `stored` again, the same id, and the
/// quota's token given back, so that resends cannot use up the quota for new messages.
#[tokio::test]
async fn a_resend_of_a_stored_message_does_not_use_the_quota() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-stored-per-minute".into(), "3".into()];
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let send = |cid: &'static str, r: String| json!({"type":"send","to":"bob","ref":r,"cid":cid,"body":"for later"});
    let mut first_id = None;
    for n in 0..6 {
        let r = format!("again{n}");
        alice.send_json(send("one", r.clone())).await;
        let ack = alice.expect_ack(&r).await;
        assert_eq!(ack["status"], "stored", "transmission {n}: {ack}");
        let id = ack["id"].clone();
        assert_eq!(*first_id.get_or_insert(id.clone()), id, "the same message");
    }
    // The quota of 3 still has two new messages in it, and then none.
    for (cid, want) in [("two", "stored"), ("three", "stored"), ("four", "rejected")] {
        let r = format!("new-{cid}");
        alice.send_json(send(cid, r.clone())).await;
        let ack = alice.expect_ack(&r).await;
        assert_eq!(ack["status"], want, "{cid}: {ack}");
        if want == "rejected" {
            assert_eq!(ack["error"]["code"], "quota_exceeded", "{ack}");
        }
    }
    let inbox = wsroute_tests::router_cli::cli_json(&c.redis.url(), &["inbox", "bob"]);
    assert_eq!(inbox["depth"], 3, "one, two, three: {inbox}");
}

/// PROTOCOL 7.6: the quota of sends to inboxes is per sender, not per node. Alice, connected to
/// two nodes with a quota of 4, sends to an offline user from both in turn: four are stored in
/// all, then each node refuses her with `quota_exceeded`. Before, each node kept its own bucket
/// and she stored four on each (eight), one more bucket per node she connected to. Another
/// sender still has her own quota, and the push API its own.
#[tokio::test]
async fn the_inbox_quota_is_per_sender_across_nodes() {
    let c = Cluster::start_with(2, |o| {
        o.extra = vec!["--max-stored-per-minute".into(), "4".into()];
    })
    .await;
    let mut phone = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut laptop = Client::connect(&c.node(2).ws_user("alice")).await;
    let mut statuses = Vec::new();
    for n in 0..8 {
        let client = if n % 2 == 0 { &mut phone } else { &mut laptop };
        let ack = client.send_and_ack("offline-bob", json!({ "n": n })).await;
        let status = ack["status"].as_str().unwrap_or_default().to_owned();
        if status == "rejected" {
            assert_eq!(ack["error"]["code"], "quota_exceeded", "{ack}");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [
            "stored", "stored", "stored", "stored", "rejected", "rejected", "rejected", "rejected"
        ],
        "four stored across both nodes, then refused on both"
    );
    let inbox = wsroute_tests::router_cli::cli_json(&c.redis.url(), &["inbox", "offline-bob"]);
    assert_eq!(inbox["depth"], 4, "{inbox}");

    let mut carol = Client::connect(&c.node(2).ws_user("carol")).await;
    let ack = carol.send_and_ack("offline-bob", json!("mine")).await;
    assert_eq!(ack["status"], "stored", "carol has her own quota: {ack}");
}
