//! Other services pushing to users: `POST /v1/users/{user}/messages` and `Router.SendToUser`,
//! both behind the API key; plus `Router.LookupUser` and `Router.ListNodes`.

use serde_json::{Value, json};
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::router_client::RouterClient;
use wsroute_tests::cluster::API_KEY;
use wsroute_tests::{Client, Cluster, authed};

async fn push(url: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("http works");
    let status = resp.status().as_u16();
    let v = resp.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test]
async fn http_push_delivers_and_refuses_without_the_key() {
    let c = Cluster::start(2).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let url = c.node(1).http("/v1/users/bob/messages");

    let (status, v) = push(
        &url,
        Some(API_KEY),
        r#"{"body":{"text":"from billing"},"from":"billing"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "delivered");
    assert_eq!(v["devices"], 1);
    let m = bob.expect_type("message").await;
    assert_eq!(m["id"], v["id"]);
    assert_eq!(m["from"], "billing");
    assert_eq!(m["body"]["text"], "from billing");

    let (status, v) = push(&url, None, r#"{"body":1}"#).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"], "unauthorized");
    let (status, _) = push(&url, Some("wrong-key"), r#"{"body":1}"#).await;
    assert_eq!(status, 401);
    let (status, v) = push(&url, Some(API_KEY), r#"{"nobody":1}"#).await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = push(&url, Some(API_KEY), "not json").await;
    assert_eq!(status, 400);
    let big = format!(r#"{{"body":"{}"}}"#, "x".repeat(70_000));
    let (status, _) = push(&url, Some(API_KEY), &big).await;
    assert_eq!(status, 413);
    let (status, _) = push(
        &c.node(1).http("/v1/users/bad%20user/messages"),
        Some(API_KEY),
        r#"{"body":1}"#,
    )
    .await;
    assert_eq!(status, 400);
    // None of the refused pushes reached bob: the next frame before a pong is nothing.
    assert!(bob.frames_until_pong().await.is_empty());

    // Offline recipient: stored.
    let (status, v) = push(
        &c.node(1).http("/v1/users/nobody-here/messages"),
        Some(API_KEY),
        r#"{"body":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "stored");
}

#[tokio::test]
async fn a_push_with_a_cid_keeps_its_id_on_every_retry_over_http_and_grpc() {
    let c = Cluster::start(2).await;
    let mut dave = Client::connect(&c.node(2).ws_user("dave")).await;
    let body = r#"{"body":"invoice","from":"billing","cid":"invoice-42"}"#;
    let (s1, h1) = push(
        &c.node(1).http("/v1/users/dave/messages"),
        Some(API_KEY),
        body,
    )
    .await;
    let (s2, h2) = push(
        &c.node(2).http("/v1/users/dave/messages"),
        Some(API_KEY),
        body,
    )
    .await;
    assert_eq!((s1, s2), (200, 200), "{h1} {h2}");
    assert_eq!(h1["status"], "delivered", "{h1}");
    assert_eq!(h1["id"], h2["id"], "one cid, one id, on any node");

    // Over gRPC, the same sender label and cid: the same message.
    let router = RouterClient::connect(c.node(1).grpc())
        .await
        .expect("grpc connects");
    let send = |from: &str, cid: &str| pb::SendToUserRequest {
        to: "dave".into(),
        body_json: r#""invoice""#.into(),
        from: from.into(),
        cid: Some(cid.into()),
    };
    let grpc = |req: pb::SendToUserRequest| {
        let mut router = router.clone();
        async move {
            router
                .send_to_user(authed(req, API_KEY))
                .await
                .expect("authorized call")
                .into_inner()
        }
    };
    let g = grpc(send("billing", "invoice-42")).await;
    assert_eq!(g.status, "delivered", "{g:?}");
    assert_eq!(h1["id"], g.id.as_str());
    // Another label or another cid: another message.
    let other_from = grpc(send("shipping", "invoice-42")).await;
    let other_cid = grpc(send("billing", "invoice-43")).await;
    assert_ne!(other_from.id, g.id);
    assert_ne!(other_cid.id, g.id);
    assert_ne!(other_cid.id, other_from.id);
    // Dave's connection gets each message once: invoice-42 from billing (pushed three times),
    // and the two others.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(dave.expect_type("message").await["id"].clone());
    }
    got.sort_by_key(|v| v.to_string());
    let mut want = vec![json!(g.id), json!(other_from.id), json!(other_cid.id)];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);

    // A cid outside its rules: 400 over HTTP, `rejected`/`bad_field` over gRPC; nothing sent.
    let bad = r#"{"body":1,"cid":"no spaces"}"#;
    let (status, v) = push(
        &c.node(1).http("/v1/users/dave/messages"),
        Some(API_KEY),
        bad,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("cid")),
        "{v}"
    );
    for cid in [String::new(), "x".repeat(65)] {
        let r = grpc(send("billing", &cid)).await;
        assert_eq!(r.status, "rejected", "{cid:?}: {r:?}");
        assert_eq!(r.error_code, "bad_field", "{cid:?}: {r:?}");
        assert!(r.id.is_empty(), "{r:?}");
    }
    assert!(dave.frames_until_pong().await.is_empty());
}

#[tokio::test]
async fn grpc_router_sends_looks_up_and_refuses_without_the_key() {
    let c = Cluster::start(2).await;
    let mut bob = Client::connect(&c.node(2).ws("?user=bob&device=tablet")).await;
    let mut router = RouterClient::connect(c.node(1).grpc())
        .await
        .expect("grpc connects");

    let send = pb::SendToUserRequest {
        to: "bob".into(),
        body_json: r#"{"k":"v"}"#.into(),
        from: String::new(),
        cid: None,
    };
    let r = router
        .send_to_user(authed(send.clone(), API_KEY))
        .await
        .expect("authorized call")
        .into_inner();
    assert_eq!(r.status, "delivered", "{r:?}");
    assert_eq!(r.devices, 1);
    let m = bob.expect_type("message").await;
    assert_eq!(m["id"], r.id.as_str());
    assert_eq!(m["from"], "api");

    for req in [
        tonic::Request::new(send.clone()),
        authed(send.clone(), "nope"),
    ] {
        let err = router.send_to_user(req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    assert!(bob.frames_until_pong().await.is_empty());

    let batch = pb::SendToUsersRequest {
        messages: vec![
            send.clone(),
            pb::SendToUserRequest {
                to: "ghost".into(),
                ..send.clone()
            },
            pb::SendToUserRequest {
                to: "bad user".into(),
                ..send.clone()
            },
        ],
    };
    let rs = router
        .send_to_users(authed(batch, API_KEY))
        .await
        .expect("batch")
        .into_inner()
        .results;
    let statuses: Vec<_> = rs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["delivered", "stored", "rejected"]);
    assert_eq!(rs[2].error_code, "bad_recipient");
    bob.expect_type("message").await;

    let look = router
        .lookup_user(authed(
            pb::LookupUserRequest { user: "bob".into() },
            API_KEY,
        ))
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(look.connections.len(), 1);
    assert_eq!(look.connections[0].node_id, "node2");
    assert_eq!(look.connections[0].device, "tablet");
    assert_eq!(look.connections[0].conn_id, bob.conn_id());

    let nodes = router
        .list_nodes(authed(pb::ListNodesRequest {}, API_KEY))
        .await
        .expect("list")
        .into_inner()
        .nodes;
    let ids: Vec<_> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["node1", "node2"]);
    assert!(nodes.iter().all(|n| n.lease_left_ms > 0));
}

#[tokio::test]
async fn the_mesh_refuses_calls_without_the_secret() {
    let c = Cluster::start(1).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;
    let mut mesh = wsroute_proto::v1::mesh_client::MeshClient::connect(c.node(1).grpc())
        .await
        .expect("grpc connects");
    let batch = pb::ForwardBatch {
        from_node: "intruder".into(),
        seq: 0,
        items: vec![pb::ForwardItem {
            envelope: Some(pb::Envelope {
                id: "mforged".into(),
                from: "ceo".into(),
                to: "bob".into(),
                ts_ms: 1,
                body_json: b"\"wire the money\"".to_vec(),
                accepted_us: 1_000,
            }),
            conn_ids: vec![bob.conn_id()],
            ..Default::default()
        }],
    };
    for req in [
        tonic::Request::new(batch.clone()),
        authed(batch.clone(), "guess"),
    ] {
        let err = mesh.forward(req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    assert!(
        bob.frames_until_pong().await.is_empty(),
        "a forged message got through"
    );
}
