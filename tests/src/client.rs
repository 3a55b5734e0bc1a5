//! A WebSocket client that speaks the wsroute protocol, with deadline-bound receives.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::patience;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    ws: Ws,
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
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().expect("a valid ws url");
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let ws = match connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                return Err(Refused { status, body });
            }
            Err(e) => panic!("connect {url}: {e}"),
        };
        let mut c = Self {
            ws,
            buffered: VecDeque::new(),
            hello: Value::Null,
            next_ref: 0,
            auto_ack: true,
            closed: false,
        };
        let hello = c.next_frame().await;
        assert_eq!(hello["type"], "hello", "first frame must be hello: {hello}");
        c.hello = hello;
        Ok(c)
    }

    pub fn conn_id(&self) -> String {
        self.hello["conn_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("websocket send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a frame; false if the connection is gone (for clients whose node may be killed).
    pub async fn try_send_json(&mut self, v: Value) -> bool {
        self.ws.send(Message::text(v.to_string())).await.is_ok()
    }

    /// Every frame that can be read without waiting (buffered ones first); for a client that
    /// pipelines sends and picks up its acks as they come.
    pub async fn ready_frames(&mut self) -> Vec<Value> {
        self.collect_until(std::time::Duration::ZERO, |_| false)
            .await
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("websocket send");
    }

    /// Sends, tolerating the server closing meanwhile (for frames the server refuses early).
    pub async fn try_send_raw(&mut self, m: Message) {
        let _ = self.ws.send(m).await;
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
    pub async fn expect_close(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut frames: Vec<Value> = self.buffered.drain(..).collect();
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("server did not close in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    if self.auto_ack && v["type"] == "message" {
                        let ack = json!({"type":"ack","id":v["id"]}).to_string();
                        let _ = self.ws.send(Message::text(ack)).await;
                    }
                    frames.push(v)
                }
                Some(Ok(Message::Close(c))) => return (frames, c),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (frames, None),
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
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    if self.auto_ack && v["type"] == "message" {
                        let ack = json!({"type":"ack","id":v["id"]}).to_string();
                        self.ws.send(Message::text(ack)).await.ok()?;
                    }
                    return Some(v);
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read until the server's close so that it has processed everything before.
        let deadline = tokio::time::Instant::now() + patience();
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if m.is_close() {
                break;
            }
        }
    }
}
