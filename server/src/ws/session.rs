//! One client connection's life: `hello`, the inbox, then a loop that reads client frames,
//! writes queued messages and acks, answers heartbeats and obeys control instructions, until the
//! client leaves or the node stops; then the connection's route is removed and whatever was
//! written but not acked by the client goes to the user's inbox.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use bytestring::ByteString;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flood::Verdict;
use super::frame::{self, ClientFrame, FrameError};
use crate::delivery::Outcome;
use crate::envelope::Envelope;
use crate::error::{FrameErrorCode, RejectCode, close};
use crate::ids::{ConnId, MsgId, UserId};
use crate::inbox::StoreOutcome;
use crate::node::NodeState;
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
    /// Cancelled by the session table when this connection's queue overflows.
    pub evict: CancellationToken,
    /// Live messages written and not yet acked by the client, oldest first (bounded by
    /// `Limits::unacked_max`). Empty, and unallocated, for a client that keeps up with its acks.
    pub unacked: VecDeque<(MsgId, ByteString)>,
    /// Ids this connection already has from the inbox (or that a sender gave up on and stored):
    /// never sent twice to this connection, and acked in Redis when the client acks them.
    pub inbox_sent: HashSet<MsgId>,
    /// The last `RECENT_IDS` live messages written here. A message written here whose sender
    /// did not hear so (a mesh stream broke before the reply) is stored by its sender and comes
    /// back through the inbox: this is how the connection knows it already has it.
    pub recent: VecDeque<MsgId>,
    /// Flood control over the frames this client initiates.
    pub flood: super::flood::FloodGuard,
    /// Whether messages waited in the inbox when the connection registered.
    pub inbox_waiting: bool,
}

/// How many recently written live message ids a connection remembers (16 bytes each).
const RECENT_IDS: usize = 128;

/// A write that was interrupted by eviction or that found the socket gone.
enum WriteError {
    Gone,
    Evicted,
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
        let mut pending: FuturesUnordered<PendingAck> = FuturesUnordered::new();
        let max_pending = self.state.config.limits.sends_in_flight;
        let admission = self.state.admission.clone();
        // A send waiting for admission; while it waits, no more frames are read.
        let mut parked: Option<(frame::SendFrame, UserId)> = None;
        // Made once and polled by reference: a fresh `cancelled()` per loop turn would lock the
        // token's tree node on every frame.
        let cancel = self.state.shutdown.clone();
        let stopping = cancel.cancelled();
        tokio::pin!(stopping);
        let evict = self.evict.clone();
        let evicted = evict.cancelled();
        tokio::pin!(evicted);
        let mut last_heard = Instant::now();
        // Pings go out twice per heartbeat; a client silent for two heartbeats is gone.
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat / 2, heartbeat / 2);

        let end = 'session: {
            if self.ws.text(hello).await.is_err() {
                break 'session End::Gone;
            }
            // Registration saw how many messages wait; an empty inbox is not read (anything
            // stored since then announces itself with an inbox event).
            if self.inbox_waiting
                && let Err(e) = self.send_inbox().await
            {
                break 'session self.write_failed(e).await;
            }
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopping => {
                        break 'session End::Close(reason(close::GOING_AWAY, "node stopping"));
                    }
                    _ = &mut evicted => break 'session self.write_failed(WriteError::Evicted).await,
                    Some(ctl) = control.recv() => match ctl {
                        Control::Reconnect { url, reason: why } => {
                            let _ = self.ws.text(frame::reconnect(&url, &why)).await;
                            break 'session End::Close(reason(close::GOING_AWAY, &why));
                        }
                        Control::Close { code, reason: why } => {
                            break 'session End::Close(reason(code, &why));
                        }
                        Control::InboxChanged => {
                            if let Err(e) = self.send_inbox().await {
                                break 'session self.write_failed(e).await;
                            }
                        }
                    },
                    Some(out) = queue.recv() => {
                        if let Err(e) = self.write(out).await {
                            break 'session self.write_failed(e).await;
                        }
                    }
                    Some((reference, id, outcome)) = pending.next(), if !pending.is_empty() => {
                        let ack = ack_frame(reference.as_deref(), &id, &outcome);
                        if self.ws.text(ack).await.is_err() {
                            break 'session End::Gone;
                        }
                    }
                    permit = admission.clone().acquire_owned(), if parked.is_some() => {
                        if let (Ok(permit), Some((send, to))) = (permit, parked.take()) {
                            self.dispatch(send, to, permit, &mut pending).await;
                        }
                    }
                    msg = stream.recv(), if parked.is_none() && pending.len() < max_pending => {
                        last_heard = Instant::now();
                        match msg {
                            None => break 'session End::Gone,
                            Some(Ok(msg)) => {
                                if let Some(end) = self.on_message(msg, &mut pending, &mut parked).await {
                                    break 'session end;
                                }
                            }
                            Some(Err(e)) => break 'session self.on_protocol_error(e).await,
                        }
                    }
                    _ = ticker.tick() => {
                        if last_heard.elapsed() > heartbeat * 2 {
                            tracing::info!(user = %self.user, conn_id = %self.conn, "client silent for two heartbeats; closing");
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
        pending: &mut FuturesUnordered<PendingAck>,
        parked: &mut Option<(frame::SendFrame, UserId)>,
    ) -> Option<End> {
        let parsed = match msg {
            AggregatedMessage::Text(text) => frame::parse(&text),
            AggregatedMessage::Binary(_) => Err(FrameError {
                code: FrameErrorCode::BadFrame,
                message: "binary frames are not accepted; send JSON text frames".into(),
                reference: None,
            }),
            AggregatedMessage::Ping(bytes) => {
                return self.ws.pong(&bytes).await.err().map(|_| End::Gone);
            }
            AggregatedMessage::Pong(_) => return None,
            AggregatedMessage::Close(_) => return Some(End::Close(reason(1000, "bye"))),
        };
        // Acks answer the server's own traffic and cost nothing; everything else a client
        // starts is counted against its rate.
        if !matches!(parsed, Ok(ClientFrame::Ack { .. })) {
            match self.flood.check(std::time::Instant::now()) {
                Verdict::Allow => {}
                Verdict::Refuse => return self.rate_limited(&parsed).await,
                Verdict::Close => {
                    tracing::warn!(user = %self.user, conn_id = %self.conn, "closing a connection that kept flooding (1008)");
                    self.state
                        .metrics
                        .frames_refused
                        .with_label_values(&["rate_limited"])
                        .inc();
                    return Some(End::Close(reason(
                        close::POLICY,
                        "rate limit exceeded repeatedly",
                    )));
                }
            }
        }
        match parsed {
            Ok(ClientFrame::Send(send)) => self.on_send(send, pending, parked).await,
            Ok(ClientFrame::Ack { id }) => {
                self.on_ack(&id).await;
                None
            }
            Ok(ClientFrame::Ping) => self.ws.text(frame::pong()).await.err().map(|_| End::Gone),
            Err(e) => self.refuse(&e).await,
        }
    }

    async fn on_send(
        &mut self,
        send: frame::SendFrame,
        pending: &mut FuturesUnordered<PendingAck>,
        parked: &mut Option<(frame::SendFrame, UserId)>,
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
        match self.state.admission.clone().try_acquire_owned() {
            Ok(permit) => self.dispatch(send, to, permit, pending).await,
            // The node is at capacity: hold this send (and stop reading) until a permit frees.
            Err(_) => *parked = Some((send, to)),
        }
        None
    }

    /// Hands an admitted send to delivery; its permit is released when its outcome is known.
    async fn dispatch(
        &mut self,
        send: frame::SendFrame,
        to: UserId,
        permit: tokio::sync::OwnedSemaphorePermit,
        pending: &mut FuturesUnordered<PendingAck>,
    ) {
        let env = Envelope::new(self.state.ids.msg(), self.user.clone(), to, send.body);
        let id = env.id.to_string();
        let reference = send.reference;
        let delivery = Arc::clone(&self.state.delivery);
        let span = tracing::debug_span!("msg", msg_id = %id, to = %env.to);
        let in_flight = delivery.dispatch(env).instrument(span.clone()).await;
        pending.push(Box::pin(
            async move {
                let outcome = delivery.finish(in_flight).await;
                tracing::debug!(status = outcome.status(), "send answered");
                drop(permit);
                (reference, id, outcome)
            }
            .instrument(span),
        ));
    }

    /// Refuses a frame over the rate limit: a send gets a `rejected` ack (with its ref), anything
    /// else an `error` frame.
    async fn rate_limited(&mut self, parsed: &Result<ClientFrame, FrameError>) -> Option<End> {
        self.state
            .metrics
            .frames_refused
            .with_label_values(&["rate_limited"])
            .inc();
        let message = format!(
            "more than {} frames per second; slow down",
            self.state.config.limits.msgs_per_sec
        );
        let text = match parsed {
            Ok(ClientFrame::Send(send)) => frame::ack(
                send.reference.as_deref(),
                None,
                "rejected",
                0,
                Some((RejectCode::RateLimited, &message)),
            ),
            _ => frame::error(&FrameError {
                code: FrameErrorCode::RateLimited,
                message,
                reference: None,
            }),
        };
        self.ws.text(text).await.err().map(|_| End::Gone)
    }

    /// The client has a message and it may be forgotten. Live messages are forgotten locally;
    /// only inbox messages live in Redis, so only their acks cost a Redis call.
    async fn on_ack(&mut self, id: &str) {
        let Ok(id) = MsgId::parse(id) else {
            return;
        };
        if let Some(i) = self.unacked.iter().position(|(u, _)| *u == id) {
            self.unacked.remove(i);
        }
        if self.inbox_sent.contains(&id)
            && let Err(e) = self.state.inbox.ack(&self.user, &id).await
        {
            tracing::warn!(user = %self.user, msg_id = %id, error = %e, "cannot remove an acked inbox message; it will be sent again");
        }
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

    /// Writes a frame unless the connection is evicted meanwhile.
    async fn write_text(&mut self, text: ByteString) -> Result<(), WriteError> {
        tokio::select! {
            biased;
            r = self.ws.text(text) => r.map_err(|_| WriteError::Gone),
            _ = self.evict.cancelled() => Err(WriteError::Evicted),
        }
    }

    /// Writes one queued message and tells its sender whether it was written.
    async fn write(&mut self, out: Outbound) -> Result<(), WriteError> {
        let Outbound::Message {
            id,
            frame,
            from_inbox,
            accepted_us,
            written,
        } = out;
        if from_inbox && self.inbox_sent.contains(&id) {
            if let Some(w) = written {
                let _ = w.send(true);
            }
            return Ok(());
        }
        // A sender that stopped waiting stores the message to the inbox: remember that this
        // connection has it, so that the inbox does not send it here again.
        let sender_gave_up = written.as_ref().is_some_and(|w| w.is_closed());
        let result = self.write_text(frame.clone()).await;
        if let Some(w) = written {
            let _ = w.send(result.is_ok());
        }
        result?;
        self.state.metrics.observe_delivery(accepted_us);
        if from_inbox || sender_gave_up {
            self.inbox_sent.insert(id);
        } else {
            if self.recent.len() >= RECENT_IDS {
                self.recent.pop_front();
            }
            self.recent.push_back(id.clone());
            self.remember_unacked(id, frame);
        }
        Ok(())
    }

    fn remember_unacked(&mut self, id: MsgId, frame: ByteString) {
        if self.unacked.len() >= self.state.config.limits.unacked_max {
            // The client does not ack: stop tracking the oldest rather than grow without bound.
            self.unacked.pop_front();
            self.state.metrics.unacked_dropped.inc();
        }
        self.unacked.push_back((id, frame));
    }

    /// Sends every inbox message this connection has not had yet, oldest first.
    async fn send_inbox(&mut self) -> Result<(), WriteError> {
        let messages = match self.state.inbox.fetch(&self.user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "cannot read the inbox; will retry on the next inbox event");
                return Ok(());
            }
        };
        for (id, text) in messages {
            if self.inbox_sent.contains(&id) {
                continue;
            }
            if self.recent.contains(&id) {
                // Written here live already: do not send it twice. If the client acked it
                // meanwhile, that ack never reached the inbox: remove it there now.
                let still_unacked = self.unacked.iter().any(|(u, _)| *u == id);
                if !still_unacked && let Err(e) = self.state.inbox.ack(&self.user, &id).await {
                    tracing::debug!(user = %self.user, msg_id = %id, error = %e, "cannot drop a stored copy of a delivered message");
                }
                self.inbox_sent.insert(id);
                continue;
            }
            self.write_text(ByteString::from(text)).await?;
            self.state.metrics.inbox_replayed.inc();
            self.inbox_sent.insert(id);
        }
        Ok(())
    }

    async fn write_failed(&mut self, e: WriteError) -> End {
        match e {
            WriteError::Gone => End::Gone,
            WriteError::Evicted => {
                tracing::warn!(user = %self.user, conn_id = %self.conn, "closing a slow consumer (1013); undelivered messages go to the inbox");
                self.state.metrics.slow_consumers.inc();
                // Best effort: the socket is likely full, so do not wait for it.
                let err = frame::error(&FrameError {
                    code: FrameErrorCode::RateLimited,
                    message: "you are not reading fast enough; reconnect to get the rest".into(),
                    reference: None,
                });
                let _ = tokio::time::timeout(Duration::from_millis(100), self.ws.text(err)).await;
                End::Close(reason(close::TRY_AGAIN_LATER, "slow consumer"))
            }
        }
    }

    /// Leaves the cluster: stop being routable first, then settle what is still queued, so that
    /// nothing queued here is reported written when it was not, and what the client did not ack
    /// is kept in its inbox.
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
                let ack = ack_frame(reference.as_deref(), &id, &outcome);
                if tokio::time::timeout(Duration::from_millis(500), self.ws.text(ack))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break;
                }
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.ws.clone().close(Some(r.clone())),
            )
            .await;
        }
        // Sends whose ack can no longer be written still finish (a failed delivery must still
        // reach the inbox), in the background.
        if !pending.is_empty() {
            let drive = async move { while pending.next().await.is_some() {} }
                .instrument(tracing::Span::current());
            actix_web::rt::spawn(self.state.tracker.track_future(drive));
        }
        self.keep_unacked().await;
        self.state.metrics.connections.dec();
        if let Err(e) = self.state.routes.unregister(&self.user, &self.conn).await {
            tracing::warn!(user = %self.user, conn_id = %self.conn, error = %e, "cannot remove a route; it will be reconciled");
            self.state.request_reconcile();
        }
        tracing::info!(user = %self.user, conn_id = %self.conn, "client disconnected");
    }

    /// Messages written here but never acked may not have reached the client: keep them.
    async fn keep_unacked(&mut self) {
        let unacked = std::mem::take(&mut self.unacked);
        if unacked.is_empty() {
            return;
        }
        let mut kept = 0;
        for (id, frame) in &unacked {
            match self.state.inbox.store_frame(&self.user, id, frame).await {
                Ok(StoreOutcome::Stored) => kept += 1,
                Ok(StoreOutcome::Full) => {
                    tracing::error!(user = %self.user, msg_id = %id, "inbox full: an unacked message cannot be kept");
                }
                Err(e) => {
                    tracing::error!(user = %self.user, msg_id = %id, error = %e, "cannot keep an unacked message");
                }
            }
        }
        tracing::debug!(user = %self.user, conn_id = %self.conn, kept, "unacked messages moved to the inbox");
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
