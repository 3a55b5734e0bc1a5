//! One client connection's life: `hello`, the inbox, then a loop that reads client frames,
//! writes queued messages and acks, answers heartbeats and obeys control instructions, until the
//! client leaves or the node stops; then the connection's route is removed and whatever was
//! written but not acked by the client goes to the user's inbox.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use futures_util::future::OptionFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flood::Verdict;
use super::frame::{self, ClientFrame, FrameError};
use super::ledger::{InboxCopy, Ledger, LiveCopy, Unacked};
use crate::backlog::{Tell, Waiting};
use crate::confirm::{ConfirmStatus, Confirmation};
use crate::delivery::Outcome;
use crate::envelope::Envelope;
use crate::error::{FrameErrorCode, RejectCode, close};
use crate::holds::ReceiptStatus;
use crate::ids::{ConnId, MsgId, UserId};
use crate::presence::Allowance;
use crate::quota::Origin;
use crate::sessions::{Control, Mail, Mailbox, Outbound, Source};
use crate::state::NodeState;

type PendingAck = Pin<Box<dyn Future<Output = (Option<String>, MsgId, Outcome)> + Send>>;

/// The sending half of the client's WebSocket (actix-ws): a frame handed to it is queued for
/// the connection's writer (a channel of 32 frames that the HTTP dispatcher drains into the
/// socket); a full channel makes the next frame wait, which is how a slow reader pushes back.
type Ws = actix_ws::Session;

/// The frames the client sends, continuation frames already joined into messages.
pub type Inbound = AggregatedMessageStream;

/// Why the loop ended, and how to close.
enum End {
    /// The socket is gone: nothing more to write.
    Gone,
    /// The client sent a close frame: answer it with the same code and stop.
    ClosedByClient(Option<CloseReason>),
    Close(CloseReason),
}

/// Frames taken in one loop turn at most after the one that woke it (queued messages, finished
/// acks), before the loop looks at the client's frames and the clock again.
const MAX_BATCH: usize = 64;

/// How long moving a closed connection's unacked messages to the inbox may retry across a Redis
/// blip (within the 10 s a stopping node gives its sessions).
const KEEP_WITHIN: Duration = Duration::from_secs(8);

pub struct Session {
    pub state: Arc<NodeState>,
    pub conn: ConnId,
    pub user: UserId,
    pub ws: Ws,
    /// Cancelled by the session table when this connection's queue overflows.
    pub evict: CancellationToken,
    /// What was written here and what the client acked.
    pub ledger: Ledger,
    /// Flood control over the frames this client initiates.
    pub flood: super::flood::FloodGuard,
    /// Whether messages waited in the inbox when the connection registered.
    pub inbox_waiting: bool,
    /// The device the client named (`?device=`), told to senders in receipts.
    pub device: Option<Arc<str>>,
    /// When the session's token stops being valid (docs/protocol.md, "Token lifetime"); `None` for dev auth.
    pub expiry: Option<Expiry>,
    /// Whose presence the session may watch (`--presence-policy`).
    pub may_watch: Allowance,
}

/// A token session's end: one timer per session, allocated only for token sessions, moved by
/// a `refresh`.
pub struct Expiry {
    /// Unix seconds: the token's `exp` plus the leeway.
    ends: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// Longest a session's timer is set for at once; a later end is checked again when it fires
/// (so that a far `exp` cannot overflow the clock, and wall-clock changes are followed).
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

impl Expiry {
    fn new(ends: u64) -> Self {
        Self {
            ends,
            timer: Box::pin(tokio::time::sleep_until(Self::wake_at(ends))),
        }
    }

    /// When to look again: at `ends` by the wall clock, or after [`MAX_TIMER`].
    fn wake_at(ends: u64) -> Instant {
        let left = Duration::from_secs(ends).saturating_sub(unix_now());
        Instant::now() + left.min(MAX_TIMER)
    }

    /// Whether the end has come (by the wall clock, as `exp` is).
    fn passed(&self) -> bool {
        unix_now() >= Duration::from_secs(self.ends)
    }

    /// Moves the end (a refresh), or sets the timer again for an end still to come.
    fn reset(&mut self, ends: u64) {
        self.ends = ends;
        let at = Self::wake_at(ends);
        self.timer.as_mut().reset(at);
    }
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl Session {
    pub fn new(
        state: Arc<NodeState>,
        conn: ConnId,
        user: UserId,
        ws: Ws,
        evict: CancellationToken,
        inbox_waiting: bool,
        device: Option<Arc<str>>,
    ) -> Self {
        let flood = super::flood::FloodGuard::new(state.config.limits.msgs_per_sec);
        // Room for at least two of the largest frames, whatever the setting.
        let budget = state
            .config
            .limits
            .unacked_bytes
            .max(state.config.max_frame_bytes * 2);
        let ledger = Ledger::new(budget);
        Self {
            state,
            conn,
            user,
            ws,
            evict,
            ledger,
            flood,
            inbox_waiting,
            device,
            expiry: None,
            may_watch: Allowance::Anyone,
        }
    }

    /// Whose presence the session may watch (open to anyone unless set).
    pub fn watching(mut self, may_watch: Allowance) -> Self {
        self.may_watch = may_watch;
        self
    }

    /// A token session: it ends at `ends` (unix seconds) unless refreshed.
    pub fn ending_at(mut self, ends: Option<u64>) -> Self {
        self.expiry = ends.map(Expiry::new);
        self
    }
}

/// A write that found the socket gone, or was interrupted by eviction (a full queue, or the
/// node stopping: `evict` is a child of the node's shutdown token).
enum WriteError {
    Gone,
    Evicted,
}

impl Session {
    pub async fn run(mut self, mut inbound: Inbound, mailbox: Arc<Mailbox>) {
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
        // token's tree node on every frame. One token covers both ends that come from outside:
        // `evict` is a child of the node's shutdown (`write_failed` tells them apart), so each
        // turn polls one cancellation, not two (each poll takes two locks).
        let evict = self.evict.clone();
        let evicted = evict.cancelled();
        tokio::pin!(evicted);
        let mut last_heard = Instant::now();
        // Pings go out twice per heartbeat; a client silent for two heartbeats is gone.
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat / 2, heartbeat / 2);

        let end = 'session: {
            // Registration saw how many messages wait; an empty inbox is not read (anything
            // stored since then announces itself with an inbox event).
            let mut first = self.send(hello).await;
            if first.is_ok() && self.inbox_waiting {
                first = Box::pin(self.send_inbox()).await;
            }
            if let Err(e) = first {
                break 'session Box::pin(self.write_failed(e)).await;
            }
            loop {
                // Each branch only feeds frames; whatever else is ready is fed after it and
                // the lot goes out in one write, below.
                let fed = tokio::select! {
                    biased;
                    _ = &mut evicted => break 'session Box::pin(self.write_failed(WriteError::Evicted)).await,
                    // A client with too much unacked gets nothing more until it acks (its queue
                    // fills meanwhile, and a full queue closes it as a slow consumer).
                    mail = mailbox.recv_gated(!self.ledger.over_budget()) => match mail {
                        Mail::Control(Control::Reconnect { url, reason: why }) => {
                            let _ = self.send(frame::reconnect(&url, &why)).await;
                            break 'session End::Close(reason(close::GOING_AWAY, &why));
                        }
                        Mail::Control(Control::Close { code, reason: why }) => {
                            break 'session End::Close(reason(code, &why));
                        }
                        Mail::Control(Control::InboxChanged) => Box::pin(self.send_inbox()).await,
                        Mail::Message(out) => self.feed_message(out).await,
                    },
                    Some((reference, id, outcome)) = pending.next(), if !pending.is_empty() => {
                        self.send(ack_frame(reference.as_deref(), &id, &outcome)).await
                    }
                    permit = admission.clone().acquire_owned(), if parked.is_some() => {
                        if let (Ok(permit), Some((send, to))) = (permit, parked.take()) {
                            Box::pin(self.dispatch(send, to, permit, &mut pending)).await;
                        }
                        Ok(())
                    }
                    msg = inbound.next(), if parked.is_none() && pending.len() < max_pending => {
                        last_heard = Instant::now();
                        match msg {
                            None => break 'session End::Gone,
                            Some(Ok(msg)) => match self.on_message(msg, &mut pending, &mut parked).await {
                                Some(end) => break 'session end,
                                None => Ok(()),
                            },
                            Some(Err(e)) => break 'session Box::pin(self.on_protocol_error(e)).await,
                        }
                    }
                    _ = OptionFuture::from(self.expiry.as_mut().map(|e| &mut e.timer)), if self.expiry.is_some() => {
                        match self.expiry.as_mut() {
                            Some(e) if !e.passed() => {
                                let ends = e.ends;
                                e.reset(ends);
                                Ok(())
                            }
                            _ => break 'session Box::pin(self.token_expired()).await,
                        }
                    }
                    _ = ticker.tick() => {
                        if last_heard.elapsed() > heartbeat * 2 {
                            tracing::info!(user = %self.user, conn_id = %self.conn, "client silent for two heartbeats; closing");
                            break 'session End::Close(reason(close::GOING_AWAY, "heartbeat timeout"));
                        }
                        evictable(&self.evict, self.ws.ping(b"")).await
                    }
                };
                if let Err(e) = self.coalesce(fed, &mailbox, &mut pending).await {
                    break 'session Box::pin(self.write_failed(e)).await;
                }
            }
        };

        Box::pin(self.leave(end, &mut inbound, &mailbox, pending)).await;
    }

    /// Hands over whatever else is ready now (queued messages, finished acks, up to
    /// [`MAX_BATCH`] frames) after what the loop turn sent; the connection's writer takes them
    /// all in one write when it next runs.
    async fn coalesce(
        &mut self,
        fed: Result<(), WriteError>,
        mailbox: &Mailbox,
        pending: &mut FuturesUnordered<PendingAck>,
    ) -> Result<(), WriteError> {
        let mut result = fed;
        let mut budget = MAX_BATCH;
        while result.is_ok() && budget > 0 && !self.ledger.over_budget() {
            match mailbox.try_message() {
                Some(out) => result = self.feed_message(out).await,
                None => break,
            }
            budget -= 1;
        }
        while result.is_ok() && budget > 0 {
            match pending.next().now_or_never() {
                Some(Some((reference, id, outcome))) => {
                    result = self
                        .send(ack_frame(reference.as_deref(), &id, &outcome))
                        .await;
                }
                _ => break,
            }
            budget -= 1;
        }
        result
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
            // WebSocket pings and pongs count like any frame: each costs a read, a ping a write.
            AggregatedMessage::Ping(payload) => {
                if let Some(refused) = self.flood_check(None).await {
                    return refused;
                }
                return match evictable(&self.evict, self.ws.pong(&payload)).await {
                    Ok(()) => None,
                    Err(e) => Some(self.write_failed(e).await),
                };
            }
            AggregatedMessage::Pong(_) => return self.flood_check(None).await.flatten(),
            AggregatedMessage::Close(why) => return Some(End::ClosedByClient(why)),
        };
        // An ack of a message that waits for it answers the server's own traffic (as many as
        // were written here) and is not counted; every other frame is, repeated and unknown
        // acks included.
        let answers_us = matches!(&parsed, Ok(ClientFrame::Ack { id: Some(id) })
            if self.ledger.awaits_ack(id));
        if !answers_us && let Some(refused) = self.flood_check(Some(&parsed)).await {
            return refused;
        }
        match parsed {
            Ok(ClientFrame::Send(send)) => self.on_send(send, pending, parked).await,
            Ok(ClientFrame::Ack { id: Some(id) }) => {
                self.on_ack(id).await;
                None
            }
            // Not a message id: no message has it.
            Ok(ClientFrame::Ack { id: None }) => None,
            Ok(ClientFrame::Read { id }) => {
                self.on_read(id);
                None
            }
            Ok(ClientFrame::Ping) => self.reply(frame::pong()).await,
            Ok(ClientFrame::Refresh { token }) => self.on_refresh(&token).await,
            // Boxed: inline, its state would grow every idle connection's task.
            Ok(ClientFrame::Watch { users }) => Box::pin(self.on_watch(users)).await,
            Ok(ClientFrame::Unwatch { users }) => {
                self.state.presence.unwatch(&self.conn, &users);
                None
            }
            Err(e) => self.refuse(&e).await,
        }
    }

    /// Counts a frame against the flood limit. `None`: go on with it. `Some(answer)`: it was
    /// refused (`rate_limited`, already answered), and `answer` is what `on_message` returns
    /// (the end of the session for a client that kept flooding). `parsed` is `None` for
    /// WebSocket control frames.
    async fn flood_check(
        &mut self,
        parsed: Option<&Result<ClientFrame, FrameError>>,
    ) -> Option<Option<End>> {
        self.flood_check_n(parsed, 1).await
    }

    /// [`Self::flood_check`] for a frame that counts as `n` frames.
    async fn flood_check_n(
        &mut self,
        parsed: Option<&Result<ClientFrame, FrameError>>,
        n: usize,
    ) -> Option<Option<End>> {
        match self.flood.check_n(std::time::Instant::now(), n) {
            Verdict::Allow => None,
            Verdict::Refuse => Some(self.rate_limited(parsed).await),
            Verdict::Close => {
                tracing::warn!(user = %self.user, conn_id = %self.conn, "closing a connection that kept flooding (1008)");
                self.state
                    .metrics
                    .frames_refused
                    .with_label_values(&["rate_limited"])
                    .inc();
                Some(Some(End::Close(reason(
                    close::POLICY,
                    "rate limit exceeded repeatedly",
                ))))
            }
        }
    }

    /// `watch` (docs/protocol.md, presence): all of `users` (distinct, valid) or, refused with an `error`,
    /// none of them. The first check that fails answers: over `--max-watch` on its own
    /// (`too_many`), a user the session may not watch (`forbidden`), the flood limit
    /// (`rate_limited`: each user beyond the first counts as a frame, since a user nobody here
    /// watched yet costs a Redis read), then over `--max-watch` with what the connection already
    /// watches (`too_many`). Each user is then answered with one `presence` frame.
    async fn on_watch(&mut self, users: Vec<UserId>) -> Option<End> {
        let max = self.state.presence.max_watch();
        if users.len() > max {
            return self
                .refuse(&FrameError {
                    code: FrameErrorCode::TooMany,
                    message: format!(
                        "{} users in one watch; at most {max} per connection (--max-watch)",
                        users.len()
                    ),
                    reference: None,
                })
                .await;
        }
        let refused = self.may_watch.refused(&users);
        if !refused.is_empty() {
            let named: Vec<&str> = refused.iter().take(5).map(|u| u.as_str()).collect();
            let message = format!(
                "{} of these users may not be watched by this session ({}{}): only the users in the token's `watch` claim (--presence-policy token)",
                refused.len(),
                named.join(", "),
                if refused.len() > named.len() {
                    ", ..."
                } else {
                    ""
                }
            );
            return self
                .refuse(&FrameError {
                    code: FrameErrorCode::Forbidden,
                    message,
                    reference: None,
                })
                .await;
        }
        if users.len() > 1
            && let Some(refused) = self.flood_check_n(None, users.len() - 1).await
        {
            return refused;
        }
        match self.state.presence.watch(&self.conn, &users) {
            Ok(()) => None,
            Err(e) => {
                self.refuse(&FrameError {
                    code: FrameErrorCode::TooMany,
                    message: e.to_string(),
                    reference: None,
                })
                .await
            }
        }
    }

    /// A fresh token for this session's user moves its end; anything else is refused
    /// (`unauthorized`) and the session keeps its end. The token is never logged.
    async fn on_refresh(&mut self, token: &str) -> Option<End> {
        let why = match self.state.auth.verify(token) {
            Ok(v) if v.user == self.user => {
                match &mut self.expiry {
                    Some(e) => e.reset(v.ends),
                    None => self.expiry = Some(Expiry::new(v.ends)),
                }
                // Under `--presence-policy token` the new token's `watch` claim is the session's
                // allowance from now on; watches it no longer covers end.
                if let Allowance::Only(_) = self.may_watch {
                    self.may_watch = Allowance::new(self.state.config.presence_policy, v.watch);
                    self.state
                        .presence
                        .keep_allowed(&self.conn, &self.may_watch);
                }
                tracing::info!(user = %self.user, conn_id = %self.conn, exp = v.exp, "session token refreshed");
                return self.reply(frame::refreshed(v.exp)).await;
            }
            Ok(_) => "the token is for another user".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::info!(user = %self.user, conn_id = %self.conn, reason = %why, "refused a token refresh");
        self.refuse(&FrameError {
            code: FrameErrorCode::Unauthorized,
            message: format!("refresh refused: {why}; the session keeps its expiry"),
            reference: None,
        })
        .await
    }

    /// The session's token expired: say so, then close with 4001.
    async fn token_expired(&mut self) -> End {
        tracing::info!(user = %self.user, conn_id = %self.conn, "session token expired; closing (4001)");
        self.state
            .metrics
            .frames_refused
            .with_label_values(&[FrameErrorCode::TokenExpired.as_str()])
            .inc();
        let err = frame::error(&FrameError {
            code: FrameErrorCode::TokenExpired,
            message: "the session's token expired; reconnect with a fresh token (or send `refresh` before it expires)".into(),
            reference: None,
        });
        // Best effort within a second: the close follows either way.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.send(err)).await;
        End::Close(reason(close::TOKEN_EXPIRED, "token expired"))
    }

    async fn on_send(
        &mut self,
        send: frame::SendFrame,
        pending: &mut FuturesUnordered<PendingAck>,
        parked: &mut Option<(frame::SendFrame, UserId)>,
    ) -> Option<End> {
        let to = match &send.to {
            Ok(to) => to.clone(),
            Err(e) => {
                let why = format!("`to` is not a valid user id: {e}");
                return self.reject(&send, RejectCode::BadRecipient, &why).await;
            }
        };
        if let Err(e) = &send.cid {
            let why = format!("`cid` is not valid: {e}");
            return self.reject(&send, RejectCode::BadField, &why).await;
        }
        match self.state.admission.clone().try_acquire_owned() {
            // Boxed: the send path holds delivery's futures, and inline they would double every
            // idle connection's task (the session future is allocated for the connection's life).
            Ok(permit) => Box::pin(self.dispatch(send, to, permit, pending)).await,
            // The node is at capacity: hold this send (and stop reading) until a permit frees.
            Err(_) => *parked = Some((send, to)),
        }
        None
    }

    /// Answers a send that is refused before delivery with a `rejected` ack.
    async fn reject(
        &mut self,
        send: &frame::SendFrame,
        code: RejectCode,
        message: &str,
    ) -> Option<End> {
        let ack = frame::ack(
            send.reference.as_deref(),
            None,
            "rejected",
            0,
            Some((code, message)),
        );
        self.state
            .metrics
            .rejected
            .with_label_values(&[code.as_str()])
            .inc();
        self.reply(ack).await
    }

    /// Hands an admitted send to delivery; its permit is released when its outcome is known.
    async fn dispatch(
        &mut self,
        send: frame::SendFrame,
        to: UserId,
        permit: tokio::sync::OwnedSemaphorePermit,
        pending: &mut FuturesUnordered<PendingAck>,
    ) {
        // A send with a cid keeps its id on every resend (docs/protocol.md, "Idempotent sends"); `on_send` refused a
        // bad cid.
        let cid = send.cid.as_ref().ok().and_then(Option::as_ref);
        let id = self.state.ids.msg_for(&self.user, cid);
        let env = Envelope::new(id, self.user.clone(), to, send.body);
        let id = env.id.clone();
        let reference = send.reference;
        let delivery = Arc::clone(&self.state.delivery);
        let span = tracing::debug_span!("msg", msg_id = %id, to = %env.to);
        let in_flight = delivery
            .dispatch(env, Origin::Client)
            .instrument(span.clone())
            .await;
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
    async fn rate_limited(
        &mut self,
        parsed: Option<&Result<ClientFrame, FrameError>>,
    ) -> Option<End> {
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
            Some(Ok(ClientFrame::Send(send))) => frame::ack(
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
        self.reply(text).await
    }

    /// The client has a message and it may be forgotten. Live messages are forgotten locally;
    /// only inbox messages live in Redis, so only their acks cost a Redis call.
    async fn on_ack(&mut self, id: MsgId) {
        let acked = self.ledger.acked(&id);
        let was_live = acked.live.is_some();
        if let Some(Some(source)) = acked.live {
            self.tell_received(&id, source);
        }
        for source in acked.also {
            self.tell_received(&id, source);
        }
        // A message that reached this device through the inbox (its sender was answered
        // `stored`): its sender hears `received` too, as for a live one (a live message with a
        // stored copy was told above).
        if acked.inbox
            && !was_live
            && let Some(from) = self.ledger.sender_of(&id)
        {
            self.state.holds.receipt(
                &from,
                id.clone(),
                &self.user,
                ReceiptStatus::Received,
                self.device.clone(),
            );
        }
        if acked.inbox
            && let Err(e) = Box::pin(self.state.inbox.ack(&self.user, &id)).await
        {
            tracing::warn!(user = %self.user, msg_id = %id, error = %e, "cannot remove an acked inbox message; it will be sent again");
        }
    }

    /// This device acked `id`: whoever waits to hear for the copy from `source` is told, the
    /// peer holding it (it tells the sender) or the sender.
    fn tell_received(&self, id: &MsgId, source: Source) {
        match source.holder {
            Some(peer) => {
                let sent = self.state.confirms.send(
                    &peer,
                    Confirmation {
                        id: id.clone(),
                        status: ConfirmStatus::Received,
                        device: self.device.clone(),
                    },
                );
                if !sent {
                    tracing::debug!(peer = %peer, msg_id = %id, "cannot confirm to the holding peer; its hold will expire into the inbox");
                }
            }
            None => {
                self.state.holds.receipt(
                    &source.from,
                    id.clone(),
                    &self.user,
                    ReceiptStatus::Received,
                    self.device.clone(),
                );
            }
        }
    }

    /// The user read a message this connection received: its sender hears so (`read`
    /// receipt). An id this connection did not receive (or no longer remembers) gets nothing.
    fn on_read(&mut self, id: MsgId) {
        match self.ledger.sender_of(&id) {
            Some(from) => {
                self.state.holds.receipt(
                    &from,
                    id,
                    &self.user,
                    ReceiptStatus::Read,
                    self.device.clone(),
                );
            }
            None => {
                tracing::debug!(user = %self.user, msg_id = %id, "read of a message this connection did not get recently; no receipt");
            }
        }
    }

    async fn refuse(&mut self, e: &FrameError) -> Option<End> {
        self.state
            .metrics
            .frames_refused
            .with_label_values(&[e.code.as_str()])
            .inc();
        tracing::debug!(user = %self.user, conn_id = %self.conn, code = e.code.as_str(), "refused a frame");
        self.reply(frame::error(e)).await
    }

    async fn on_protocol_error(&mut self, e: ProtocolError) -> End {
        let too_large = || {
            (
                FrameErrorCode::TooLarge,
                close::TOO_BIG,
                format!(
                    "frame larger than {} bytes",
                    self.state.config.max_frame_bytes
                ),
            )
        };
        let (code, close_code, message) = match &e {
            // Refused from the frame's header, before its payload is read.
            ProtocolError::Overflow => too_large(),
            ProtocolError::Io(io) => match io.kind() {
                std::io::ErrorKind::InvalidData => (
                    FrameErrorCode::BadFrame,
                    close::INVALID_PAYLOAD,
                    "a text frame that is not UTF-8".to_owned(),
                ),
                // The socket failed or closed (actix-http's payload error): nobody to tell.
                _ if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<actix_web::error::PayloadError>()) =>
                {
                    return End::Gone;
                }
                // The one other I/O error the stream makes: a fragmented message that grew
                // past the limit.
                _ => too_large(),
            },
            p => (
                FrameErrorCode::BadFrame,
                close::PROTOCOL,
                format!("bad frame: {p}"),
            ),
        };
        self.state
            .metrics
            .frames_refused
            .with_label_values(&[code.as_str()])
            .inc();
        tracing::info!(user = %self.user, conn_id = %self.conn, error = %e, "closing after a protocol error");
        let _ = self
            .send(frame::error(&FrameError {
                code,
                message: message.clone(),
                reference: None,
            }))
            .await;
        End::Close(reason(close_code, &message))
    }

    /// Sends a reply frame; `Some` ends the session.
    async fn reply(&mut self, frame: String) -> Option<End> {
        match self.send(frame).await {
            Ok(()) => None,
            Err(e) => Some(self.write_failed(e).await),
        }
    }

    /// Hands a text frame to the connection's writer. The frame is valid UTF-8 (it comes from a
    /// `String` or a `ByteString`) and is not checked again. Waits while the writer's queue is
    /// full, unless the connection is evicted meanwhile.
    async fn send(&mut self, frame: impl Into<ByteString>) -> Result<(), WriteError> {
        evictable(&self.evict, self.ws.text(frame)).await
    }

    /// Sends one queued message; its sender hears whether the connection's writer took it.
    async fn feed_message(&mut self, out: Outbound) -> Result<(), WriteError> {
        let (id, frame, from_inbox, accepted_us, written, source) = match out {
            Outbound::Notice(frame) => return self.send(frame).await,
            Outbound::Message {
                id,
                frame,
                from_inbox,
                accepted_us,
                written,
                source,
            } => (id, frame, from_inbox, accepted_us, written, source),
        };
        // A copy this connection has already (sent again after a broken mesh stream or a
        // reconnect, or through the inbox) is not written twice. Whoever waits for a live copy
        // still hears what the device does with it: at once if it acked it already, with its
        // ack otherwise.
        let had = if from_inbox {
            self.ledger.has_from_inbox(&id)
        } else {
            match self.ledger.live_copy(&id, source.as_ref()) {
                LiveCopy::New => false,
                LiveCopy::Unacked => true,
                LiveCopy::Acked => {
                    if let Some(source) = &source {
                        self.tell_received(&id, source.clone());
                    }
                    true
                }
            }
        };
        if had {
            if let Some(w) = written {
                let _ = w.send(true);
            }
            return Ok(());
        }
        // A sender that stopped waiting stores the message to the inbox: remember that this
        // connection has it, so that the inbox does not send it here again.
        let as_inbox = from_inbox || written.as_ref().is_some_and(|w| w.is_closed());
        let result = self.send(frame.clone()).await;
        if let Some(w) = written {
            let _ = w.send(result.is_ok());
        }
        if result.is_ok() {
            self.state.metrics.observe_delivery(accepted_us);
            if as_inbox {
                self.ledger.wrote_inbox(id);
            } else if self
                .ledger
                .wrote_live(Unacked { id, frame, source })
                .is_err()
            {
                // The client has this much unacked: nothing more is written to it until it
                // acks (the loop takes no messages meanwhile).
                tracing::debug!(user = %self.user, conn_id = %self.conn, "unacked messages over their budget (--unacked-bytes); waiting for acks");
            }
        }
        result
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
        for (id, frame_text) in messages {
            match self.ledger.inbox_copy(&id) {
                InboxCopy::Send => {}
                InboxCopy::Had => continue,
                // Written here live and acked: that ack never reached the inbox.
                InboxCopy::Acked => {
                    if let Err(e) = self.state.inbox.ack(&self.user, &id).await {
                        tracing::debug!(user = %self.user, msg_id = %id, error = %e, "cannot drop a stored copy of a delivered message");
                    }
                    continue;
                }
            }
            self.send(frame_text.as_str()).await?;
            self.state.metrics.inbox_replayed.inc();
            // Its sender, for a `read` receipt later.
            if let Some(from) = sender_in(&frame_text) {
                self.ledger.remember_sender(id.clone(), from);
            }
            self.ledger.wrote_inbox(id);
        }
        Ok(())
    }

    async fn write_failed(&mut self, e: WriteError) -> End {
        match e {
            WriteError::Gone => End::Gone,
            // The node is stopping (its shutdown cancels every connection's `evict`): not a
            // slow consumer, whatever write it interrupted.
            WriteError::Evicted if self.state.shutdown.is_cancelled() => {
                End::Close(reason(close::GOING_AWAY, "node stopping"))
            }
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
        inbound: &mut Inbound,
        mailbox: &Mailbox,
        mut pending: FuturesUnordered<PendingAck>,
    ) {
        self.state.sessions.remove(&self.conn);
        self.state.presence.forget(&self.conn);
        // Unwritten messages: their senders learn "not written" and re-route or store them.
        drop(mailbox.close());
        match end {
            End::Close(frame) => {
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
                self.close(frame, inbound).await;
            }
            // Answer the client's close frame with its own code, as RFC 6455 asks.
            End::ClosedByClient(why) => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), self.ws.clone().close(why)).await;
            }
            End::Gone => {}
        }
        // What was written here and not acked may not have reached the client: it goes to the
        // inbox before anything else can wait.
        self.keep_unacked().await;
        // Sends whose ack can no longer be written still finish (a failed delivery must still
        // reach the inbox), in the background.
        if !pending.is_empty() {
            let drive = async move { while pending.next().await.is_some() {} }
                .instrument(tracing::Span::current());
            self.state
                .runtime
                .spawn(self.state.tracker.track_future(drive));
        }
        self.state.metrics.connections.dec();
        if self.state.is_cut_off() {
            // Other nodes count this node dead and remove its routes; what is left when it
            // registers again is reconciled then.
            self.state.request_reconcile();
        } else if let Err(e) = self.state.routes.unregister(&self.user, &self.conn).await {
            tracing::warn!(user = %self.user, conn_id = %self.conn, error = %e, "cannot remove a route; it will be reconciled");
            self.state.request_reconcile();
        }
        tracing::info!(user = %self.user, conn_id = %self.conn, "client disconnected");
    }

    /// Sends the close frame and waits (briefly) for the client's answer, reading and dropping
    /// whatever it still sends: closing a socket with unread data would reset it, and the client
    /// could lose the frames just written, the close frame included.
    /// Acks the client sends meanwhile still count.
    async fn close(&mut self, frame: CloseReason, inbound: &mut Inbound) {
        let mut acks = Vec::new();
        let closing = async {
            if self.ws.clone().close(Some(frame)).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = inbound.next().await {
                match msg {
                    AggregatedMessage::Close(_) => break,
                    AggregatedMessage::Text(text) => {
                        if let Ok(ClientFrame::Ack { id: Some(id) }) = frame::parse(&text) {
                            acks.push(id);
                        }
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        for id in acks {
            self.on_ack(id).await;
        }
    }

    /// Messages written here but never acked may not have reached the client: they go to the
    /// inbox (whatever its depth, retried across a Redis blip, then kept by the node until Redis
    /// answers), the user's other connections hear of it, and each sender is told (`stored`),
    /// through the peer holding it if any.
    async fn keep_unacked(&mut self) {
        let unacked = self.ledger.take_unacked();
        if unacked.is_empty() {
            return;
        }
        let count = unacked.len();
        let waiting: Vec<Waiting> = unacked
            .into_iter()
            .map(|u| Waiting {
                to: self.user.clone(),
                id: u.id,
                frame: u.frame,
                tell: match u.source {
                    Some(Source {
                        holder: Some(peer), ..
                    }) => Tell::Peer(peer),
                    Some(Source { from, holder: None }) => Tell::Sender(from),
                    None => Tell::Nobody,
                },
            })
            .collect();
        crate::keeper::keep(&self.state, &self.user, waiting, KEEP_WITHIN, "connection").await;
        tracing::info!(user = %self.user, conn_id = %self.conn, messages = count, "unacked messages moved to the inbox (or waiting for Redis)");
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

/// Runs a socket write unless the connection is evicted (or the node stops) first. The write
/// usually completes at once; only one that waits on a full socket also watches the token.
async fn evictable<F>(evict: &CancellationToken, write: F) -> Result<(), WriteError>
where
    F: Future<Output = Result<(), actix_ws::Closed>>,
{
    tokio::pin!(write);
    if let Some(r) = (&mut write).now_or_never() {
        return r.map_err(|_| WriteError::Gone);
    }
    tokio::select! {
        biased;
        r = write => r.map_err(|_| WriteError::Gone),
        _ = evict.cancelled() => Err(WriteError::Evicted),
    }
}

/// The `from` of a stored `message` frame.
fn sender_in(frame_text: &str) -> Option<UserId> {
    #[derive(serde::Deserialize)]
    struct From<'a> {
        #[serde(borrow)]
        from: std::borrow::Cow<'a, str>,
    }
    let f: From<'_> = serde_json::from_str(frame_text).ok()?;
    UserId::parse(&f.from).ok()
}

fn ack_frame(reference: Option<&str>, id: &MsgId, outcome: &Outcome) -> String {
    let id = id.as_str();
    match outcome {
        Outcome::Rejected { code, message } => {
            frame::ack(reference, Some(id), "rejected", 0, Some((*code, message)))
        }
        o => frame::ack(reference, Some(id), o.status(), o.devices(), None),
    }
}
