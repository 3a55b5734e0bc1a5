//! The mesh and the secrets, tried as an attacker would (issue 13; docs/protocol.md, "Secrets from files"): a node
//! for production does not start with an open mesh; a drain without the secret is refused and
//! the node keeps serving; a forged `Mesh.Forward` with the RIGHT secret cannot put a
//! `reconnect` (or any frame but the item's own message) in front of a client; secrets read
//! from files never show in the processes' arguments; a second process under a live node's id
//! refuses to start instead of wiping that node's routes; a password in the Redis URL works.

use std::path::PathBuf;

use serde_json::{Value, json};
use wsroute_proto::v1 as pb;
use wsroute_tests::cluster::{API_KEY, JWT_SECRET, MESH_SECRET, Node, NodeOpts};
use wsroute_tests::router_cli::cli;
use wsroute_tests::{Client, Cluster, RedisServer, authed, metric, patience, token};

/// A node set up for production: a token key, an API key, no dev auth, no mesh secret.
fn production(id: &str) -> NodeOpts {
    let mut o = NodeOpts::new(id);
    o.dev_auth = false;
    o.mesh_secret = None;
    o
}

#[tokio::test]
async fn a_node_without_a_mesh_secret_refuses_to_start_unless_opened_on_purpose() {
    let redis = RedisServer::start().await;

    let mut refused = Node::spawn(&redis, &production("open1"));
    let status = refused.wait_exit(patience()).await;
    let log = refused.log_text();
    assert_eq!(
        status.code(),
        Some(2),
        "exit 2, as for a missing token key: {log}"
    );
    for says in ["--mesh-secret", "--mesh-mtls", "--insecure-mesh", "drain"] {
        assert!(log.contains(says), "the refusal names {says}: {log}");
    }
    assert!(
        reqwest::get(refused.http("/healthz")).await.is_err(),
        "nothing listens"
    );

    // Opened on purpose: by flag, by environment, or by dev auth; each says so in its log.
    let mut by_flag = production("open2");
    by_flag.extra.push("--insecure-mesh".into());
    let mut by_env = production("open3");
    by_env
        .env
        .push(("WSROUTE_INSECURE_MESH".into(), "1".into()));
    let mut dev = production("open4");
    dev.dev_auth = true;
    for opts in [by_flag, by_env, dev] {
        let node = Node::start(&redis, opts).await;
        assert!(
            node.log_text()
                .contains("no --mesh-secret and no --mesh-mtls"),
            "an open mesh is logged: {}",
            node.log_text()
        );
    }
}

/// `router-cli drain node1` (exit code, stderr) with these extra arguments.
fn drain(c: &Cluster, auth: &[&str]) -> (i32, String) {
    let mut args = vec!["drain", "node1"];
    args.extend_from_slice(auth);
    let (code, _, err) = cli(&c.redis.url(), &args);
    (code, err)
}

fn secret_file(dir: &str, name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsroute-{dir}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write secret file");
    path
}

#[tokio::test]
async fn a_drain_without_the_mesh_secret_is_refused_and_the_node_keeps_serving() {
    let mut c = Cluster::start(1).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;

    let wrong = secret_file("drain", "wrong", "anything\n");
    let wrong = wrong.to_str().expect("utf8");
    for auth in [
        &[][..],
        &["--mesh-secret", "anything"],
        &["--mesh-secret-file", wrong],
    ] {
        let (code, err) = drain(&c, auth);
        assert_eq!(code, 1, "drain {auth:?} must fail: {err}");
        assert!(err.contains("mesh secret"), "says why: {err}");
    }

    // Nothing changed: still ready, still serving both clients.
    let ready = reqwest::get(c.node(1).http("/readyz"))
        .await
        .expect("node answers");
    assert_eq!(ready.status(), 200);
    assert_eq!(
        metric(&c.node(1).http("/metrics"), "wsroute_draining").await,
        0.0
    );
    let ack = alice
        .send_and_ack("bob", json!({"text": "still here"}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    let got = bob.expect_type("message").await;
    assert_eq!(got["body"]["text"], "still here");

    // The right secret, from a file, does drain: the refusals above were about the secret.
    let right = secret_file("drain", "right", &format!("{MESH_SECRET}\n"));
    let (code, err) = drain(&c, &["--mesh-secret-file", right.to_str().expect("utf8")]);
    assert_eq!(code, 0, "drain with the secret from a file: {err}");
    let status = c.nodes[0].wait_exit(patience()).await;
    assert!(status.success(), "the drained node exits 0: {status}");
}

/// One mesh item for `conn` carrying `frame` as its pass-through message frame.
fn item(id: &str, frame: &str, conn: &str) -> pb::ForwardItem {
    pb::ForwardItem {
        id: id.into(),
        frame: frame.as_bytes().to_vec().into(),
        conn_ids: vec![conn.into()],
        accepted_us: 1_000,
        from: "mallory".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_forged_forward_with_the_right_secret_puts_no_frame_but_a_message_before_a_client() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let conn = bob.conn_id();
    let metrics = c.node(2).http("/metrics");
    let refused_before = metric(
        &metrics,
        r#"wsroute_mesh_items_received_total{form="refused"}"#,
    )
    .await;

    let hostile = [
        // What a draining node sends: the JS client would follow it, with its token.
        r#"{"type":"reconnect","url":"ws://evil.example/ws","reason":"node draining"}"#.to_owned(),
        r#"{"type":"error","code":"unauthorized","message":"log in at http://evil.example"}"#
            .to_owned(),
        r#"{"type":"hello","conn_id":"c1","user":"ceo","node":"node2","heartbeat_ms":1}"#
            .to_owned(),
        // The message prefix, then a second `type`: JSON.parse keeps the last one.
        r#"{"type":"message","id":"mforged1","from":"mallory","to":"bob","ts":1,"body":{},"type":"reconnect","url":"ws://evil.example/ws"}"#.to_owned(),
        // Another id than the item's.
        r#"{"type":"message","id":"mother","from":"mallory","to":"bob","ts":1,"body":{}}"#
            .to_owned(),
    ];
    let mut items: Vec<pb::ForwardItem> = hostile
        .iter()
        .map(|frame| item("mforged1", frame, &conn))
        .collect();
    // Last, a message that is one: it still flows, so the refusals are about the frames.
    let real = r#"{"type":"message","id":"mforged2","from":"mallory","to":"bob","ts":1,"body":{"text":"a real one"}}"#;
    items.push(item("mforged2", real, &conn));

    let mut mesh = wsroute_proto::v1::mesh_client::MeshClient::connect(c.node(2).grpc())
        .await
        .expect("grpc connects");
    let reply = mesh
        .forward(authed(
            pb::ForwardBatch {
                from_node: "node1".into(),
                seq: 7,
                items,
            },
            MESH_SECRET,
        ))
        .await
        .expect("the secret is right: the call is accepted")
        .into_inner();
    assert_eq!(reply.results.len(), hostile.len() + 1);
    for (frame, r) in hostile.iter().zip(&reply.results) {
        assert_eq!(r.delivered, 0, "answered as not delivered: {frame}");
        assert!(
            r.gone.is_empty(),
            "bob's route is not declared stale: {frame}"
        );
    }
    assert_eq!(
        reply.results[hostile.len()].delivered,
        1,
        "the real message"
    );

    // Bob sees the real message and nothing before it, and his connection stays open.
    let frames = bob.frames_until_pong().await;
    assert_eq!(
        frames.len(),
        1,
        "only the real message reached bob: {frames:?}"
    );
    assert_eq!(frames[0]["id"], "mforged2");
    assert_eq!(frames[0]["type"], "message");

    let refused = metric(
        &metrics,
        r#"wsroute_mesh_items_received_total{form="refused"}"#,
    )
    .await;
    assert_eq!(
        refused - refused_before,
        hostile.len() as f64,
        "each refusal counted"
    );
    let log = c.node(2).log_text();
    let line = log
        .lines()
        .find(|l| l.contains("refusing a forwarded frame that is not a message"))
        .unwrap_or_else(|| panic!("the refusal is logged: {log}"));
    for names in ["from_node", "node1", "peer", "127.0.0.1:"] {
        assert!(line.contains(names), "names the peer ({names}): {line}");
    }

    // The mesh between the real nodes still carries messages.
    let ack = alice.send_and_ack("bob", json!({"text": "hi"})).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    let got: Value = bob.expect_type("message").await;
    assert_eq!(got["body"]["text"], "hi");
}

/// The NUL-separated arguments and environment of process `pid`, as `ps` (and anyone allowed
/// to read /proc) sees them.
fn cmdline_and_environ(pid: u32) -> (String, String) {
    let read = |what: &str| {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}")).expect("read /proc");
        String::from_utf8_lossy(&bytes).replace('\0', " ")
    };
    (read("cmdline"), read("environ"))
}

#[tokio::test]
async fn secrets_from_files_never_show_in_the_processes_arguments() {
    let (jwt, key, mesh) = (
        "jwt-secret-in-a-file",
        "api-key-in-a-file",
        "mesh-secret-in-a-file",
    );
    let file = |name: &str, v: &str| {
        secret_file("files", name, &format!("{v}\n"))
            .to_str()
            .expect("utf8")
            .to_owned()
    };
    let (jwt_file, key_file, mesh_file) = (file("jwt", jwt), file("key", key), file("mesh", mesh));
    let c = Cluster::start_with(2, |o| {
        o.dev_auth = false;
        o.jwt_secret = None;
        o.api_key = None;
        o.mesh_secret = None;
        o.extra.extend(
            [
                "--jwt-secret-file",
                &jwt_file,
                "--api-key-file",
                &key_file,
                "--mesh-secret-file",
                &mesh_file,
            ]
            .map(String::from),
        );
    })
    .await;
    for n in 1..=2 {
        let pid = c.node(n).pid().expect("running");
        let (args, env) = cmdline_and_environ(pid);
        assert!(
            args.contains("--mesh-secret-file"),
            "the right process: {args}"
        );
        for secret in [jwt, key, mesh, JWT_SECRET, API_KEY, MESH_SECRET] {
            assert!(
                !args.contains(secret),
                "{secret} in node{n}'s arguments: {args}"
            );
            assert!(!env.contains(secret), "{secret} in node{n}'s environment");
        }
        let log = c.node(n).log_text();
        for secret in [jwt, key, mesh] {
            assert!(!log.contains(secret), "{secret} in node{n}'s log");
        }
    }

    // Each secret read from its file is the one in force (the trailing newline trimmed): a
    // token signed with it is accepted, one signed with the harness's default is not, and the
    // mesh (secret from the file) carries a message from node1 to node2.
    let with = |secret: &str, user: &str, n: usize| {
        c.node(n)
            .ws(&format!("?token={}", token(secret, user, 300)))
    };
    assert!(
        Client::try_connect(&with(JWT_SECRET, "eve", 1))
            .await
            .is_err()
    );
    let mut alice = Client::connect(&with(jwt, "alice", 1)).await;
    let mut bob = Client::connect(&with(jwt, "bob", 2)).await;
    let ack = alice.send_and_ack("bob", json!({"text": "across"})).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.expect_type("message").await["body"]["text"], "across");

    // router-cli takes the API key from a file too (`send` goes through Router.SendToUser).
    let (code, out, err) = cli(
        &c.redis.url(),
        &[
            "send",
            "bob",
            r#"{"text":"from the cli"}"#,
            "--api-key-file",
            &key_file,
        ],
    );
    assert_eq!(code, 0, "router-cli send --api-key-file: {err}");
    assert!(out.contains("delivered"), "{out}");
    assert_eq!(
        bob.expect_type("message").await["body"]["text"],
        "from the cli"
    );
    let (code, _, err) = cli(
        &c.redis.url(),
        &[
            "send",
            "bob",
            "{}",
            "--api-key-file",
            &key_file,
            "--api-key",
            key,
        ],
    );
    assert_eq!(code, 2, "both a key and its file: {err}");
    assert!(err.contains("--api-key and --api-key-file"), "{err}");
}

#[tokio::test]
async fn a_file_that_cannot_give_a_secret_stops_the_start_with_a_clear_reason() {
    let redis = RedisServer::start().await;
    let empty = secret_file("bad", "empty", "\n");
    let empty = empty.to_str().expect("utf8").to_owned();
    let set = secret_file("bad", "set", "s\n");
    let set = set.to_str().expect("utf8").to_owned();
    for (extra, says) in [
        (
            vec!["--mesh-secret-file", &empty],
            format!("--mesh-secret-file {empty} is empty"),
        ),
        (
            vec!["--mesh-secret-file", "/nonexistent/mesh"],
            "cannot read --mesh-secret-file /nonexistent/mesh".to_owned(),
        ),
        (
            vec!["--jwt-secret-file", &set],
            "both --jwt-secret and --jwt-secret-file".to_owned(),
        ),
        // Token key files are read as the node starts: the same exit code as a bad flag.
        (
            vec![
                "--mesh-secret",
                "s",
                "--jwt-public-key",
                "/nonexistent/key.pem",
            ],
            "cannot read /nonexistent/key.pem".to_owned(),
        ),
        (
            vec![
                "--mesh-secret",
                "s",
                "--jwks-file",
                "/nonexistent/jwks.json",
            ],
            "cannot read /nonexistent/jwks.json".to_owned(),
        ),
    ] {
        let mut o = production("badfile");
        o.mesh_secret = None;
        o.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut node = Node::spawn(&redis, &o);
        let status = node.wait_exit(patience()).await;
        assert_eq!(status.code(), Some(2), "{extra:?}: {}", node.log_text());
        assert!(
            node.log_text().contains(&says),
            "{says}: {}",
            node.log_text()
        );
    }
}

#[tokio::test]
async fn a_second_process_with_a_live_nodes_id_refuses_to_start() {
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;

    // Same id as node2, its own ports: it must not touch node2's lease or routes.
    let mut twin = Node::spawn(&c.redis, &NodeOpts::new("node2"));
    let status = twin.wait_exit(patience()).await;
    let log = twin.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("node id node2 is in use by another live process"),
        "says why: {log}"
    );

    // node2 kept its route for bob the whole time: a message to him is delivered, never
    // stored, and node2 never had to put its routes back.
    assert_eq!(c.redis.routes_of_user("bob").await, 1);
    let ack = alice
        .send_and_ack("bob", json!({"text": "still routed"}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(
        bob.expect_type("message").await["body"]["text"],
        "still routed"
    );
    assert!(
        !c.node(2).log_text().contains("lease was gone"),
        "node2 lost its lease: {}",
        c.node(2).log_text()
    );
}

#[tokio::test]
async fn a_node_restarted_in_place_after_a_crash_takes_its_id_back() {
    let mut c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    // kill -9: the lease stays in Redis until it runs out; the new process waits it out (it
    // is not renewed) instead of taking the crashed one for a live twin.
    let lease = wsroute_core::keys::node_lease(&wsroute_tests::node_id("node2"));
    // The server that holds the key (of a Redis Cluster: its master).
    let server = c.redis.server_of(&lease).await;
    let holder = || async {
        let mut conn = RedisServer::conn_to(server).await.expect("redis reachable");
        let v: Option<String> = redis::cmd("GET")
            .arg(&lease)
            .query_async(&mut conn)
            .await
            .expect("GET the lease");
        v
    };
    let crashed = holder().await.expect("node2 holds its lease");
    c.nodes[1].kill();
    assert_eq!(
        holder().await.as_deref(),
        Some(crashed.as_str()),
        "the crashed process's lease is still there when the new one starts"
    );
    let redis = &c.redis;
    c.nodes[1].restart(redis).await;
    let restarted = holder().await.expect("the new process holds the lease");
    assert_ne!(restarted, crashed, "the lease is the new process's own");
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let ack = alice.send_and_ack("bob", json!({"text": "back"})).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.expect_type("message").await["body"]["text"], "back");
}

#[tokio::test]
async fn a_password_in_the_redis_url_works_for_the_pools_and_pub_sub() {
    let mut redis = RedisServer::start_with_args(&[]).await;
    redis.require_password("redis-pass-in-url").await;
    assert!(redis.url().contains(":redis-pass-in-url@"));
    // Ready means registered (pooled connections) and subscribed to route events (pub/sub).
    let c = Cluster::start_on(redis, 2, |_| {}).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let ack = alice
        .send_and_ack("bob", json!({"text": "through redis"}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(
        bob.expect_type("message").await["body"]["text"],
        "through redis"
    );
    // Offline: stored in the inbox, read back when carol connects.
    let ack = alice.send_and_ack("carol", json!({"text": "later"})).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    let mut carol = Client::connect(&c.node(2).ws_user("carol")).await;
    assert_eq!(carol.expect_type("message").await["body"]["text"], "later");
}
