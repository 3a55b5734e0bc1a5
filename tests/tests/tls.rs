//! TLS on the gRPC listener and mutual TLS for the mesh: nodes forward to each other over TLS with
//! client certificates; a mesh call without a certificate is refused even with the secret; a
//! plaintext client gets nowhere; the Router API, health and reflection work over TLS without a
//! client certificate.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use wsroute_proto::v1 as pb;
use wsroute_tests::cluster::{API_KEY, MESH_SECRET};
use wsroute_tests::{Client, Cluster, authed, binary, standard_grpc};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Runs router-cli as `cmd` says and checks that it succeeded.
fn cli_succeeds(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("router-cli runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tls_opts(o: &mut wsroute_tests::NodeOpts) {
    for (flag, file) in [
        ("--grpc-tls-cert", "node.pem"),
        ("--grpc-tls-key", "node-key.pem"),
        ("--grpc-tls-ca", "ca.pem"),
    ] {
        o.extra.push(flag.into());
        o.extra.push(fixture(file).display().to_string());
    }
    o.extra.push("--mesh-mtls".into());
}

async fn channel(port: u16, with_client_cert: bool) -> Channel {
    let read = |f: &str| std::fs::read(fixture(f)).expect("fixture");
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem")));
    if with_client_cert {
        cfg = cfg.identity(Identity::from_pem(read("node.pem"), read("node-key.pem")));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("url")
        .tls_config(cfg)
        .expect("tls config")
        .connect()
        .await
        .expect("TLS connect")
}

#[tokio::test]
async fn the_mesh_runs_over_mutual_tls() {
    let c = Cluster::start_with(2, tls_opts).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let ack = alice.send_and_ack("bob", json!("over mTLS")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.expect_type("message").await["body"], "over mTLS");

    // The mesh secret alone is not enough: no client certificate, no mesh.
    let mut mesh = pb::mesh_client::MeshClient::new(channel(c.node(2).grpc_port, false).await);
    let err = mesh
        .forward(authed(
            pb::ForwardBatch {
                from_node: "intruder".into(),
                items: vec![],
                seq: 0,
            },
            MESH_SECRET,
        ))
        .await
        .expect_err("refused without a client certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // Other services reach the Router over TLS without a client certificate.
    let mut router =
        pb::router_client::RouterClient::new(channel(c.node(1).grpc_port, false).await);
    let nodes = router
        .list_nodes(authed(pb::ListNodesRequest {}, API_KEY))
        .await
        .expect("Router over TLS")
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 2);

    // Health and reflection too, with no credentials at all (docs/protocol.md, "gRPC"), while the Mesh on
    // the same listener refused above.
    let bare = channel(c.node(1).grpc_port, false).await;
    assert_eq!(
        standard_grpc::check(bare.clone(), "")
            .await
            .expect("Health over TLS"),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let listed = standard_grpc::reflect_v1(bare, standard_grpc::Ask::Services)
        .await
        .expect("reflection over TLS")
        .services;
    assert!(listed.iter().any(|s| s == "wsroute.v1.Mesh"), "{listed:?}");

    // Plaintext gets nowhere.
    let mut plain = pb::router_client::RouterClient::connect(c.node(1).grpc())
        .await
        .expect("TCP connects");
    assert!(
        plain
            .list_nodes(authed(pb::ListNodesRequest {}, API_KEY))
            .await
            .is_err()
    );

    // router-cli speaks TLS too.
    cli_succeeds(
        Command::new(binary("router-cli"))
            .args(["--redis-url", &c.redis.url()])
            .args(["--grpc-tls-ca", &fixture("ca.pem").display().to_string()])
            .args(["send", "bob", r#"{"via":"cli"}"#, "--api-key", API_KEY]),
    );
    assert_eq!(bob.expect_type("message").await["body"]["via"], "cli");

    // Mesh calls from router-cli present the client certificate the mesh requires.
    let mut tls_args = Vec::new();
    for (flag, file) in [
        ("--grpc-tls-ca", "ca.pem"),
        ("--grpc-tls-cert", "node.pem"),
        ("--grpc-tls-key", "node-key.pem"),
    ] {
        tls_args.push(flag.to_owned());
        tls_args.push(fixture(file).display().to_string());
    }
    let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    args.extend(["stats", "node1", "--mesh-secret", MESH_SECRET]);
    let stats = wsroute_tests::router_cli::cli_json(&c.redis.url(), &args);
    assert_eq!(stats["node"], "node1", "{stats}");
    let (code, _, err) =
        wsroute_tests::router_cli::cli(&c.redis.url(), &[&args[..2], &args[6..]].concat());
    assert_eq!(code, 1, "stats without a client certificate: {err}");
    assert!(err.contains("client certificate"), "{err}");
}

#[test]
fn mesh_mtls_without_a_ca_refuses_to_start() {
    let out = Command::new(binary("wsroute-server"))
        .args(["--node-id", "n1", "--dev-auth", "--mesh-mtls"])
        .args([
            "--grpc-tls-cert",
            &fixture("node.pem").display().to_string(),
        ])
        .args([
            "--grpc-tls-key",
            &fixture("node-key.pem").display().to_string(),
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grpc-tls-ca"));
}

/// `rediss://`: nodes and router-cli reach Redis over TLS (the server's certificate checked
/// against the CA in `SSL_CERT_FILE`), and a node that does not trust the certificate never
/// becomes ready.
#[tokio::test]
async fn nodes_reach_redis_over_tls() {
    let redis = wsroute_tests::RedisServer::start_tls(&fixture("")).await;
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let ca = fixture("ca.pem").display().to_string();
    let c = Cluster::start_on(redis, 2, |o| {
        o.env.push(("SSL_CERT_FILE".into(), ca.clone()));
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let ack = alice.send_and_ack("bob", json!("over TLS to Redis")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(
        bob.expect_type("message").await["body"],
        "over TLS to Redis"
    );
    assert_eq!(c.redis.routes_of_user("bob").await, 1);

    let out = cli_succeeds(
        Command::new(binary("router-cli"))
            .args([
                "--json",
                "--redis-url",
                &c.redis.url(),
                "routes",
                "get",
                "bob",
            ])
            .env("SSL_CERT_FILE", &ca),
    );
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(routes["connections"][0]["node"], "node2", "{routes}");

    // Without the CA the certificate is refused: not ready, and why is in the log.
    let mut o = wsroute_tests::NodeOpts::new("node3");
    // A certificate that is not the CA: the server's chain does not lead to it.
    o.env.push((
        "SSL_CERT_FILE".into(),
        fixture("node.pem").display().to_string(),
    ));
    let untrusting = wsroute_tests::Node::spawn(&c.redis, &o);
    let readyz = untrusting.http("/readyz");
    wsroute_tests::eventually("the untrusting node says why it is not ready", || {
        let readyz = readyz.clone();
        let log = untrusting.log_text();
        async move {
            let status = reqwest::get(readyz).await.ok()?.status();
            (status == 503 && log.contains("certificate")).then_some(())
        }
    })
    .await;
}
