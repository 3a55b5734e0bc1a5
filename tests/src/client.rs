//! A WebSocket client that speaks the wsroute protocol, with deadline-bound receives.

use std::collections::VecDeque;

use serde_json::{Value, json};
use wsroute_client::raw::Message;
use wsroute_client::{CloseInfo, ConnError, ConnectError, ConnectOptions, Connection};

use crate::patience;

/// A test's view of one connection: frames as JSON values, read with deadlines, on the
/// low-level [`wsroute_client::Connection`] (no reconnects: tests decide what happens).
pub struct Client {
    conn: Connection,
    /// Frames read while looking for another type, kept in order.
    buffered: VecDeque<Value>,
    pub hello: Value,
    next_ref: u64,
    /// Ack every `message` as it is read, as a well-behaved client does (default on). Unacked
    /// live messages go back to the inbox when a connection ends.
    pub auto_ack: bool,
    /// The connection ended (a read found it closed).
    closed: bool,
}

/// What a refused handshake answered.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// Connects and reads the `hello` frame.
    pub async fn connect(url: &str) -> Self {
        match Self::try_connect(url).await {
            Ok(c) => c,
            Err(r) => panic!("connect {url} refused: {r:?}"),
        }
    }

    pub async fn try_connect(url: &str) -> Result<Self, Refused> {
        Self::try_connect_with(url, &[]).await
    }

    /// Connects with extra handshake headers (e.g. `Origin`).
    pub async fn try_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, Refused> {
        let mut opts = ConnectOptions::new(url).timeout(patience());
        for (k, v) in headers {
            opts = opts.header(*k, *v);
        }
        Self::try_connect_opts(&opts).await
    }

    /// Connects as `opts` say (credentials, device, headers).
    pub async fn try_connect_opts(opts: &ConnectOptions) -> Result<Self, Refused> {
        let conn = match Connection::connect(opts).await {
            Ok(c) => c,
            Err(ConnectError::Refused { status, body }) => return Err(Refused { status, body }),
            Err(e) => panic!("connect {}: {e:#?}", opts.url()),
        };
        let hello = serde_json::to_value(conn.hello()).expect("a hello serializes");
        Ok(Self {
            conn,
            buffered: VecDeque::new(),
            hello,
            next_ref: 0,
            auto_ack: true,
            closed: false,
        })
    }

    pub fn conn_id(&self) -> String {
        self.hello["conn_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.conn.send_text(text).await.expect("websocket send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a frame; false if the connection is gone (for clients whose node may be killed).
    pub async fn try_send_json(&mut self, v: Value) -> bool {
        self.conn.send_text(v.to_string()).await.is_ok()
    }

    /// Every frame that can be read without waiting (buffered ones first); for a client that
    /// pipelines sends and picks up its acks as they come.
    pub async fn ready_frames(&mut self) -> Vec<Value> {
        self.collect_until(std::time::Duration::ZERO, |_| false)
            .await
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.conn.send_message(m).await.expect("websocket send");
    }

    /// Sends, tolerating the server closing meanwhile (for frames the server refuses early).
    pub async fn try_send_raw(&mut self, m: Message) {
        let _ = self.conn.send_message(m).await;
    }

    /// Sends a direct message; returns the `ref` used.
    pub async fn send_to(&mut self, to: &str, body: Value) -> String {
        self.next_ref += 1;
        let r = format!("r{}", self.next_ref);
        self.send_json(json!({"type":"send","to":to,"ref":r,"body":body}))
            .await;
        r
    }

    /// Sends and waits for the matching ack.
    pub async fn send_and_ack(&mut self, to: &str, body: Value) -> Value {
        let r = self.send_to(to, body).await;
        self.expect_ack(&r).await
    }

    pub async fn expect_ack(&mut self, reference: &str) -> Value {
        self.expect(|f| f["type"] == "ack" && f["ref"] == reference, "ack")
            .await
    }

    /// The next frame of type `kind` (earlier frames of other types stay buffered).
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        self.expect(|f| f["type"] == kind, kind).await
    }

    pub async fn expect(&mut self, want: impl Fn(&Value) -> bool, what: &str) -> Value {
        if let Some(i) = self.buffered.iter().position(&want) {
            return self.buffered.remove(i).expect("index exists");
        }
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            let f = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {what} frame within {:?}; buffered: {:?}",
                        patience(),
                        self.buffered
                    )
                });
            match f {
                Some(f) if want(&f) => return f,
                Some(f) => self.buffered.push_back(f),
                None => panic!("connection closed while waiting for {what}"),
            }
        }
    }

    /// The very next frame, whatever its type.
    pub async fn next_frame(&mut self) -> Value {
        if let Some(f) = self.buffered.pop_front() {
            return f;
        }
        match tokio::time::timeout(patience(), self.read_frame()).await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("connection closed"),
            Err(_) => panic!("no frame within {:?}", patience()),
        }
    }

    /// Reads frames until `done` says the collection is complete or `limit` passes; returns
    /// every frame read (buffered ones first). For tests that count what arrived.
    pub async fn collect_until(
        &mut self,
        limit: std::time::Duration,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut frames: Vec<Value> = self.buffered.drain(..).collect();
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&frames) {
            match tokio::time::timeout_at(deadline, self.read_frame()).await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) | Err(_) => break,
            }
        }
        frames
    }

    /// Sends a ping and returns every frame that arrived before the pong.
    pub async fn frames_until_pong(&mut self) -> Vec<Value> {
        self.send_json(json!({"type":"ping"})).await;
        let mut before: Vec<Value> = self.buffered.drain(..).collect();
        loop {
            let f = match tokio::time::timeout(patience(), self.read_frame()).await {
                Ok(Some(f)) => f,
                Ok(None) => panic!("connection closed before pong"),
                Err(_) => panic!("no pong within {:?}", patience()),
            };
            if f["type"] == "pong" {
                return before;
            }
            before.push(f);
        }
    }

    /// Reads until the server closes; returns the close frame (None if the TCP just ended).
    pub async fn expect_close(&mut self) -> (Vec<Value>, Option<CloseInfo>) {
        let mut frames: Vec<Value> = self.buffered.drain(..).collect();
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            let text = tokio::time::timeout_at(deadline, self.conn.recv_text())
                .await
                .expect("server did not close in time");
            match text {
                Ok(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    if self.auto_ack && v["type"] == "message" {
                        let ack = json!({"type":"ack","id":v["id"]}).to_string();
                        let _ = self.conn.send_text(ack).await;
                    }
                    frames.push(v)
                }
                Err(ConnError::Closed(c)) => {
                    self.closed = true;
                    return (frames, c);
                }
                Err(_) => {
                    self.closed = true;
                    return (frames, None);
                }
            }
        }
    }

    /// Turns automatic acks off (to test what happens to unacked messages).
    pub fn manual_ack(mut self) -> Self {
        self.auto_ack = false;
        self
    }

    /// Whether a read found the connection closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    async fn read_frame(&mut self) -> Option<Value> {
        let frame = self.read_frame_inner().await;
        self.closed |= frame.is_none();
        frame
    }

    async fn read_frame_inner(&mut self) -> Option<Value> {
        let t = self.conn.recv_text().await.ok()?;
        let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
        if self.auto_ack && v["type"] == "message" {
            let ack = json!({"type":"ack","id":v["id"]}).to_string();
            self.conn.send_text(ack).await.ok()?;
        }
        Some(v)
    }

    /// Waits (up to `patience()`) for the next WebSocket pong, skipping text frames (kept in the
    /// buffer for later `expect`s); its payload.
    pub async fn expect_pong(&mut self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            let m = tokio::time::timeout_at(deadline, self.conn.recv_message())
                .await
                .unwrap_or_else(|_| panic!("no pong within {:?}", patience()));
            match m {
                Some(Ok(Message::Pong(p))) => return p.to_vec(),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    self.buffered.push_back(v);
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended before a pong: {other:?}"),
            }
        }
    }

    /// Closes and reads until the server's close, so that it has processed everything before.
    pub async fn close(self) {
        self.conn.close(patience()).await;
    }
}
