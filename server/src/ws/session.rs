//! One client connection's life: `hello`, the inbox, then a loop that reads client frames,
//! writes queued messages and acks, answers heartbeats and obeys control instructions, until the
//! client leaves or the node stops; then the connection's route is removed.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::frame::{self, ClientFrame, FrameError};
use crate::delivery::Outcome;
use crate::envelope::{Envelope, now_ms};
use crate::error::{FrameErrorCode, RejectCode, close};
use crate::ids::{ConnId, MsgId, UserId};
use crate::node::NodeState;
use crate::route::events::RouteEvent;
use crate::sessions::{Control, Outbound};

type PendingAck = Pin<Box<dyn Future<Output = (Option<String>, String, Outcome)>>>;

/// Why the loop ended, and how to close.
enum End {
    /// The client closed or the socket is gone: nothing more to write.
    Gone,
    Close(CloseReason),
}

pub struct Session {
    pub state: Arc<NodeState>,
    pub conn: ConnId,
    pub user: UserId,
    pub ws: actix_ws::Session,
}

impl Session {
    pub async fn run(
        mut self,
        stream: actix_ws::MessageStream,
        mut queue: mpsc::Receiver<Outbound>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let max = self.state.config.max_frame_bytes;
        let mut stream = stream
            .max_frame_size(max)
            .aggregate_continuations()
            .max_continuation_size(max);
        let heartbeat = self.state.config.limits.client_heartbeat;
        let hello = frame::hello(
            self.conn.as_str(),
            self.user.as_str(),
            self.state.node.as_str(),
            heartbeat.as_millis() as u64,
        );
        let mut inbox_sent: HashSet<MsgId> = HashSet::new();
        let mut pending: FuturesUnordered<PendingAck> = FuturesUnordered::new();
        let max_pending = self.state.config.limits.sends_in_flight;
        let cancel = self.state.shutdown.clone();
        let mut last_heard = Instant::now();
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);

        let end = 'session: {
            if self.ws.text(hello).await.is_err() {
                break 'session End::Gone;
            }
            if !self.send_inbox(&mut inbox_sent).await {
                break 'session End::Gone;
            }
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        break 'session End::Close(reason(close::GOING_AWAY, "node stopping"));
                    }
                    Some(ctl) = control.recv() => match ctl {
                        Control::Reconnect { url, reason: why } => {
                            let _ = self.ws.text(frame::reconnect(&url, &why)).await;
                            break 'session End::Close(reason(close::GOING_AWAY, &why));
                        }
                        Control::Close { code, reason: why } => {
                            break 'session End::Close(reason(code, &why));
                        }
                        Control::InboxChanged => {
                            if !self.send_inbox(&mut inbox_sent).await {
                                break 'session End::Gone;
                            }
                        }
                    },
                    Some(out) = queue.recv() => {
                        if !self.write(out, &mut inbox_sent).await {
                            break 'session End::Gone;
                        }
                    }
                    Some((reference, id, outcome)) = pending.next(), if !pending.is_empty() => {
                        let ack = ack_frame(reference.as_deref(), &id, &outcome);
                        if self.ws.text(ack).await.is_err() {
                            break 'session End::Gone;
                        }
                    }
                    msg = stream.recv(), if pending.len() < max_pending => {
                        last_heard = Instant::now();
                        match msg {
                            None => break 'session End::Gone,
                            Some(Ok(msg)) => {
                                if let Some(end) = self.on_message(msg, &mut inbox_sent, &mut pending).await {
                                    break 'session end;
                                }
                            }
                            Some(Err(e)) => break 'session self.on_protocol_error(e).await,
                        }
                    }
                    _ = ticker.tick() => {
                        if last_heard.elapsed() > heartbeat * 2 + Duration::from_secs(5) {
                            tracing::info!(user = %self.user, conn_id = %self.conn, "client silent past its heartbeat; closing");
                            break 'session End::Close(reason(close::GOING_AWAY, "heartbeat timeout"));
                        }
                        if self.ws.ping(b"").await.is_err() {
                            break 'session End::Gone;
                        }
                    }
                }
            }
        };

        self.leave(end, queue, pending).await;
    }

    /// Handles one client message; `Some` ends the session.
    async fn on_message(
        &mut self,
        msg: AggregatedMessage,
        inbox_sent: &mut HashSet<MsgId>,
        pending: &mut FuturesUnordered<PendingAck>,
    ) -> Option<End> {
        match msg {
            AggregatedMessage::Text(text) => match frame::parse(&text) {
                Ok(ClientFrame::Send(send)) => self.on_send(send, pending).await,
                Ok(ClientFrame::Ack { id }) => self.on_ack(&id, inbox_sent).await,
                Ok(ClientFrame::Ping) => {
                    if self.ws.text(frame::pong()).await.is_err() {
                        return Some(End::Gone);
                    }
                    None
                }
                Err(e) => self.refuse(&e).await,
            },
            AggregatedMessage::Binary(_) => {
                self.refuse(&FrameError {
                    code: FrameErrorCode::BadFrame,
                    message: "binary frames are not accepted; send JSON text frames".into(),
                    reference: None,
                })
                .await
            }
            AggregatedMessage::Ping(bytes) => {
                if self.ws.pong(&bytes).await.is_err() {
                    return Some(End::Gone);
                }
                None
            }
            AggregatedMessage::Pong(_) => None,
            AggregatedMessage::Close(_) => Some(End::Close(reason(1000, "bye"))),
        }
    }

    async fn on_send(
        &mut self,
        send: frame::SendFrame,
        pending: &mut FuturesUnordered<PendingAck>,
    ) -> Option<End> {
        let to = match UserId::parse(&send.to) {
            Ok(to) => to,
            Err(e) => {
                let ack = frame::ack(
                    send.reference.as_deref(),
                    None,
                    "rejected",
                    0,
                    Some((
                        RejectCode::BadRecipient,
                        &format!("`to` is not a valid user id: {e}"),
                    )),
                );
                self.state
                    .metrics
                    .rejected
                    .with_label_values(&[RejectCode::BadRecipient.as_str()])
                    .inc();
                return self.ws.text(ack).await.err().map(|_| End::Gone);
            }
        };
        let env = Envelope {
            id: self.state.ids.msg(),
            from: self.user.clone(),
            to,
            ts_ms: now_ms(),
            body: send.body,
        };
        let id = env.id.to_string();
        let reference = send.reference;
        let delivery = Arc::clone(&self.state.delivery);
        let in_flight = delivery.dispatch(env).await;
        pending.push(Box::pin(async move {
            let outcome = delivery.finish(in_flight).await;
            (reference, id, outcome)
        }));
        None
    }

    async fn on_ack(&mut self, id: &str, inbox_sent: &mut HashSet<MsgId>) -> Option<End> {
        // Only inbox messages live in Redis; acks of live deliveries cost nothing.
        let Ok(id) = MsgId::parse(id) else {
            return None;
        };
        if inbox_sent.contains(&id) {
            match self.state.inbox.ack(&self.user, &id).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(user = %self.user, msg_id = %id, error = %e, "cannot remove an acked inbox message; it will be sent again");
                }
            }
        }
        None
    }

    async fn refuse(&mut self, e: &FrameError) -> Option<End> {
        self.state
            .metrics
            .frames_refused
            .with_label_values(&[e.code.as_str()])
            .inc();
        tracing::debug!(user = %self.user, conn_id = %self.conn, code = e.code.as_str(), "refused a frame");
        self.ws.text(frame::error(e)).await.err().map(|_| End::Gone)
    }

    async fn on_protocol_error(&mut self, e: actix_ws::ProtocolError) -> End {
        let (code, close_code, message) = match &e {
            actix_ws::ProtocolError::Overflow => (
                FrameErrorCode::TooLarge,
                close::TOO_BIG,
                format!(
                    "frame larger than {} bytes",
                    self.state.config.max_frame_bytes
                ),
            ),
            other => (
                FrameErrorCode::BadFrame,
                1007,
                format!("bad frame: {other}"),
            ),
        };
        self.state
            .metrics
            .frames_refused
            .with_label_values(&[code.as_str()])
            .inc();
        tracing::info!(user = %self.user, conn_id = %self.conn, error = %e, "closing after a protocol error");
        let _ = self
            .ws
            .text(frame::error(&FrameError {
                code,
                message: message.clone(),
                reference: None,
            }))
            .await;
        End::Close(reason(close_code, &message))
    }

    /// Writes one queued message. False when the socket is gone.
    async fn write(&mut self, out: Outbound, inbox_sent: &mut HashSet<MsgId>) -> bool {
        match out {
            Outbound::Message {
                id,
                frame,
                from_inbox,
                written,
            } => {
                if from_inbox && !inbox_sent.insert(id) {
                    if let Some(w) = written {
                        let _ = w.send(true);
                    }
                    return true;
                }
                let ok = self.ws.text(frame).await.is_ok();
                if let Some(w) = written {
                    let _ = w.send(ok);
                }
                ok
            }
        }
    }

    /// Sends every inbox message this connection has not had yet, oldest first.
    async fn send_inbox(&mut self, inbox_sent: &mut HashSet<MsgId>) -> bool {
        let messages = match self.state.inbox.fetch(&self.user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "cannot read the inbox; will retry on the next inbox event");
                return true;
            }
        };
        for (id, text) in messages {
            if inbox_sent.contains(&id) {
                continue;
            }
            if self.ws.text(text).await.is_err() {
                return false;
            }
            inbox_sent.insert(id);
        }
        true
    }

    /// Leaves the cluster: stop being routable first, then settle what is still queued, so that
    /// nothing queued here is reported written when it was not.
    async fn leave(
        mut self,
        end: End,
        mut queue: mpsc::Receiver<Outbound>,
        mut pending: FuturesUnordered<PendingAck>,
    ) {
        self.state.sessions.remove(&self.conn);
        queue.close();
        // Unwritten messages: their senders learn "not written" and re-route or store them.
        while let Ok(out) = queue.try_recv() {
            drop(out);
        }
        if let End::Close(r) = &end {
            // Acks still owed: the client is still there to read them if we close politely.
            while let Ok(Some((reference, id, outcome))) =
                tokio::time::timeout(Duration::from_secs(2), pending.next()).await
            {
                if self
                    .ws
                    .text(ack_frame(reference.as_deref(), &id, &outcome))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = self.ws.clone().close(Some(r.clone())).await;
        }
        // Sends whose ack can no longer be written still finish (a failed delivery must still
        // reach the inbox), in the background.
        if !pending.is_empty() {
            let drive = async move { while pending.next().await.is_some() {} };
            actix_web::rt::spawn(self.state.tracker.track_future(drive));
        }
        self.state.metrics.connections.dec();
        if let Err(e) = self.state.routes.unregister(&self.user, &self.conn).await {
            tracing::warn!(user = %self.user, conn_id = %self.conn, error = %e, "cannot remove a route; the node sweep or lease will");
        }
        if let Err(e) = self
            .state
            .routes
            .publish(&RouteEvent::Invalidate(self.user.clone()).encode())
            .await
        {
            tracing::debug!(user = %self.user, error = %e, "cannot announce a disconnect");
        }
        tracing::info!(user = %self.user, conn_id = %self.conn, "client disconnected");
    }
}

fn reason(code: u16, description: &str) -> CloseReason {
    // A close reason must fit a control frame (123 bytes).
    let mut d = description.to_owned();
    while d.len() > 120 {
        d.pop();
    }
    CloseReason {
        code: CloseCode::from(code),
        description: Some(d),
    }
}

fn ack_frame(reference: Option<&str>, id: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Rejected { code, message } => {
            frame::ack(reference, Some(id), "rejected", 0, Some((*code, message)))
        }
        o => frame::ack(reference, Some(id), o.status(), o.devices(), None),
    }
}
