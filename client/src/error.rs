//! What can go wrong, by layer: opening a connection ([`ConnectError`]), using one
//! ([`ConnError`]), and handing a send to the [`crate::Client`] ([`SendError`]).

use serde_json::Value;
use tokio_tungstenite::tungstenite;

/// How a connection ended, as its close frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The WebSocket close code (1001 going away, 1008 policy, 1009 too big, 1013 try again
    /// later, 4001 token expired, ...).
    pub code: u16,
    pub reason: String,
}

impl std::fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "close {} {:?}", self.code, self.reason)
    }
}

/// Opening a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a `ws://` or `wss://` URL with a host, or an option cannot go into it.
    #[error("{url:?} cannot be used: {why}")]
    BadUrl { url: String, why: &'static str },
    /// The server answered the upgrade with an HTTP error (`401` for a bad token, `503` while
    /// draining, ...); `body` is its JSON (`{"error":..., "message":...}`), `Null` if none.
    #[error("the server refused the connection: HTTP {status} {body}")]
    Refused { status: u16, body: Value },
    /// TCP, TLS or the WebSocket upgrade failed.
    #[error("connecting to {url} failed")]
    Handshake {
        url: String,
        #[source]
        source: tungstenite::Error,
    },
    /// The TCP connect, the upgrade or the `hello` took longer than the options allow.
    #[error("no connection to {url} within {after:?} ({stage})")]
    Timeout {
        url: String,
        stage: &'static str,
        after: std::time::Duration,
    },
    /// The first frame was not a `hello`, or the connection ended before one.
    #[error("no hello from {url}: {got}")]
    NoHello { url: String, got: String },
    /// Asking `/gateway` for a node failed.
    #[error("asking {gateway} for a node failed: {why}")]
    Gateway {
        gateway: String,
        why: &'static str,
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The token callback gave no token.
    #[error("the token callback failed")]
    Token(#[source] crate::client::TokenError),
}

impl ConnectError {
    /// The HTTP status of a refused handshake.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again the same way cannot help (a refused token, a bad URL). A `429` (the
    /// user over its connection limit) and a `408` are not: the limit counts connections that
    /// may be gone in a moment (the app's own previous connection on a node that died still
    /// counts until the cluster sweeps that node's routes, within about 15 s).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::BadUrl { .. } => true,
            Self::Refused { status, .. } => {
                (400..=499).contains(status) && !matches!(status, 408 | 429)
            }
            _ => false,
        }
    }
}

/// A connection could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The server closed the connection (with its close frame, if it sent one), or the stream
    /// ended.
    #[error("the connection is closed ({})", match .0 { Some(c) => c.to_string(), None => "no close frame".into() })]
    Closed(Option<CloseInfo>),
    /// The WebSocket failed (reset, protocol error, ...).
    #[error("the connection failed: {0}")]
    Ws(#[from] tungstenite::Error),
    /// A text frame that is not a protocol frame.
    #[error("the server sent a frame that is not a protocol frame: {text:?}")]
    BadFrame {
        text: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A send the [`crate::Client`] did not take, or that ended without an ack.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The outbox holds its maximum of unconfirmed sends: wait for acks and receipts, or raise
    /// [`crate::ClientConfig::outbox_capacity`]. Nothing was queued.
    #[error("the outbox is full ({capacity} unconfirmed sends)")]
    OutboxFull { capacity: usize },
    /// A `cid` given by the caller is not 1 to 64 bytes of `[A-Za-z0-9_.:-]`.
    #[error("cid {0:?} is not 1 to 64 bytes of [A-Za-z0-9_.:-]")]
    BadCid(String),
    /// The same `cid` is already in the outbox.
    #[error("cid {0:?} is already in the outbox")]
    DuplicateCid(String),
    /// [`crate::Client::watch`] would watch more users than [`crate::ClientConfig::max_watch`];
    /// nothing was changed.
    #[error("watching more than {max} users")]
    TooManyWatched { max: usize },
    /// The client was closed (or gave up: a permanent refusal) before the send was acked.
    #[error("the client is closed")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> ConnectError {
        ConnectError::Refused {
            status,
            body: Value::Null,
        }
    }

    #[test]
    fn refusals_that_a_later_try_can_pass_are_not_permanent() {
        for status in [400, 401, 403, 404, 413, 421] {
            assert!(refused(status).is_permanent(), "{status}");
        }
        for status in [408, 429, 500, 503] {
            assert!(!refused(status).is_permanent(), "{status}");
        }
        let bad_url = ConnectError::BadUrl {
            url: "http://x".into(),
            why: "not ws",
        };
        assert!(bad_url.is_permanent());
    }
}
