//! Where and as whom to connect: [`ConnectOptions`] turns a `/ws` URL, credentials and a device
//! name into the upgrade request the server expects (docs/protocol.md).

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::ConnectError;

/// Who the connection is for.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `?user=ID`: accepted only by nodes started with `--dev-auth`.
    Dev(String),
    /// A JWT (HS256, `sub` = user), sent as `Authorization: Bearer` (or `?token=`, see
    /// [`ConnectOptions::token_in_query`]).
    Token(String),
    /// Nothing: whatever the URL itself carries.
    None,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dev(user) => f.debug_tuple("Dev").field(user).finish(),
            // A token is a secret: never in logs.
            Self::Token(_) => f.write_str("Token(..)"),
            Self::None => f.write_str("None"),
        }
    }
}

/// Everything [`crate::Connection::connect`] needs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub(crate) url: String,
    pub(crate) credentials: Credentials,
    pub(crate) device: Option<String>,
    pub(crate) token_in_query: bool,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) config: WebSocketConfig,
    pub(crate) timeout: Duration,
}

impl ConnectOptions {
    /// A node's `ws://HOST:PORT/ws` or `wss://...` URL (it may carry a query already).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials: Credentials::None,
            device: None,
            token_in_query: false,
            headers: Vec::new(),
            config: WebSocketConfig::default(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Dev auth as `user`.
    pub fn dev_user(mut self, user: impl Into<String>) -> Self {
        self.credentials = Credentials::Dev(user.into());
        self
    }

    /// A JWT.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Credentials::Token(token.into());
        self
    }

    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Names this device (`?device=`).
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Send the token as `?token=` instead of an `Authorization` header (as browsers must).
    pub fn token_in_query(mut self, yes: bool) -> Self {
        self.token_in_query = yes;
        self
    }

    /// An extra header on the upgrade request (e.g. `Origin`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The WebSocket's buffer sizes and limits (tungstenite allocates the read buffer up front:
    /// keep it small when holding many idle connections).
    pub fn websocket_config(mut self, config: WebSocketConfig) -> Self {
        self.config = config;
        self
    }

    /// Limit for each of: the TCP connect, the upgrade, the `hello` (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL as given, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with the query this connection's credentials and device add.
    pub fn full_url(&self) -> String {
        let mut params = Vec::new();
        match &self.credentials {
            Credentials::Dev(user) => params.push(format!("user={}", encode(user))),
            Credentials::Token(t) if self.token_in_query => {
                params.push(format!("token={}", encode(t)))
            }
            _ => {}
        }
        if let Some(d) = &self.device {
            params.push(format!("device={}", encode(d)));
        }
        if params.is_empty() {
            return self.url.clone();
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}{}", self.url, params.join("&"))
    }

    /// The upgrade request.
    pub(crate) fn request(&self) -> Result<Request, ConnectError> {
        let bad = |why| ConnectError::BadUrl {
            url: self.url.clone(),
            why,
        };
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) {
            return Err(bad("expected ws://HOST:PORT/ws or wss://..."));
        }
        let mut req = self
            .full_url()
            .into_client_request()
            .map_err(|_| bad("not a valid WebSocket URL"))?;
        if let (Credentials::Token(t), false) = (&self.credentials, self.token_in_query) {
            let value = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| bad("the token cannot go into a header"))?;
            req.headers_mut().insert("authorization", value);
        }
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| bad("a header name is invalid"))?;
            let value = HeaderValue::from_str(v).map_err(|_| bad("a header value is invalid"))?;
            req.headers_mut().insert(name, value);
        }
        Ok(req)
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_device_go_into_the_query_or_a_header() {
        let o = ConnectOptions::new("ws://127.0.0.1:1/ws")
            .dev_user("a@b")
            .device("phone 1");
        assert_eq!(
            o.full_url(),
            "ws://127.0.0.1:1/ws?user=a%40b&device=phone%201"
        );

        let o = ConnectOptions::new("ws://h/ws?x=1").token("t.o.k");
        assert_eq!(o.full_url(), "ws://h/ws?x=1");
        let req = o.request().expect("valid");
        assert_eq!(req.headers()["authorization"], "Bearer t.o.k");

        let o = ConnectOptions::new("ws://h/ws")
            .token("t.o.k")
            .token_in_query(true);
        assert_eq!(o.full_url(), "ws://h/ws?token=t.o.k");
        assert!(
            o.request()
                .expect("valid")
                .headers()
                .get("authorization")
                .is_none()
        );
    }

    #[test]
    fn what_is_not_a_websocket_url_is_refused() {
        for url in ["http://h/ws", "h:1/ws", "ws://"] {
            assert!(
                matches!(
                    ConnectOptions::new(url).request(),
                    Err(ConnectError::BadUrl { .. })
                ),
                "{url}"
            );
        }
        let bad_header = ConnectOptions::new("ws://h/ws").header("bad name", "v");
        assert!(bad_header.request().is_err());
    }

    #[test]
    fn tokens_stay_out_of_debug_output() {
        let o = ConnectOptions::new("ws://h/ws").token("secret.token.here");
        assert!(!format!("{o:?}").contains("secret"));
    }
}
