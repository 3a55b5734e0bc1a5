//! What a client can get wrong: bad or expired tokens, malformed frames, oversized frames.
//! Each gets a clear error and changes nothing else.

use serde_json::json;
use wsroute_client::raw::Message;
use wsroute_tests::cluster::JWT_SECRET;
use wsroute_tests::{Client, Cluster, token};

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let c = Cluster::start_with(1, |o| o.dev_auth = false).await;
    let n = c.node(1);

    let good = token(JWT_SECRET, "alice", 300);
    let alice = Client::connect(&n.ws(&format!("?token={good}"))).await;
    assert_eq!(alice.hello["user"], "alice");

    let cases = [
        ("no token", n.ws("")),
        ("dev user without dev auth", n.ws("?user=alice")),
        (
            "expired",
            n.ws(&format!("?token={}", token(JWT_SECRET, "alice", -3600))),
        ),
        (
            "wrong key",
            n.ws(&format!("?token={}", token("not-the-secret", "alice", 300))),
        ),
        (
            "bad subject",
            n.ws(&format!("?token={}", token(JWT_SECRET, "al ice", 300))),
        ),
        ("garbage", n.ws("?token=abc.def.ghi")),
    ];
    for (what, url) in cases {
        let refused = match Client::try_connect(&url).await {
            Ok(_) => panic!("{what}: connected"),
            Err(r) => r,
        };
        assert_eq!(refused.status, 401, "{what}");
        assert_eq!(
            refused.body["error"], "unauthorized",
            "{what}: {:?}",
            refused.body
        );
        assert!(
            refused.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // The token never reaches the log.
    assert!(!n.log_text().contains(&good));
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    let c = Cluster::start_with(1, |o| o.dev_auth = false).await;
    // The crate sends a token as `Authorization: Bearer` unless told to put it in the query.
    let opts = wsroute_client::ConnectOptions::new(c.node(1).ws(""))
        .token(token(JWT_SECRET, "hdr-user", 60));
    assert!(!opts.full_url().contains("token="), "{}", opts.full_url());
    let conn = wsroute_client::Connection::connect(&opts)
        .await
        .expect("connects");
    assert_eq!(conn.hello().user, "hdr-user");
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_connection_keeps_working() {
    let c = Cluster::start(1).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;

    let cases = [
        ("{not json", "bad_frame"),
        ("[1,2,3]", "bad_frame"),
        (r#"{"to":"bob"}"#, "bad_frame"),
        (r#"{"type":"teleport"}"#, "bad_frame"),
        (r#"{"type":"send","to":42,"ref":"r","body":1}"#, "bad_field"),
        (r#"{"type":"send","to":"bob","ref":"r"}"#, "bad_field"),
        (r#"{"type":"ack"}"#, "bad_field"),
    ];
    for (text, code) in cases {
        alice.send_text(text).await;
        let e = alice.expect_type("error").await;
        assert_eq!(e["code"], code, "{text} -> {e}");
    }
    alice.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(alice.expect_type("error").await["code"], "bad_frame");

    // A bad recipient is a rejected send, with the client's ref.
    let ack = alice.send_and_ack("not a user", json!(1)).await;
    assert_eq!(ack["status"], "rejected");
    assert_eq!(ack["error"]["code"], "bad_recipient");

    // Still connected, still delivering, and bob got none of the junk.
    let ack = alice.send_and_ack("bob", json!("ok")).await;
    assert_eq!(ack["status"], "delivered");
    let got = bob.frames_until_pong().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["body"], "ok");
}

#[tokio::test]
async fn a_read_frame_is_accepted_a_bad_id_refused_and_reads_count_against_the_rate() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-msgs-per-sec".into(), "2".into()];
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;

    // A good one is taken without an answer (receipts are not wired yet).
    alice
        .send_json(json!({"type":"read","id":"m0123456789abcdef1"}))
        .await;
    let got = alice.frames_until_pong().await;
    assert!(got.is_empty(), "{got:?}");

    let too_long = "m".repeat(129);
    for (what, id) in [
        ("missing", json!(null)),
        ("a number", json!(5)),
        ("empty", json!("")),
        ("a space", json!("m 1")),
        ("too long", json!(too_long)),
    ] {
        let mut frame = json!({"type":"read"});
        if !id.is_null() {
            frame["id"] = id;
        }
        alice.send_json(frame).await;
        let e = alice.expect_type("error").await;
        assert_eq!(e["code"], "bad_field", "{what}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains("id")),
            "{what}: {e}"
        );
    }

    // Reads are frames the client starts: past the burst (20 at 2/s, 8 spent above) they are
    // refused, and a client that keeps on is closed like any flood.
    for _ in 0..40 {
        alice
            .send_json(json!({"type":"read","id":"m0123456789abcdef1"}))
            .await;
    }
    let (frames, close) = alice.expect_close().await;
    assert_eq!(close.expect("a close frame").code, 1008);
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "rate_limited"),
        "{frames:?}"
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let c = Cluster::start_with(1, |o| {
        o.extra = vec!["--max-frame-bytes".into(), "4096".into()]
    })
    .await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;
    // Just under the limit is fine.
    let ok = format!(
        r#"{{"type":"send","to":"bob","ref":"a","body":"{}"}}"#,
        "x".repeat(3900)
    );
    alice.send_text(ok).await;
    assert_eq!(alice.expect_ack("a").await["status"], "delivered");
    let big = format!(
        r#"{{"type":"send","to":"bob","ref":"b","body":"{}"}}"#,
        "x".repeat(5000)
    );
    alice.send_text(big).await;
    let (frames, close) = alice.expect_close().await;
    let close = close.expect("a close frame");
    assert_eq!(close.code, 1009, "{close:?}");
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "too_large"),
        "{frames:?}"
    );
    // Bob got the first message only.
    let got = bob.frames_until_pong().await;
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn invalid_utf8_and_a_10_mib_frame_are_refused_and_others_keep_working() {
    use wsroute_client::raw::{Data, Frame, OpCode};

    let c = Cluster::start(1).await;
    let mut bob = Client::connect(&c.node(1).ws_user("bob")).await;

    // A text frame that is not UTF-8.
    let mut broken = Client::connect(&c.node(1).ws_user("broken")).await;
    broken
        .send_raw(Message::Frame(Frame::message(
            vec![0xff, 0xfe, 0x80],
            OpCode::Data(Data::Text),
            true,
        )))
        .await;
    let (frames, close) = broken.expect_close().await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "bad_frame"),
        "{frames:?}"
    );
    assert_eq!(close.map(|f| f.code), Some(1007));

    // 10 MiB in one frame: refused from its header, without buffering it.
    let mut huge = Client::connect(&c.node(1).ws_user("huge")).await;
    let body = "x".repeat(10 * 1024 * 1024);
    huge.try_send_raw(Message::text(format!(
        r#"{{"type":"send","to":"bob","ref":"big","body":"{body}"}}"#
    )))
    .await;
    let (_, close) = huge.expect_close().await;
    if let Some(f) = close {
        assert_eq!(f.code, 1009);
    }

    // The node still serves everyone else, and bob got none of it.
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    assert_eq!(
        alice.send_and_ack("bob", json!("fine")).await["status"],
        "delivered"
    );
    let got = bob.frames_until_pong().await;
    assert_eq!(got.len(), 1, "{got:?}");
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(1).await;
    let mut tcp = raw_socket(c.node(1).ws_port).await;
    // Half a request, then silence.
    tcp.write_all(b"GET /ws?user=slowloris HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(wsroute_tests::patience(), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the node kept a half-open handshake forever"
    );
    assert_eq!(c.redis.routes_of_user("slowloris").await, 0);
}

/// A plain TCP connection to a node's client port, for requests no WebSocket client would send.
async fn raw_socket(port: u16) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp connects")
}

/// Reads what the node writes on a raw socket until `want` appears in it or the node closes.
async fn read_until(tcp: &mut tokio::net::TcpStream, want: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wsroute_tests::patience(), async {
        while !String::from_utf8_lossy(&got).contains(want) {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn requests_that_are_not_a_websocket_handshake_get_a_clear_http_error() {
    use tokio::io::AsyncWriteExt;
    let c = Cluster::start(1).await;
    let n = c.node(1);

    // A browser tab or curl on /ws: no upgrade asked for.
    let r = reqwest::get(n.http("/ws?user=tab")).await.expect("GET /ws");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "bad_request", "{body}");

    // An upgrade asked of another path, and a handshake with a version this server lacks.
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    for (path, version, status, error) in [
        ("/metrics", "13", "404", "not_found"),
        ("/ws?user=old", "8", "400", "bad_request"),
    ] {
        let mut tcp = raw_socket(n.ws_port).await;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let reply = read_until(&mut tcp, "}").await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {reply}"
        );
        assert!(reply.contains(&format!(r#""error":"{error}""#)), "{reply}");
    }
    assert_eq!(c.redis.routes_of_user("old").await, 0);
}

#[tokio::test]
async fn a_frame_sent_right_behind_the_handshake_is_read() {
    use tokio::io::AsyncWriteExt;
    let c = Cluster::start(1).await;
    let mut tcp = raw_socket(c.node(1).ws_port).await;
    // The handshake and a masked `ping` frame (mask key 0) in one write, before the 101.
    let mut bytes = b"GET /ws?user=eager HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let payload = br#"{"type":"ping"}"#;
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
    bytes.extend_from_slice(payload);
    tcp.write_all(&bytes).await.expect("write");
    let got = read_until(&mut tcp, r#""type":"pong""#).await;
    assert!(got.starts_with("HTTP/1.1 101 "), "{got}");
    // RFC 6455's example key and its accept value.
    assert!(
        got.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{got}"
    );
    assert!(got.contains(r#""type":"hello""#), "{got}");
    assert!(got.contains(r#""type":"pong""#), "{got}");
}
