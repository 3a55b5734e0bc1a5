//! One WebSocket connection to a node: the upgrade, the `hello`, then frames in and out, typed
//! ([`Connection::recv`], [`Connection::send`]) or as raw text for callers that parse frames
//! their own way and must not pay for a second parse ([`Connection::recv_text`],
//! [`Connection::feed_text`]). No reconnects, no acks: that is [`crate::Client`]'s job.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::connect::ConnectOptions;
use crate::error::{CloseInfo, ConnError, ConnectError};
use crate::frame::{ClientFrame, Hello, ServerFrame};

/// A connection that has read its `hello`. `S` is the byte stream under the WebSocket: TCP or
/// TLS for [`Connection::connect`], anything for [`Connection::handshake`].
pub struct Connection<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
    hello: Hello,
    /// The server's close frame, once one was read.
    closed: Option<Option<CloseInfo>>,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("hello", &self.hello)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Connection {
    /// Connects (TCP, TLS for `wss://`, the upgrade) and reads the `hello`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use wsroute_client::{ClientFrame, ConnectOptions, Connection, ServerFrame};
    ///
    /// let mut conn =
    ///     Connection::connect(&ConnectOptions::new("ws://127.0.0.1:8081/ws").dev_user("alice"))
    ///         .await?;
    /// println!("on node {}", conn.hello().node);
    /// conn.send(&ClientFrame::Send {
    ///     to: "bob".into(),
    ///     reference: Some("r1".into()),
    ///     cid: None,
    ///     body: serde_json::json!({"text": "hi"}),
    /// })
    /// .await?;
    /// loop {
    ///     if let ServerFrame::Ack(ack) = conn.recv().await? {
    ///         println!("{:?}", ack.status);
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ConnectError> {
        let req = opts.request()?;
        let upgrade =
            tokio_tungstenite::connect_async_tls_with_config(req, Some(opts.config), true, None);
        let ws = match tokio::time::timeout(opts.timeout, upgrade).await {
            Err(_) => return Err(timeout(opts, "TCP connect and upgrade")),
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Err(refusal(opts, e)),
        };
        Self::after_upgrade(ws, opts).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// The upgrade and the `hello` over a stream the caller opened (a TCP socket bound to a
    /// chosen source address, a proxy, ...). Only `ws://` URLs: TLS is the stream's business.
    pub async fn handshake(stream: S, opts: &ConnectOptions) -> Result<Self, ConnectError> {
        let req = opts.request()?;
        let upgrade = tokio_tungstenite::client_async_with_config(req, stream, Some(opts.config));
        let ws = match tokio::time::timeout(opts.timeout, upgrade).await {
            Err(_) => return Err(timeout(opts, "upgrade")),
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Err(refusal(opts, e)),
        };
        Self::after_upgrade(ws, opts).await
    }

    async fn after_upgrade(
        mut ws: WebSocketStream<S>,
        opts: &ConnectOptions,
    ) -> Result<Self, ConnectError> {
        let no_hello = |got: String| ConnectError::NoHello {
            url: opts.url.clone(),
            got,
        };
        let first = tokio::time::timeout(opts.timeout, ws.next())
            .await
            .map_err(|_| timeout(opts, "hello"))?;
        let hello = match first {
            Some(Ok(Message::Text(t))) => match ServerFrame::parse(&t) {
                Ok(ServerFrame::Hello(h)) => h,
                _ => return Err(no_hello(format!("first frame {t}"))),
            },
            Some(Ok(Message::Close(c))) => {
                return Err(no_hello(format!(
                    "closed ({})",
                    c.map(close_info).map(|c| c.to_string()).unwrap_or_default()
                )));
            }
            Some(Ok(other)) => return Err(no_hello(format!("first frame {other:?}"))),
            Some(Err(e)) => return Err(no_hello(format!("read failed: {e}"))),
            None => return Err(no_hello("closed".into())),
        };
        Ok(Self {
            ws,
            hello,
            closed: None,
        })
    }

    /// The server's `hello`.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The server's close frame, once the connection was read to its end (`Some(None)`: ended
    /// without one).
    pub fn close_info(&self) -> Option<&Option<CloseInfo>> {
        self.closed.as_ref()
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ConnError> {
        self.send_text(frame.to_text()).await
    }

    /// Sends one text frame as it is (the caller vouches it is a frame, or tests that the server
    /// refuses it).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ConnError> {
        Ok(self.ws.send(Message::text(text.into())).await?)
    }

    /// Queues a text frame without flushing; [`Connection::flush`] writes what was fed, so that
    /// many frames share one write.
    pub async fn feed_text(&mut self, text: impl Into<String>) -> Result<(), ConnError> {
        Ok(self.ws.feed(Message::text(text.into())).await?)
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        Ok(self.ws.flush().await?)
    }

    /// Sends any WebSocket message (binary, ping, a hand-made frame): for tests of how the
    /// server treats what a well-behaved client never sends.
    pub async fn send_message(&mut self, message: Message) -> Result<(), ConnError> {
        Ok(self.ws.send(message).await?)
    }

    /// The next frame, typed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<ServerFrame, ConnError> {
        let text = self.recv_text().await?;
        ServerFrame::parse(&text).map_err(|source| ConnError::BadFrame {
            text: text.to_string(),
            source,
        })
    }

    /// The next text frame, unparsed (WebSocket pings are answered, pongs and binary frames
    /// skipped). `Err(ConnError::Closed)` once the server closed. Cancel-safe.
    pub async fn recv_text(&mut self) -> Result<Utf8Bytes, ConnError> {
        if let Some(c) = &self.closed {
            return Err(ConnError::Closed(c.clone()));
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(c))) => {
                    let c = c.map(close_info);
                    self.closed = Some(c.clone());
                    return Err(ConnError::Closed(c));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    self.closed = Some(None);
                    return Err(e.into());
                }
                None => {
                    self.closed = Some(None);
                    return Err(ConnError::Closed(None));
                }
            }
        }
    }

    /// A text frame that can be read without waiting, if any.
    pub fn recv_text_now(&mut self) -> Option<Result<Utf8Bytes, ConnError>> {
        self.recv_text().now_or_never()
    }

    /// The next WebSocket message of any kind (pings, pongs, binary, close): for tests.
    pub async fn recv_message(&mut self) -> Option<Result<Message, ConnError>> {
        match self.ws.next().await? {
            Ok(m) => Some(Ok(m)),
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Closes with a normal close frame and waits (up to `limit`) for the server's answer, so
    /// that the server has read everything sent before.
    pub async fn close(mut self, limit: std::time::Duration) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(limit, async {
            while let Some(Ok(m)) = self.ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }

    /// Splits into a writer and a reader, for a task that writes while another reads.
    pub fn split(self) -> (ConnWriter<S>, ConnReader<S>) {
        let (tx, rx) = self.ws.split();
        (ConnWriter { tx }, ConnReader { rx })
    }

    /// The WebSocket under the connection.
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }
}

/// The writing half of a [`Connection`].
pub struct ConnWriter<S> {
    tx: SplitSink<WebSocketStream<S>, Message>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ConnWriter<S> {
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ConnError> {
        Ok(self.tx.send(Message::text(frame.to_text())).await?)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ConnError> {
        Ok(self.tx.send(Message::text(text.into())).await?)
    }

    pub async fn close(&mut self) {
        let _ = self.tx.close().await;
    }
}

/// The reading half of a [`Connection`].
pub struct ConnReader<S> {
    rx: SplitStream<WebSocketStream<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ConnReader<S> {
    /// The next text frame; `Err(ConnError::Closed)` at the end. Cancel-safe.
    pub async fn recv_text(&mut self) -> Result<Utf8Bytes, ConnError> {
        loop {
            match self.rx.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(c))) => return Err(ConnError::Closed(c.map(close_info))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ConnError::Closed(None)),
            }
        }
    }

    /// The next frame, typed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<ServerFrame, ConnError> {
        let text = self.recv_text().await?;
        ServerFrame::parse(&text).map_err(|source| ConnError::BadFrame {
            text: text.to_string(),
            source,
        })
    }
}

pub(crate) fn close_info(c: CloseFrame) -> CloseInfo {
    CloseInfo {
        code: c.code.into(),
        reason: c.reason.to_string(),
    }
}

fn timeout(opts: &ConnectOptions, stage: &'static str) -> ConnectError {
    ConnectError::Timeout {
        url: opts.url.clone(),
        stage,
        after: opts.timeout,
    }
}

/// An HTTP answer instead of an upgrade is a refusal with a status and (JSON) body.
fn refusal(opts: &ConnectOptions, e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(resp) => ConnectError::Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(serde_json::Value::Null),
        },
        source => ConnectError::Handshake {
            url: opts.url.clone(),
            source,
        },
    }
}
