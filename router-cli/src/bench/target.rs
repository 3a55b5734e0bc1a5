//! Where the bench may connect: node URLs checked to be on this machine (loopback only), and the
//! query string that authenticates each bench user (dev auth or a minted HS256 token).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use wsroute_client::raw::Uri;

/// A node's WebSocket endpoint, resolved to a loopback address.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given (scheme, host, port, path, maybe a query); user auth is appended.
    pub url: String,
    /// The loopback address the TCP connection goes to.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `ws://HOST:PORT/PATH`, refusing anything that is not loopback: the bench is a load
    /// generator and must never send its traffic off this machine.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some(other) => {
                return Err(format!(
                    "{url:?}: scheme {other:?} is not supported by bench; use ws:// (loopback needs no TLS)"
                ));
            }
            None => return Err(format!("{url:?}: expected ws://HOST:PORT/ws")),
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = resolve_loopback(host, port).map_err(|why| format!("{url:?}: {why}"))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
        })
    }

    /// The URL with `query` (`user=...` or `token=...`) appended.
    pub fn with_query(&self, query: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}{query}", self.url)
    }
}

/// What the bench accepts, for error messages.
const LOOPBACK_ONLY: &str = "bench only targets this machine (127.0.0.0/8, [::1], localhost)";

/// Accepts a loopback IP, or `localhost` when every address it resolves to is loopback (so
/// `/etc/hosts` cannot point the bench elsewhere). Other names are refused without a lookup.
fn resolve_loopback(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return if ip.is_loopback() {
            Ok(SocketAddr::new(ip, port))
        } else {
            Err(format!("{ip} is not a loopback address; {LOOPBACK_ONLY}"))
        };
    }
    if !host.eq_ignore_ascii_case("localhost") {
        return Err(format!("host {host:?} is not loopback; {LOOPBACK_ONLY}"));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "{host:?} does not resolve to loopback only; {LOOPBACK_ONLY}"
        ));
    }
    // Prefer IPv4: several 127.x source addresses are what let one machine open 100k+ sockets.
    Ok(addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .unwrap_or(addrs[0]))
}

/// How bench users prove who they are.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `?user=ID`; the nodes must run with `--dev-auth`.
    Dev,
    /// `?token=JWT`, HS256 with `sub` and `exp`, minted here with the nodes' `--jwt-secret`.
    Jwt { secret: String, valid_for_secs: u64 },
}

impl Auth {
    /// The query string that authenticates `user`.
    pub fn query(&self, user: &str) -> String {
        match self {
            Auth::Dev => format!("user={user}"),
            Auth::Jwt {
                secret,
                valid_for_secs,
            } => format!("token={}", mint(secret, user, *valid_for_secs)),
        }
    }
}

fn mint(secret: &str, user: &str, valid_for_secs: u64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: user,
            exp: now + valid_for_secs,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 over a serializable claim set cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_accepted() {
        for url in [
            "ws://127.0.0.1:8081/ws",
            "ws://127.0.0.9:1/ws",
            "ws://[::1]:8081/ws",
            "ws://localhost:8081/ws",
        ] {
            let t = Target::parse(url).expect(url);
            assert!(t.addr.ip().is_loopback(), "{url}");
        }
    }

    #[test]
    fn other_hosts_and_schemes_are_refused() {
        for url in [
            "ws://10.0.0.1:8081/ws",
            "ws://192.168.1.2/ws",
            "ws://8.8.8.8/ws",
            "ws://example.com/ws",
            "ws://[2001:db8::1]:80/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
            "127.0.0.1:8081",
        ] {
            assert!(Target::parse(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn queries_are_appended() {
        let t = Target::parse("ws://127.0.0.1:1/ws").expect("valid");
        assert_eq!(t.with_query("user=a"), "ws://127.0.0.1:1/ws?user=a");
        let t = Target::parse("ws://127.0.0.1:1/ws?device=x").expect("valid");
        assert_eq!(
            t.with_query("user=a"),
            "ws://127.0.0.1:1/ws?device=x&user=a"
        );
    }
}
