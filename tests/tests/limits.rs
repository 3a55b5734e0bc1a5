//! Limits that keep one client from hurting others: a flood gets `rate_limited` and then a 1008
//! close, a user over the connection limit gets 429, a browser from an origin not allowed gets
//! 403. Each time, everyone else keeps being served.

use std::time::{Duration, Instant};

use serde_json::json;
use wsroute_tests::{Client, Cluster, eventually};

#[tokio::test]
async fn a_flood_is_refused_then_closed_and_others_are_unaffected() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-msgs-per-sec".into(), "5".into()];
    })
    .await;
    let mut flooder = Client::connect(&c.node(1).ws_user("flooder")).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;

    // A burst of ten seconds' worth (50) is absorbed; the next ones are refused with their ref
    // (five refusals in a row, one second's worth, are tolerated).
    for _ in 0..54 {
        flooder.send_to("bob", json!("spam")).await;
    }
    let mut delivered = 0;
    let mut limited = 0;
    for i in 1..=54 {
        let ack = flooder.expect_ack(&format!("r{i}")).await;
        match ack["status"].as_str() {
            Some("delivered") => delivered += 1,
            Some("rejected") => {
                assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
                limited += 1;
            }
            other => panic!("unexpected {other:?}: {ack}"),
        }
    }
    assert!(
        delivered >= 50 && limited >= 1,
        "delivered {delivered}, limited {limited}"
    );

    // Keeping it up ends the connection with 1008.
    for _ in 0..20 {
        flooder.send_to("bob", json!("spam")).await;
    }
    let (_, close) = flooder.expect_close().await;
    assert_eq!(close.expect("a close frame").code, 1008);

    // Bob got exactly what was accepted, and alice is served as usual.
    let got = bob.frames_until_pong().await;
    assert_eq!(
        got.len(),
        delivered,
        "bob received {} of {delivered}",
        got.len()
    );
    assert_eq!(
        alice.send_and_ack("bob", json!("hi")).await["status"],
        "delivered"
    );
}

/// A steady flood, not a burst: a client that spent its burst and keeps sending at three times
/// its rate has one frame in three allowed (a token comes back every 1/rate s), and must still be
/// closed within about a second of refusals. Before, any frame allowed forgave the refusals so
/// far, and such a client was answered `rate_limited` for as long as it liked: only floods of
/// about rate^2 frames a second were ever closed.
#[tokio::test]
async fn a_steady_flood_at_three_times_the_rate_is_closed() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-msgs-per-sec".into(), "20".into()];
    })
    .await;
    let mut flooder = Client::connect(&c.node(1).ws_user("flooder")).await;
    // The burst (ten seconds' worth, 200 frames) at once.
    for _ in 0..200 {
        flooder.send_json(json!({"type":"ping"})).await;
    }
    // Then 60 frames a second, for at most 8 s (the close comes well before).
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / 60));
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(8) {
        pace.tick().await;
        if !flooder.try_send_json(json!({"type":"ping"})).await {
            break;
        }
        sent += 1;
    }
    let (frames, close) = flooder.expect_close().await;
    assert_eq!(
        close.expect("a close frame").code,
        1008,
        "after {sent} paced frames"
    );
    let pongs = frames.iter().filter(|f| f["type"] == "pong").count();
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    // Frames kept passing during the flood (200 of the burst, then some of the paced ones), and
    // about a second's worth of refusals (20 tolerated) ended it.
    assert!(pongs > 200, "{pongs} pongs");
    assert!(
        (20..=30).contains(&limited),
        "{limited} refusals before the close"
    );
}

#[tokio::test]
async fn a_user_over_the_connection_limit_is_refused_cluster_wide() {
    let c = Cluster::start_with(2, |o| {
        o.extra = vec!["--max-conns-per-user".into(), "2".into()];
    })
    .await;
    let first = Client::connect(&c.node(1).ws_user("carol")).await;
    let _second = Client::connect(&c.node(2).ws_user("carol")).await;
    let refused = match Client::try_connect(&c.node(1).ws_user("carol")).await {
        Ok(_) => panic!("a third connection was accepted"),
        Err(r) => r,
    };
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"], "too_many_connections");
    // Another user is not affected.
    Client::connect(&c.node(1).ws_user("dave")).await;
    // Once one of carol's connections is gone, she may connect again.
    first.close().await;
    eventually("carol may connect again", || async {
        Client::try_connect(&c.node(2).ws_user("carol")).await.ok()
    })
    .await;
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec![
            "--allowed-origins".into(),
            "https://chat.example,https://app.example".into(),
        ];
    })
    .await;
    let url = c.node(1).ws_user("erin");
    let refused = match Client::try_connect_with(&url, &[("origin", "https://evil.example")]).await
    {
        Ok(_) => panic!("a foreign origin was accepted"),
        Err(r) => r,
    };
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["error"], "forbidden_origin");
    assert!(
        Client::try_connect_with(&url, &[("origin", "https://app.example")])
            .await
            .is_ok()
    );
    // Non-browser clients send no Origin and are not affected.
    assert!(
        Client::try_connect(&c.node(1).ws_user("frank"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_full_node_refuses_clients_and_the_gateway_stops_naming_it() {
    let c = Cluster::start_with(2, |o| {
        if o.id == "node1" {
            o.extra = vec!["--max-connections".into(), "2".into()];
        }
    })
    .await;
    let _a = Client::connect(&c.node(1).ws_user("a")).await;
    let _b = Client::connect(&c.node(1).ws_user("b")).await;
    let refused = match Client::try_connect(&c.node(1).ws_user("c")).await {
        Ok(_) => panic!("a full node accepted a client"),
        Err(r) => r,
    };
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error"], "node_full");
    // node2 holds more connections than node1, yet the gateway sends newcomers to node2.
    let mut held = Vec::new();
    for u in ["x", "y", "z"] {
        held.push(Client::connect(&c.node(2).ws_user(u)).await);
    }
    for asked in [1, 2] {
        let url = c.node(asked).http("/gateway");
        eventually(
            "the gateway names node2 once the counts are published",
            || {
                let url = url.clone();
                async move {
                    let v: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
                    (v["node"] == "node2").then_some(())
                }
            },
        )
        .await;
    }
}
