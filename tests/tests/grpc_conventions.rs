//! The gRPC conventions of the node's gRPC listener, asked by standard gRPC clients with no
//! credentials: `grpc.health.v1.Health` (`SERVING` while ready, `NOT_SERVING` while starting or
//! draining, `Watch` streaming the change) and server reflection (v1 and v1alpha: the services
//! and their file descriptors); while `Router` and `Mesh` still refuse a call without theirs.

use std::time::Duration;

use tonic::Streaming;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::mesh_client::MeshClient;
use wsroute_proto::v1::router_client::RouterClient;
use wsroute_tests::cluster::{API_KEY, MESH_SECRET};
use wsroute_tests::router_cli::cli;
use wsroute_tests::standard_grpc::{
    Ask, channel, check, next_status, reflect_v1, reflect_v1alpha, watch,
};
use wsroute_tests::{Client, Cluster, Node, NodeOpts, RedisServer, authed, eventually, patience};

/// The names the health service answers for (docs/protocol.md, "gRPC").
const HEALTH_NAMES: [&str; 2] = ["", "wsroute.v1.Router"];

/// Starts a `Watch` of every name in [`HEALTH_NAMES`], each of which first says `now`.
async fn watch_every_name(ch: &Channel, now: ServingStatus) -> Vec<Streaming<HealthCheckResponse>> {
    let mut watching = Vec::new();
    for name in HEALTH_NAMES {
        let mut stream = watch(ch.clone(), name).await.expect("Watch starts");
        assert_eq!(
            next_status(&mut stream).await,
            Some(now),
            "a watch starts with the status now ({name:?})"
        );
        watching.push(stream);
    }
    watching
}

/// Waits for the next status on each watch of [`watch_every_name`], and checks it is `want`
/// (`None`: the server ended the stream).
async fn expect_next_on_each(
    watching: &mut [Streaming<HealthCheckResponse>],
    want: Option<ServingStatus>,
) {
    for (name, stream) in HEALTH_NAMES.into_iter().zip(watching) {
        let next = tokio::time::timeout(patience(), next_status(stream))
            .await
            .unwrap_or_else(|_| panic!("nothing on the watch of {name:?} within {:?}", patience()));
        assert_eq!(next, want, "service {name:?}");
    }
}

#[tokio::test]
async fn health_and_reflection_answer_without_credentials_and_router_and_mesh_still_refuse() {
    let c = Cluster::start(1).await;
    let node = c.node(1);
    let ch = channel(&node.grpc()).await;

    // Health: SERVING for both names once ready; an unknown name is NOT_FOUND.
    for name in HEALTH_NAMES {
        let status = check(ch.clone(), name).await.expect("Check answers");
        assert_eq!(status, ServingStatus::Serving, "service {name:?}");
    }
    let unknown = check(ch.clone(), "no.such.Service")
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Reflection, both versions: every service of the listener, and wsroute's own descriptor.
    for (version, services) in [
        ("v1", reflect_v1(ch.clone(), Ask::Services).await),
        ("v1alpha", reflect_v1alpha(ch.clone(), Ask::Services).await),
    ] {
        let services = services.expect("reflection answers").services;
        for want in [
            "wsroute.v1.Router",
            "wsroute.v1.Mesh",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == want),
                "{version} lists {want}: {services:?}"
            );
        }
    }
    for (version, answer) in [
        (
            "v1",
            reflect_v1(ch.clone(), Ask::FileOf("wsroute.v1.Router".into())).await,
        ),
        (
            "v1alpha",
            reflect_v1alpha(
                ch.clone(),
                Ask::FileOf("wsroute.v1.Router.SendToUser".into()),
            )
            .await,
        ),
    ] {
        let files = answer.expect("reflection answers").files;
        let file = files
            .iter()
            .find(|f| f.package() == "wsroute.v1")
            .unwrap_or_else(|| panic!("{version}: a wsroute.v1 file among {files:?}"));
        assert_eq!(file.name(), "wsroute.proto");
        let router = file
            .service
            .iter()
            .find(|s| s.name() == "Router")
            .expect("the file defines Router");
        let methods: Vec<&str> = router.method.iter().map(|m| m.name()).collect();
        assert_eq!(
            methods,
            ["SendToUser", "SendToUsers", "LookupUser", "ListNodes"],
            "{version}"
        );
        assert!(
            file.message_type
                .iter()
                .any(|m| m.name() == "SendToUserRequest"),
            "{version}: the request messages come with the service"
        );
        // With its comments, so that a tool can show what each call does.
        assert!(
            file.source_code_info
                .as_ref()
                .is_some_and(|i| i.location.iter().any(|l| !l.leading_comments().is_empty())),
            "{version}: the descriptor keeps the .proto's comments"
        );
    }
    let health_file = reflect_v1(ch.clone(), Ask::FileOf("grpc.health.v1.Health".into()))
        .await
        .expect("reflection answers");
    assert!(
        health_file
            .files
            .iter()
            .any(|f| f.package() == "grpc.health.v1"),
        "{health_file:?}"
    );
    let missing = reflect_v1(ch.clone(), Ask::FileOf("no.such.Symbol".into()))
        .await
        .expect_err("an unknown symbol");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // The services that need credentials still refuse without them, and take them.
    let mut router = RouterClient::new(ch.clone());
    let refused = router
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect_err("Router without the API key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let nodes = router
        .list_nodes(authed(pb::ListNodesRequest {}, API_KEY))
        .await
        .expect("Router with the API key");
    assert_eq!(nodes.get_ref().nodes.len(), 1);
    let mut mesh = MeshClient::new(ch.clone());
    let stats = || pb::StatsRequest {
        node_id: node.id.clone(),
    };
    let refused = mesh
        .stats(stats())
        .await
        .expect_err("Mesh without the secret");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("mesh secret"), "{refused:?}");
    let wrong = mesh
        .stats(authed(stats(), API_KEY))
        .await
        .expect_err("Mesh with the API key instead of the mesh secret");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    mesh.stats(authed(stats(), MESH_SECRET))
        .await
        .expect("Mesh with the secret");
}

#[tokio::test]
async fn health_is_not_serving_while_the_node_starts_and_watch_sees_it_become_ready() {
    // A node whose Redis is not there yet: it listens, but cannot register, so it is starting.
    let mut redis = RedisServer::start().await;
    redis.stop();
    let node = Node::spawn(&redis, &NodeOpts::new("node1"));
    let ch = eventually("the gRPC listener accepts", || {
        let url = node.grpc();
        async move { Channel::from_shared(url).ok()?.connect().await.ok() }
    })
    .await;
    for name in HEALTH_NAMES {
        let status = check(ch.clone(), name).await.expect("Check answers");
        assert_eq!(status, ServingStatus::NotServing, "service {name:?}");
    }
    let r = reqwest::get(node.http("/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 503, "the HTTP probe agrees");

    let mut watching = watch_every_name(&ch, ServingStatus::NotServing).await;
    redis.start_again().await;
    expect_next_on_each(&mut watching, Some(ServingStatus::Serving)).await;
    assert_eq!(
        check(ch.clone(), "").await.expect("Check"),
        ServingStatus::Serving
    );
    let r = reqwest::get(node.http("/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 200, "the HTTP probe agrees");
}

#[tokio::test]
async fn health_watch_streams_not_serving_when_the_node_drains_and_ends_as_it_exits() {
    // Ten clients make ten hand-over waves 200 ms apart (server/src/handover.rs): the node is
    // seen draining for about 1.8 s before it exits.
    let mut c = Cluster::start(2).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(Client::connect(&c.node(2).ws_user(&format!("user{i}"))).await);
    }
    let ch = channel(&c.node(2).grpc()).await;
    let mut watching = watch_every_name(&ch, ServingStatus::Serving).await;

    // The operator's drain (what `router-cli drain` sends over the mesh).
    let (code, out, err) = cli(
        &c.redis.url(),
        &["drain", "node2", "--no-wait", "--mesh-secret", MESH_SECRET],
    );
    assert_eq!(code, 0, "{out} {err}");

    let started = std::time::Instant::now();
    expect_next_on_each(&mut watching, Some(ServingStatus::NotServing)).await;
    let told_after = started.elapsed();
    println!("watchers told NOT_SERVING {told_after:?} after the drain was asked");
    // While the drain runs, Check says so too; the other node still serves.
    assert_eq!(
        check(ch.clone(), "").await.expect("Check while draining"),
        ServingStatus::NotServing
    );
    let other = channel(&c.node(1).grpc()).await;
    assert_eq!(
        check(other, "wsroute.v1.Router")
            .await
            .expect("Check node1"),
        ServingStatus::Serving
    );

    // The watches end when the node stops, and do not hold its exit up.
    expect_next_on_each(&mut watching, None).await;
    let status = c.nodes[1].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "a drain exits 0: {status}");
}
