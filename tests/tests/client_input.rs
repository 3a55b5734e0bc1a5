//! What a client can get wrong: bad or expired tokens, malformed frames, oversized frames.
//! Each gets a clear error and changes nothing else.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
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
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        c.node(1).ws(""),
    )
    .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(JWT_SECRET, "hdr-user", 60))
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connects");
    use futures_util::StreamExt;
    let hello = ws.next().await.expect("frame").expect("ok");
    let v: serde_json::Value = serde_json::from_str(hello.to_text().expect("text")).expect("json");
    assert_eq!(v["user"], "hdr-user");
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
    assert_eq!(close.code, CloseCode::Size, "{close:?}");
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
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

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
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1007));

    // 10 MiB in one frame: refused from its header, without buffering it.
    let mut huge = Client::connect(&c.node(1).ws_user("huge")).await;
    let body = "x".repeat(10 * 1024 * 1024);
    huge.try_send_raw(Message::text(format!(
        r#"{{"type":"send","to":"bob","ref":"big","body":"{body}"}}"#
    )))
    .await;
    let (_, close) = huge.expect_close().await;
    if let Some(f) = close {
        assert_eq!(u16::from(f.code), 1009);
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
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.node(1).ws_port))
        .await
        .expect("tcp connects");
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
