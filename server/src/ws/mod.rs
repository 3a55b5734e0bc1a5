//! The client WebSocket endpoint `GET /ws`: authenticate before the upgrade, register the
//! connection (locally, then in the route table), and hand it to its session task.

pub mod auth;
pub mod flood;
pub mod frame;
pub mod session;

use std::sync::Arc;
use tracing::Instrument;

use actix_web::{HttpRequest, HttpResponse, web};
use tokio::sync::mpsc;

use crate::envelope::now_ms;
use crate::node::NodeState;
use crate::route::Route;
use crate::route::registry::{Admission, Registration};
use crate::sessions::SessionHandle;

/// Instructions waiting for one session (drain, close, inbox changed): one is plenty, since a
/// session acts on each before reading the next.
const CONTROL_QUEUE: usize = 4;

pub fn json_error(status: actix_web::http::StatusCode, error: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": error, "message": message }))
}

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<NodeState>>,
) -> HttpResponse {
    let state = state.get_ref().clone();
    if !state.accepting() {
        return json_error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node is not accepting clients (starting or draining); ask /gateway for another",
        );
    }
    if !state.has_room() {
        return json_error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "node_full",
            "this node holds its maximum of connections (--max-connections); ask /gateway for another",
        );
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
        return json_error(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this Origin may not connect (--allowed-origins)",
        );
    }
    let principal = match state.auth.authenticate(&req) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(peer = ?req.peer_addr(), reason = %e, "refused a client");
            return json_error(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                &e.to_string(),
            );
        }
    };
    let (response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => return HttpResponse::from_error(e),
    };

    let conn = state.ids.conn();
    let limits = &state.config.limits;
    let (queue, queue_rx) = mpsc::channel(limits.session_queue);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let device: Option<Arc<str>> = principal.device.as_deref().map(Arc::from);
    let evict = tokio_util::sync::CancellationToken::new();
    let connected_at_ms = now_ms();
    state.sessions.insert(
        conn.clone(),
        SessionHandle {
            user: principal.user.clone(),
            device: device.clone(),
            connected_at_ms,
            queue,
            control,
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
            return json_error(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                &format!(
                    "this user already holds {max_per_user} connections (--max-conns-per-user)"
                ),
            );
        }
        Err(e) => {
            state.sessions.remove(&conn);
            tracing::warn!(user = %principal.user, error = %e, "cannot register a connection; refusing it");
            return json_error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "route table unavailable; try again",
            );
        }
    };
    state.metrics.connections.inc();
    tracing::info!(user = %principal.user, conn_id = %conn, "client connected");

    // Every log line of the session carries who and where: node, user, conn_id.
    let span =
        tracing::info_span!("conn", node = %state.node, user = %principal.user, conn_id = %conn);
    let task = session::Session {
        state: state.clone(),
        conn,
        user: principal.user,
        ws: session,
        evict,
        unacked: std::collections::VecDeque::new(),
        inbox_sent: std::collections::HashSet::new(),
        recent: std::collections::VecDeque::new(),
        flood: flood::FloodGuard::new(limits.msgs_per_sec),
        inbox_waiting,
    }
    .run(stream, queue_rx, control_rx)
    .instrument(span);
    actix_web::rt::spawn(state.tracker.track_future(task));
    response
}
