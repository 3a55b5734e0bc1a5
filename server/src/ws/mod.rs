//! The client WebSocket endpoint `GET /ws`: authenticate before the upgrade, register the
//! connection (locally, then in the route table), and hand it to its session task.
//!
//! actix-http parses the request and hands an upgrade request over with its socket
//! ([`upgrade`]); from then on the connection is a tungstenite WebSocket on the raw socket, so
//! none of the HTTP/1 dispatcher's per-connection buffers stay allocated for its lifetime.

pub mod auth;
pub mod flood;
pub mod frame;
pub mod session;

use std::sync::Arc;
use tracing::Instrument;

use actix_codec::Framed;
use actix_http::{HttpMessage, Request, StatusCode, h1};
use actix_web::HttpResponse;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::envelope::now_ms;
use crate::node::NodeState;
use crate::route::Route;
use crate::route::registry::{Admission, Registration};
use crate::sessions::{Mailbox, SessionHandle};

/// Bytes read from a client socket per read. Client frames are small; a connection that sends
/// a bigger frame grows its buffer for that frame. Eagerly allocated, so it is most of an idle
/// connection's memory.
const READ_BUFFER: usize = 2048;

/// Frames buffered before they are written without waiting for the batch to end.
const WRITE_BUFFER: usize = 16 * 1024;

/// The body of every HTTP error this node answers: `{"error": code, "message": text}`.
fn error_body(error: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": error, "message": message })
}

pub fn json_error(status: actix_web::http::StatusCode, error: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(error_body(error, message))
}

/// `GET /ws` without the upgrade headers (a browser tab, curl): say what the endpoint wants.
pub async fn not_an_upgrade() -> HttpResponse {
    json_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "GET /ws is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket",
    )
}

/// A refusal written on the raw socket, before any upgrade: a status and the JSON error body
/// every endpoint uses; the connection is closed after it.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
        }
    }

    fn to_http(&self) -> Vec<u8> {
        let body = error_body(self.error, &self.message).to_string();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }
}

/// The upgrade service actix-http calls for every request that asks to switch protocols: on
/// `/ws` it authenticates, registers and starts the session; anything else is refused.
pub async fn upgrade(
    state: Arc<NodeState>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), std::convert::Infallible> {
    let parts = framed.into_parts();
    let mut io = parts.io;
    // Whatever the client sent after the request head (frames it did not wait to send).
    let early = parts.read_buf.to_vec();
    drop((parts.codec, parts.read_buf, parts.write_buf));
    match accept(&state, &req).await {
        Ok((response, session)) => {
            // Frames are small and latency matters: no Nagle delay on client sockets. Set
            // before the 101, or the `hello` right behind it could wait for the 101's ACK.
            if let Err(e) = io.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            if let Err(e) = io.write_all(response.as_bytes()).await {
                tracing::debug!(error = %e, "client left during the handshake");
                session.abandon().await;
                return Ok(());
            }
            // Sessions run on the node's multi-thread runtime, beside the mesh: a message then
            // wakes tasks on the threads it already runs on, not another thread's. The socket
            // moves off this HTTP worker's reactor onto the runtime's.
            let moved = io.into_std().and_then(|io| {
                let _runtime = state.runtime.enter();
                TcpStream::from_std(io)
            });
            let io = match moved {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand a client socket to its session");
                    session.abandon().await;
                    return Ok(());
                }
            };
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER)
                .write_buffer_size(WRITE_BUFFER)
                .max_frame_size(Some(state.config.max_frame_bytes))
                .max_message_size(Some(state.config.max_frame_bytes));
            let ws =
                WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await;
            session.start(ws);
        }
        Err(refusal) => {
            let _ = io.write_all(&refusal.to_http()).await;
            let _ = io.shutdown().await;
        }
    }
    Ok(())
}

/// A connection admitted and registered, waiting for its socket.
struct Admitted {
    span: tracing::Span,
    state: Arc<NodeState>,
    conn: crate::ids::ConnId,
    user: crate::ids::UserId,
    evict: tokio_util::sync::CancellationToken,
    inbox_waiting: bool,
    mailbox: Arc<Mailbox>,
}

impl Admitted {
    fn start(self, ws: WebSocketStream<TcpStream>) {
        let tracker = self.state.tracker.clone();
        let runtime = self.state.runtime.clone();
        let task = session::Session::new(
            self.state,
            self.conn,
            self.user,
            ws,
            self.evict,
            self.inbox_waiting,
        )
        .run(self.mailbox)
        .instrument(self.span);
        runtime.spawn(tracker.track_future(task));
    }

    /// The 101 could not be written: undo the registration, as a session that ended would.
    async fn abandon(self) {
        let Self {
            span,
            state,
            conn,
            user,
            ..
        } = self;
        state.sessions.remove(&conn);
        state.metrics.connections.dec();
        if let Err(e) = state.routes.unregister(&user, &conn).await {
            tracing::warn!(parent: &span, error = %e, "cannot remove a route; it will be reconciled");
            state.request_reconcile();
        }
    }
}

/// Checks and registers an upgrade request; on success returns the 101 response to write.
async fn accept(state: &Arc<NodeState>, req: &Request) -> Result<(String, Admitted), Refusal> {
    if req.path() != "/ws" {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "only /ws accepts a protocol upgrade",
        ));
    }
    actix_http::ws::verify_handshake(req.head()).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("not a WebSocket handshake: {e}"),
        )
    })?;
    let key = req
        .headers()
        .get(actix_web::http::header::SEC_WEBSOCKET_KEY)
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "no Sec-WebSocket-Key",
            )
        })?;
    if !state.accepting() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node is not accepting clients (starting or draining); ask /gateway for another",
        ));
    }
    if !state.has_room() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_full",
            "this node holds its maximum of connections (--max-connections); ask /gateway for another",
        ));
    }
    if let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN)
        && !state.config.allowed_origins.is_empty()
        && !state
            .config
            .allowed_origins
            .iter()
            .any(|o| origin.as_bytes() == o.as_bytes())
    {
        tracing::info!(origin = ?origin, "refused a connection from an origin not allowed");
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this Origin may not connect (--allowed-origins)",
        ));
    }
    let principal = match state.auth.authenticate(req.head()) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(peer = ?req.peer_addr(), reason = %e, "refused a client");
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                e.to_string(),
            ));
        }
    };

    let conn = state.ids.conn();
    let limits = &state.config.limits;
    let mailbox = Arc::new(Mailbox::new(limits.session_queue));
    let device: Option<Arc<str>> = principal.device.as_deref().map(Arc::from);
    let evict = tokio_util::sync::CancellationToken::new();
    let connected_at_ms = now_ms();
    state.sessions.insert(
        conn.clone(),
        SessionHandle {
            user: principal.user.clone(),
            device: device.clone(),
            connected_at_ms,
            mailbox: mailbox.clone(),
            evict: evict.clone(),
        },
    );
    let reg = Registration {
        user: principal.user.clone(),
        route: Route {
            conn: conn.clone(),
            node: state.node.clone(),
            device,
            connected_at_ms,
        },
    };
    let max_per_user = limits.conns_per_user;
    let inbox_waiting = match state.routes.register_new(&reg, max_per_user).await {
        Ok(Admission::Admitted { inbox }) => inbox > 0,
        Ok(Admission::Refused) => {
            state.sessions.remove(&conn);
            tracing::info!(user = %principal.user, max = max_per_user, "refused a connection over the per-user limit");
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!(
                    "this user already holds {max_per_user} connections (--max-conns-per-user)"
                ),
            ));
        }
        Err(e) => {
            state.sessions.remove(&conn);
            tracing::warn!(user = %principal.user, error = %e, "cannot register a connection; refusing it");
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "route table unavailable; try again",
            ));
        }
    };
    state.metrics.connections.inc();
    tracing::info!(user = %principal.user, conn_id = %conn, "client connected");

    // Every log line of the session carries who and where: node, user, conn_id.
    let span =
        tracing::info_span!("conn", node = %state.node, user = %principal.user, conn_id = %conn);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {key}\r\n\r\n"
    );
    Ok((
        response,
        Admitted {
            span,
            state: state.clone(),
            conn,
            user: principal.user,
            evict,
            inbox_waiting,
            mailbox,
        },
    ))
}
