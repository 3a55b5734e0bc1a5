//! A real HTTP receiver of webhook events on 127.0.0.1, as an app's backend would run one: it
//! checks each POST's signature, answers by a [`Mode`] the test sets (and can change), keeps
//! what it accepted once per event id (its idempotency) and counts every attempt per id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 500 to the first attempt of each event id, 200 to the later ones.
    FailFirst,
    /// 500 to everything.
    FailAll,
    /// 200 to everything.
    Accept,
    /// No answer at all to the first attempt of each event id (a backend that hangs), 200 to
    /// the later ones.
    HangFirst,
}

/// What the receiver saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// POSTs per event id (any answer).
    pub attempts: HashMap<String, u32>,
    /// The body of each event id, recorded at its first 2xx only.
    pub accepted: HashMap<String, Value>,
    /// 2xx answers to an event id already accepted (a backend's idempotency drops these).
    pub repeats: u32,
    /// POSTs whose signature did not verify (answered 401, never accepted).
    pub bad_signatures: u32,
    /// POSTs without an event id header, or whose body's `event_id` disagrees with it.
    pub bad_ids: u32,
    /// When each attempt of each event id arrived, in order.
    pub arrivals: HashMap<String, Vec<std::time::Instant>>,
}

struct Shared {
    secret: String,
    mode: Mutex<Mode>,
    seen: Mutex<Seen>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// `http` or `https`.
    scheme: &'static str,
}

impl Receiver {
    /// Starts a receiver on a free loopback port, checking signatures with `secret`.
    pub async fn start(secret: &str, mode: Mode) -> Self {
        let (shared, app, listener, addr) = Self::parts(secret, mode).await;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            task,
            scheme: "http",
        }
    }

    /// The same over HTTPS, with the certificate and key in these PEM files (the nodes must
    /// trust its issuer, e.g. through `SSL_CERT_FILE`).
    pub async fn start_tls(
        secret: &str,
        mode: Mode,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .expect("the certificate file reads")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("a PEM private key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a certificate and its key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (shared, app, listener, addr) = Self::parts(secret, mode).await;
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            shared,
            task,
            scheme: "https",
        }
    }

    async fn parts(
        secret: &str,
        mode: Mode,
    ) -> (
        Arc<Shared>,
        axum::Router,
        tokio::net::TcpListener,
        SocketAddr,
    ) {
        let shared = Arc::new(Shared {
            secret: secret.to_owned(),
            mode: Mutex::new(mode),
            seen: Mutex::new(Seen::default()),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", crate::free_port()))
            .await
            .expect("the receiver binds");
        let addr = listener.local_addr().expect("bound");
        (shared, app, listener, addr)
    }

    /// The `--webhook-url` to give the nodes.
    pub fn url(&self) -> String {
        format!("{}://{}/hook", self.scheme, self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("not poisoned") = mode;
    }

    pub fn seen(&self) -> Seen {
        self.shared.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, computed here independently of the server's code.
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

async fn receive(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    match answer(&s, &headers, &body) {
        Some(status) => status,
        // Never answer: the sender gives up and drops the connection, which ends this handler
        // (nothing is accepted).
        None => std::future::pending().await,
    }
}

/// Records an attempt and decides its answer; `None`: do not answer ([`Mode::HangFirst`]).
fn answer(s: &Shared, headers: &HeaderMap, body: &Bytes) -> Option<StatusCode> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut seen = s.seen.lock().expect("not poisoned");
    let signed =
        header("x-wsroute-signature").is_some_and(|sig| sig == expected_signature(&s.secret, body));
    if !signed {
        seen.bad_signatures += 1;
        return Some(StatusCode::UNAUTHORIZED);
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some((id, parsed)) = header("x-wsroute-event-id").zip(parsed) else {
        seen.bad_ids += 1;
        return Some(StatusCode::BAD_REQUEST);
    };
    if parsed["event_id"].as_str() != Some(id.as_str()) {
        seen.bad_ids += 1;
        return Some(StatusCode::BAD_REQUEST);
    }
    let attempt = {
        let n = seen.attempts.entry(id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    seen.arrivals
        .entry(id.clone())
        .or_default()
        .push(std::time::Instant::now());
    let mode = *s.mode.lock().expect("not poisoned");
    if mode == Mode::HangFirst && attempt == 1 {
        return None;
    }
    let accept = match mode {
        Mode::FailFirst => attempt > 1,
        Mode::FailAll => false,
        Mode::Accept | Mode::HangFirst => true,
    };
    if !accept {
        return Some(StatusCode::INTERNAL_SERVER_ERROR);
    }
    match seen.accepted.entry(id) {
        std::collections::hash_map::Entry::Occupied(_) => seen.repeats += 1,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(parsed);
        }
    }
    Some(StatusCode::OK)
}
