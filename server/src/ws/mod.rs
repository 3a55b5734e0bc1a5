//! The client WebSocket endpoint `GET /ws`: authenticate before the upgrade, register the
//! connection (locally, then in the route table), and hand it to its session task.
//!
//! An actix-web route: every refusal is an HTTP response with a JSON body, and nothing is
//! registered for a refused request. The accepted connection runs on `actix_ws::handle`'s
//! `Session` (frames out) and `MessageStream` (frames in), in a task on the HTTP worker that
//! holds the socket: the stream reads actix-http's request payload, which lives on that thread.

pub mod auth;
pub mod flood;
pub mod frame;
pub mod ledger;
pub mod session;

use std::sync::Arc;
use tracing::Instrument;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::envelope::now_ms;
use crate::error::Refusal;
use crate::route::Route;
use crate::route::table::{Admission, Registration};
use crate::sessions::{Mailbox, SessionHandle};
use crate::state::NodeState;

/// `GET /ws`: checks and registers the request, then upgrades it and starts the session.
pub async fn endpoint(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<NodeState>>,
) -> HttpResponse {
    let state = state.get_ref();
    // The handshake first: a request that is not one (a browser tab, curl, a version this
    // server lacks) is told so, and costs nothing more.
    let (response, ws, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            return Refusal::BadRequest.http(&format!(
                "GET /ws is a WebSocket endpoint; not a WebSocket handshake: {e} \
                     (send Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)"
            ));
        }
    };
    match accept(state, &req).await {
        Ok(admitted) => {
            let max = state.config.max_frame_bytes;
            let stream = stream
                .max_frame_size(max)
                .aggregate_continuations()
                .max_continuation_size(max);
            admitted.start(ws, stream);
            response
        }
        // Dropping the session and the stream ends the refused request as an HTTP one.
        Err(refusal) => refusal,
    }
}

/// Any other path asked to switch protocols: only `/ws` upgrades (answered before routing, so
/// that `/metrics` with upgrade headers is not served as if it had none).
pub fn upgrade_elsewhere(req: &actix_web::dev::ServiceRequest) -> Option<HttpResponse> {
    (req.path() != "/ws" && req.headers().contains_key(actix_web::http::header::UPGRADE))
        .then(|| Refusal::NotFound.http("only /ws accepts a protocol upgrade"))
}

/// A connection admitted and registered, waiting for its WebSocket.
struct Admitted {
    span: tracing::Span,
    state: Arc<NodeState>,
    conn: crate::ids::ConnId,
    user: crate::ids::UserId,
    evict: tokio_util::sync::CancellationToken,
    inbox_waiting: bool,
    mailbox: Arc<Mailbox>,
    device: Option<Arc<str>>,
    /// When the token's session ends (unix seconds); `None` for dev auth.
    expires: Option<u64>,
    /// Whose presence the session may watch.
    may_watch: crate::presence::Allowance,
}

impl Admitted {
    /// Runs the session on this HTTP worker (its stream is the worker's request payload).
    fn start(self, ws: actix_ws::Session, stream: actix_ws::AggregatedMessageStream) {
        let tracker = self.state.tracker.clone();
        let task = session::Session::new(
            self.state,
            self.conn,
            self.user,
            ws,
            self.evict,
            self.inbox_waiting,
            self.device,
        )
        .ending_at(self.expires)
        .watching(self.may_watch)
        .run(stream, self.mailbox)
        .instrument(self.span);
        actix_web::rt::spawn(tracker.track_future(task));
    }
}

/// Checks and registers an upgrade request; on success returns the admitted connection.
async fn accept(state: &Arc<NodeState>, req: &HttpRequest) -> Result<Admitted, HttpResponse> {
    if !state.accepting() {
        return Err(Refusal::Unavailable.http(
            "this node is not accepting clients (starting or draining); ask /gateway for another",
        ));
    }
    if !state.has_room() {
        return Err(Refusal::NodeFull.http(
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
        return Err(
            Refusal::ForbiddenOrigin.http("this Origin may not connect (--allowed-origins)")
        );
    }
    let principal = match state.auth.authenticate(req.head()) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(peer = ?req.peer_addr(), reason = %e, "refused a client");
            return Err(Refusal::Unauthorized.http(&e.to_string()));
        }
    };

    let conn = state.ids.conn();
    let limits = &state.config.limits;
    let mailbox = Arc::new(Mailbox::new(limits.session_queue));
    let device: Option<Arc<str>> = principal.device.as_deref().map(Arc::from);
    // A child of the node's shutdown: cancelled when this connection's queue overflows or when
    // the node stops, so that the session loop and its writes watch one token, not two.
    let evict = state.shutdown.child_token();
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
            device: device.clone(),
            connected_at_ms,
        },
    };
    let max_per_user = limits.conns_per_user;
    let inbox_waiting = match state.routes.register_new(&reg, max_per_user).await {
        Ok(Admission::Admitted { inbox }) => inbox > 0,
        Ok(Admission::Refused) => {
            state.sessions.remove(&conn);
            tracing::info!(user = %principal.user, max = max_per_user, "refused a connection over the per-user limit");
            return Err(Refusal::TooManyConnections.http(&format!(
                "this user already holds {max_per_user} connections (--max-conns-per-user)"
            )));
        }
        Err(e) => {
            state.sessions.remove(&conn);
            tracing::warn!(user = %principal.user, error = %e, "cannot register a connection; refusing it");
            return Err(Refusal::Unavailable.http("route table unavailable; try again"));
        }
    };
    state.metrics.connections.inc();
    tracing::info!(user = %principal.user, conn_id = %conn, "client connected");

    // Every log line of the session carries who and where: node, user, conn_id.
    let span =
        tracing::info_span!("conn", node = %state.node, user = %principal.user, conn_id = %conn);
    Ok(Admitted {
        span,
        state: state.clone(),
        conn,
        user: principal.user,
        evict,
        inbox_waiting,
        mailbox,
        device,
        expires: principal.expires,
        may_watch: crate::presence::Allowance::new(state.config.presence_policy, principal.watch),
    })
}
