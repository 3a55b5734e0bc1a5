//! `wsroute-client`: the Rust client for a wsroute cluster.
//!
//! Two layers:
//!
//! - [`Connection`]: one WebSocket connection to a node's `/ws`. Connects (`ws://`, `wss://`),
//!   authenticates (dev auth `?user=`, or a JWT as a header or `?token=`), reads the `hello`,
//!   and sends and receives frames, typed ([`ClientFrame`], [`ServerFrame`]) or as raw text for
//!   callers that parse frames their own way (the load generator). A refused upgrade is
//!   [`ConnectError::Refused`] with the HTTP status and the server's JSON body; a close frame is
//!   [`ConnError::Closed`] with its code. No reconnects, no acks.
//! - [`Client`]: a session that outlives connections. Finds a node by URL or by asking
//!   `/gateway`, reconnects with exponential back-off and full jitter, keeps heartbeats, follows
//!   a draining node's `reconnect` to a known host only, acks every message and drops repeated
//!   ids, keeps every send in a bounded outbox with a `cid` until it is stored or confirmed by a
//!   receipt and sends it again after a reconnect, refreshes its JWT through a callback before
//!   it expires, and delivers messages, receipts and presence to the app through a bounded
//!   channel ([`Events`]).
//!
//! # A session with the high-level client
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wsroute_client::{Client, ClientConfig, Event, TokenSource};
//!
//! let tokens = TokenSource::new(|| async {
//!     // Ask the app's backend for a fresh JWT for this user.
//!     Ok::<_, wsroute_client::TokenError>("eyJ...".to_owned())
//! });
//! let (client, mut events) = Client::connect(
//!     ClientConfig::url("ws://127.0.0.1:8081/ws").token_source(tokens).device("phone"),
//! )
//! .await?;
//! let pending = client.send("bob", serde_json::json!({"text": "hello"}))?;
//! println!("ack: {:?}", pending.await?.status);
//! if let Some(Event::Receipt(r)) = events.recv().await {
//!     println!("{} {:?}", r.id, r.status);
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! # One raw connection
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wsroute_client::{ConnectError, ConnectOptions, Connection};
//!
//! match Connection::connect(&ConnectOptions::new("ws://127.0.0.1:8081/ws").token("bad")).await {
//!     Err(ConnectError::Refused { status, body }) => println!("{status}: {}", body["message"]),
//!     Err(other) => println!("{other}"),
//!     Ok(mut conn) => {
//!         conn.send_text(r#"{"type":"ping"}"#).await?;
//!         println!("{}", conn.recv_text().await?.as_str());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Every bound and what happens when it is reached: the outbox refuses a send with
//! [`SendError::OutboxFull`]; the event channel applies back-pressure (the connection is not
//! read until the app takes an event; messages are acked only once taken); the window of seen
//! ids forgets its oldest; [`Client::read`], [`Client::watch`] and [`Client::unwatch`] wait for
//! room in a 256-command queue.

mod client;
mod connect;
mod connection;
mod error;
pub mod frame;

pub use client::{
    Auth, Client, ClientConfig, Endpoints, Event, Events, PendingAck, TokenError, TokenFuture,
    TokenSource,
};
pub use connect::{ConnectOptions, Credentials};
pub use connection::{ConnReader, ConnWriter, Connection};
pub use error::{CloseInfo, ConnError, ConnectError, SendError};
pub use frame::{
    Ack, AckStatus, ClientFrame, ErrorBody, ErrorFrame, Hello, Message, Presence, Receipt,
    ReceiptStatus, Reconnect, Refreshed, ServerFrame,
};

/// The WebSocket types under [`Connection`], for tests and tools that send what a well-behaved
/// client never sends (binary frames, hand-made frames) or read close codes as the WebSocket
/// library reports them.
pub mod raw {
    pub use tokio_tungstenite::MaybeTlsStream;
    pub use tokio_tungstenite::tungstenite::http::Uri;
    pub use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    pub use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    pub use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
    pub use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
}
