//! Where the next connection goes: the configured node URLs in turn, or the node a `/gateway`
//! names; and which `reconnect` targets a draining node may send the client to (only hosts the
//! client already knows: a configured URL's or gateway's host, or one a gateway named; never a
//! downgrade from `wss://` to `ws://`).

use std::collections::HashSet;
use std::time::Duration;

use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::ConnectError;

/// How a client finds a node.
#[derive(Debug, Clone)]
pub enum Endpoints {
    /// Node `/ws` URLs, tried in turn.
    Urls(Vec<String>),
    /// Node HTTP base URLs (`http://HOST:PORT`), asked in turn for `GET /gateway`; when the
    /// node a gateway names cannot be reached, the gateway node's own `/ws` is used next.
    Gateways(Vec<String>),
}

/// What the gateway answers.
#[derive(serde::Deserialize)]
struct GatewayAnswer {
    url: String,
}

#[derive(Debug)]
pub(crate) struct Picker {
    endpoints: Endpoints,
    turn: usize,
    /// Hosts a `reconnect` may point at.
    known_hosts: HashSet<String>,
    /// Whether any configured endpoint is TLS: then a `reconnect` must stay on `wss://`.
    secure: bool,
    /// A `reconnect` target accepted from a draining node: the next connection goes there.
    redirect: Option<String>,
    /// The URL of the last attempt that failed, so that a gateway naming it again (a dead node
    /// whose lease has not expired yet) is passed over once.
    failed: Option<String>,
    http: reqwest::Client,
}

impl Picker {
    pub(crate) fn new(endpoints: Endpoints, timeout: Duration) -> Self {
        let list = match &endpoints {
            Endpoints::Urls(v) | Endpoints::Gateways(v) => v,
        };
        let known_hosts = list.iter().filter_map(|u| host_of(u)).collect();
        let secure = list
            .iter()
            .any(|u| u.starts_with("wss://") || u.starts_with("https://"));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            endpoints,
            turn: 0,
            known_hosts,
            secure,
            redirect: None,
            failed: None,
            http,
        }
    }

    /// The URL for the next attempt.
    pub(crate) async fn next(&mut self) -> Result<String, ConnectError> {
        if let Some(url) = self.redirect.take() {
            return Ok(url);
        }
        let turn = self.turn;
        self.turn = self.turn.wrapping_add(1);
        match &self.endpoints {
            Endpoints::Urls(urls) => match urls.get(turn % urls.len().max(1)) {
                Some(u) => Ok(u.clone()),
                None => Err(ConnectError::BadUrl {
                    url: String::new(),
                    why: "no node URL configured",
                }),
            },
            Endpoints::Gateways(gateways) => {
                let Some(base) = gateways.get(turn % gateways.len().max(1)).cloned() else {
                    return Err(ConnectError::BadUrl {
                        url: String::new(),
                        why: "no gateway configured",
                    });
                };
                let url = self.ask(&base).await?;
                if self.failed.as_deref() == Some(url.as_str()) {
                    return own_ws(&base);
                }
                if let Some(h) = host_of(&url) {
                    self.known_hosts.insert(h);
                }
                Ok(url)
            }
        }
    }

    /// Whether a `reconnect` target waits to be used (then no back-off: the node asked).
    pub(crate) fn has_redirect(&self) -> bool {
        self.redirect.is_some()
    }

    /// The attempt on `url` failed (or its connection ended badly).
    pub(crate) fn failed(&mut self, url: &str) {
        self.failed = Some(url.to_owned());
    }

    /// A connection to `url` succeeded.
    pub(crate) fn succeeded(&mut self) {
        self.failed = None;
    }

    /// A draining node's `reconnect`: followed only to a known host, and never from TLS down to
    /// plain text. True if accepted.
    pub(crate) fn redirect(&mut self, url: &str) -> bool {
        let scheme_ok = if self.secure {
            url.starts_with("wss://")
        } else {
            url.starts_with("ws://") || url.starts_with("wss://")
        };
        let known = host_of(url).is_some_and(|h| self.known_hosts.contains(&h));
        if scheme_ok && known {
            self.redirect = Some(url.to_owned());
        }
        scheme_ok && known
    }

    async fn ask(&self, base: &str) -> Result<String, ConnectError> {
        let gateway = format!("{}/gateway", base.trim_end_matches('/'));
        let fail = |why, source| ConnectError::Gateway {
            gateway: gateway.clone(),
            why,
            source,
        };
        let resp = self
            .http
            .get(&gateway)
            .send()
            .await
            .map_err(|e| fail("no answer", Some(e)))?;
        if !resp.status().is_success() {
            return Err(fail("it answered an error status", None));
        }
        let answer: GatewayAnswer = resp
            .json()
            .await
            .map_err(|e| fail("its answer is not {\"url\":...}", Some(e)))?;
        if !(answer.url.starts_with("ws://") || answer.url.starts_with("wss://")) {
            return Err(fail("it named a URL that is not ws:// or wss://", None));
        }
        Ok(answer.url)
    }
}

/// `http://h:p` -> `ws://h:p/ws` (the node's own WebSocket endpoint on the same listener).
fn own_ws(base: &str) -> Result<String, ConnectError> {
    let base = base.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("http://") {
        Ok(format!("ws://{rest}/ws"))
    } else if let Some(rest) = base.strip_prefix("https://") {
        Ok(format!("wss://{rest}/ws"))
    } else {
        Err(ConnectError::BadUrl {
            url: base.to_owned(),
            why: "a gateway is an http:// or https:// base URL",
        })
    }
}

/// The host of a URL, lowercased.
fn host_of(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    uri.host().map(|h| h.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_is_followed_only_to_a_known_host_and_never_down_to_plain_text() {
        let mut p = Picker::new(
            Endpoints::Urls(vec!["ws://127.0.0.1:8081/ws".into()]),
            Duration::from_secs(1),
        );
        assert!(!p.redirect("ws://evil.example/ws"));
        assert!(!p.redirect("http://127.0.0.1:8082/ws"));
        assert!(
            p.redirect("ws://127.0.0.1:8082/ws"),
            "another node on a known host"
        );

        let mut tls = Picker::new(
            Endpoints::Urls(vec!["wss://node1.test/ws".into()]),
            Duration::from_secs(1),
        );
        assert!(!tls.redirect("ws://node1.test:8443/ws"));
        assert!(tls.redirect("wss://node1.test:8443/ws"));
    }

    #[tokio::test]
    async fn urls_are_taken_in_turn_and_a_redirect_goes_first() {
        let mut p = Picker::new(
            Endpoints::Urls(vec!["ws://a/ws".into(), "ws://b/ws".into()]),
            Duration::from_secs(1),
        );
        assert_eq!(p.next().await.expect("url"), "ws://a/ws");
        assert_eq!(p.next().await.expect("url"), "ws://b/ws");
        assert!(p.redirect("ws://b:2/ws"));
        assert_eq!(p.next().await.expect("url"), "ws://b:2/ws");
        assert_eq!(p.next().await.expect("url"), "ws://a/ws");
    }

    #[test]
    fn a_gateway_nodes_own_endpoint() {
        assert_eq!(own_ws("http://h:1/").expect("ok"), "ws://h:1/ws");
        assert_eq!(own_ws("https://h").expect("ok"), "wss://h/ws");
        assert!(own_ws("ftp://h").is_err());
    }
}
